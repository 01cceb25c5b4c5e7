"""Data parallel and GPipe pipelines (cifarops.distributed) on the CPU with gloo, 2 processes launched by torchrun.

One torchrun launch (this file run as a script, `_worker`) does every distributed step and saves what it saw; the
tests compare it with single-process oracles computed here:

- DDP: each rank draws its own ShakeDrop noise (seed_rank) and normalises over its own half of the batch, so the
  right oracle is the mean of the gradients of the two half-batches, each computed here with the noise the
  corresponding rank drew (the same per-rank seed). Equality proves that DDP averaged exactly those two
  gradients, that rank r's noise is reproducible from (seed, r) and differs between ranks, and that every rank
  ends with the same gradient.
- GPipe: a small checkpointed ShakeDrop PyramidNet in 1 stage and in 2 stages (two different cut points), 4
  micro-batches: the same losses, gradients and BatchNorm statistics, bitwise (GPipe's guarantee: the split does
  not change the computation), and equal to a single process accumulating the mean of the micro-batch losses'
  gradients without any pipeline. Each layer's noise is seeded from (seed, layer, call) (SeededLayer), so the
  same micro-batch meets the same noise whichever process runs it; a different seed changes the gradients, so
  the noise is really there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cifarops
import cifarops.models as models
from cifarops import distributed as D
from cifarops import noise

SEED = 1234  # the run's seed: rank seeds and layer seeds derive from it
MODEL = dict(depth=8, alpha=6)  # PyramidNet-8 (basic blocks): 3 ShakeDrop blocks with p_drop 1/6, 1/3, 1/2
MICROBATCHES = 4
SPLITS = {"even": None, "late": [0, 4, 5]}  # 2-stage cut points over [stem, 3 blocks, head]; None: the default


def _small_pyramidnet(checkpoint=False):
    return models.create("pyramidnet110-a270-shakedrop", checkpoint=checkpoint, **MODEL)


def _grads_by_name(model: nn.Module, parameters) -> dict:
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: p.grad.clone() for p in parameters}


def _bn_stats(model: nn.Module, modules=None) -> dict:
    keep = None if modules is None else {id(b) for m in modules for b in m.buffers()}
    return {name: b.clone() for name, b in model.named_buffers() if keep is None or id(b) in keep}


# ------------------------------------------------------------------------------ the worker (one per rank)


def _worker(out_dir: Path) -> None:
    torch.set_num_threads(1)
    ctx = D.init_distributed(use_cuda=False)  # gloo on the CPU, also on a machine with fewer GPUs than ranks
    data = torch.load(out_dir / "inputs.pt")
    x, y, state = data["x"], data["y"], data["state"]
    saved = {"ctx": (ctx.rank, ctx.world_size, ctx.local_rank, str(ctx.device), ctx.backend)}

    # DDP: this rank's shard, this rank's noise (recorded on a tape to compare with the oracle's draws).
    model = _small_pyramidnet()
    model.load_state_dict(state)
    shard = D.shard_indices(len(x), ctx.rank, ctx.world_size, seed=SEED)
    D.seed_rank(SEED, ctx.rank)
    ddp = D.data_parallel(model, ctx)
    tape = noise.Tape()
    with noise.record(tape):
        loss = F.cross_entropy(ddp(x[shard]), y[shard])
    loss.backward()
    saved["ddp"] = dict(shard=shard, draws=tape.draws, grads=_grads_by_name(model, model.parameters()),
                        stats=_bn_stats(model))

    # GPipe over both ranks, at two cut points.
    for split, boundaries in SPLITS.items():
        model = _small_pyramidnet(checkpoint="full")
        model.load_state_dict(state)
        run = D.gpipe(model, stage_index=ctx.rank, num_stages=2, n_microbatches=MICROBATCHES,
                      loss_fn=F.cross_entropy, example_microbatch=x[:2], device=ctx.device, seed=SEED,
                      boundaries=boundaries)
        losses = []
        run.schedule.step(x if ctx.rank == 0 else None, target=y if ctx.rank == 1 else None, losses=losses)
        saved[split] = dict(losses=[l.detach() for l in losses], grads=_grads_by_name(model, run.module.parameters()),
                            stats=_bn_stats(model, [run.module]))

    # GPipe in one stage, on rank 0 alone (its own process group; every rank must create every group).
    alone = [torch.distributed.new_group([r]) for r in range(ctx.world_size)]
    if ctx.rank == 0:
        model = _small_pyramidnet(checkpoint="full")
        model.load_state_dict(state)
        run = D.gpipe(model, stage_index=0, num_stages=1, n_microbatches=MICROBATCHES, loss_fn=F.cross_entropy,
                      example_microbatch=x[:2], device=ctx.device, seed=SEED, group=alone[0])
        losses = []
        run.schedule.step(x, target=y, losses=losses)
        saved["one_stage"] = dict(losses=[l.detach() for l in losses], grads=_grads_by_name(model, model.parameters()),
                                  stats=_bn_stats(model))
    torch.save(saved, out_dir / f"rank{ctx.rank}.pt")
    torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------- the launch


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Runs the worker under torchrun (2 processes, gloo, a free port found by torchrun's standalone
    rendezvous) on inputs and weights made here; returns (inputs, rank 0's results, rank 1's results)."""
    out_dir = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    state = _small_pyramidnet().state_dict()
    inputs = dict(x=torch.randn(8, 3, 8, 8), y=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]), state=state)
    torch.save(inputs, out_dir / "inputs.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, str(out_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    results = [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]
    return inputs, results[0], results[1]


def test_torchrun_environment_gives_the_context(launched):
    _, rank0, rank1 = launched
    assert rank0["ctx"] == (0, 2, 0, "cpu", "gloo") and rank1["ctx"] == (1, 2, 1, "cpu", "gloo")


def _half_batch_step(inputs, rank):
    """The oracle of rank `rank`'s DDP step: its shard, its seed, one process, no DDP."""
    model = _small_pyramidnet()
    model.load_state_dict(inputs["state"])
    shard = D.shard_indices(len(inputs["x"]), rank, 2, seed=SEED)
    torch.manual_seed(D.rank_seed(SEED, rank))
    tape = noise.Tape()
    with noise.record(tape):
        loss = F.cross_entropy(model(inputs["x"][shard]), inputs["y"][shard])
    loss.backward()
    return shard, tape.draws, {n: p.grad for n, p in model.named_parameters()}, _bn_stats(model)


def test_ddp_gradients_are_the_mean_of_the_half_batch_gradients_with_each_rank_noise(launched):
    inputs, *ranks = launched
    oracle = [_half_batch_step(inputs, r) for r in range(2)]
    shards = [r["ddp"]["shard"] for r in ranks]
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.arange(8))  # disjoint halves of the batch
    for got, (shard, draws, _, stats) in zip(ranks, oracle):
        assert torch.equal(got["ddp"]["shard"], shard)
        assert len(got["ddp"]["draws"]) == len(draws) > 0
        assert all(torch.equal(a, b) for a, b in zip(got["ddp"]["draws"], draws))  # reproducible per rank
        for name, value in stats.items():  # BatchNorm normalised and tracked this rank's half only
            torch.testing.assert_close(got["ddp"]["stats"][name], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(oracle[0][1], oracle[1][1]))  # ranks draw different noise
    g0, g1 = oracle[0][2], oracle[1][2]
    assert max((g0[n] - g1[n]).abs().max() for n in g0) > 1e-3  # the halves disagree: the mean is a real test
    for name in g0:
        want = (g0[name] + g1[name]) / 2
        assert torch.equal(ranks[0]["ddp"]["grads"][name], ranks[1]["ddp"]["grads"][name])
        torch.testing.assert_close(ranks[0]["ddp"]["grads"][name], want, rtol=1e-5, atol=1e-6)


