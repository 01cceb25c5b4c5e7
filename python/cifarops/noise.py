"""The noise tape: every random draw of the functional API goes through :func:`drawn`, so that a checkpointed
block can record the draws of its forward pass and hand the same tensors back when backward recomputes it.

Recomputing a stochastic layer must not draw again: restoring the generator's state (what
torch.utils.checkpoint does) reproduces the draws only when nothing else moved the generator, and it still
draws inside backward. With a tape the recomputation receives the very tensors of the forward pass, in order.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch

# Fast path without a thread-local read: torch.compile traces a module global and guards on it, and the
# usual case (no checkpointed block running) costs one comparison.
_active_tapes = 0
_count_lock = threading.Lock()
_local = threading.local()


class Tape:
    """The draws of one forward pass of one block, in the order they were made."""

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []
        self.position = 0  # next draw to hand back during a replay
        self.replaying = False

    def next_draw(self) -> torch.Tensor:
        if self.position >= len(self.draws):
            raise RuntimeError(
                "cifarops: a checkpointed block drew more noise while it was recomputed than in its forward pass; "
                "its control flow must not change between the two (was the module's training flag changed?)"
            )
        value = self.draws[self.position]
        self.position += 1
        return value


def _stack() -> list[Tape]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def drawn(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, or, inside a replay, the recorded draw; recorded on every tape recording above it.

    Tapes nest like checkpointed blocks do: when an outer block is recomputed, the inner blocks run their
    forward again, so they record what the outer tape replays rather than drawing anew.
    """
    if _active_tapes == 0:
        return make()
    stack = _stack()
    source = next((i for i in range(len(stack) - 1, -1, -1) if stack[i].replaying), None)
    value = make() if source is None else stack[source].next_draw()
    for tape in stack[(0 if source is None else source + 1):]:
        tape.draws.append(value)
    return value


def rng_state(device: torch.device, streams: int):
    """The RNG state {seed, offset} an op of ``streams`` streams passes explicitly, or None (the usual case:
    the op takes it from the generator itself, inside the kernel). Inside a checkpointed block the state is
    drawn here, exactly as the op would draw it, and recorded, so that the recomputation replays it."""
    if _active_tapes == 0:
        return None
    from cifarops.philox import draw_state

    return drawn(lambda: draw_state(device, streams))


@contextlib.contextmanager
def _on(tape: Tape, replaying: bool) -> Iterator[Tape]:
    global _active_tapes
    tape.replaying, tape.position = replaying, 0
    stack = _stack()
    stack.append(tape)
    with _count_lock:
        _active_tapes += 1
    try:
        yield tape
    finally:
        with _count_lock:
            _active_tapes -= 1
        stack.pop()


def record(tape: Tape) -> contextlib.AbstractContextManager:
    """Draws made inside the block are appended to ``tape``."""
    return _on(tape, replaying=False)


def replay(tape: Tape) -> contextlib.AbstractContextManager:
    """Draws made inside the block return ``tape``'s recorded tensors, from the first, drawing nothing."""
    return _on(tape, replaying=True)
