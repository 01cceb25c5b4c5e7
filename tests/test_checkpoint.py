"""Checkpointed blocks change nothing: the same loss, output, every gradient and every BatchNorm running
statistic (torch.equal) as the block without checkpointing, for every block, mode, train and eval mode,
float32 and autocast; nothing random is drawn in backward; and the failures these guard against are real
(plain torch.utils.checkpoint gets them wrong on the same blocks)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint as torch_checkpoint
from torch.utils._python_dispatch import TorchDispatchMode

import cifarops
from cifarops.checkpoint import Checkpoint, checkpoint_mode
from cifarops.models import (
    FMPLayer, MaxoutConvLayer, PyramidBasicBlock, PyramidBottleneckBlock, ShakeShakeBlock, StochasticPoolConvLayer,
    WideBasicBlock,
)


class UserBlock(nn.Module):
    """A residual block of a user's own: torch's dropout and BatchNorm, cifarops's ShakeDrop and Shake-Shake."""

    def __init__(self, channels: int, checkpoint=False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.dropout = nn.Dropout(0.3)
        self.shake_shake = cifarops.ShakeShake()
        self.shake_drop = cifarops.ShakeDrop(0.5, level="pixel")

    def forward(self, x):
        h = self.dropout(F.relu(self.bn(x)))
        return self.shake_drop(self.shake_shake(self.conv1(h), self.conv2(h)), x)


# name -> (block factory taking checkpoint=..., input shape)
BLOCKS = {
    "pyramid_basic_pixel": (lambda ck: PyramidBasicBlock(8, 12, 1, 0.5, checkpoint=ck, level="pixel"), (4, 8, 8, 8)),
    "pyramid_basic_strided": (lambda ck: PyramidBasicBlock(8, 12, 2, 0.5, checkpoint=ck), (4, 8, 8, 8)),
    "pyramid_bottleneck": (lambda ck: PyramidBottleneckBlock(16, 6, 2, 0.5, checkpoint=ck, gate_level="sample"),
                           (4, 16, 8, 8)),
    "shake_shake_shortcut": (lambda ck: ShakeShakeBlock(8, 16, 2, checkpoint=ck), (4, 8, 8, 8)),
    "shake_shake_identity": (lambda ck: ShakeShakeBlock(8, 8, 1, checkpoint=ck, backward_mode="keep"), (4, 8, 8, 8)),
    "wide_dropout": (lambda ck: WideBasicBlock(8, 16, 2, dropout=0.3, checkpoint=ck), (4, 8, 8, 8)),
    "fmp_layer": (lambda ck: FMPLayer(4, 8, 2, 0.2, 5, checkpoint=ck), (4, 4, 9, 9)),
    "fmp_layer_random": (lambda ck: _random_fmp_layer(ck), (4, 4, 9, 9)),
    "maxout_layer": (lambda ck: MaxoutConvLayer(3, 4, 2, 3, 1, 2, 2, 0.5, checkpoint=ck), (4, 3, 8, 8)),
    "stochastic_pool_layer": (lambda ck: StochasticPoolConvLayer(3, 4, checkpoint=ck), (4, 3, 8, 8)),
    "user_block": (lambda ck: Checkpoint(UserBlock(8), ck) if checkpoint_mode(ck) != "none" else UserBlock(8),
                   (4, 8, 8, 8)),
}


def _random_fmp_layer(ck):
    layer = FMPLayer(4, 8, 2, 0.0, 5, checkpoint=ck)
    layer.pool.sequence = "random"
    layer.pool.per_image = False
    return layer


def make_pair(factory, mode):
    """The block without and with checkpointing, with equal weights."""
    torch.manual_seed(0)
    plain = factory(False)
    checkpointed = factory(mode)
    state = plain.state_dict()
    if isinstance(checkpointed, Checkpoint):
        checkpointed.block.load_state_dict(state)
    else:
        checkpointed.load_state_dict(state)
    return plain, checkpointed


def run_step(block, x, *, train=True, autocast=False, seed=1):
    """One forward and backward pass; returns everything a training step leaves behind."""
    block.train(train)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = block(x)
        loss = (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    loss.backward()
    grads = [p.grad for p in block.parameters()]
    buffers = [b.clone() for b in block.buffers()]
    return {"y": y.detach(), "loss": loss.detach(), "x.grad": x.grad, "grads": grads, "buffers": buffers}


def assert_identical(expected, actual):
    for key in ("y", "loss", "x.grad"):
        assert torch.equal(expected[key], actual[key]), key
    assert len(expected["grads"]) == len(actual["grads"])
    for i, (e, a) in enumerate(zip(expected["grads"], actual["grads"])):
        assert (e is None) == (a is None) and (e is None or torch.equal(e, a)), f"gradient {i}"
    assert len(expected["buffers"]) == len(actual["buffers"])
    for i, (e, a) in enumerate(zip(expected["buffers"], actual["buffers"])):
        assert torch.equal(e, a), f"buffer {i}"


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast_bf16"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode", ["full", "selective", "cheap"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_checkpointed_block_changes_nothing(name, mode, train, autocast):
    factory, shape = BLOCKS[name]
    plain, checkpointed = make_pair(factory, mode)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    expected = run_step(plain, x, train=train, autocast=autocast)
    actual = run_step(checkpointed, x, train=train, autocast=autocast)
    assert_identical(expected, actual)
    if train and any(isinstance(m, nn.BatchNorm2d) for m in plain.modules()):
        counters = [b for n, b in checkpointed.named_buffers() if n.endswith("num_batches_tracked")]
        assert counters and all(int(c) == 1 for c in counters)  # updated once, not again when recomputed


def test_second_step_and_retained_graph_still_identical():
    """Two steps in a row, and a backward pass run twice over a retained graph (two recomputations)."""
    plain, checkpointed = make_pair(BLOCKS["user_block"][0], "full")
    x = torch.randn(4, 8, 8, 8)
    for seed in (1, 2):
        assert_identical(run_step(plain, x, seed=seed), run_step(checkpointed, x, seed=seed))
    results = []
    for block in (plain, checkpointed):
        block.zero_grad()
        torch.manual_seed(3)
        y = block(x)
        y.sum().backward(retain_graph=True)
        y.square().sum().backward()
        results.append([p.grad.clone() for p in block.parameters()])
    for e, a in zip(*results):
        assert torch.equal(e, a)


def test_nested_checkpoints_replay_the_outer_draws():
    """A checkpointed model of checkpointed blocks: the inner blocks, recomputed inside the outer
    recomputation, get the outer tape's draws and record them, rather than drawing anew."""
    torch.manual_seed(0)
    plain = nn.Sequential(UserBlock(8), UserBlock(8))
    nested = Checkpoint(nn.Sequential(*[Checkpoint(copy.deepcopy(b)) for b in plain]))
    x = torch.randn(4, 8, 8, 8)
    expected, actual = run_step(plain, x), run_step(nested, x)
    for key in ("y", "loss", "x.grad"):
        assert torch.equal(expected[key], actual[key])
    for e, a in zip(expected["grads"], actual["grads"]):
        assert torch.equal(e, a)


def draws(func, args, kwargs) -> bool:
    """Whether an op call draws from torch's generators: a random op, or a cifarops op given no explicit
    rng_state (with one, as in a checkpoint's replay, it draws nothing)."""
    if torch.Tag.nondeterministic_seeded not in func.tags:
        return False
    names = [a.name for a in func._schema.arguments]
    if "rng_state" not in names:
        return True
    index = names.index("rng_state")
    return (args[index] if index < len(args) else kwargs.get("rng_state")) is None


class RandomOps(TorchDispatchMode):
    """Counts the random ops (torch's nondeterministic_seeded tag) and convolutions that run inside it."""

    def __init__(self):
        super().__init__()
        self.random = self.convolutions = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.random += draws(func, args, kwargs or {})
        self.convolutions += func is torch.ops.aten.convolution.default
        return func(*args, **(kwargs or {}))


def _count_in_backward(block, x):
    """The random ops and convolutions of a backward; counter.generator_moved: whether the CPU generator's
    state changed in it (a draw that no dispatch mode sees: the tape's RNG states are reserved in C++)."""
    torch.manual_seed(1)
    loss = block(x).sum()
    before = torch.get_rng_state()
    with RandomOps() as counter:
        loss.backward()
    counter.generator_moved = not torch.equal(before, torch.get_rng_state())
    return counter


@pytest.mark.parametrize("mode", ["full", "selective", "cheap"])
def test_nothing_random_is_drawn_in_backward(mode):
    block = PyramidBottleneckBlock(16, 6, 1, 0.5, checkpoint=mode, level="pixel")
    x = torch.randn(4, 16, 8, 8)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    block(x)
    assert not torch.equal(before, torch.get_rng_state())  # the oracle sees the draws: the states the tape records
    counter = _count_in_backward(block, x)
    assert counter.random == 0 and not counter.generator_moved
    # full mode recomputes all three convolutions; selective mode keeps the 1x1 narrowing and the 3x3
    # convolutions' outputs and recomputes only the widening 1x1 (6 -> 24 channels); cheap keeps all three
    assert counter.convolutions == {"full": 3, "selective": 1, "cheap": 0}[mode]


def test_plain_torch_checkpoint_redraws_in_backward():
    """The counter does see draws made inside backward: torch.utils.checkpoint alone redraws them."""
    block = PyramidBottleneckBlock(16, 6, 1, 0.5, level="pixel")
    wrapped = lambda x: torch_checkpoint.checkpoint(block, x, use_reentrant=False)  # noqa: E731
    assert _count_in_backward(wrapped, torch.randn(4, 16, 8, 8)).random >= 1


def test_plain_torch_checkpoint_gets_these_blocks_wrong():
    """What the tape and the BatchNorm guard fix: without torch's RNG restore the noise differs, and with it
    the running statistics are updated twice."""
    plain, checkpointed = make_pair(BLOCKS["pyramid_bottleneck"][0], "none")
    x = torch.randn(4, 16, 8, 8)
    expected = run_step(plain, x)

    class TorchCheckpointed(nn.Module):
        def __init__(self, block, preserve):
            super().__init__()
            self.block, self.preserve = block, preserve

        def forward(self, x):
            return torch_checkpoint.checkpoint(self.block, x, use_reentrant=False, preserve_rng_state=self.preserve)

    redrawn = run_step(TorchCheckpointed(copy.deepcopy(checkpointed), preserve=False), x)
    assert not all(torch.equal(e, a) for e, a in zip(expected["grads"], redrawn["grads"]))
    restored = TorchCheckpointed(copy.deepcopy(checkpointed), preserve=True)
    run_step(restored, x)
    counters = [b for n, b in restored.named_buffers() if n.endswith("num_batches_tracked")]
    assert all(int(c) == 2 for c in counters)


def test_inference_and_mode_none_do_not_checkpoint():
    block = PyramidBasicBlock(8, 12, 1, 0.5, checkpoint="full").eval()
    with torch.no_grad():
        y = block(torch.randn(2, 8, 4, 4))
    assert y.grad_fn is None
    assert checkpoint_mode(True) == "full" and checkpoint_mode(False) == checkpoint_mode(None) == "none"


@pytest.mark.parametrize("bad", ["partial", 2, "Full"])
def test_bad_checkpoint_mode_is_named(bad):
    with pytest.raises(ValueError, match="checkpoint must be"):
        PyramidBasicBlock(8, 12, 1, 0.5, checkpoint=bad)
    with pytest.raises(ValueError, match="checkpoint must be"):
        Checkpoint(nn.Identity(), bad)


def test_changed_control_flow_is_an_error():
    """A block that draws more while recomputed than in its forward pass (its training flag flipped between
    forward and backward) fails loudly instead of drawing fresh noise."""
    block = Checkpoint(UserBlock(8))
    block.eval()
    y = block(torch.randn(2, 8, 4, 4))
    block.train()
    with pytest.raises(RuntimeError, match="drew more noise"):
        y.sum().backward()
