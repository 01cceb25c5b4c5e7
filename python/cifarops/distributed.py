"""Training past one device on PyTorch's own engines: data parallel (``DistributedDataParallel``, launched by
``torchrun``) and GPipe pipeline parallelism (``torch.distributed.pipelining``, ``ScheduleGPipe``).

Data parallel::

    ctx = cifarops.distributed.init_distributed()          # reads torchrun's RANK, WORLD_SIZE, LOCAL_RANK
    cifarops.distributed.seed_rank(seed, ctx.rank)         # ShakeDrop noise: different per rank, reproducible
    model = cifarops.distributed.data_parallel(model, ctx)
    for epoch in ...:
        order = cifarops.distributed.shard_indices(len(images), ctx.rank, ctx.world_size, epoch=epoch, seed=seed)

Each rank draws its own noise and, without SyncBatchNorm, normalises over its own shard of the batch, so a
DDP step computes the mean over ranks of each rank's gradient on its shard, with that rank's noise.

Pipeline (GPipe): every rank builds the whole model on the CPU (same seed, or the same state dict), keeps its
own stage and moves only that to its device::

    run = cifarops.distributed.gpipe(model, stage_index=ctx.rank, num_stages=ctx.world_size, n_microbatches=4,
                                     loss_fn=F.cross_entropy, example_microbatch=x[:len(x) // 4], device=ctx.device)
    run.schedule.step(x if first else None, target=y if last else None, losses=losses)  # first/last rank only

The noise of a stochastic layer must not depend on how the model is split: with one generator per process,
the draws would depend on which process runs the layer and on the order of the schedule. So every layer of a
pipeline runs with torch's generators seeded from (seed, the layer's index, how many times the layer has run)
(:class:`SeededLayer`): its k-th call draws the same noise on any number of stages, and the same noise as a
single process running the layers one micro-batch after the other.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

_MASK64 = (1 << 64) - 1


def _mix(*words: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): nearby inputs give unrelated seeds."""
    state = 0x9E3779B97F4A7C15
    for word in words:
        state = (state ^ (int(word) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1  # torch.manual_seed takes up to 2**64 - 1; 63 bits also fit an int64 everywhere


def _check_int(value, name: str, op: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- data parallel


class DistributedContext(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def init_distributed(backend: Optional[str] = None, *, use_cuda: Optional[bool] = None) -> DistributedContext:
    """Joins the process group that ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``) and picks this process's device: ``cuda:LOCAL_RANK`` when CUDA is
    available (``use_cuda`` overrides), else the CPU. ``backend`` defaults to NCCL on CUDA and gloo on the
    CPU. Joining twice returns the same context."""
    op = "cifarops.distributed.init_distributed"
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(f"{op}: environment variables {missing} are not set; launch with torchrun "
                           f"(torchrun --nproc-per-node N script.py)")
    use_cuda = torch.cuda.is_available() if use_cuda is None else bool(use_cuda)
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"{op}: use_cuda=True but CUDA is not available")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"{op}: LOCAL_RANK {local_rank} has no GPU (this machine has {torch.cuda.device_count()}); "
                           f"launch at most that many processes per node, or pass use_cuda=False")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend, init_method="env://", device_id=device if use_cuda else None)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` for a run seeded with ``seed``: different on every rank (so that ranks draw
    different ShakeDrop noise for their different images), the same on every run."""
    op = "cifarops.distributed.rank_seed"
    return _mix(_check_int(seed, "seed", op), _check_int(rank, "rank", op))


def seed_rank(seed: int, rank: int) -> int:
    """Seeds torch's generators (CPU and every CUDA device) with :func:`rank_seed` and returns that seed."""
    value = rank_seed(seed, rank)
    torch.manual_seed(value)
    return value


def shard_indices(num_samples: int, rank: int, world_size: int, *, epoch: int = 0, seed: int = 0,
                  shuffle: bool = True, drop_last: bool = False) -> torch.Tensor:
    """The indices of an in-memory data set that rank ``rank`` trains on in ``epoch``, as
    ``torch.utils.data.DistributedSampler`` chooses them: one permutation shared by all ranks (seeded with
    ``seed + epoch``), made a multiple of ``world_size`` by repeating its head (or, with ``drop_last``, cutting
    its tail), and rank r takes every ``world_size``-th index from r. Shards are disjoint and, together, cover
    the data set."""
    op = "cifarops.distributed.shard_indices"
    _check_int(num_samples, "num_samples", op)
    _check_int(world_size, "world_size", op, minimum=1)
    _check_int(epoch, "epoch", op)
    _check_int(seed, "seed", op)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"{op}: rank must be an int in [0, world_size = {world_size}), got {rank!r}")
    if shuffle:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(num_samples, generator=generator)
    else:
        order = torch.arange(num_samples)
    if drop_last:
        order = order[: num_samples - num_samples % world_size]
    elif num_samples % world_size and num_samples:
        padding = world_size - num_samples % world_size
        order = torch.cat([order, order.repeat(padding // num_samples + 1)[:padding]])
    return order[rank::world_size]


def data_parallel(model: nn.Module, ctx: DistributedContext, **ddp_options) -> nn.parallel.DistributedDataParallel:
    """``model`` moved to ``ctx.device`` and wrapped in DistributedDataParallel (gradients averaged over
    ranks). Convert BatchNorm with ``nn.SyncBatchNorm.convert_sync_batchnorm`` first to normalise over the
    whole batch (CUDA only)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"cifarops.distributed.data_parallel: model must be an nn.Module, got {type(model).__name__}")
    model = model.to(ctx.device)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_options)


# ------------------------------------------------------------------------------------------------ pipelines


class SeededLayer(nn.Module):
    """Runs ``layer`` with torch's generators (the CPU's and the input's CUDA device's) seeded from
    ``(seed, index, calls)``, ``calls`` counting this wrapper's forward passes, and restored afterwards. The
    k-th call of layer i draws the same noise wherever and whenever it runs, so pipelines with any number of
    stages draw the same noise. Calls on meta tensors (shape inference) are not counted. Call :meth:`reseed`
    to start a run (a resumed one, say) at a known point of the noise sequence."""

    def __init__(self, layer: nn.Module, index: int, seed: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.index = _check_int(index, "index", "cifarops.distributed.SeededLayer")
        self.reseed(seed)

    def reseed(self, seed: int, calls: int = 0) -> None:
        self.seed = _check_int(seed, "seed", "cifarops.distributed.SeededLayer")
        self.calls = _check_int(calls, "calls", "cifarops.distributed.SeededLayer")

    def forward(self, *args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.is_meta for t in tensors):
            return self.layer(*args)
        key = _mix(self.seed, self.index, self.calls)
        self.calls += 1
        cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.manual_seed(key)
            return self.layer(*args)

    def extra_repr(self) -> str:
        return f"index={self.index}, seed={self.seed}, calls={self.calls}"


class _GlobalPoolHead(nn.Module):
    """The end of the zoo's ResNets: [BatchNorm], ReLU, global average pooling, linear."""

    def __init__(self, norm: Optional[nn.Module], fc: nn.Module) -> None:
        super().__init__()
        self.norm, self.fc = norm, fc

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu(h if self.norm is None else self.norm(h))
        return self.fc(h.mean((2, 3)))


class _CentredInput(nn.Module):
    """Graham's network's input step: the image centred in an ``input_size`` square of zeros."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h > self.input_size or w > self.input_size:
            raise ValueError(f"GrahamFMPNet: images must be at most {self.input_size}x{self.input_size}, got {h}x{w}")
        top, left = (self.input_size - h) // 2, (self.input_size - w) // 2
        return F.pad(x, (left, self.input_size - w - left, top, self.input_size - h - top))


def pipeline_layers(model: nn.Module) -> list[nn.Module]:
    """``model`` as a list of layers whose composition is ``model.forward``, cut at block boundaries: the stem,
    each residual block (or FMP / maxout / stochastic pooling layer), the head. The layers share the model's parameters and
    buffers (no copy). Takes every zoo model and any ``nn.Sequential`` (its children)."""
    from cifarops import models

    if isinstance(model, models.PyramidNet):
        return [nn.Sequential(model.conv1, model.bn1), *model.blocks, _GlobalPoolHead(model.bn_final, model.fc)]
    if isinstance(model, models.StochasticDepthResNet):
        return [nn.Sequential(model.conv1, model.bn1, nn.ReLU()), *model.blocks, _GlobalPoolHead(None, model.fc)]
    if isinstance(model, models.ShakeShakeResNet):
        return [nn.Sequential(model.conv1, model.bn1), *model.blocks, _GlobalPoolHead(None, model.fc)]
    if isinstance(model, models.WideResNet):
        return [model.conv1, *model.blocks, _GlobalPoolHead(model.bn, model.fc)]
    if isinstance(model, models.GrahamFMPNet):
        return [_CentredInput(model.input_size), *model.layers, nn.Sequential(nn.Flatten(), model.fc)]
    if isinstance(model, (models.GoodfellowMaxoutNet, models.ZeilerStochasticPoolNet)):
        return [*model.features, model.classifier]
    if isinstance(model, nn.Sequential):
        return list(model)
    raise TypeError(f"cifarops.distributed.pipeline_layers: model must be a cifarops zoo model or an nn.Sequential, "
                    f"got {type(model).__name__}")


def stage_boundaries(num_layers: int, num_stages: int) -> list[int]:
    """Where each stage starts (and, last, ``num_layers``): contiguous runs of layers, as equal in count as
    they can be, the earlier stages taking the extra ones."""
    op = "cifarops.distributed.stage_boundaries"
    _check_int(num_stages, "num_stages", op, minimum=1)
    if num_stages > num_layers:
        raise ValueError(f"{op}: num_stages ({num_stages}) exceeds the number of layers ({num_layers})")
    size, extra = divmod(num_layers, num_stages)
    starts = [0]
    for stage in range(num_stages):
        starts.append(starts[-1] + size + (stage < extra))
    return starts


def pipeline_stages(model: nn.Module, num_stages: int, *, seed: int = 0,
                    boundaries: Optional[Sequence[int]] = None) -> list[nn.Sequential]:
    """``model`` (see :func:`pipeline_layers`) split into ``num_stages`` ``nn.Sequential`` stages of
    :class:`SeededLayer` s, layer i seeded with ``(seed, i)`` whatever the split. ``boundaries``: the index of
    each stage's first layer followed by the number of layers (default :func:`stage_boundaries`)."""
    op = "cifarops.distributed.pipeline_stages"
    layers = pipeline_layers(model)
    _check_int(seed, "seed", op)
    starts = list(boundaries) if boundaries is not None else stage_boundaries(len(layers), num_stages)
    if (len(starts) != num_stages + 1 or starts[0] != 0 or starts[-1] != len(layers)
            or any(b <= a for a, b in zip(starts, starts[1:]))):
        raise ValueError(f"{op}: boundaries must rise strictly from 0 to the number of layers ({len(layers)}) in "
                         f"num_stages + 1 = {num_stages + 1} steps, got {boundaries!r}")
    seeded = [SeededLayer(layer, i, seed) for i, layer in enumerate(layers)]
    return [nn.Sequential(*seeded[a:b]) for a, b in zip(starts, starts[1:])]


def _meta_boundary_tensors(stages: Sequence[nn.Module], example: torch.Tensor) -> list[torch.Tensor]:
    """The input of every stage and the output of the last, as meta tensors (shapes and dtypes only): the
    stages run on the meta device with meta copies of their parameters and buffers, so nothing is computed,
    no statistic is updated and no noise is counted."""
    boundary = [torch.empty(example.shape, dtype=example.dtype, device="meta")]
    with torch.no_grad():
        for stage in stages:
            state = {name: torch.empty_like(t, device="meta")
                     for name, t in [*stage.named_parameters(), *stage.named_buffers()]}
            boundary.append(torch.func.functional_call(stage, state, (boundary[-1],)))
    # Activations between stages carry gradients back; the pipeline's own input does not.
    return [boundary[0]] + [t.requires_grad_(True) for t in boundary[1:]]


class GPipeRun(NamedTuple):
    schedule: object  # torch.distributed.pipelining.ScheduleGPipe
    stage: object  # torch.distributed.pipelining.PipelineStage
    module: nn.Sequential  # this rank's layers, on its device


def gpipe(model: nn.Module, *, stage_index: int, num_stages: int, n_microbatches: int, loss_fn: Callable,
          example_microbatch: torch.Tensor, device: torch.device | str, group=None, seed: int = 0,
          boundaries: Optional[Sequence[int]] = None) -> GPipeRun:
    """This rank's part of a GPipe pipeline (arXiv 1811.06965) of ``model``: stage ``stage_index`` of
    :func:`pipeline_stages`, moved to ``device``, as a ``torch.distributed.pipelining.PipelineStage`` driven
    by ``ScheduleGPipe`` (all forwards of the ``n_microbatches`` micro-batches, then all backwards; gradients
    are the mean over micro-batches of ``loss_fn(output, target)``). For checkpointed blocks build the model
    with the zoo's ``checkpoint=`` option. ``example_microbatch``: a tensor of one micro-batch's input shape
    and dtype (its values are not read). ``group``: the process group of the stages (default: the whole
    world, rank i running stage i).

    The stages are given their input and output shapes (torch's "static" metadata), computed on the meta
    device: without them, torch 2.13's PipelineStage infers them by running a real forward and backward of
    every stage before the first step, the first stage on the first micro-batch and the others on
    uninitialised tensors, which updates BatchNorm's running statistics with garbage and draws noise."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    op = "cifarops.distributed.gpipe"
    _check_int(n_microbatches, "n_microbatches", op, minimum=1)
    if isinstance(stage_index, bool) or not isinstance(stage_index, int) or not 0 <= stage_index < num_stages:
        raise ValueError(f"{op}: stage_index must be an int in [0, num_stages = {num_stages}), got {stage_index!r}")
    if not callable(loss_fn):
        raise TypeError(f"{op}: loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(example_microbatch, torch.Tensor):
        raise TypeError(f"{op}: example_microbatch must be a tensor of one micro-batch's shape, got "
                        f"{type(example_microbatch).__name__}")
    stages = pipeline_stages(model, num_stages, seed=seed, boundaries=boundaries)
    shapes = _meta_boundary_tensors(stages[: stage_index + 1], example_microbatch)
    module = stages[stage_index].to(device)
    stage = PipelineStage(module, stage_index, num_stages, torch.device(device), input_args=shapes[-2],
                          output_args=shapes[-1], group=group)
    return GPipeRun(ScheduleGPipe(stage, n_microbatches, loss_fn=loss_fn), stage, module)


__all__ = [
    "DistributedContext", "GPipeRun", "SeededLayer", "data_parallel", "gpipe", "init_distributed",
    "pipeline_layers", "pipeline_stages", "rank_seed", "seed_rank", "shard_indices", "stage_boundaries",
]
