"""Compatibility shims for the field's libraries, applied where they are used.

timm's RandAugment ('inc1' spec, as in the MAE/DeepMIM fine-tuning recipe) can ask for a
posterize that keeps 0 bits; Pillow >= 12 rejects that (older Pillow returned a black image).
We restore the old result so the authors' augmentation runs on current Pillow.
"""

from __future__ import annotations

from PIL import Image, ImageOps


def _posterize(img, bits_to_keep, **_):
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # 0 bits kept: every channel value masked to 0 (old Pillow's result)
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if auto_augment.NAME_TO_OP.get(name) is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize
