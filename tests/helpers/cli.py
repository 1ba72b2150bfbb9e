"""Running `deepmim` in-process and reading its one-paragraph error (exit code 2)."""

from deepmim.cli.main import main


def single_line_cli_error(capsys, *argv) -> str:
    """Run `deepmim argv`, expect exit code 2 and stderr to be exactly one line, the error; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"deepmim {argv[0]}: error: ")
    return err[0]


def traceback_free_cli_error(capsys, *argv) -> str:
    """Run `deepmim argv`, expect exit code 2, no traceback anywhere on stderr and the error as its last line;
    return that line (what the run printed before it may stay)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith(f"deepmim {argv[0]}: error: ")
    return err[-1]


def cli_error(capsys, *argv) -> str:
    """Run `deepmim argv`, expect exit code 2 and the error as stderr's last line, naming neither a traceback
    nor torch's weights_only; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"deepmim {argv[0]}: error: ") and "Traceback" not in err
    assert "weights_only" not in err
    return err
