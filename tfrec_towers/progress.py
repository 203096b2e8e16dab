"""Progress of long loops: a one-line bar with rate and ETA on a terminal, log lines elsewhere.

    with progress("Embedding candidates", total=n, unit="rows") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

``rate = count / elapsed`` and ``ETA = (total − count) / rate``. On a terminal (the stream's
``isatty()``) the line ``Embedding candidates  45% |████▌     | 45,000/100,000 rows  12,345 rows/s
ETA 4s`` is redrawn at most every :data:`REDRAW_SECONDS`, first after :data:`QUIET_SECONDS`, and
replaced at the end by one line with the total time and rate; a task shorter than
:data:`QUIET_SECONDS` leaves nothing. A phase without a count (``total=None`` and no ``update``)
shows its label while it runs and its elapsed time at the end. Elsewhere (logs, CI) the
``tfrec_towers.progress`` logger writes an INFO line at most every 10% of the total and every
:data:`LOG_SECONDS` (every :data:`LOG_SECONDS` without a total), then the final line (none for a
task shorter than :data:`QUIET_SECONDS`).
:func:`set_progress` switches all of it off (the CLI's ``--quiet``).
"""

from __future__ import annotations

import logging
import numbers
import shutil
import sys
import time
from typing import Callable, Iterable, Iterator, Literal, Optional, TextIO, TypeVar

logger = logging.getLogger(__name__)

REDRAW_SECONDS = 0.1  # a terminal line is redrawn at most ten times a second
QUIET_SECONDS = 1.0  # a terminal shows nothing of a task shorter than this
LOG_SECONDS = 30.0  # at most one intermediate log line per this many seconds...
LOG_FRACTION = 0.1  # ...and per this share of the total
BAR_WIDTH = 10
_EIGHTHS = " ▏▎▍▌▋▊▉"

_enabled = True
T = TypeVar("T")


def set_progress(enabled: bool) -> None:
    """Switches every progress bar and progress log line of the process on or off."""
    global _enabled
    _enabled = bool(enabled)


def format_duration(seconds: float) -> str:
    """``4.2s`` under 10 s, ``42s`` under a minute, ``3m05s`` under an hour, then ``2h07m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def format_rate(rate: float) -> str:
    """``12,345`` from 100 up, one decimal below (``4.5``)."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


class progress:  # lower-case like contextlib.suppress: a context manager read as a call
    """Reports a loop of ``total`` units: ``with progress(label, total) as bar: ... bar.update(n)``.

    Args:
      label: what is being done, e.g. ``"Embedding candidates"``.
      total: units the loop will count, or ``None`` when unknown (no percentage, bar or ETA).
      unit: the counted thing, plural (``"rows"``, ``"queries"``).
      stream: where a terminal bar is drawn (default ``sys.stderr`` at ``with`` time); when it is
        not a terminal the lines go to the ``tfrec_towers.progress`` logger instead.
      clock: seconds from a monotonic clock (injectable for tests).

    An exception inside the ``with`` erases the bar and propagates.

    Raises:
      ValueError: ``total`` is neither ``None`` nor a non-negative int.
    """

    def __init__(
        self,
        label: str,
        total: Optional[int] = None,
        unit: str = "rows",
        *,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is not None and (isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 0):
            raise ValueError(f"`total` must be a non-negative int or None. Received: {total!r}")
        self.label, self.total, self.unit, self.count = label, None if total is None else int(total), unit, 0
        self._requested_stream, self._clock = stream, clock
        self._stream: TextIO = sys.stderr  # chosen on entering: ``stream``, else the stderr of that moment
        self._on = self._tty = False
        self._start = self._shown_at = 0.0
        self._logged_count, self._drawn = 0, 0

    def __enter__(self) -> "progress":
        self._on = _enabled
        self._stream = self._requested_stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._start = self._shown_at = self._clock()
        if self._on and self._tty and self.total is None:
            self._draw(self.label + " …")
        return self

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more units; redraws or logs when it is time to."""
        self.count += n
        if not self._on:
            return
        now = self._clock()
        if self._tty:
            if now - self._start >= QUIET_SECONDS and now - self._shown_at >= REDRAW_SECONDS:
                self._draw(self._line(now, bar=True))
                self._shown_at = now
        elif now - self._shown_at >= LOG_SECONDS and (
            self.total is None or self.count - self._logged_count >= LOG_FRACTION * self.total
        ):
            logger.info(self._line(now, bar=False))
            self._shown_at, self._logged_count = now, self.count

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yields ``items``, counting one unit after each."""
        for item in items:
            yield item
            self.update(1)

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        if not self._on:
            return False
        elapsed = self._clock() - self._start
        if self._tty and (exc_type is not None or elapsed < QUIET_SECONDS):
            if self._drawn:
                self._draw("")
        elif self._tty:
            self._draw(self.summary(elapsed))
            self._stream.write("\n")
            self._stream.flush()
        elif exc_type is None and elapsed >= QUIET_SECONDS:
            logger.info(self.summary(elapsed))
        return False

    def summary(self, elapsed: float) -> str:
        """The final line: ``label  count/total unit in 8.1s (12,345 unit/s)``, or ``label done in 8.1s``."""
        if self.count == 0 and self.total is None:
            return f"{self.label}  done in {format_duration(elapsed)}"
        done = f"{self.count:,}" + ("" if self.total is None else f"/{self.total:,}")
        rate = f" ({format_rate(self.count / elapsed)} {self.unit}/s)" if elapsed > 0 else ""
        return f"{self.label}  {done} {self.unit} in {format_duration(elapsed)}{rate}"

    def _line(self, now: float, bar: bool) -> str:
        elapsed = now - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        speed = f"  {format_rate(rate)} {self.unit}/s" if rate > 0 else ""
        if self.total is None:
            return f"{self.label}  {self.count:,} {self.unit}{speed}  {format_duration(elapsed)}"
        fraction = min(self.count / self.total, 1.0) if self.total else 1.0
        percent = min(100 * self.count // self.total, 100) if self.total else 100
        cells = fraction * BAR_WIDTH
        drawn = "█" * int(cells) + (_EIGHTHS[int((cells % 1) * 8)] if cells < BAR_WIDTH else "")
        shape = f" |{drawn.ljust(BAR_WIDTH)}|" if bar else ""
        eta = f"  ETA {format_duration((self.total - self.count) / rate)}" if rate > 0 and fraction < 1 else ""
        return f"{self.label}  {percent}%{shape} {self.count:,}/{self.total:,} {self.unit}{speed}{eta}"

    def _draw(self, line: str) -> None:
        """Replaces the terminal line with ``line``, its label shortened to fit the terminal's width."""
        width = shutil.get_terminal_size().columns - 1
        if len(line) > width and line.startswith(self.label):
            rest = line[len(self.label) :]
            line = self.label[: max(width - len(rest) - 1, 0)] + "…" + rest
        line = line[:width]
        self._stream.write("\r" + line.ljust(self._drawn) + ("\r" if not line else ""))
        self._stream.flush()
        self._drawn = len(line)
