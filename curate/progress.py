"""Progress lines for long stages: documents done, rate and ETA, at most one line every few seconds."""

from __future__ import annotations

import logging
import os
import time


class Progress:
    """Call `update(n)` as work gets done; logs `what: done/total, rate/s, ETA` every `every_s` seconds
    (the environment variable CURATE_PROGRESS_SECONDS, when set, overrides it)."""

    def __init__(self, what: str, total: int | None = None, every_s: float = 10.0, logger=None):
        self.what, self.total = what, total
        self.every_s = float(os.environ.get("CURATE_PROGRESS_SECONDS", every_s))
        self.log = logger or logging.getLogger("curate")
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done}"
        if self.total:
            text += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
        text += f", {rate:.1f} docs/s"
        if self.total and rate > 0:
            text += f", ETA {max(self.total - self.done, 0) / rate:.0f}s"
        return text

    def finish(self) -> None:
        self.log.info(self.line() + f", done in {time.monotonic() - self.start:.1f}s")
