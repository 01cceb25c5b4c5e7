"""The training loop: SGD + Nesterov with a cosine or step schedule (optionally after a linear warm-up),
autocast, channels_last, torch.compile, progress (a bar per epoch on a terminal, :mod:`~cifarops.train.monitor`),
evaluation each epoch (and at the end with FMP test-time averaging), a checkpoint after every epoch, a JSON log
and optionally TensorBoard scalars.

:func:`fit` takes a built model, the data and :class:`Options`, and knows nothing of the command line
(nor of torchrun: it is given a :class:`~cifarops.distributed.DistributedContext`). Resuming is bitwise
on the CPU: the checkpoint holds the model, optimizer, scheduler and scaler states and every random
generator's state (torch's CPU and CUDA generators, which draw the layers' noise, and the data
generator, which draws the order and augmentation).

Data parallel (``ctx`` given, under torchrun): ``options.batch_size`` is the global batch, each rank trains
on ``batch_size / world_size`` images a step from its shard of the epoch (:func:`~cifarops.distributed.shard_indices`,
DistributedSampler's choice), so a run's hyper-parameters and steps per epoch do not depend on the number of
ranks. At the start of every epoch each rank seeds torch's generators (the layers' noise) and its
augmentation generator from (seed, epoch, rank) (:func:`rank_epoch_seeds`): the ranks draw different noise,
and a resumed run, which re-derives the seeds, draws the same noise as an uninterrupted one without storing
every rank's generator states. Rank 0's buffers (BatchNorm statistics; DistributedDataParallel broadcasts
them at every forward) are the model's: they are broadcast before each evaluation, which every rank runs on
its contiguous part of the test set, the sums all-reduced. Only rank 0 writes, the plain module's state dict
(no ``module.`` prefix), and its generator states, from which a single-process resume goes on (a
data-parallel one re-derives them): checkpoints move freely between single-process and distributed runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import cifarops
from cifarops import distributed as D
from cifarops import peak_memory
from cifarops.train.data import Cifar, augment, batch_indices, channel_stats, normalise
from cifarops.train.monitor import Progress, TensorBoard, metrics_text

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.json"
CHECKPOINT_FORMAT = "cifarops.train/1"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the epoch record's measurements of the machine, which no seed repeats (a resumed run equals an uninterrupted
# one in everything else)
MEASURED = ("images_per_s", "train_s", "peak_memory_mb")


@dataclass
class Options:
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"          # "cosine" or "step"
    milestones: list = field(default_factory=list)  # epochs at which "step" multiplies the rate by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0            # linear warm-up from lr / steps to lr, then the schedule
    amp: str = "none"                 # "none", "bf16", "fp16" (with a GradScaler)
    channels_last: bool = False
    padding: int = 4
    flip: bool = True
    cutout: int = 0
    compile: bool = False             # torch.compile the training and evaluation steps
    tensorboard: bool = False         # the epoch's scalars under out_dir/tensorboard as well as in log.json
    fmp_draws: int = 1                # test-time averaging draws of the final evaluation
    eval_batch_size: int = 500
    stop_after: Optional[int] = None  # stop after this many epochs of this invocation (time-limited jobs)
    seed: int = 0


def lr_factor(step: int, steps_per_epoch: int, options: Options) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (0-based): linear warm-up, then
    cosine annealing to 0 over the remaining steps, or the step schedule on epoch milestones."""
    warmup = options.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if options.schedule == "cosine":
        total = options.epochs * steps_per_epoch - warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total, 1)))
    return options.gamma ** sum(step >= m * steps_per_epoch for m in options.milestones)


def rank_epoch_seeds(seed: int, epoch: int, rank: int) -> tuple[int, int]:
    """The seeds of torch's generators (the layers' noise) and of the augmentation generator of rank ``rank``
    in ``epoch`` (0-based) of a data-parallel run seeded with ``seed``."""
    noise = D.rank_seed(D.rank_seed(seed, epoch), rank)
    return noise, D.rank_seed(noise, 1)  # a second, unrelated stream for the augmentation


