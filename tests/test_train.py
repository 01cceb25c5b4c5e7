"""The training script (python -m cifarops.train) end to end on tiny archives written here in the official
python format (CIFAR-10 and CIFAR-100 layouts, .tar.gz and extracted folder): the reader against the arrays
it was written from, the log's accuracies against an independent evaluation of the saved weights (with FMP
test-time averaging), resume bitwise equal to an uninterrupted run, the augmentation against hand-worked
answers, the loss falling on learnable data, and every bad input failing before the output directory is
touched."""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cifarops
from cifarops import progress
from cifarops.train import main
from cifarops.train.cli import console
from cifarops.train.data import augment, crop_at, cutout_at, flip_where, load_cifar, normalise
from cifarops.train.engine import MEASURED, Options, lr_factor
from cifarops.train.monitor import Progress

from cifar_archive import FOLDERS, batch_files, split_arrays, write_archive

# A PyramidNet with one basic block per stage: the zoo's code path at a few milliseconds a step.
TINY = ["--model", "pyramidnet110-a270-shakedrop", "--model-arg", "depth=8", "--model-arg", "alpha=8"]
QUIET = Progress(io.StringIO())


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    files = batch_files("cifar10")
    root = tmp_path_factory.mktemp("cifar10")
    return files, write_archive(root, "cifar10", files, as_tar=True)


@pytest.fixture(scope="module")
def uninterrupted(cifar10, tmp_path_factory):
    """A 2-epoch run of the tiny PyramidNet (2 steps an epoch): (argv, out dir, log)."""
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    argv = ["--data", cifar10[1], *TINY, "--epochs", "2", "--batch-size", "5", "--device", "cpu"]
    return argv, out, main(argv + ["--out", out], progress=QUIET)


def independent_accuracy(out: str, files: dict, dataset: str, model_name: str, overrides: dict, draws: int = 1):
    """Test accuracy and loss of the saved weights, computed here: normalisation from the training arrays,
    the mean of the softmax over ``draws`` forward passes from the checkpoint's RNG state."""
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    train, _ = split_arrays(dataset, files, "train")
    images, labels = split_arrays(dataset, files, "test")
    pixels = train.double() / 255
    mean, std = pixels.mean((0, 2, 3)).float().view(1, 3, 1, 1), pixels.std((0, 2, 3)).float().view(1, 3, 1, 1)
    model = cifarops.models.create(model_name, num_classes=10 if dataset == "cifar10" else 100, **overrides)
    model.load_state_dict(state["model"])
    model.eval()
    torch.set_rng_state(state["rng"]["torch"])  # the final evaluation draws its FMP regions from here
    with torch.no_grad():
        x = (images.float() / 255 - mean) / std
        probabilities = sum(torch.softmax(model(x), -1) for _ in range(draws)) / draws
    accuracy = (probabilities.argmax(1) == labels).double().mean().item()
    return accuracy, F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()


# --- the archive reader --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("as_tar", [True, False], ids=["tar.gz", "folder"])
def test_reader_returns_the_arrays_it_was_written_from(tmp_path, dataset, as_tar):
    files = batch_files(dataset, seed=3)
    # the folder is written with pickle's newest protocol, whose numpy arrays rebuild by another function
    path = write_archive(tmp_path, dataset, files, as_tar, protocol=2 if as_tar else pickle.HIGHEST_PROTOCOL)
    data = load_cifar(path, dataset)
    for split, (images, labels) in {"train": (data.train_images, data.train_labels),
                                    "test": (data.test_images, data.test_labels)}.items():
        want_images, want_labels = split_arrays(dataset, files, split)
        assert images.dtype == torch.uint8 and torch.equal(images, want_images)
        assert labels.dtype == torch.int64 and torch.equal(labels, want_labels)
    assert data.class_names == [f"c{i}" for i in range(data.num_classes)]
    assert data.num_classes == (10 if dataset == "cifar10" else 100)
    # the folder holding the extracted folder, and the extracted folder itself
    if not as_tar:
        assert torch.equal(load_cifar(os.path.join(path, FOLDERS[dataset]), dataset).test_images, data.test_images)


# --- the augmentation, by hand ------------------------------------------------------------------------------------

def test_crop_with_padding_shifts_the_content_and_fills_zeros():
    image = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    top, left = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    out = crop_at(image.expand(3, 1, 3, 3), 1, top, left)
    # window at (0, 0) of the padded image: the content moves down-right by one, zeros come in
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    assert torch.equal(out[1], image[0])  # at (padding, padding): unchanged
    assert out[2, 0].tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]
    out = crop_at(image, 1, torch.tensor([2]), torch.tensor([0]))  # up by one, right by one
    assert out[0, 0].tolist() == [[0, 4, 5], [0, 7, 8], [0, 0, 0]]


