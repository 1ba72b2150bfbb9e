"""Image folders written once per test module for the data tests (labelled and flat)."""

import pytest

from tests.helpers.data import FORMATS, encoded, png


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 30), ("val", 9)):
        for c, name in enumerate(("cat", "dog", "emu")):
            (root / split / name).mkdir(parents=True)
            for i in range(n // 3):
                (root / split / name / f"{i}.png").write_bytes(png(100 * c + i + (1000 if split == "val" else 0)))
    return root


@pytest.fixture
def flat_folder(tmp_path):
    """20 images of three formats, some in nested folders, with a text file and a hidden file beside them."""
    root = tmp_path / "photos"
    for i in range(20):
        folder = root / ("" if i < 8 else f"trip{i % 3}/day{i % 2}")
        folder.mkdir(parents=True, exist_ok=True)
        ext = list(FORMATS)[i % 3]
        (folder / f"img{i:02d}.{ext}").write_bytes(encoded(i, ext))
    (root / "notes.txt").write_text("not an image")
    (root / ".thumb.jpg").write_bytes(encoded(99, "jpg"))
    return root
