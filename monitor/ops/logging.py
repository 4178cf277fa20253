"""Structured logs: JSON lines in production, readable key=value in a terminal.

Library loggers (faust, aiokafka) go through the same renderer, so one stream of
logs carries everything. Their warnings and errors repeat in bursts (a broker outage makes
aiokafka log each failed connection, ~150 lines a second): `RepeatFilter` lets each through once
per interval, with how many it held back, and counts them all.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import structlog


LIBRARIES = ("aiokafka", "faust", "mode")
# Kept at the root's level: Faust's changelog recovery says what it still has to read, and a
# recovery that never ends is otherwise invisible until the stall exit.
AUDIBLE = ("faust.tables.recovery",)


class RepeatFilter(logging.Filter):
    """A library's warning or error passes once per `every` seconds per logger and message template;
    the next that passes says how many were held back. `count(library)` is called for every one."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self.count: Callable[[str], None] = lambda library: None
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}  # (logger, template) -> (passed at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        library = record.name.split(".")[0]
        if record.levelno < logging.WARNING or library not in LIBRARIES:
            return True
        self.count(library)
        key, now = (record.name, record.msg), self.clock()
        passed, held = self._seen.get(key, (None, 0))
        if passed is not None and now - passed < self.every:
            self._seen[key] = (passed, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {now - passed:.0f} s]"
        return True


REPEATS = RepeatFilter()


def configure(fmt: str = "console", level: str = "info") -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared,
    ))
    handler.addFilter(REPEATS)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in LIBRARIES:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for audible in AUDIBLE:
        logging.getLogger(audible).setLevel(root.level)
