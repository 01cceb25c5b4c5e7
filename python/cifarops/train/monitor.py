"""What a user watches during training: the progress (a tqdm bar per epoch on a terminal, one line per epoch
everywhere) and, with ``--tensorboard``, the epoch's scalars through torch.utils.tensorboard.

The bar's metrics are sums kept on the device; reading them is a host sync, so the bar refreshes them only
every ``interval_s`` (the step count and the ETA, which cost nothing, at every step).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Callable, Optional, TextIO

from cifarops import progress

TENSORBOARD_DIR = "tensorboard"
# per-epoch history key -> TensorBoard tag
SCALARS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_accuracy": "accuracy/train",
           "test_accuracy": "accuracy/test", "lr": "learning_rate", "images_per_s": "images_per_s",
           "peak_memory_mb": "peak_memory_mb"}


def metrics_text(loss: float, accuracy: float, images_per_s: float) -> str:
    return f"loss {loss:.4f} acc {100 * accuracy:6.2f}% {images_per_s:8.1f} img/s"


class Progress:
    """Where the training's progress goes: on a terminal a bar per epoch (steps, loss, accuracy, images/s,
    ETA) above which each epoch's line stays; elsewhere (logs, CI) just the epoch lines."""

    def __init__(self, stream: Optional[TextIO] = None, interval_s: float = 0.5):
        self.stream = stream or sys.stdout
        self.interval_s = interval_s

    def epoch(self, steps: int, header: str) -> "EpochBar":
        return EpochBar(progress.Bar(steps, header, self.stream, unit="step", mininterval=self.interval_s),
                        self.interval_s)

    def line(self, text: str) -> None:
        progress.write(text, self.stream)


class EpochBar:
    def __init__(self, bar: progress.Bar, interval_s: float):
        self.bar, self.interval_s, self._last = bar, interval_s, float("-inf")

    def step(self, metrics: Callable[[], str]) -> None:
        """One step done; ``metrics`` (which syncs) is called only when a refresh of the numbers is due."""
        if not self.bar.shown:
            return
        postfix = None
        if time.perf_counter() - self._last >= self.interval_s:
            self._last = time.perf_counter()
            postfix = metrics()
        self.bar.update(1, postfix)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "EpochBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_tensorboard() -> None:
    """Raises ModuleNotFoundError naming the package when torch.utils.tensorboard cannot write (the package is
    missing, or torch's module fails to import it: a broken or too old install)."""
    message = "--tensorboard needs the tensorboard package: pip install tensorboard (or cifarops[train])"
    if importlib.util.find_spec("tensorboard") is None:
        raise ModuleNotFoundError(message, name="tensorboard")
    try:
        import torch.utils.tensorboard  # noqa: F401  (imports tensorboard's writer)
    except Exception as error:  # ImportError, or a broken install's own (protobuf's TypeError, say)
        raise ModuleNotFoundError(f"{message} ({error})", name="tensorboard") from error


class TensorBoard:
    """The per-epoch scalars of :data:`SCALARS` under ``out_dir/tensorboard`` (``tensorboard --logdir
    runs``), step = epoch. A resumed run drops the events past its checkpoint's epoch (purge_step), so an
    interrupted epoch's scalars are not shown twice."""

    def __init__(self, out_dir: str, first_epoch: int):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(out_dir, TENSORBOARD_DIR), purge_step=first_epoch + 1)

    def epoch(self, record: dict) -> None:
        for key, tag in SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
