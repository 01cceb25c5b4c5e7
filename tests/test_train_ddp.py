"""The training script under torchrun: data-parallel training (DistributedDataParallel, 2 processes, gloo on the
CPU), in one launch of this file as a script (`_worker`), compared here with single-process oracles:

- the final weights, BatchNorm statistics, momentum and logged losses of a 2-epoch run equal a single process
  that replays both ranks: each step, each rank's shard batch with that rank's noise and augmentation seeds
  (derived from seed, epoch and rank), BatchNorm on that half only, then the mean of the two gradients
  (what DDP's all-reduce computes: each bucket divided by 2, then summed, so the same bits), with rank 0's
  buffers carried on (DDP broadcasts them at each forward). The logged test metrics equal an evaluation of
  the checkpoint on the two ranks' halves of the test set.
- only rank 0 writes (checkpoint and log once an epoch, the log once more at the end) and prints; images/s
  counts both ranks' images;
- bad input on one rank only is an error on both, and nothing is written;
- a run stopped and resumed under DDP equals the uninterrupted run bitwise (the per-rank generators are
  re-derived from the seed at each epoch, not stored); a DDP checkpoint resumes in a single process, and a
  single-process checkpoint under DDP (plain state dicts, no `module.` prefix).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cifarops
from cifarops import distributed as D
from cifarops.train import main
from cifarops.train import engine
from cifarops.train.data import augment, channel_stats
from cifarops.train.engine import MEASURED, lr_factor, rank_epoch_seeds
from cifarops.train.monitor import Progress

from cifar_archive import batch_files, split_arrays, write_archive

MODEL, OVERRIDES = "pyramidnet110-a270-shakedrop", {"depth": 8, "alpha": 8}
TINY = ["--model", MODEL, "--model-arg", "depth=8", "--model-arg", "alpha=8"]
SEED, EPOCHS, BATCH, WORLD = 3, 2, 4, 2  # 10 training images: shards of 5, 2 steps of 2 images per rank an epoch


def _argv(archive: str, out: str, *more: str) -> list:
    return ["--data", archive, *TINY, "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--seed", str(SEED),
            "--device", "cpu", "--out", out, *more]


# ------------------------------------------------------------------------------ the worker (one per rank)


def _worker(root: Path) -> None:
    torch.set_num_threads(1)
    ctx = D.init_distributed(use_cuda=False)  # gloo on the CPU even where there is a GPU (both ranks on it would clash)
    paths = json.loads((root / "paths.json").read_text())
    writes = []  # (run, file) of every file this rank wrote
    write = engine._write_atomically
    run = None

    def counted(path, how):
        writes.append((run, os.path.basename(path)))
        write(path, how)

    engine._write_atomically = counted  # write_json and fit look it up at each call
    saved = {"rank": ctx.rank}

    run = "bad"  # rank 1 alone is given a missing archive: both ranks must stop with an error
    data = paths["archive"] if ctx.rank == 0 else str(root / "missing.tar.gz")
    with pytest.raises(ValueError) as error:
        main(_argv(data, str(root / "bad")), progress=Progress(io.StringIO()))
    saved["bad"] = str(error.value)

    run = "whole"
    shown = Progress(io.StringIO())
    saved["whole"] = main(_argv(paths["archive"], str(root / "whole")), progress=shown)
    saved["shown"] = shown.stream.getvalue()
    run = "stopped"
    main(_argv(paths["archive"], str(root / "stopped"), "--stop-after", "1"), progress=Progress(io.StringIO()))
    run = "resumed"
    main(["--resume", str(root / "stopped" / "checkpoint.pt"), "--out", str(root / "resumed")],
         progress=Progress(io.StringIO()))
    run = "from_single"
    main(["--resume", paths["single"], "--out", str(root / "from_single")], progress=Progress(io.StringIO()))
    saved["writes"] = writes
    torch.save(saved, root / f"rank{ctx.rank}.pt")
    torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------- the launch


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The archive, a single-process checkpoint after epoch 1, and the torchrun launch: (root, files, ranks)."""
    root = tmp_path_factory.mktemp("train_ddp")
    files = batch_files("cifar10", seed=13)
    archive = write_archive(root, "cifar10", files, as_tar=True)
    single = str(root / "single")
    main(_argv(archive, single, "--stop-after", "1"), progress=Progress(io.StringIO()))
    (root / "paths.json").write_text(json.dumps({"archive": archive, "single": os.path.join(single, "checkpoint.pt")}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               __file__, str(root)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-12000:]}"
    # the ranks' own results (their logs hold a TorchVersion): written by this test, so trusted
    return root, files, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _checkpoint(root: Path, run: str) -> dict:
    return torch.load(root / run / "checkpoint.pt", weights_only=True)


