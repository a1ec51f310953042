"""What the command shows while it works: a progress display (curves: :func:`plot.text_plot`).

Contract:
  * :class:`Display` ``(stream, *, quiet=False, tty=None)``: ``phase(text)`` says what the command
    is doing (loading, compiling); ``steps(epoch, done, steps, loss)`` reports progress within an
    epoch; ``epoch(line)`` ends one with its dense line. On a terminal (``stream.isatty()``, or
    ``tty``) the status line is redrawn in place (``"\\r"`` and erase-to-end) with the epoch, a
    bar, steps/s, the latest loss and an ETA, at least once a second while it is open (a timer
    thread redraws the clock while a compiled chunk runs), and each epoch's line stays. Not on a
    terminal: plain lines, one per phase and per epoch, nothing in place. ``quiet``: nothing.
    ``close()`` stops the timer and clears the status line; a display is a context manager.
  * Nothing here touches JAX; the command imports it, the library never does.
"""
from __future__ import annotations

import shutil
import threading
import time

__all__ = ["Display", "terminal_width"]

REDRAW_S = 0.5  # the timer's period: the status line is never older than a second


def terminal_width(default: int = 80) -> int:
    return shutil.get_terminal_size((default, 24)).columns


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Display:
    """The command's progress display (see the module's contract)."""

    def __init__(self, stream, *, quiet: bool = False, tty: bool | None = None, epochs: int | None = None):
        self.stream, self.quiet, self.epochs = stream, quiet, epochs
        if tty is None:
            try:
                tty = bool(stream.isatty())
            except (AttributeError, ValueError, OSError):
                tty = False
        self.tty = tty and not quiet
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._status = None   # what the status line shows: (text, since) or a progress tuple
        self._first = None    # (time, total steps done) at the first progress report: the rate's origin
        self._timer = None

    # ------------------------------------------------------------- events
    def phase(self, text: str) -> None:
        """What the command does now (``loading ...``, ``compiling ...``)."""
        if self.quiet:
            return
        if not self.tty:
            return self._write(text + "\n")
        with self._lock:
            self._status = ("phase", text, time.monotonic())
        self._redraw()
        self._start_timer()

    def steps(self, epoch: int, done: int, steps: int, loss: float) -> None:
        """Progress within an epoch: ``done`` of its ``steps`` steps, the latest loss."""
        if not self.tty:
            return
        now, total = time.monotonic(), (epoch - 1) * steps + done
        with self._lock:
            if self._first is None or total <= self._first[1]:
                self._first = (now, total)
            self._status = ("steps", epoch, done, steps, loss, now, total)
        self._redraw()

    def epoch(self, line: str) -> None:
        """An epoch's dense line, kept (on a terminal the status line is cleared first)."""
        if self.quiet:
            return
        with self._lock:
            text = ("\r\x1b[K" if self.tty else "") + line + "\n"
        self._write(text)
        self._redraw()

    def close(self) -> None:
        """Stop the timer and clear the status line; the display may be used again."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=2)
            self._timer = None
        self._stop = threading.Event()
        if self.tty:
            with self._lock:
                self._status = None
            self._write("\r\x1b[K")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------- drawing
    def status_line(self, now: float | None = None) -> str:
        """The status line as it would be drawn now (empty when there is none)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            status, first = self._status, self._first
        if status is None:
            return ""
        if status[0] == "phase":
            return f"{status[1]} {_clock(now - status[2])}"
        _, epoch, done, steps, loss, reported, total = status
        of = f"/{self.epochs}" if self.epochs else ""
        filled = round(20 * done / steps)
        parts = [f"epoch {epoch}{of}", "[" + "#" * filled + "." * (20 - filled) + "]", f"{done}/{steps}",
                 f"loss {loss:.4f}"]
        if first is not None and total > first[1] and reported > first[0]:
            rate = (total - first[1]) / (reported - first[0])  # as of the last report: no sag between reports
            parts.append(f"{rate:.0f} steps/s")
            if self.epochs:
                parts.append(f"ETA {_clock((self.epochs * steps - total) / rate - (now - reported))}")
        line = "  ".join(parts)
        if len(line) >= terminal_width():  # a narrow terminal: the bar goes first, the numbers stay
            line = "  ".join(parts[:1] + parts[2:])
        return line

    def _redraw(self) -> None:
        if self.tty:
            line = self.status_line()
            if line:
                self._write("\r\x1b[K" + line[:max(terminal_width() - 1, 10)])

    def _start_timer(self) -> None:
        if self._timer is None and self.tty:
            self._timer = threading.Thread(target=self._tick, name="jaxscratch-progress", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        while not self._stop.wait(REDRAW_S):
            self._redraw()

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()
