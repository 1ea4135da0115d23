"""How `directory-sync` shows its progress: a tqdm bar with counts and rate on a terminal,
plain log lines elsewhere (a cron job's mail, a CI log), nothing from the Python API
unless asked."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Protocol, TextIO

from tqdm import tqdm

LOG_EVERY_BATCHES = 10


class Progress(Protocol):
    def note(self, message: str) -> None:
        """A line about the run (what was read, what is planned)."""

    def start(self, action: str, total: int) -> None:
        """`total` ads are about to be sent, in batches."""

    def advance(self, ads: int, counts: Mapping[str, int]) -> None:
        """A batch of `ads` was answered; `counts` are the totals so far by outcome."""

    def finish(self) -> None: ...


class Silent:
    def note(self, message: str) -> None:
        pass

    def start(self, action: str, total: int) -> None:
        pass

    def advance(self, ads: int, counts: Mapping[str, int]) -> None:
        pass

    def finish(self) -> None:
        pass


class LogLines:
    """A line every LOG_EVERY_BATCHES batches and at the end, with counts and rate."""

    def __init__(self, stream: TextIO = sys.stderr, *, every_batches: int = LOG_EVERY_BATCHES):
        self._stream = stream
        self._every = every_batches
        self._action = ""
        self._total = self._done = self._batches = 0
        self._counts: Mapping[str, int] = {}
        self._started = time.monotonic()

    def note(self, message: str) -> None:
        print(f"directory-sync: {message}", file=self._stream, flush=True)

    def start(self, action: str, total: int) -> None:
        self._action, self._total = action, total
        self._done = self._batches = 0
        self._started = time.monotonic()

    def advance(self, ads: int, counts: Mapping[str, int]) -> None:
        self._done += ads
        self._batches += 1
        self._counts = counts
        if self._batches % self._every == 0 and self._done < self._total:
            self._line()

    def finish(self) -> None:
        if self._total:
            self._line()

    def _line(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        share = self._done / self._total if self._total else 1.0
        self.note(
            f"{self._action} {self._done:,}/{self._total:,} ads ({share:.0%}), "
            f"{self._done / elapsed:,.0f} ads/s: {format_counts(self._counts)}"
        )


class Bar:
    """A tqdm bar on a terminal; notes are written above it."""

    def __init__(self, stream: TextIO = sys.stderr):
        self._stream = stream
        self._bar = None

    def note(self, message: str) -> None:
        tqdm.write(f"directory-sync: {message}", file=self._stream)

    def start(self, action: str, total: int) -> None:
        self.finish()
        self._bar = tqdm(total=total, desc=action, unit="ad", unit_scale=True, file=self._stream)

    def advance(self, ads: int, counts: Mapping[str, int]) -> None:
        self._bar.update(ads)
        self._bar.set_postfix_str(format_counts(counts), refresh=False)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def for_stream(stream: TextIO) -> Progress:
    """A bar on a terminal, log lines otherwise."""
    return Bar(stream) if stream.isatty() else LogLines(stream)


def format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in counts.items()) or "nothing yet"