def _accumulated_step(inputs, seed):
    """The oracle of a GPipe step: one process runs the same layers on each micro-batch in turn and
    accumulates the gradient of the mean of the micro-batch losses."""
    model = _small_pyramidnet(checkpoint="full")
    model.load_state_dict(inputs["state"])
    (layers,) = D.pipeline_stages(model, 1, seed=seed)
    losses = []
    for xm, ym in zip(inputs["x"].tensor_split(MICROBATCHES), inputs["y"].tensor_split(MICROBATCHES)):
        loss = F.cross_entropy(layers(xm), ym)
        (loss / MICROBATCHES).backward()
        losses.append(loss.detach())
    return losses, {n: p.grad for n, p in model.named_parameters()}, _bn_stats(model)


def _merge(*parts) -> dict:
    merged = {}
    for part in parts:
        assert not set(part) & set(merged)  # each parameter lives on exactly one stage
        merged.update(part)
    return merged


def test_pipeline_gradients_do_not_depend_on_the_number_of_stages(launched):
    inputs, rank0, rank1 = launched
    one = rank0["one_stage"]
    names = {n for n, _ in _small_pyramidnet().named_parameters()}
    assert set(one["grads"]) == names
    for split in SPLITS:
        two = dict(losses=rank1[split]["losses"], grads=_merge(rank0[split]["grads"], rank1[split]["grads"]),
                   stats=_merge(rank0[split]["stats"], rank1[split]["stats"]))
        assert rank0[split]["losses"] == [] and len(two["losses"]) == MICROBATCHES
        assert all(torch.equal(a, b) for a, b in zip(two["losses"], one["losses"]))
        assert set(two["grads"]) == names
        for key in ("grads", "stats"):
            for name, value in one[key].items():
                assert torch.equal(two[key][name], value), (split, key, name)