def steps_per_epoch(num_images: int, options: Options, world_size: int = 1) -> int:
    """Optimizer steps in an epoch: the full batches of the data set (single process) or of each rank's shard
    of ``ceil(num_images / world_size)`` images, ``batch_size / world_size`` a step."""
    if world_size == 1:
        return len(list(batch_indices(num_images, options.batch_size, drop_last=True)))
    shard = -(-num_images // world_size)
    return len(list(batch_indices(shard, options.batch_size // world_size, drop_last=True)))


def has_fmp(model: nn.Module) -> bool:
    return any(isinstance(m, (cifarops.FractionalMaxPool2d, nn.FractionalMaxPool2d)) for m in model.modules())


def _autocast(device: torch.device, options: Options):
    dtype = AMP_DTYPES[options.amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "data": generator.get_state(), "data_device": generator.device.type,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict, generator: torch.Generator, reseed: int) -> None:
    torch.set_rng_state(state["torch"])
    if state["data_device"] == generator.device.type:
        generator.set_state(state["data"])
    else:  # CPU and CUDA generators keep different states: go on from a fresh seed (not bitwise, as no
        generator.manual_seed(reseed)  # cross-device resume could be)
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomically(path: str, write) -> None:
    """Writes through a temporary file and renames it, so that a crash never leaves half a file."""
    temporary = path + ".tmp"
    write(temporary)
    os.replace(temporary, path)


def write_json(path: str, payload: dict) -> None:
    def write(p):
        with open(p, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    _write_atomically(path, write)


def train_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, stats, optimizer, scheduler,
                scaler, generator: torch.Generator, options: Options, progress: Progress, header: str,
                ctx: Optional[D.DistributedContext] = None, order: Optional[torch.Tensor] = None) -> dict:
    """One pass over the (shuffled, augmented) training set; metrics accumulate on the device and are read
    once at the end (and when the terminal's bar refreshes them). Data parallel: ``order`` is this rank's shard and
    the metrics are summed over the ranks (images/s counts every rank's images)."""
    model.train()
    device = images.device
    world_size = 1 if ctx is None else ctx.world_size
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, start = 0, time.perf_counter()
    if order is None:
        batches = list(batch_indices(len(images), options.batch_size, generator=generator, drop_last=True,
                                     device=device))
    else:
        batches = [order[i] for i in batch_indices(len(order), options.batch_size // world_size, drop_last=True,
                                                   device=order.device)]
    def shown():  # the bar's numbers: a host sync, which the bar asks for only when due
        rate = seen * world_size / (time.perf_counter() - start)  # ranks run in lockstep
        return metrics_text(loss_sum.item() / seen, correct.item() / seen, rate)

    with progress.epoch(len(batches), header) as bar:
        for index in batches:
            x = augment(images[index], *stats, padding=options.padding, flip=options.flip, cutout=options.cutout,
                        generator=generator).contiguous(memory_format=memory_format)
            y = labels[index]
            with _autocast(device, options):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            bar.step(shown)
    totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if ctx is not None:
        dist.all_reduce(totals)
    loss_total, correct_total, seen_total = totals.tolist()
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_total / seen_total, "train_accuracy": correct_total / seen_total,
            "images_per_s": seen_total / elapsed, "train_s": elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, stats, options: Options,
             draws: int = 1, ctx: Optional[D.DistributedContext] = None) -> dict:
    """Test loss and accuracy; with ``draws`` > 1, of the mean class probabilities over that many draws of
    every fractional max-pooling layer's regions (:func:`cifarops.fmp_model_average`). Data parallel: each
    rank evaluates its contiguous part of the test set with the plain module (no collective inside) and the
    sums are all-reduced; every rank must hold the same weights and buffers (see :func:`broadcast_buffers`)."""
    model.eval()
    device = images.device
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    # Summed on the device and read once at the end, as in training: no host sync per batch.
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
    part = torch.arange(len(images), device=device)
    if ctx is not None:
        part = part.tensor_split(ctx.world_size)[ctx.rank]
    for index in batch_indices(len(part), options.eval_batch_size, device=device):
        index = part[index]
        x = normalise(images[index], *stats).contiguous(memory_format=memory_format)
        y = labels[index]
        with _autocast(device, options):
            if draws > 1:
                probabilities = cifarops.fmp_model_average(model, x, draws=draws)
                loss = F.nll_loss(probabilities.float().clamp_min(1e-12).log(), y, reduction="sum")
                predicted = probabilities.argmax(1)
            else:
                logits = model(x).float()
                loss = F.cross_entropy(logits, y, reduction="sum")
                predicted = logits.argmax(1)
        totals += torch.stack([loss.double(), (predicted == y).sum().double()])
    if ctx is not None:
        dist.all_reduce(totals)
    loss_sum, correct = totals[0].item(), int(totals[1].item())
    return {"test_loss": loss_sum / len(images), "test_accuracy": correct / len(images)}


def broadcast_buffers(model: nn.Module) -> None:
    """Gives every rank rank 0's buffers. DistributedDataParallel broadcasts them at the start of each forward,
    so after a step each rank holds rank 0's statistics updated with its own shard: rank 0's are the model's
    (the ones it checkpoints), and the evaluation must use them on every rank."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def check_resume(checkpoint: dict, model: nn.Module, model_name: str, model_args: dict) -> None:
    """Raises ValueError unless ``checkpoint`` was written by :func:`fit` for this very model."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("--resume: not a cifarops.train checkpoint")
    stored = (checkpoint.get("model_name"), checkpoint.get("model_args"))
    if stored != (model_name, model_args):
        raise ValueError(f"--resume: the checkpoint is from model {stored[0]!r} with {stored[1]}, not "
                         f"{model_name!r} with {model_args}")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in checkpoint["model"].items()}
    if want != have:
        differ = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise ValueError(f"--resume: the checkpoint's model state does not fit this model (e.g. {differ[:3]})")


def _finish(ctx: Optional[D.DistributedContext], board: Optional[TensorBoard]) -> None:
    """The end of a fit: TensorBoard's file closed, and data parallel, a barrier: when it returns on any rank,
    rank 0's checkpoint and log are written (a script resuming right after --stop-after reads them)."""
    if board is not None:
        board.close()
    if ctx is not None:
        dist.barrier()


def fit(model: nn.Module, data: Cifar, options: Options, out_dir: str, *, run_info: dict,
        device: torch.device, resume: Optional[dict] = None, progress: Optional[Progress] = None,
        ctx: Optional[D.DistributedContext] = None) -> dict:
    """Trains ``model`` (already on ``device``) on ``data`` for ``options.epochs`` epochs, writing
    ``checkpoint.pt`` and ``log.json`` to ``out_dir`` after every epoch; returns the log. ``run_info`` (the
    run's arguments, model name and args) goes into both; ``resume`` is a checkpoint of this model from
    :func:`check_resume`. With ``ctx`` (every rank calls it, ``device`` = ``ctx.device``) the model is wrapped
    in DistributedDataParallel and trained data parallel (see the module's notes); only rank 0 writes or
    shows progress, and every rank returns the same log but for its own ``peak_memory_mb``."""
    writer = ctx is None or ctx.rank == 0
    world_size = 1 if ctx is None else ctx.world_size
    progress = (progress or Progress()) if writer else Progress(io.StringIO())
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    stats = channel_stats(data.train_images)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum, nesterov=True,
                                weight_decay=options.weight_decay)
    steps = steps_per_epoch(len(images), options, world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, options))
    scaler = torch.amp.GradScaler(device.type) if options.amp == "fp16" else None
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed)
    history, elapsed, first = [], 0.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if ctx is None:  # data parallel re-derives every rank's generators at each epoch's start instead
            _set_rng_state(resume["rng"], generator, reseed=options.seed + int(resume["epoch"]))
        history, elapsed, first = list(resume["history"]), float(resume["elapsed_s"]), int(resume["epoch"])
    # Wrapped after loading: every rank then starts from the same state (DDP also broadcasts rank 0's).
    net = model if ctx is None else D.data_parallel(model, ctx)
    # Compiled once each for training and evaluation (Dynamo guards on the mode); the state dict, the
    # checkpoint and the FMP-averaged final evaluation (fmp_model_average) use the plain module.
    evaluated = model
    if options.compile:
        net = torch.compile(net)
        evaluated = net if ctx is None else torch.compile(model)
    log = {**run_info, "device": str(device), "world_size": world_size,
           "batch_per_rank": options.batch_size // world_size,
           "parameters": sum(p.numel() for p in model.parameters()),
           "train_images": len(images), "test_images": len(test_images), "normalisation": {"mean": stats[0],
           "std": stats[1]}, "torch": torch.__version__, "cifarops": cifarops.__version__,
           "epochs": history, "status": "running"}
    last = options.epochs if options.stop_after is None else min(options.epochs, first + options.stop_after)
    # flushed after every epoch: a crash loses nothing written before it
    board = TensorBoard(out_dir, first) if options.tensorboard and writer else None
    for epoch in range(first, last):
        started = time.perf_counter()
        header = f"epoch {epoch + 1}/{options.epochs}"
        lr = optimizer.param_groups[0]["lr"]
        order = None
        if ctx is not None:
            noise_seed, data_seed = rank_epoch_seeds(options.seed, epoch, ctx.rank)
            torch.manual_seed(noise_seed)
            generator.manual_seed(data_seed)
            order = D.shard_indices(len(images), ctx.rank, world_size, epoch=epoch, seed=options.seed).to(device)
        fresh_peak = peak_memory.reset(device)
        metrics = train_epoch(net, images, labels, stats, optimizer, scheduler, scaler, generator, options,
                              progress, header, ctx=ctx, order=order)
        # this rank's training epoch; None where the peak cannot be reset (it would be the process's)
        metrics["peak_memory_mb"] = peak_memory.peak_bytes(device) / 2**20 if fresh_peak else None
        if ctx is not None:
            broadcast_buffers(model)
        metrics.update(evaluate(evaluated, test_images, test_labels, stats, options, ctx=ctx))
        elapsed += time.perf_counter() - started
        history.append({"epoch": epoch + 1, "lr": lr, **metrics})
        if board is not None:
            board.epoch(history[-1])
        train = metrics_text(metrics["train_loss"], metrics["train_accuracy"], metrics["images_per_s"])
        progress.line(f"{header} {train} | test loss {metrics['test_loss']:.4f} "
                      f"acc {100 * metrics['test_accuracy']:6.2f}% | lr {lr:.4g}")
        state = {"format": CHECKPOINT_FORMAT, "model_name": run_info["model"], "model_args": run_info["model_args"],
                 "arguments": run_info["arguments"], "epoch": epoch + 1, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "rng": _rng_state(generator),
                 "history": history, "elapsed_s": elapsed, "world_size": world_size}
        log.update(epochs=history, time_s=elapsed)
        if writer:
            _write_atomically(os.path.join(out_dir, CHECKPOINT_FILE), lambda p: torch.save(state, p))
            write_json(os.path.join(out_dir, LOG_FILE), log)
    if last < options.epochs:
        log.update(status=f"stopped after epoch {last} of {options.epochs}; resume with --resume "
                          f"{os.path.join(out_dir, CHECKPOINT_FILE)}")
        if writer:
            write_json(os.path.join(out_dir, LOG_FILE), log)
        _finish(ctx, board)
        return log
    started = time.perf_counter()
    draws = options.fmp_draws if has_fmp(model) else 1
    final = evaluate(model if draws > 1 else evaluated, test_images, test_labels, stats, options, draws=draws, ctx=ctx)
    elapsed += time.perf_counter() - started
    log.update(status="finished", time_s=elapsed,
               final={"test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"], "fmp_draws": draws})
    if writer:
        write_json(os.path.join(out_dir, LOG_FILE), log)
    progress.line(f"final test accuracy {100 * final['test_accuracy']:.2f}%"
                  + (f" ({draws} FMP draws averaged)" if draws > 1 else "") + f", {elapsed:.1f} s")
    _finish(ctx, board)
    return log
