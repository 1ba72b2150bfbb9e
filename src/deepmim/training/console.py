"""The console of a run: the `deepmim` logger's messages as plain lines on stderr (standard library only,
so the package root sets it up without loading torch)."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "deepmim"  # every module's logger (logging.getLogger(__name__)) is a child of this one


def say(message: str) -> None:
    """A console message of a run: INFO on the `deepmim` logger (the CLI's --quiet hides it, --verbose adds
    DEBUG); library code calls this or its module's logger, never print."""
    logging.getLogger(LOGGER_NAME).info(message, stacklevel=2)


class ConsoleHandler(logging.Handler):
    """Log records as plain lines on the process's stderr *at the time of the record* (a stage's redirected
    stderr receives its own lines), written through tqdm.write so that a line never breaks a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise from a handler
            self.handleError(record)


def configure_console(level: int = logging.INFO) -> logging.Logger:
    """The `deepmim` logger with one ConsoleHandler at `level` (idempotent). The package installs it at INFO on
    import, as transformers does for its own logger, so runs from Python show what the CLI shows; the CLI sets
    the level from --quiet (WARNING) / --verbose (DEBUG). To route deepmim's records through your own handlers
    instead: `logging.getLogger("deepmim").handlers.clear(); logging.getLogger("deepmim").propagate = True`."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # one line per message even when the application configures the root logger
    logger.setLevel(level)
    return logger