def test_pipeline_equals_single_process_gradient_accumulation(launched):
    inputs, rank0, _ = launched
    one = rank0["one_stage"]
    losses, grads, stats = _accumulated_step(inputs, SEED)
    torch.testing.assert_close(torch.stack(one["losses"]), torch.stack(losses), rtol=1e-5, atol=1e-6)
    for name, value in grads.items():
        torch.testing.assert_close(one["grads"][name], value, rtol=1e-5, atol=1e-6)
    for name, value in stats.items():
        torch.testing.assert_close(one["stats"][name], value, rtol=1e-5, atol=1e-6)
    # The noise is there: another seed gives other gradients.
    _, other, _ = _accumulated_step(inputs, SEED + 1)
    assert max((other[n] - grads[n]).abs().max() for n in grads) > 1e-3


# ---------------------------------------------------------------------------- single-process pieces


@pytest.mark.parametrize("num_samples, world_size, epoch, shuffle, drop_last",
                         [(10, 4, 0, True, False), (10, 4, 3, True, True), (7, 3, 1, False, False),
                          (2, 4, 0, True, False), (8, 2, 5, True, True)])
def test_shards_are_distributed_samplers(num_samples, world_size, epoch, shuffle, drop_last):
    for rank in range(world_size):
        sampler = torch.utils.data.DistributedSampler(range(num_samples), world_size, rank, shuffle=shuffle,
                                                      seed=SEED, drop_last=drop_last)
        sampler.set_epoch(epoch)
        got = D.shard_indices(num_samples, rank, world_size, epoch=epoch, seed=SEED, shuffle=shuffle,
                              drop_last=drop_last)
        assert got.tolist() == list(sampler)


def test_rank_seeds_are_distinct_and_reproducible():
    seeds = [D.rank_seed(SEED, r) for r in range(64)] + [D.rank_seed(SEED + 1, r) for r in range(64)]
    assert len(set(seeds)) == 128 and all(0 <= s < 2**63 for s in seeds)
    assert D.seed_rank(SEED, 3) == D.rank_seed(SEED, 3) == torch.initial_seed()


# name -> (hyper-parameters, image size): small, except for the maxout net's image size, fixed by its linear layer.
ZOO_SMALL = {
    "fmp-graham-cifar10": (dict(filters=4, layers=4, input_size=12), 8),
    "maxout-goodfellow-cifar10": (dict(channels=(4, 4, 4), fc_units=8), 32),
    "stochastic-pool-zeiler-cifar10": (dict(filters=4, image_size=8), 8),  # 8 -> 4 -> 2 -> 1
}