def _timeless(history: list) -> list:
    return [{k: v for k, v in e.items() if k not in MEASURED} for e in history]


@contextlib.contextmanager
def _one_thread():
    """The ranks' thread count, so that each kernel sums in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _replay_both_ranks(files: dict) -> dict:
    """The oracle: the 2-rank run replayed in one process without DDP or collectives."""
    images, labels = split_arrays("cifar10", files, "train")
    test_images, test_labels = split_arrays("cifar10", files, "test")
    stats = channel_stats(images)
    torch.manual_seed(SEED)
    model = cifarops.models.create(MODEL, num_classes=10, **OVERRIDES)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    options = engine.Options(epochs=EPOCHS, batch_size=BATCH, seed=SEED)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 2, options))
    per_rank = BATCH // WORLD
    train_losses, test_metrics = [], []
    for epoch in range(EPOCHS):
        noise, augmentation, shards = [], [], []
        for rank in range(WORLD):
            noise_seed, data_seed = rank_epoch_seeds(SEED, epoch, rank)
            torch.manual_seed(noise_seed)
            noise.append(torch.get_rng_state())
            augmentation.append(torch.Generator().manual_seed(data_seed))
            shards.append(D.shard_indices(len(images), rank, WORLD, epoch=epoch, seed=SEED))
        model.train()
        loss_sums = [0.0] * WORLD
        for step in range(len(shards[0]) // per_rank):
            broadcast = {n: b.clone() for n, b in model.named_buffers()}  # rank 0's, spread by DDP's forward
            grads, buffers = [], []
            for rank in range(WORLD):
                model.load_state_dict(broadcast, strict=False)
                torch.set_rng_state(noise[rank])
                index = shards[rank][step * per_rank:(step + 1) * per_rank]
                x = augment(images[index], *stats, padding=4, flip=True, cutout=0, generator=augmentation[rank])
                loss = F.cross_entropy(model(x).float(), labels[index])
                grads.append(torch.autograd.grad(loss, params))
                noise[rank] = torch.get_rng_state()
                buffers.append({n: b.clone() for n, b in model.named_buffers()})
                loss_sums[rank] += loss.double().item() * per_rank
            model.load_state_dict(buffers[0], strict=False)
            for p, g0, g1 in zip(params, *grads):
                p.grad = g0 / WORLD + g1 / WORLD
            optimizer.step()
            scheduler.step()
        train_losses.append(sum(loss_sums) / (WORLD * per_rank * (len(shards[0]) // per_rank)))
        model.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for part in torch.arange(len(test_images)).tensor_split(WORLD):  # each rank's half of the test set
                logits = model(((test_images[part].float() / 255) - torch.tensor(stats[0]).view(1, 3, 1, 1))
                               / torch.tensor(stats[1]).view(1, 3, 1, 1))
                loss_sum += F.cross_entropy(logits.float(), test_labels[part], reduction="sum").item()
                correct += int((logits.argmax(1) == test_labels[part]).sum())
        test_metrics.append((loss_sum / len(test_images), correct / len(test_images)))
    return dict(model=model.state_dict(), momentum=[optimizer.state[p]["momentum_buffer"] for p in params],
                train_losses=train_losses, test_metrics=test_metrics)


# --------------------------------------------------------------------------------------------- tests


def test_ddp_run_equals_both_ranks_replayed_in_one_process(launched):
    root, files, ranks = launched
    with _one_thread():
        want = _replay_both_ranks(files)
    got = _checkpoint(root, "whole")
    assert list(got["model"]) == list(want["model"])  # the plain module's names: no "module." prefix
    for name, value in want["model"].items():
        assert torch.equal(got["model"][name], value), name
    momentum = [s["momentum_buffer"] for s in got["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, want["momentum"], strict=True))
    log = json.loads((root / "whole" / "log.json").read_text())
    assert [e["train_loss"] for e in log["epochs"]] == pytest.approx(want["train_losses"], rel=1e-12)
    assert [e["test_loss"] for e in log["epochs"]] == pytest.approx([m[0] for m in want["test_metrics"]], rel=1e-12)
    assert [e["test_accuracy"] for e in log["epochs"]] == [m[1] for m in want["test_metrics"]]
    assert log["final"]["test_loss"] == pytest.approx(want["test_metrics"][-1][0], rel=1e-12)
    assert log["world_size"] == WORLD and log["batch_per_rank"] == BATCH // WORLD and log["status"] == "finished"
    assert _timeless(ranks[0]["whole"]["epochs"]) == _timeless(ranks[1]["whole"]["epochs"])  # the same metrics


def test_every_rank_and_epoch_has_its_own_noise_and_augmentation_seeds():
    seeds = [s for e in range(3) for r in range(WORLD) for s in rank_epoch_seeds(SEED, e, r)]
    assert len(set(seeds)) == 2 * 3 * WORLD


def test_only_rank_0_writes_and_prints_and_images_per_s_counts_every_rank(launched):
    root, _, ranks = launched
    assert ranks[1]["writes"] == [] and ranks[1]["shown"] == ""
    whole = [f for run, f in ranks[0]["writes"] if run == "whole"]
    assert whole == ["checkpoint.pt", "log.json"] * EPOCHS + ["log.json"]
    assert ranks[0]["shown"].startswith("epoch 1/2 loss ") and ranks[0]["shown"].count("\n") == EPOCHS + 1
    for epoch in json.loads((root / "whole" / "log.json").read_text())["epochs"]:
        # both ranks' 2 steps of 2 images, over rank 0's time
        assert epoch["images_per_s"] * epoch["train_s"] == pytest.approx(WORLD * 2 * 2, rel=1e-9)


def test_bad_input_on_one_rank_stops_every_rank_and_writes_nothing(launched):
    root, _, ranks = launched
    assert "--data: " in ranks[1]["bad"] and "missing.tar.gz' does not exist" in ranks[1]["bad"]
    assert ranks[0]["bad"] == "bad input on 1 of the 2 ranks (their errors say what); nothing was written"
    assert not (root / "bad").exists() and all(run != "bad" for r in ranks for run, _ in r["writes"])


def test_stopped_and_resumed_under_ddp_equals_the_uninterrupted_run(launched):
    root, _, _ = launched
    want, got = _checkpoint(root, "whole"), _checkpoint(root, "resumed")
    assert _checkpoint(root, "stopped")["epoch"] == 1 and got["epoch"] == EPOCHS
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    momentum = lambda c: [s["momentum_buffer"] for s in c["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(momentum(want), momentum(got), strict=True))
    logs = [json.loads((root / run / "log.json").read_text()) for run in ("whole", "resumed")]
    assert _timeless(logs[0]["epochs"]) == _timeless(logs[1]["epochs"]) and logs[0]["final"] == logs[1]["final"]


def test_checkpoints_move_between_single_process_and_ddp(launched, tmp_path):
    root, _, _ = launched
    stopped = _checkpoint(root, "stopped")
    log = main(["--resume", str(root / "stopped" / "checkpoint.pt"), "--out", str(tmp_path)],
               progress=Progress(io.StringIO()))
    assert log["status"] == "finished" and log["world_size"] == 1
    assert log["epochs"][0] == stopped["history"][0] and len(log["epochs"]) == EPOCHS
    resumed = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert any(not torch.equal(resumed["model"][k], v) for k, v in stopped["model"].items())  # it trained on
    single = torch.load(root / "single" / "checkpoint.pt", weights_only=True)
    from_single = _checkpoint(root, "from_single")
    assert from_single["world_size"] == WORLD and from_single["epoch"] == EPOCHS
    assert from_single["history"][0] == single["history"][0] and list(from_single["model"]) == list(single["model"])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
