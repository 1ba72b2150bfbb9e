"""Random masking and the gather of visible tokens: exact counts, the noise order, MAE's gather and the
conv patch embedding, values and gradients."""

import pytest
import torch

from deepmim.models import DeepMIM, random_masking
from tests.helpers.models import tiny_model_config


def test_masking_keeps_exact_count_per_sample():
    m = random_masking(5, 49, 0.75, torch.device("cpu"))
    keep = int(49 * 0.25)
    assert m.ids_keep.shape == (5, keep)
    assert torch.equal(m.mask.sum(1), torch.full((5,), 49.0 - keep))
    # every sample draws its own mask
    assert len({tuple(row.tolist()) for row in m.mask}) == 5
    # ids_restore inverts the shuffle: visible ids are exactly the zeros of the mask
    for n in range(5):
        assert set(m.ids_keep[n].tolist()) == set(torch.nonzero(m.mask[n] == 0).flatten().tolist())


def test_masking_honours_noise_smallest_kept():
    noise = torch.rand(3, 16)
    m = random_masking(3, 16, 0.75, torch.device("cpu"), noise=noise)
    expected = torch.argsort(noise, dim=1)[:, :4]
    assert torch.equal(m.ids_keep, expected)
    again = random_masking(3, 16, 0.75, torch.device("cpu"), noise=noise.clone())
    assert torch.equal(again.mask, m.mask)


def test_masking_rejects_wrong_noise_shape():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(2, 16, 0.75, torch.device("cpu"), noise=torch.rand(2, 15))


def test_token_rows_are_taken_with_the_values_and_gradients_of_maes_gather():
    from deepmim.models.masking import take_tokens

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 16, 8, generator=gen, requires_grad=True)
    for keep in (16, 4):  # a full permutation (the decoder's restore) and a subset (the encoder's visible)
        ids = torch.argsort(torch.rand(5, 16, generator=gen), dim=1)[:, :keep]
        ours = take_tokens(tokens, ids)
        theirs = torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, 8))
        assert ours.shape == (5, keep, 8) and torch.equal(ours, theirs)
        upstream = torch.randn(5, keep, 8, generator=gen)
        assert torch.equal(
            torch.autograd.grad(ours, tokens, upstream)[0], torch.autograd.grad(theirs, tokens, upstream)[0]
        )


def test_visible_patches_are_embedded_as_the_conv_embeds_them_with_the_same_gradients():
    from deepmim.models.masking import random_masking, take_tokens

    torch.manual_seed(0)
    encoder = DeepMIM(tiny_model_config()).encoder
    images = torch.randn(3, 3, 16, 16)
    masking = random_masking(3, encoder.num_patches, 0.75, images.device, None, None)
    ours = encoder.embed_visible(images, masking.ids_keep)
    theirs = take_tokens(encoder.patch_embed(images) + encoder.pos_embed[:, 1:, :], masking.ids_keep)
    assert ours.shape == (3, 4, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(ours)
    weights = [encoder.patch_embed.proj.weight, encoder.patch_embed.proj.bias]
    for a, b in zip(torch.autograd.grad(ours, weights, upstream), torch.autograd.grad(theirs, weights, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(encoder.embed(images, masking)[:, 1:], ours)  # the path a masked forward takes
    encoder.embed_kept_only = False  # MAE's order, as the benchmarks' authors' baseline runs it
    assert torch.equal(encoder.embed(images, masking)[:, 1:], theirs)
    with pytest.raises(ValueError, match="for an encoder of"):
        encoder.embed_visible(torch.randn(3, 3, 20, 20), masking.ids_keep)
