"""How a command's failure reaches the user: one message on stderr, no traceback, and an exit code a script
can act on (2: bad input or a path that cannot be used, 3: training diverged, a stop signal's own code,
130: interrupted). Errors that are bugs keep their traceback."""

from __future__ import annotations

import sys

from .arguments import is_rank_zero

LIGHT_COMMANDS = ("recipes", "presets")  # they read YAML and dataclasses only (tests/test_lazy_imports.py)


def run_command(args) -> int:
    """Run the command `args` holds (its handler, set by its parser); its exit code."""
    if args.command in LIGHT_COMMANDS:  # answered without loading torch or timm: none of the errors below arise
        try:
            return args.handler(args)
        except BrokenPipeError:  # e.g. `deepmim presets | head`
            sys.stderr.close()
            return 0
    from ..checkpoint import CheckpointError
    from ..config.loader import ConfigError
    from ..training.guard import DivergenceError
    from ..training.signals import Stopped

    try:
        return args.handler(args)
    except BrokenPipeError:  # e.g. `deepmim presets | head`
        sys.stderr.close()
        return 0
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        text = os_error_message(err) if isinstance(err, OSError) and err.errno is not None else error_text(err)
        print(f"deepmim {args.command}: error: {text}", file=sys.stderr)
        return 2
    except Stopped as err:  # a stop signal: the step finished and a resumable checkpoint was written
        if is_rank_zero():
            text = str(err)
            if args.command == "study":  # a study resumes its runs by itself
                text = text.replace(
                    "continue with the same command and train.resume=auto", "run the same command again to continue"
                )
            print(f"deepmim {args.command}: {text}", file=sys.stderr)
        return err.exit_code
    except DivergenceError as err:
        print(f"deepmim {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except ValueError as err:  # DataError and friends: bad input, message says what to fix
        print(f"deepmim {args.command}: error: {error_text(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder that cannot be read or written (permissions, a file for a folder)
        print(f"deepmim {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not is_collective_timeout(err):
            raise
        print(f"deepmim {args.command}: error: {collective_timeout_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "run the same command again to continue" if args.command == "study" else "resume with train.resume=auto"
        print(f"deepmim {args.command}: interrupted; {how}", file=sys.stderr)
        return 130


def is_collective_timeout(err: BaseException) -> bool:
    """A torch.distributed collective that waited past its timeout (gloo's and NCCL's words for it)."""
    text = str(err).lower()
    return "timed out" in text or ("timeout" in text and "collective" in text)


def collective_timeout_message(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"this process waited longer than train.dist_timeout for the other processes of the job ({first[:200]}): "
        f"one of them is frozen, hung or much slower than the rest. Its last checkpoint is intact: resume with "
        f"train.resume=auto once every process runs (raise train.dist_timeout if a healthy step or checkpoint "
        f"write takes that long)"
    )


def error_text(err: BaseException) -> str:
    """The message of `err`; for one a DataLoader worker raised, the worker's own one-line message without
    the traceback torch wraps it in when it re-raises it in the main process."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def os_error_message(err: OSError) -> str:
    """One paragraph for an OSError: what failed, on which path, what to do."""
    import errno
    from pathlib import Path

    where = f" '{err.filename}'" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (
            f"no space left on the disk while writing{where or ' a file'}: free space on it (or choose a folder "
            f"on another disk), then run the command again; a training run continues from its last checkpoint "
            f"with train.resume=auto (a checkpoint is replaced only once its successor is written in full)"
        )
    if err.errno == errno.ENOENT and err.filename and not Path(err.filename).parent.exists():
        return (
            f"cannot use{where}: its folder '{Path(err.filename).parent}' no longer exists (deleted or moved "
            f"while the command ran?); restore the folder, or choose another one, and run the command again"
        )
    return (
        f"cannot use{where}: {err.strerror or err} ({type(err).__name__}); check that the path exists, is "
        f"of the right kind (a file or a folder) and that you may read or write it, or choose another path"
    )
