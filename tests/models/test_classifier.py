"""Fine-tuning: timm's pieces wired as the MAE/BEiT recipe, exact resume, evaluation."""

import torch

from deepmim.models.classifier import build_classifier
from deepmim.tasks.finetune import ClassifierConfig


def test_classifier_takes_the_encoder_weights_drops_the_final_norm_and_resamples(pretrained):
    source = torch.load(pretrained, weights_only=True)["model"]
    model, enc = build_classifier(ClassifierConfig(checkpoint=str(pretrained)), 7, 24)
    assert torch.equal(model.blocks[2].mlp.fc1.weight, source["encoder.blocks.2.mlp.fc1.weight"])
    assert isinstance(model.norm, torch.nn.Identity)  # avg pooling: a new fc_norm instead
    assert torch.equal(model.fc_norm.weight, torch.ones(32))
    assert model.pos_embed.shape == (1, 1 + 36, 32)  # 24px / patch 4: resampled from 4x4 to 6x6
    assert model.head.weight.std().item() < 1e-4 and model.head.out_features == 7
    token, _ = build_classifier(ClassifierConfig(checkpoint=str(pretrained), global_pool="token"), 7, 16)
    assert torch.equal(token.norm.weight, source["encoder.norm.weight"])
