"""One owner for the names of a head. A head is the encoder block it reads (an int, 1-based); from
it come its decoder's key in `DeepMIM.decoders`, the name of its loss in metrics.jsonl and its row
in the reconstruction pictures. What writes or reads one of these names goes through here.
"""

from __future__ import annotations

from typing import Iterable, List, Mapping, Optional

LOSS_PREFIX = "loss_block"  # metrics.jsonl: loss_block<n>, the unweighted loss of the head on block n
ROW_PREFIX = "block "  # reconstruction pictures: the row of the head on block n


def decoder_key(block: int) -> str:
    """The head's key in DeepMIM.decoders (an nn.ModuleDict, so a string): its state-dict prefix is
    `decoders.<key>.`."""
    return str(block)


def decoder_blocks(decoders: Mapping[str, object]) -> List[int]:
    """The blocks of a model's decoders, in increasing depth."""
    return sorted(int(key) for key in decoders)


def loss_key(block: int) -> str:
    return f"{LOSS_PREFIX}{block}"


def loss_block(key: str) -> Optional[int]:
    """The block of a head's loss key; None for any other key (the total `loss`, `lr`, ...)."""
    rest = key[len(LOSS_PREFIX) :] if key.startswith(LOSS_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def head_loss_keys(keys: Iterable[str]) -> List[str]:
    """The heads' loss keys among `keys`, in increasing depth."""
    return sorted((k for k in keys if loss_block(k) is not None), key=loss_block)


def row_name(block: int) -> str:
    return f"{ROW_PREFIX}{block}"


def row_block(name: str) -> Optional[int]:
    """The block of a head's picture row; None for the 'original' and 'masked' rows."""
    rest = name[len(ROW_PREFIX) :] if name.startswith(ROW_PREFIX) else ""
    return int(rest) if rest.isdigit() else None