def test_flip_mirrors_only_the_chosen_images():
    images = torch.tensor([[1., 2., 3.], [4., 5., 6.]]).view(2, 1, 1, 3).expand(2, 2, 2, 3)
    out = flip_where(images, torch.tensor([True, False]))
    assert out[0, 1, 1].tolist() == [3., 2., 1.] and out[1, 0, 0].tolist() == [4., 5., 6.]


def test_cutout_zeroes_a_square_clipped_to_the_image():
    images = torch.ones(2, 2, 5, 5)
    out = cutout_at(images, 2, torch.tensor([2, 0]), torch.tensor([3, 0]))
    want = torch.ones(2, 2, 5, 5)
    want[0, :, 1:3, 2:4] = 0  # size 2 centred at (2, 3): rows 1-2, columns 2-3
    want[1, :, 0:1, 0:1] = 0  # centred at the corner: rows and columns -1..0, clipped to 0
    assert torch.equal(out, want)


def test_augment_normalises_and_picks_one_of_the_padded_crops():
    pixels = torch.tensor([255, 0], dtype=torch.uint8).view(1, 2, 1, 1)
    assert normalise(pixels, [0.5, 0.5], [0.25, 0.5]).flatten().tolist() == [2.0, -1.0]  # (1 - .5) / .25, -.5 / .5
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment(images, [0.0] * 3, [1.0] * 3, padding=4, flip=True, cutout=0, generator=generator)
    padded = F.pad(images.float() / 255, (4, 4, 4, 4))
    for i in range(4):  # each output is one of the 81 windows of its padded image, mirrored or not
        windows = [padded[i, :, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_lr_schedule_worked_by_hand():
    cosine = Options(epochs=4, schedule="cosine", warmup_epochs=1)  # 2 steps an epoch: warm-up 2, cosine over 6
    assert [lr_factor(s, 2, cosine) for s in (0, 1, 2, 5)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    step = Options(epochs=4, schedule="step", milestones=[2, 3], gamma=0.1)
    assert [lr_factor(s, 2, step) for s in (0, 3, 4, 5, 6, 7)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# --- end to end --------------------------------------------------------------------------------------------------

def test_command_line_trains_cifar100_and_logs_what_the_weights_score(tmp_path):
    files = batch_files("cifar100", seed=5)
    path = write_archive(tmp_path, "cifar100", files, as_tar=True)
    out = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "cifarops.train", "--data", path, *TINY, "--epochs", "1",
                             "--batch-size", "5", "--device", "cpu", "--out", out],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout and result.stdout.count("\n") == 2  # not a terminal: a line per epoch, final
    assert result.stdout.startswith("epoch 1/1 loss ") and "img/s" in result.stdout
    log = json.load(open(os.path.join(out, "log.json")))
    assert log["status"] == "finished" and log["dataset"] == "cifar100" and len(log["epochs"]) == 1
    assert log["arguments"]["model_arg"] == ["depth=8", "alpha=8"] and log["parameters"] > 0
    accuracy, loss = independent_accuracy(out, files, "cifar100", TINY[1], {"depth": 8, "alpha": 8})
    assert log["final"]["test_accuracy"] == accuracy and log["final"]["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_resume_gives_the_uninterrupted_run_bitwise(uninterrupted, tmp_path):
    argv, out, log = uninterrupted
    split = str(tmp_path / "split")
    first = main(argv + ["--out", split, "--stop-after", "1"], progress=QUIET)
    assert first["status"].startswith("stopped after epoch 1 of 2") and "final" not in first
    assert torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)["epoch"] == 1
    resumed = main(["--resume", os.path.join(split, "checkpoint.pt")], progress=QUIET)  # the stored arguments
    want = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    got = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=True)
    assert want["model"].keys() == got["model"].keys()
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    momentum = lambda c: [s["momentum_buffer"] for s in c["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(momentum(want), momentum(got), strict=True))
    timeless = lambda h: [{k: v for k, v in e.items() if k not in MEASURED} for e in h]  # noqa: E731
    assert timeless(resumed["epochs"]) == timeless(log["epochs"]) and resumed["final"] == log["final"]


def test_checkpointed_blocks_train_to_the_same_weights(uninterrupted, tmp_path):
    argv, out, _ = uninterrupted
    main(argv + ["--checkpoint", "full", "--out", str(tmp_path)], progress=QUIET)
    want = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]
    got = torch.load(os.path.join(tmp_path, "checkpoint.pt"), weights_only=True)["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_compiled_training_runs_and_saves_the_plain_module(cifar10, tmp_path, monkeypatch):
    """--compile: the steps run through torch.compile (Dynamo compiled graphs), and the checkpoint holds the
    plain module's state dict (no _orig_mod. prefix), which the logged final accuracy scores. The compiler is
    aot_eager here (Inductor's code generation would take minutes on this CPU; tests/test_compile.py runs it)."""
    files, path = cifar10
    out = str(tmp_path / "run")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    log = main(["--data", path, *TINY, "--epochs", "1", "--batch-size", "5", "--device", "cpu", "--compile",
                "--out", out], progress=QUIET)
    assert log["status"] == "finished" and log["arguments"]["compile"] is True
    # training and evaluation, each one graph (fullgraph would break otherwise: no frame is compiled twice)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    accuracy, loss = independent_accuracy(out, files, "cifar10", TINY[1], {"depth": 8, "alpha": 8})
    assert log["final"]["test_accuracy"] == accuracy and log["final"]["test_loss"] == pytest.approx(loss, rel=1e-5)
    # the epoch's evaluation, compiled too, of the same weights
    assert log["epochs"][-1]["test_accuracy"] == accuracy


def test_fmp_net_final_evaluation_averages_draws(tmp_path):
    files = batch_files("cifar10", seed=7)
    path = write_archive(tmp_path, "cifar10", files, as_tar=False)
    out = str(tmp_path / "run")
    log = main(["--data", path, "--model", "fmp-graham-cifar10", "--model-arg", "filters=4", "--epochs", "1",
                "--batch-size", "5", "--fmp-draws", "3", "--device", "cpu", "--out", out], progress=QUIET)
    assert log["final"]["fmp_draws"] == 3
    accuracy, loss = independent_accuracy(out, files, "cifar10", "fmp-graham-cifar10", {"filters": 4}, draws=3)
    assert log["final"]["test_accuracy"] == accuracy and log["final"]["test_loss"] == pytest.approx(loss, rel=1e-5)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.skipif(progress._tqdm is None, reason="tqdm is not installed (the bars need it)")
def test_loss_falls_on_learnable_data_with_a_terminal_progress_line(tmp_path):
    # class 0 dark, class 1 bright: chance is 50 % and the initial loss about ln 10
    def labels(rng, n):
        return rng.integers(0, 2, n)
    files = batch_files("cifar10", n_train=20, n_test=10, seed=11, labels=labels)
    for batch in files.values():
        if b"data" in batch:
            bright = np.array(batch[b"labels"])[:, None] == 1
            batch[b"data"] = np.where(bright, 170 + batch[b"data"] // 3, batch[b"data"] // 3).astype(np.uint8)
    path = write_archive(tmp_path, "cifar10", files, as_tar=False)
    terminal = Progress(Terminal(), interval_s=0)
    log = main(["--data", path, *TINY, "--epochs", "3", "--batch-size", "10", "--lr", "0.05", "--weight-decay", "0",
                "--device", "cpu", "--out", str(tmp_path / "run")], progress=terminal)
    losses = [e["train_loss"] for e in log["epochs"]]
    assert losses[-1] < 0.7 * losses[0] and log["final"]["test_accuracy"] == 1.0, log["epochs"]
    shown = terminal.stream.getvalue()
    assert "epoch 1/3:  50%" in shown and "| 1/2 [" in shown and "img/s" in shown  # tqdm's bar: steps, ETA, metrics
    kept = [line for line in re.split(r"[\r\n]", shown) if line.startswith(("epoch", "final")) and "%|" not in line]
    assert len(kept) == 4 and [line.split(" loss")[0] for line in kept[:3]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert kept[3].startswith("final test accuracy 100.00%"), shown


# --- bad input: a clear error, nothing written ----------------------------------------------------------------------

def _corrupt(tmp_path, cifar10):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"not a gzip file at all" * 10)
    return ["--data", str(path)]


def _truncated(tmp_path, cifar10):
    blob = open(cifar10[1], "rb").read()
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(blob[: len(blob) // 2])
    return ["--data", str(path)]


def _edited(edit):
    def make(tmp_path, cifar10):
        files = {n: dict(v) for n, v in cifar10[0].items()}
        edit(files)
        return ["--data", write_archive(tmp_path, "cifar10", files, as_tar=False)]
    return make


def _label(files):
    files["data_batch_2"][b"labels"] = [10] + files["data_batch_2"][b"labels"][1:]


def _malicious(files):
    files["test_batch"] = pickle.dumps(os.getcwd)  # a pickle naming a function: never called


def _other_model(tmp_path, cifar10, uninterrupted):
    # the stored --model-arg (depth=8, alpha=8) still applies: depth 11 makes it a valid bottleneck PyramidNet
    return ["--resume", os.path.join(uninterrupted[1], "checkpoint.pt"), "--model", "pyramidnet272-a200-shakedrop",
            "--model-arg", "depth=11"]


def _other_args(tmp_path, cifar10, uninterrupted):
    return ["--resume", os.path.join(uninterrupted[1], "checkpoint.pt"), "--model-arg", "depth=14"]


def _other_state(tmp_path, cifar10, uninterrupted):
    state = torch.load(os.path.join(uninterrupted[1], "checkpoint.pt"), weights_only=True)
    state["model"]["fc.weight"] = state["model"]["fc.weight"][:, :-1]
    torch.save(state, tmp_path / "edited.pt")
    return ["--resume", str(tmp_path / "edited.pt")]


BAD = {
    "missing archive": (lambda t, c: ["--data", str(t / "nowhere.tar.gz")], "--data: .* does not exist"),
    "corrupt archive": (_corrupt, "--data: .* not a readable .tar.gz archive"),
    "truncated archive": (_truncated, "--data: .* not a readable .tar.gz archive, or is truncated"),
    "no data key": (_edited(lambda f: f["data_batch_3"].pop(b"data")), r"data_batch_3: no b'data' key"),
    "no label key": (_edited(lambda f: f["test_batch"].pop(b"labels")), r"test_batch: no b'labels' key"),
    "wrong data shape": (_edited(lambda f: f["data_batch_1"].update({b"data": f["data_batch_1"][b"data"][:, :-1]})),
                         r"data_batch_1: b'data' must be \(N, 3072\) uint8, got \(2, 3071\)"),
    "labels outside the classes": (_edited(_label),
                                   r"data_batch_2: labels range over \[.*, 10\], outside the 10 classes"),
    "meta of another dataset": (_edited(lambda f: f["batches.meta"].update({b"label_names": [b"x"] * 100})),
                                "batches.meta: expected 10 class names"),
    "code in a pickle": (_edited(_malicious), "test_batch: not a readable CIFAR pickle .*refusing to load"),
    "num-classes mismatch": (lambda t, c: ["--data", c[1], "--num-classes", "100"],
                             "--num-classes 100 does not match cifar10's 10 classes"),
    "unknown model": (lambda t, c: ["--data", c[1], "--model", "resnet9000"], "--model: unknown model 'resnet9000'"),
    "bad model arg": (lambda t, c: ["--data", c[1], "--model-arg", "depth=9"], "--model-arg .* depth must be 6 n"),
    "fmp draws without fmp": (lambda t, c: ["--data", c[1], "--fmp-draws", "4"], "--fmp-draws 4: .* no fractional"),
    "resume file missing": (lambda t, c, u: ["--resume", str(t / "none.pt")], "--resume: .* does not exist"),
    "resume file not a checkpoint": (lambda t, c, u: ["--resume", c[1]], "--resume: .* is not a readable checkpoint"),
    "resume from another model": (_other_model,
                                  "--resume: the checkpoint is from model 'pyramidnet110-a270-shakedrop'"),
    "resume with other model args": (_other_args, "--resume: the checkpoint is from model .*'depth': 8"),
    "resume with another state": (_other_state, "--resume: the checkpoint's model state does not fit this model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error_and_overwrites_nothing(case, tmp_path, cifar10, uninterrupted):
    make, message = BAD[case]
    out = tmp_path / "out"
    out.mkdir()
    before = {"log.json": b'{"an earlier": "run"}', "checkpoint.pt": b"an earlier checkpoint"}
    for name, blob in before.items():
        (out / name).write_bytes(blob)
    if case.startswith("resume"):  # the checkpoint's arguments, with --out pointing at the earlier run
        argv = make(tmp_path, cifar10, uninterrupted) + ["--out", str(out)]
    else:
        argv = ["--data", cifar10[1], *TINY, "--epochs", "1", "--device", "cpu", "--out", str(out), "--overwrite",
                *make(tmp_path, cifar10)]
    with pytest.raises(ValueError, match=message):
        main(argv, progress=QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_earlier_run_is_not_overwritten_without_asking(uninterrupted):
    argv, out, _ = uninterrupted
    before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}
    with pytest.raises(ValueError, match="already holds a run: --resume .* or --overwrite"):
        main(argv + ["--out", out], progress=QUIET)
    assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == before


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    status = console(["--data", str(tmp_path / "none.tar.gz"), *TINY, "--out", str(tmp_path / "out")])
    assert status == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m cifarops.train: error: --data: {str(tmp_path / 'none.tar.gz')!r} does not exist "
        "(expected the cifar-10-batches-py archive or folder)"]
