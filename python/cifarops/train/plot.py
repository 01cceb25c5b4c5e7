"""``python -m cifarops.train.plot RUN [RUN ...] [--out FILE]``: the loss, accuracy and learning-rate curves of
one or more training runs (their ``log.json``, written by ``python -m cifarops.train`` after every epoch) in one
picture, a colour per run: ShakeDrop against none, checkpointing against none, side by side.

Each RUN is a run's output folder or its log.json. Every run is read and checked before anything is drawn; bad
input (a missing or unreadable path, a log.json from another tool or with an epoch or final record that lacks
its numbers, a run without a finished epoch, an --out that cannot be written) is one line naming the path, exit
status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from typing import NamedTuple, Optional, Sequence

from cifarops.train.engine import LOG_FILE

FORMATS = (".png", ".svg", ".pdf")
# what every epoch record of a cifarops.train log holds (engine.fit), and what the curves use
EPOCH_KEYS = ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


class PlotError(ValueError):
    """Bad input to the plot command: reported as one line, nothing written."""


class Run(NamedTuple):
    label: str
    log: dict


def read_run(path: str) -> Run:
    """The log of the run at ``path`` (its folder or its log.json), checked to be a cifarops.train log."""
    if not os.path.exists(path):
        raise PlotError(f"{path!r}: no such run folder or log file")
    file = os.path.join(path, LOG_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise PlotError(f"{path!r} holds no {LOG_FILE} (not a cifarops.train output folder)")
    try:
        with open(file) as f:
            log = json.load(f)
    except OSError as error:
        raise PlotError(f"{file!r} cannot be read ({error.strerror or error})") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlotError(f"{file!r} is not JSON ({error})") from error
    if not isinstance(log, dict) or "cifarops" not in log or not isinstance(log.get("epochs"), list):
        raise PlotError(f"{file!r} is not a log of python -m cifarops.train (no 'cifarops' version and 'epochs' list)")
    for record in log["epochs"]:
        bad = [k for k in EPOCH_KEYS if not isinstance(record, dict) or not _number(record.get(k))]
        if bad:
            raise PlotError(f"{file!r}: an epoch record lacks numeric {bad} (not a log of python -m cifarops.train)")
    if not log["epochs"]:
        raise PlotError(f"{file!r}: the run has not finished an epoch yet")
    final = log.get("final")  # written when the run ends: absent while it is still training
    if final is not None and not (isinstance(final, dict) and _number(final.get("test_accuracy"))
                                  and _number(final.get("fmp_draws")) and isinstance(final["fmp_draws"], int)):
        raise PlotError(f"{file!r}: its 'final' record lacks a numeric 'test_accuracy' or an integer 'fmp_draws' "
                        "(not a log of python -m cifarops.train)")
    folder = os.path.dirname(os.path.abspath(file))
    return Run(os.path.basename(folder) or folder, log)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _labels(paths: Sequence[str], runs: list[Run]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [run.label for run in runs]
    return [name if names.count(name) == 1 else os.path.normpath(path) for name, path in zip(names, paths)]


def figure(runs: list[Run], labels: list[str], title: Optional[str] = None):
    """Three panels (loss, accuracy in %, learning rate) against the epoch: training solid, test dashed, a
    colour per run, the final (FMP-averaged) test accuracy in the legend. A matplotlib Figure (no pyplot: no
    display, no global state)."""
    from matplotlib.figure import Figure

    picture = Figure(figsize=(15, 4.4), layout="constrained")
    loss, accuracy, rate = picture.subplots(1, 3)
    for i, (run, label) in enumerate(zip(runs, labels)):
        colour = f"C{i % 10}"
        epochs = [e["epoch"] for e in run.log["epochs"]]
        final = run.log.get("final")
        if final is not None:
            draws = final["fmp_draws"]
            label += f" (final {100 * final['test_accuracy']:.2f} %{f', {draws} FMP draws' if draws > 1 else ''})"
        for axes, key, scale in ((loss, "loss", 1), (accuracy, "accuracy", 100)):
            axes.plot(epochs, [scale * e[f"train_{key}"] for e in run.log["epochs"]], color=colour, label=label)
            axes.plot(epochs, [scale * e[f"test_{key}"] for e in run.log["epochs"]], color=colour, linestyle="--")
        # runs often share a schedule: each later line is thinner, so the ones it covers still show
        rate.plot(epochs, [e["lr"] for e in run.log["epochs"]], color=colour, label=label,
                  linewidth=1.5 + 2.5 * (len(runs) - 1 - i) / max(len(runs) - 1, 1))
    loss.set(title="loss (solid: training, dashed: test)", xlabel="epoch", ylabel="cross-entropy")
    accuracy.set(title="accuracy (solid: training, dashed: test)", xlabel="epoch", ylabel="%")
    rate.set(title="learning rate (at the epoch's start)", xlabel="epoch", ylabel="learning rate")
    for axes in (loss, accuracy, rate):
        axes.grid(alpha=0.3)
    accuracy.legend(fontsize="small", loc="lower right")
    if title:
        picture.suptitle(title)
    return picture


def save(picture, out: str) -> None:
    """Writes the picture through a temporary file in ``out``'s folder: never half a picture at ``out``. A
    failure to write is a :class:`PlotError` naming ``--out``."""
    folder, name = os.path.split(os.path.abspath(out))
    # the temporary file keeps the extension: savefig picks the format from it
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=os.path.splitext(out)[1])
        os.close(handle)
        picture.savefig(temporary, dpi=110)
        umask = os.umask(0)  # mkstemp's file is private (0600): the picture gets the mode a plain open gives
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, out)
    except OSError as error:
        raise PlotError(f"--out {out!r} cannot be written ({error.strerror or error})") from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cifarops.train.plot",
        description="The loss, accuracy and learning-rate curves of training runs, side by side in one picture.")
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="a run's output folder (the training's --out) or its log.json")
    parser.add_argument("--out", default="training.png",
                        help=f"the picture ({', '.join(FORMATS)}; default training.png)")
    parser.add_argument("--title", default=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Draws the runs of ``argv``; returns the picture's path. Raises :class:`PlotError` for bad input, before
    anything is written."""
    args = build_parser().parse_args(argv)
    if not args.runs:
        raise PlotError("give at least one RUN (a folder written by python -m cifarops.train, or its log.json)")
    if os.path.splitext(args.out)[1].lower() not in FORMATS:
        raise PlotError(f"--out {args.out!r}: the picture's name must end in one of {', '.join(FORMATS)}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise PlotError(f"--out {args.out!r}: the folder {folder!r} does not exist")
    runs = [read_run(path) for path in args.runs]
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotError("the plot needs matplotlib: pip install matplotlib (or cifarops[train])")
    save(figure(runs, _labels(args.runs, runs), args.title), args.out)
    return args.out


def console(argv: Optional[Sequence[str]] = None) -> int:
    try:
        out = main(argv)
    except PlotError as error:
        print(f"python -m cifarops.train.plot: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(console())
