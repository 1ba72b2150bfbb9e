"""A head's string keys are made and parsed in one place."""

from deepmim.models import DeepMIM
from tests.helpers.models import tiny_model_config


def test_a_heads_names_are_made_and_parsed_in_one_place():
    from deepmim.models.head_names import decoder_blocks, head_loss_keys, loss_block, loss_key, row_block, row_name

    assert [loss_block(loss_key(b)) for b in (2, 10, 12)] == [2, 10, 12]
    assert loss_block("loss") is None and loss_block("loss_blockx") is None
    assert head_loss_keys(["loss", "loss_block10", "lr", "loss_block2"]) == ["loss_block2", "loss_block10"]  # by depth
    assert row_block(row_name(6)) == 6 and row_block("masked") is None

    model = DeepMIM(tiny_model_config(heads=(4, 2)))
    assert decoder_blocks(model.decoders) == [2, 4] == model.blocks