@pytest.mark.parametrize("name", models.names())
def test_pipeline_layers_compose_to_the_model(name):
    """The cut is exact: the layers run one after the other give the model's output, in training mode (the
    same draws from the same seed, BatchNorm on the batch) and in evaluation."""
    overrides, size = ZOO_SMALL.get(name, (models.SMALL[name], 8))
    torch.manual_seed(0)
    model = models.create(name, **overrides)
    layers = D.pipeline_layers(model)
    params = {id(p) for layer in layers for p in layer.parameters()}
    assert params == {id(p) for p in model.parameters()}  # shared, not copied, and none left out
    x = torch.randn(2, 3, size, size)
    for train in (True, False):
        model.train(train)
        torch.manual_seed(1)
        want = model(x)
        torch.manual_seed(1)
        assert torch.equal(nn.Sequential(*layers)(x), want)


def test_seeded_layer_draws_by_call_and_leaves_the_generator_alone():
    layer = D.SeededLayer(cifarops.ShakeDrop(1.0, level="channel"), index=2, seed=SEED)  # gate closed: y = alpha * h
    h = torch.ones(4, 3, 2, 2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first, second = layer(h), layer(h)
    assert torch.equal(torch.get_rng_state(), state)  # the process's generator did not move
    assert not torch.equal(first, second)  # each call its own noise
    assert layer(torch.empty(4, 3, 2, 2, device="meta")).is_meta and layer.calls == 2  # shape inference: not counted
    torch.manual_seed(99)  # another global state changes nothing
    again = D.SeededLayer(layer.layer, index=2, seed=SEED)
    assert torch.equal(again(h), first) and torch.equal(again(h), second)
    again.reseed(SEED, calls=1)
    assert torch.equal(again(h), second)
    other = D.SeededLayer(layer.layer, index=3, seed=SEED)
    assert not torch.equal(other(h), first)


def test_stage_boundaries_and_stages():
    assert D.stage_boundaries(5, 2) == [0, 3, 5] and D.stage_boundaries(5, 1) == [0, 5]
    assert D.stage_boundaries(7, 3) == [0, 3, 5, 7]
    model = _small_pyramidnet()
    stages = D.pipeline_stages(model, 2, seed=7, boundaries=[0, 1, 5])
    assert [len(s) for s in stages] == [1, 4] and [l.index for s in stages for l in s] == [0, 1, 2, 3, 4]
    assert all(l.seed == 7 for s in stages for l in s)


def _gpipe(**changes):
    """gpipe() with valid arguments but `changes`: every check runs before any process group is needed."""
    arguments = dict(stage_index=0, num_stages=2, n_microbatches=2, loss_fn=F.cross_entropy,
                     example_microbatch=torch.empty(2, 3, 8, 8), device="cpu")
    return D.gpipe(_small_pyramidnet(), **{**arguments, **changes})


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: D.shard_indices(10, 2, 2), ValueError, r"rank must be an int in \[0, world_size = 2\)"),
        (lambda: D.shard_indices(10, 0, 0), ValueError, "world_size must be an int >= 1"),
        (lambda: D.shard_indices(-1, 0, 1), ValueError, "num_samples must be an int >= 0"),
        (lambda: D.rank_seed(1.5, 0), ValueError, "seed must be an int"),
        (lambda: D.stage_boundaries(3, 4), ValueError, r"num_stages \(4\) exceeds the number of layers \(3\)"),
        (lambda: D.pipeline_layers(nn.Linear(2, 2)), TypeError, "zoo model or an nn.Sequential, got Linear"),
        (lambda: D.pipeline_stages(_small_pyramidnet(), 2, boundaries=[0, 5, 5]), ValueError, "boundaries must rise"),
        (lambda: _gpipe(stage_index=2), ValueError, r"stage_index must be an int in \[0, num_stages = 2\)"),
        (lambda: _gpipe(n_microbatches=0), ValueError, "n_microbatches must be an int >= 1"),
        (lambda: _gpipe(loss_fn="mse"), TypeError, "loss_fn must be callable, got str"),
        (lambda: _gpipe(example_microbatch=(2, 3, 8, 8)), TypeError, "example_microbatch must be a tensor"),
        (lambda: D.data_parallel("model", None), TypeError, "model must be an nn.Module, got str"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_init_without_torchrun_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"\['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\] are not set"):
        D.init_distributed()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
