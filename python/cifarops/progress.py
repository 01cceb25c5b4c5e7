"""Progress bars for the long jobs (training epochs, the benchmark report): tqdm on a terminal, nothing but the
jobs' own plain lines elsewhere (logs, CI) or where tqdm is not installed (it is optional: ``pip install tqdm``,
or ``cifarops[train]``; the GPU machines run without it).

Lines written while a bar is shown go through :func:`write`, which prints them above the bar instead of
through it.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # optional: without it, the plain lines only
    _tqdm = None


def shows_bars(stream: TextIO) -> bool:
    """Whether bars go to ``stream``: a terminal, and tqdm installed."""
    return _tqdm is not None and stream.isatty()


class Bar:
    """A tqdm bar on a terminal; a bar that shows nothing elsewhere (same methods, no cost)."""

    def __init__(self, total: int, desc: str, stream: Optional[TextIO] = None, unit: str = "it",
                 leave: bool = False, mininterval: float = 0.1):
        stream = stream or sys.stdout
        self._bar = None
        if shows_bars(stream):  # dynamic_ncols: follows the terminal's width
            self._bar = _tqdm(total=total, desc=desc, file=stream, unit=unit, leave=leave, dynamic_ncols=True,
                              mininterval=mininterval)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1, postfix: Optional[str] = None) -> None:
        """Advances by ``n``; a new ``postfix`` (the numbers after the bar) is drawn at once, the count at
        most every ``mininterval`` seconds."""
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            if not self._bar.update(n) and postfix is not None:  # update draws only when its interval is up
                self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write(text: str, stream: Optional[TextIO] = None) -> None:
    """Prints a line (above any bar on that stream)."""
    stream = stream or sys.stdout
    if shows_bars(stream):
        _tqdm.write(text, file=stream)
    else:
        stream.write(text + "\n")
    stream.flush()
