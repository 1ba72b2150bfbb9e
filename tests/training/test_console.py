"""--quiet and --verbose set the level of deepmim's loggers."""

from __future__ import annotations

import logging

from deepmim.cli.main import main
from tests.helpers.export import save_pretrained


def test_quiet_and_verbose_set_the_deepmim_loggers_level(tmp_path, capsys):

    ckpt = save_pretrained(tmp_path / "ck.pt")
    logger = logging.getLogger("deepmim")
    try:
        assert main(["export", str(ckpt), "--out", str(tmp_path / "a.safetensors"), "--quiet"]) == 0
        assert logger.level == logging.WARNING
        logging.getLogger("deepmim.tasks.export").info("a message of the library")
        out, err = capsys.readouterr()
        assert "wrote" in out and "a message of the library" not in err  # results print, messages do not
        assert main(["--verbose", "export", str(ckpt), "--out", str(tmp_path / "b.safetensors")]) == 0
        assert logger.level == logging.DEBUG
        assert "export of" in capsys.readouterr().err  # the exporter's debug line
        assert main(["export", str(ckpt), "--out", str(tmp_path / "c.safetensors")]) == 0
        assert logger.level == logging.INFO and "export of" not in capsys.readouterr().err
    finally:
        logger.setLevel(logging.INFO)
