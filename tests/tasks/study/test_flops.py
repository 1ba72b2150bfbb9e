"""The encoder FLOPs the study reports, against a hand count."""

import torch

from tests.helpers.models import TINY_ENCODER


def test_encoder_flops_match_the_hand_count():
    from deepmim.config.schema import EncoderConfig
    from deepmim.models.encoder import MaskedViTEncoder
    from deepmim.tasks.study.flops import classifier_flops_per_image, encoder_flops_per_image

    enc = EncoderConfig(**TINY_ENCODER)
    encoder = MaskedViTEncoder(enc)
    images = torch.randn(3, 3, 16, 16)
    n, d, patches = 17, 32, 16  # tokens (cls + 16 patches), width
    per_block = 2 * n * d * (3 * d + d + 8 * d) + 2 * 2 * n * n * d  # qkv, proj, mlp; q k^T and attn v
    assert encoder_flops_per_image(encoder, images) == 2 * patches * d * 48 + 4 * per_block
    assert encoder.blocks[0].attn.fused_attn  # the counting switched math attention on and back off
    train, forward = classifier_flops_per_image(enc, 10, 16, "avg", images)
    assert forward == 2 * patches * d * 48 + 4 * per_block + 2 * d * 10  # + the head
    assert train == 3 * forward - 2 * patches * d * 48  # backward = 2x forward, but no input gradient for the images
