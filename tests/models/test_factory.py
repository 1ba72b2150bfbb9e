"""create_model from a dict with a preset and overrides."""

from deepmim import create_model


def test_create_model_from_dict_with_preset_override():
    model = create_model(
        {"preset": "deepmim_pixel_vit_micro_p4_32", "heads": {"0": {"weight": 0.25}}, "mask_ratio": 0.6}
    )
    assert model.heads[0].weight == 0.25 and model.cfg.mask_ratio == 0.6
    assert len(model.heads) == 4
