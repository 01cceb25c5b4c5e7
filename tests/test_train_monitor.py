"""What the training shows and records besides log.json: the progress (tqdm's bar on a terminal, only the
epoch lines elsewhere or without tqdm), the TensorBoard scalars (read back with TensorBoard's own reader and
compared with log.json's numbers, a resumed run's without duplicates) and the per-epoch peak memory; a
missing tensorboard package is an error naming it, before anything is written."""

from __future__ import annotations

import importlib.util
import io
import mmap
import os
import shutil

import pytest
import torch

from cifarops import peak_memory, progress
from cifarops.train import main
from cifarops.train.monitor import SCALARS, TENSORBOARD_DIR, Progress

from cifar_archive import batch_files, write_archive

TINY = ["--model", "pyramidnet110-a270-shakedrop", "--model-arg", "depth=8", "--model-arg", "alpha=8",
        "--batch-size", "5", "--device", "cpu"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("cifar"), "cifar10", batch_files("cifar10", n_train=15, n_test=4),
                         as_tar=True)


def _epoch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("epoch")]


@pytest.mark.skipif(progress._tqdm is None, reason="tqdm is not installed (the bars need it)")
def test_a_terminal_gets_a_bar_per_epoch_and_a_log_only_the_lines(archive, tmp_path):
    terminal, plain = Progress(Terminal(), interval_s=0), Progress(io.StringIO(), interval_s=0)
    for name, shown in (("terminal", terminal), ("plain", plain)):
        main(["--data", archive, *TINY, "--epochs", "2", "--out", str(tmp_path / name)], progress=shown)
    bars = terminal.stream.getvalue()
    # tqdm's bar: the epoch, the fraction of its 3 steps, the ETA and the metrics (refreshed at every step here)
    for step in (1, 2, 3):
        assert f"| {step}/3 [" in bars
    assert "epoch 2/2:  33%" in bars and "step/s, loss" in bars and " img/s]" in bars
    text = plain.stream.getvalue()
    assert "\r" not in text and "%|" not in text
    assert [line.split(" loss")[0] for line in _epoch_lines(text)] == ["epoch 1/2", "epoch 2/2"]
    assert text.splitlines()[-1].startswith("final test accuracy")


