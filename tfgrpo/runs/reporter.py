"""Where a run's tables and notes go. The drivers (learner, evaluator) say them to a :class:`Reporter`
instead of printing: the CLI's prints them (stdout, warnings on stderr); the Python API's logs them to
the ``tfgrpo`` logger, or prints them too with ``verbose=True``. Errors are not reported here: the drivers
raise them, and only ``tfgrpo.cli.main`` prints them and picks the exit code."""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("tfgrpo")


class Reporter:
    """Prints: a run's table rows and notes on stdout, warnings on stderr (the CLI's)."""

    def line(self, text: str) -> None:
        print(text, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


class LogReporter(Reporter):
    """Logs instead (the Python API's with ``verbose=False``): silent unless logging is configured."""

    def line(self, text: str) -> None:
        LOGGER.info(text)

    def warn(self, text: str) -> None:
        LOGGER.warning(text)
