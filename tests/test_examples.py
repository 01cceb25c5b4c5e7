"""The examples run as the README shows them: a user copies these first, so they must not rot.

The training scripts are run with the paper's settings overridden (later options win) down to two tiny epochs
on a generated archive; the DDP and GPipe examples under torchrun with two CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_archive import batch_files, write_archive

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TINY = ["--epochs", "2", "--batch-size", "8", "--amp", "none", "--milestones", "1", "--eval-batch-size", "8"]


def run(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def torchrun(script):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)])


def test_swap_example_swaps_and_keeps_the_outputs():
    out = run([sys.executable, str(EXAMPLES / "swap_existing_model.py")])
    assert "same outputs after the swap: True" in out
    assert "features.2: torch.nn.FractionalMaxPool2d -> cifarops.FractionalMaxPool2d" in out


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return write_archive(root, "cifar10", batch_files("cifar10", n_train=20, n_test=8), as_tar=True)


@pytest.mark.parametrize("script, shrink", [
    ("train_pyramidnet_shakedrop.sh", ["--model-arg", "depth=11", "--model-arg", "alpha=8"]),
    ("train_fmp.sh", ["--model-arg", "filters=4", "--fmp-draws", "2",
                      "--warmup-epochs", "0"]),
])
def test_training_script_runs_two_tiny_epochs(archive, tmp_path, script, shrink):
    out = tmp_path / "run"
    run(["bash", str(EXAMPLES / script), archive, str(out), *TINY, *shrink])
    log = json.loads((out / "log.json").read_text())
    assert log["status"] == "finished" and len(log["epochs"]) == 2
    assert (out / "checkpoint.pt").stat().st_size > 0


def test_ddp_training_script_runs_on_two_cpu_processes(archive, tmp_path):
    out = tmp_path / "ddp"
    run(["bash", str(EXAMPLES / "train_ddp.sh"), "2", archive, str(out), *TINY,
         "--model-arg", "depth=11", "--model-arg", "alpha=8"])
    log = json.loads((out / "log.json").read_text())
    assert log["status"] == "finished" and log["world_size"] == 2


def test_ddp_example_trains():
    out = torchrun(EXAMPLES / "ddp_pyramidnet.py")
    assert "loss" in out


def test_pipeline_example_trains():
    out = torchrun(EXAMPLES / "pipeline_gpipe.py")
    assert out.count("micro-batches") == 3  # one line per step, from the last stage


def test_digits_archive_holds_scikit_learns_digits_with_their_labels(tmp_path):
    pytest.importorskip("sklearn")
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from cifarops.train.data import load_cifar

    run([sys.executable, str(EXAMPLES / "digits_archive.py"), str(tmp_path)])
    data = load_cifar(str(tmp_path / "cifar-10-python.tar.gz"), "cifar10")  # the training script's own reader
    digits = load_digits()
    assert (len(data.train_images), len(data.test_images)) == (1500, 297)
    assert data.class_names == [str(d) for d in range(10)]
    images = torch.cat([data.train_images, data.test_images]).float()
    labels = torch.cat([data.train_labels, data.test_labels])
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])  # grey
    assert torch.equal(torch.bincount(labels, minlength=10), torch.from_numpy(digits.target).bincount())
    # each image is its source digit enlarged: shrunk back (4x4 means), it is nearest to one digit of its label
    shrunk = F.avg_pool2d(images[:, :1], 4).flatten(1)
    originals = torch.from_numpy(digits.images).float().flatten(1) * (255 / 16)
    nearest = torch.cdist(shrunk, originals).argmin(1)
    assert torch.equal(torch.from_numpy(digits.target)[nearest], labels)
    assert len(set(nearest.tolist())) > 0.98 * len(digits.images)  # every digit used once (up to duplicates)


def test_digits_archive_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    import importlib.util
    import pickle

    spec = importlib.util.spec_from_file_location("digits_archive", EXAMPLES / "digits_archive.py")
    digits_archive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits_archive)
    written, real = [], pickle.dumps

    def dumps(payload, protocol):  # the third batch cannot be written (a full disk, say)
        written.append(payload)
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        return real(payload, protocol=protocol)

    monkeypatch.setattr(digits_archive.pickle, "dumps", dumps)
    with pytest.raises(OSError, match="No space left"):
        digits_archive.write(str(tmp_path / "out"))
    assert len(written) == 3  # two batches were in the temporary archive
    assert os.listdir(tmp_path / "out") == []  # neither the archive nor its temporary file


def test_digits_training_script_trains_both_runs_and_plots_them(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "digits"
    run(["bash", str(EXAMPLES / "train_digits.sh"), str(out), "--epochs", "1", "--warmup-epochs", "0",
         "--model-arg", "depth=8", "--model-arg", "alpha=4", "--batch-size", "250", "--eval-batch-size", "300"])
    for name in ("shakedrop", "no-shakedrop"):
        log = json.loads((out / name / "log.json").read_text())
        assert log["status"] == "finished" and log["train_images"] == 1500
        assert log["model_args"]["overrides"].get("p_drop_last") == (0 if name == "no-shakedrop" else None)
    assert (out / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
