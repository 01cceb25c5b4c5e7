"""python -m cifarops.train.plot: the curves drawn are the logs' numbers (read back from the figure's lines),
runs side by side, the picture written; bad input (no runs, a missing or unreadable run, another tool's
log.json, a run without an epoch, a bad --out) is one line naming the path, exit status 2, nothing written."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from cifarops.train import main as train
from cifarops.train.monitor import Progress
from cifarops.train.plot import PlotError, figure, main, read_run

from cifar_archive import batch_files, write_archive

TINY = ["--model", "pyramidnet110-a270-shakedrop", "--model-arg", "depth=8", "--model-arg", "alpha=8",
        "--batch-size", "5", "--device", "cpu", "--epochs", "3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real 3-epoch runs, ShakeDrop and none: their folders."""
    root = tmp_path_factory.mktemp("runs")
    archive = write_archive(root, "cifar10", batch_files("cifar10", n_train=15, n_test=4), as_tar=True)
    folders = [str(root / "shakedrop"), str(root / "plain")]
    train(["--data", archive, *TINY, "--out", folders[0]], progress=Progress(io.StringIO()))
    train(["--data", archive, *TINY, "--model-arg", "p_drop_last=0", "--out", folders[1]],
          progress=Progress(io.StringIO()))
    return folders


def test_the_curves_are_the_logs_numbers(runs):
    logs = [json.load(open(os.path.join(run, "log.json"))) for run in runs]
    picture = figure([read_run(run) for run in runs], ["shakedrop", "plain"], title="t")
    loss, accuracy, rate = picture.axes
    for i, log in enumerate(logs):
        epochs = [1, 2, 3]
        train_loss, test_loss = loss.lines[2 * i], loss.lines[2 * i + 1]
        assert list(train_loss.get_xdata()) == epochs
        assert list(train_loss.get_ydata()) == [e["train_loss"] for e in log["epochs"]]
        assert list(test_loss.get_ydata()) == [e["test_loss"] for e in log["epochs"]]
        assert list(accuracy.lines[2 * i].get_ydata()) == [100 * e["train_accuracy"] for e in log["epochs"]]
        assert list(accuracy.lines[2 * i + 1].get_ydata()) == [100 * e["test_accuracy"] for e in log["epochs"]]
        assert list(rate.lines[i].get_ydata()) == [e["lr"] for e in log["epochs"]]
        assert train_loss.get_color() == rate.lines[i].get_color() and test_loss.get_linestyle() == "--"
    # equal schedules overlap: the first run's line is the wider, so both show
    assert rate.lines[0].get_linewidth() > rate.lines[1].get_linewidth()
    legend = [text.get_text() for text in accuracy.get_legend().get_texts()]
    assert legend == [f"{name} (final {100 * log['final']['test_accuracy']:.2f} %)"
                      for name, log in zip(["shakedrop", "plain"], logs)]


def test_the_command_writes_one_picture_of_all_runs(runs, tmp_path):
    out = tmp_path / "compare.png"
    assert main([*runs, os.path.join(runs[0], "log.json"), "--out", str(out)]) == str(out)
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
    assert (width, height) == (1650, 484)  # 15 x 4.4 inches at 110 dpi
    assert sorted(os.listdir(tmp_path)) == ["compare.png"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open makes it, not the temporary's 0600


def _foreign(tmp_path, runs):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "log.json").write_text(json.dumps({"loss": [2.3, 1.9], "acc": [0.1, 0.4]}))
    return [str(tmp_path / "other")], r"other/log.json' is not a log of python -m cifarops.train"


def _not_json(tmp_path, runs):
    (tmp_path / "log.json").write_text("{truncated")
    return [runs[0], str(tmp_path / "log.json")], r"log.json' is not JSON"


def _no_epoch(tmp_path, runs):
    log = json.load(open(os.path.join(runs[0], "log.json")))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "log.json").write_text(json.dumps({**log, "epochs": []}))
    return [str(tmp_path / "new")], r"new/log.json': the run has not finished an epoch yet"


def _epoch_without_loss(tmp_path, runs):
    log = json.load(open(os.path.join(runs[0], "log.json")))
    log["epochs"][1].pop("test_loss")
    (tmp_path / "edited.json").write_text(json.dumps(log))
    return [str(tmp_path / "edited.json")], r"edited.json': an epoch record lacks numeric \['test_loss'\]"


def _bad_final(tmp_path, runs):
    log = json.load(open(os.path.join(runs[0], "log.json")))
    log["final"] = {"test_accuracy": "97 %"}
    (tmp_path / "final.json").write_text(json.dumps(log))
    return [str(tmp_path / "final.json")], r"final.json': its 'final' record lacks a numeric 'test_accuracy'"


BAD = {
    "no runs": (lambda t, r: ([], "give at least one RUN")),
    "missing run": (lambda t, r: ([str(t / "gone")], r"gone': no such run folder or log file")),
    "folder without a log": (lambda t, r: ([str(t)], r"holds no log.json \(not a cifarops.train output folder\)")),
    "another tool's log.json": (_foreign),
    "not JSON": (_not_json),
    "no finished epoch": (_no_epoch),
    "an epoch record without a number": (_epoch_without_loss),
    "a final record without a number": (_bad_final),
    "--out of another format": (lambda t, r: ([*r, "--out", str(t / "p.jpg")], r"--out .*p.jpg': .* end in one of")),
    "--out in a missing folder": (lambda t, r: ([*r, "--out", str(t / "no" / "p.png")],
                                                r"the folder .*no' does not exist")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_path_and_writes_nothing(case, runs, tmp_path):
    argv, message = BAD[case](tmp_path, runs)
    out = tmp_path / "out.png"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(PlotError, match=message):
        main(argv if "--out" in argv else [*argv, "--out", str(out)])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_unreadable_log_names_the_file(runs, tmp_path, monkeypatch):
    # root reads every file whatever its mode: the refusal is the operating system's, simulated
    import builtins

    real, file = builtins.open, os.path.join(runs[1], "log.json")
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")) if str(path) == file else real(path, *a, **k))
    with pytest.raises(PlotError, match=f"{file!r} cannot be read \\(Permission denied\\)"):
        main([runs[0], runs[1], "--out", str(tmp_path / "out.png")])
    assert os.listdir(tmp_path) == []


def test_a_picture_that_cannot_be_written_names_out(runs, tmp_path, monkeypatch):
    def refuse(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    out = tmp_path / "out.png"
    with pytest.raises(PlotError, match=re.escape(f"--out {str(out)!r} cannot be written (Permission denied)")):
        main([runs[0], "--out", str(out)])
    assert os.listdir(tmp_path) == []  # the temporary picture is gone too


def test_a_run_still_training_is_drawn_without_a_final(runs, tmp_path):
    log = json.load(open(os.path.join(runs[0], "log.json")))
    del log["final"]
    (tmp_path / "log.json").write_text(json.dumps(log))
    picture = figure([read_run(str(tmp_path))], ["running"])
    assert [text.get_text() for text in picture.axes[1].get_legend().get_texts()] == ["running"]


def test_the_command_line_says_it_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cifarops.train.plot", str(tmp_path / "gone")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"python -m cifarops.train.plot: error: {str(tmp_path / 'gone')!r}: no such run folder or log file"]
    assert os.listdir(tmp_path) == []