def test_without_tqdm_a_terminal_gets_the_plain_lines(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", None)
    shown = Progress(Terminal(), interval_s=0)
    main(["--data", archive, *TINY, "--epochs", "1", "--out", str(tmp_path / "run")], progress=shown)
    text = shown.stream.getvalue()
    assert "\r" not in text and len(_epoch_lines(text)) == 1


CPU = torch.device("cpu")
# Linux lets a process clear its own high-water mark; a kernel without /proc/self/clear_refs does not
RESETS = peak_memory.reset(CPU)


@pytest.mark.skipif(not RESETS, reason="this kernel refuses to reset the resident peak (/proc/self/clear_refs)")
def test_the_peak_follows_an_allocation_and_starts_afresh_at_a_reset():
    mb = 2**20
    assert peak_memory.reset(CPU)
    before = peak_memory.peak_bytes(CPU)
    block = mmap.mmap(-1, 256 * mb)  # a mapping of its own (no allocator keeps it after close)
    block.write(b"\1" * (256 * mb))  # written: resident
    assert peak_memory.peak_bytes(CPU) - before > 250 * mb
    high = peak_memory.peak_bytes(CPU)
    block.close()  # unmapped; the peak remembers it
    # (Linux's resident counters are per-thread caches, exact to a few pages only)
    assert peak_memory.peak_bytes(CPU) > high - 4 * mb and peak_memory.resident_bytes() < high - 250 * mb
    assert peak_memory.reset(CPU) and peak_memory.peak_bytes(CPU) < high - 250 * mb


def test_every_epoch_records_its_peak_memory(archive, tmp_path, monkeypatch):
    log = main(["--data", archive, *TINY, "--epochs", "2", "--out", str(tmp_path / "run")],
               progress=Progress(io.StringIO()))
    # the CPU's figure is the process's resident peak: at least the model and this interpreter (none where the
    # kernel refuses the reset)
    assert all((10 < epoch["peak_memory_mb"] < 1e5) if RESETS else epoch["peak_memory_mb"] is None
               for epoch in log["epochs"]), log["epochs"]
    # where the system refuses the reset the peak would be the process's since its start: none is recorded
    monkeypatch.setattr(peak_memory, "reset", lambda device: False)
    log = main(["--data", archive, *TINY, "--epochs", "1", "--out", str(tmp_path / "refused")],
               progress=Progress(io.StringIO()))
    assert log["epochs"][0]["peak_memory_mb"] is None and log["epochs"][0]["train_loss"] > 0


def _scalars(run_dir: str) -> dict:
    """TensorBoard's own reading of a run's event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    board = EventMultiplexer().AddRunsFromDirectory(os.path.join(run_dir, TENSORBOARD_DIR))
    board.Reload()
    (run,) = board.Runs()
    return {tag: [(e.step, e.value) for e in board.Scalars(run, tag)] for tag in board.Runs()[run]["scalars"]}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_holds_the_logs_numbers_and_a_resume_adds_no_duplicates(archive, tmp_path):
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    argv = ["--data", archive, *TINY, "--epochs", "3", "--tensorboard"]
    log = main(argv + ["--out", whole], progress=Progress(io.StringIO()))
    scalars = _scalars(whole)
    written = {key: tag for key, tag in SCALARS.items() if RESETS or key != "peak_memory_mb"}  # no None scalars
    assert set(scalars) == set(written.values())
    for key, tag in written.items():
        assert [step for step, _ in scalars[tag]] == [1, 2, 3]
        assert [value for _, value in scalars[tag]] == pytest.approx([e[key] for e in log["epochs"]], rel=1e-6)
    # a run stopped after epoch 2 goes on, its epoch 3 is interrupted (here: done, then redone from the epoch-2
    # checkpoint): the redone epoch replaces the first one's events instead of adding to them
    quiet = Progress(io.StringIO())
    main(argv + ["--out", split, "--stop-after", "2"], progress=quiet)
    shutil.copy(os.path.join(split, "checkpoint.pt"), tmp_path / "epoch2.pt")
    main(["--resume", os.path.join(split, "checkpoint.pt")], progress=quiet)
    resumed = main(["--resume", str(tmp_path / "epoch2.pt"), "--out", split], progress=quiet)
    again = _scalars(split)
    for key, tag in written.items():
        assert [step for step, _ in again[tag]] == [1, 2, 3], tag
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in log["epochs"]]
    assert [v for _, v in again["loss/train"]] == pytest.approx([e["train_loss"] for e in log["epochs"]], rel=1e-6)


def test_tensorboard_missing_is_an_error_naming_the_package(archive, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        main(["--data", archive, *TINY, "--epochs", "1", "--tensorboard", "--out", str(out)],
             progress=Progress(io.StringIO()))
    assert not out.exists()


def test_tensorboard_that_torch_cannot_import_is_the_same_error(monkeypatch):
    import sys

    from cifarops.train.monitor import check_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now raises ImportError
    real = importlib.util.find_spec  # the package itself is found, installed or not
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboard" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"--tensorboard needs the tensorboard package: pip install .*"
                                                  r"\(import of torch.utils.tensorboard halted"):
        check_tensorboard()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_a_resume_can_turn_tensorboard_off(archive, tmp_path, monkeypatch):
    run, quiet = str(tmp_path / "run"), Progress(io.StringIO())
    main(["--data", archive, *TINY, "--epochs", "2", "--tensorboard", "--stop-after", "1", "--out", run],
         progress=quiet)
    with monkeypatch.context() as gone:  # the package uninstalled since: the error says how to go on without it
        real = importlib.util.find_spec
        gone.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
        with pytest.raises(ValueError, match=r"pip install tensorboard .*\(or resume with --no-tensorboard\)"):
            main(["--resume", os.path.join(run, "checkpoint.pt")], progress=quiet)
    main(["--resume", os.path.join(run, "checkpoint.pt"), "--no-tensorboard"], progress=quiet)
    assert [step for step, _ in _scalars(run)["loss/train"]] == [1]  # the resumed epoch 2 wrote no event
