"""Bad input to checkpointing and the model zoo, and what a failing call must leave alone: its input and noise
tensors, module buffers (BatchNorm running statistics and batch counters) and torch's global generator.

tests/test_bad_input.py holds the table of the ops and their modules; this file adds the table of
checkpoint(), Checkpoint, models.create and the zoo's constructors and blocks, then the no-partial-write checks."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import cifarops
import cifarops.functional as F
from cifarops import models
from cifarops.checkpoint import Checkpoint, checkpoint
from cifarops.models import (
    FMPLayer, GoodfellowMaxoutNet, GrahamFMPNet, MaxoutConvLayer, PyramidBasicBlock, PyramidBottleneckBlock, PyramidNet,
    ShakeShakeBlock, ShakeShakeResNet, StochasticPoolConvLayer, WideBasicBlock, WideResNet, ZeilerStochasticPoolNet,
)

_GENERATOR = torch.Generator().manual_seed(0)  # the inputs' own: a row asserts the global one did not move


def randn(*shape, dtype=torch.float32, device="cpu"):
    if device == "meta":
        return torch.empty(*shape, dtype=dtype, device=device)
    return torch.randn(*shape, dtype=dtype, generator=_GENERATOR)


def conv_block(channels=8):
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())


def small(name, **kw):
    return models.create(name, **{**models.SMALL[name], **kw})


# Construction: (description, call, exception type, message fragment naming the argument). Building a model
# draws its initial weights, so these rows do not check the generator.
CONSTRUCTOR_CASES = [
    ("Checkpoint block", lambda: Checkpoint(torch.relu), TypeError, "block must be an nn.Module"),
    ("Checkpoint mode", lambda: Checkpoint(conv_block(), mode=3), ValueError, "checkpoint must be a bool or one of"),
    ("create unknown name", lambda: models.create("resnet18"), ValueError, "unknown model 'resnet18'"),
    ("create name None", lambda: models.create(None), ValueError, "unknown model None"),
    ("create num_classes bool", lambda: models.create("wrn28-10", num_classes=True), ValueError, "num_classes must be a positive int"),
    ("create num_classes float", lambda: models.create("wrn28-10", num_classes=10.0), ValueError, "num_classes must be a positive int"),
    ("create checkpoint", lambda: models.create("wrn28-10", checkpoint=2), ValueError, "checkpoint must be a bool or one of"),
    ("create unknown override", lambda: models.create("wrn28-10", deep=True), TypeError, "unexpected keyword argument 'deep'"),
    ("PyramidNet basic depth", lambda: PyramidNet(depth=13, bottleneck=False), ValueError, "depth must be 6 n + 2"),
    ("PyramidNet level", lambda: PyramidNet(depth=11, alpha=8, level="image"), ValueError, "level must be one of"),
    ("PyramidNet p_drop_last", lambda: PyramidNet(depth=11, alpha=8, p_drop_last=2.0), ValueError, "p_drop_last must be a number in [0, 1]"),
    ("PyramidNet backend", lambda: PyramidNet(depth=11, alpha=8, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ("ShakeShakeResNet odd width", lambda: ShakeShakeResNet(depth=8, width=15), ValueError, "out_channels must be even"),
    ("ShakeShakeResNet forward_mode", lambda: ShakeShakeResNet(depth=8, width=16, forward_mode="x"), ValueError, "forward_mode must be one of"),
    ("WideResNet depth", lambda: WideResNet(depth=11), ValueError, "depth must be 6 n + 4"),
    ("WideResNet dropout", lambda: WideResNet(depth=10, widen=1, dropout=1.5), ValueError, "dropout probability"),
    ("GrahamFMPNet input_size", lambda: GrahamFMPNet(filters=2, input_size=60), ValueError, "the last must be 2"),
    ("GrahamFMPNet backend", lambda: GrahamFMPNet(filters=2, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ("GoodfellowMaxoutNet backend", lambda: GoodfellowMaxoutNet(channels=(4, 4, 4), fc_units=4, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ("ZeilerStochasticPoolNet backend", lambda: ZeilerStochasticPoolNet(filters=2, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ("ZeilerStochasticPoolNet image_size", lambda: ZeilerStochasticPoolNet(filters=2, image_size=7), ValueError, "image_size 7 is too small for 3 layers"),
    ("ZeilerStochasticPoolNet image_size float", lambda: ZeilerStochasticPoolNet(filters=2, image_size=32.0), ValueError, "image_size must be an int"),
    ("PyramidBasicBlock p_drop", lambda: PyramidBasicBlock(8, 12, 1, 1.5), ValueError, "p_drop must be a number in [0, 1]"),
    ("PyramidBasicBlock checkpoint", lambda: PyramidBasicBlock(8, 12, 1, 0.5, checkpoint="some"), ValueError, "checkpoint must be"),
]


@pytest.mark.parametrize("backend", cifarops.available_backends("cpu"))
@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_bad_construction(backend, case):
    _, call, error, fragment = case
    with cifarops.use_backend(backend):
        with pytest.raises(error) as raised:
            call()
    assert fragment in str(raised.value)


# ------------------------------------------------------------------------------------ no partial writes


def snapshot(tensors):
    """Copies and version counters: the counter catches an in-place write even of the same values."""
    return [(t, t.detach().clone(), t._version) for t in tensors]


def assert_untouched(saved):
    for t, copy_, version in saved:
        assert t._version == version, "a failing call wrote into a tensor"
        assert torch.equal(t.detach().isnan(), copy_.isnan())
        assert torch.equal(t.detach().nan_to_num(0.0), copy_.nan_to_num(0.0))


def module_state(module):
    return snapshot(list(module.state_dict(keep_vars=True).values()))


# Calls: (description, make the callee, call it, exception type, message fragment). The callee is built
# first; the failing call must then leave its buffers, the input and torch's generator as they were.
CALL_CASES = [
    ("checkpoint mode", lambda: torch.relu, lambda f: checkpoint(f, randn(2, 3), mode="partial"), ValueError, "checkpoint must be a bool or one of"),
    ("checkpoint function", lambda: 42, lambda f: checkpoint(f, randn(2, 3)), TypeError, "function must be callable"),
    ("checkpoint modules of ints", lambda: torch.relu, lambda f: checkpoint(f, randn(2, 3), modules=[1]), TypeError, "modules must be an iterable of nn.Module"),
    ("checkpoint modules not iterable", lambda: torch.relu, lambda f: checkpoint(f, randn(2, 3), modules=5), TypeError, "modules must be an iterable of nn.Module"),
    ("Checkpoint wrong channels", lambda: Checkpoint(conv_block()), lambda m: m(randn(2, 5, 4, 4)), RuntimeError, "to have 8 channels"),
    ("PyramidBasicBlock channels", lambda: PyramidBasicBlock(8, 12, 1, 0.5), lambda m: m(randn(2, 5, 4, 4)), ValueError, "PyramidBasicBlock: x must have shape (N, 8, H, W)"),
    ("PyramidBasicBlock 3-D x", lambda: PyramidBasicBlock(8, 12, 1, 0.5), lambda m: m(randn(8, 4, 4)), ValueError, "x must have shape (N, 8, H, W)"),
    ("PyramidBottleneckBlock dtype", lambda: PyramidBottleneckBlock(8, 4, 1, 0.5), lambda m: m(randn(2, 8, 4, 4, dtype=torch.float64)), TypeError, "x must have the parameters' dtype torch.float32"),
    ("WideBasicBlock device", lambda: WideBasicBlock(8, 8, 1), lambda m: m(randn(2, 8, 4, 4, device="meta")), ValueError, "x is on meta but the block's parameters are on cpu"),
    ("WideBasicBlock not a tensor", lambda: WideBasicBlock(8, 8, 1), lambda m: m([1.0]), TypeError, "x must be a torch.Tensor"),
    ("ShakeShakeBlock device", lambda: ShakeShakeBlock(8, 8, 1), lambda m: m(randn(2, 8, 4, 4, device="meta")), ValueError, "ShakeShakeBlock: x is on meta"),
    ("MaxoutConvLayer channels", lambda: MaxoutConvLayer(3, 4, 2, 3, 1, 2, 2, 0.5), lambda m: m(randn(2, 4, 8, 8)), ValueError, "MaxoutConvLayer: x must have shape (N, 3, H, W)"),
    ("FMPLayer dtype", lambda: FMPLayer(3, 4, 2, 0.5, 4), lambda m: m(randn(2, 3, 8, 8, dtype=torch.bfloat16)), TypeError, "FMPLayer: x must have the parameters' dtype"),
    ("GoodfellowMaxoutNet image size", lambda: small("maxout-goodfellow-cifar10"), lambda m: m(randn(2, 3, 16, 16)), ValueError, "images must be 32x32"),
    ("ZeilerStochasticPoolNet image size", lambda: small("stochastic-pool-zeiler-cifar10"), lambda m: m(randn(2, 3, 16, 16)), ValueError, "ZeilerStochasticPoolNet: images must be 32x32"),
    ("StochasticPoolConvLayer channels", lambda: StochasticPoolConvLayer(3, 4), lambda m: m(randn(2, 4, 8, 8)), ValueError, "StochasticPoolConvLayer: x must have shape (N, 3, H, W)"),
    ("GrahamFMPNet image size", lambda: small("fmp-graham-cifar10"), lambda m: m(randn(1, 3, 96, 96)), ValueError, "images must be at most 94x94"),
    ("PyramidNet channels", lambda: small("pyramidnet110-a270-shakedrop"), lambda m: m(randn(2, 4, 8, 8)), RuntimeError, "to have 3 channels"),
]


@pytest.mark.parametrize("backend", cifarops.available_backends("cpu"))
@pytest.mark.parametrize("case", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_bad_call(backend, case):
    _, make, call, error, fragment = case
    callee = make()
    saved = module_state(callee) if isinstance(callee, nn.Module) else []
    rng_state = torch.get_rng_state()
    with cifarops.use_backend(backend):
        with pytest.raises(error) as raised:
            call(callee.train() if isinstance(callee, nn.Module) else callee)
    assert fragment in str(raised.value)
    assert_untouched(saved)
    assert torch.equal(torch.get_rng_state(), rng_state), "a failing call drew from torch's generator"


def noise_case(name):
    """(call, the tensors it must leave alone) for a call that fails after its first checks."""
    x = randn(4, 6, 5, 5).requires_grad_()
    shortcut, gate, alpha = randn(4, 6, 5, 5), torch.ones(4), torch.rand(4, 6, generator=_GENERATOR)
    samples = torch.rand(4, 6, 2, generator=_GENERATOR)
    bad = torch.full((4, 6, 2), 1.5)
    cases = {
        # Explicit noise is checked before the other noise is drawn.
        "shake_drop bad beta": (lambda: F.shake_drop(x, shortcut, alpha=alpha, beta=torch.ones(3)), [x, shortcut, alpha]),
        "shake_drop bad shortcut": (lambda: F.shake_drop(x, shortcut[:3], gate=gate), [x, shortcut, gate]),
        "shake_shake bad beta": (lambda: F.shake_shake(x, shortcut, x.detach(), beta=alpha), [x, shortcut, alpha]),
        "maxout indivisible": (lambda: F.maxout(x, 4), [x]),
        "probabilistic_maxout temperature": (lambda: F.probabilistic_maxout(x, 2, temperature=0.0), [x]),
        "fmp sample values": (lambda: F.fractional_max_pool2d(x, 2, output_size=3, _random_samples=bad), [x, bad]),
        "fmp sample shape": (lambda: F.fractional_max_pool2d(x, 2, output_size=3, _random_samples=samples[:, :2]), [x, samples]),
        "fmp boundary values": (lambda: F.fractional_max_pool2d(x, output_size=3, regions="disjoint",
                                                                boundaries=torch.zeros(4, 6, 2, 4, dtype=torch.int64)), [x]),
    }
    return cases[name]


# Each case's exception and a message fragment that both backends give (the C++ checks print sizes as lists).
NOISE_CASES = {
    "shake_drop bad beta": (ValueError, "shake_drop: beta must have shape (1,), (N,) = (4,), (N, C) = (4, 6) or h's shape"),
    "shake_drop bad shortcut": (ValueError, "shake_drop: shortcut must match h in batch and spatial sizes"),
    "shake_shake bad beta": (ValueError, "shake_shake: beta must have shape (1,) or (N,) = (4,), got (4, 6)"),
    "maxout indivisible": (ValueError, "maxout: x.shape[1] = 6 channels are not divisible by pieces = 4"),
    "probabilistic_maxout temperature": (ValueError, "probabilistic_maxout: temperature must be a positive number"),
    "fmp sample values": (ValueError, "samples must lie in [0, 1), got values from 1.5 to 1.5"),
    "fmp sample shape": (ValueError, "_random_samples must have shape (N, C, 2) or (N, 1, 2) with N = 4, C = 6, got (4, 2, 2)"),
    "fmp boundary values": (ValueError, "boundaries[..., 0, :] must start at 0 and reach the input size 5 at index 3"),
}


@pytest.mark.parametrize("backend", cifarops.available_backends("cpu"))
@pytest.mark.parametrize("name", NOISE_CASES)
def test_failing_calls_leave_inputs_noise_and_generator_alone(backend, name):
    call, tensors = noise_case(name)
    error, message = NOISE_CASES[name]
    saved, rng_state = snapshot(tensors), torch.get_rng_state()
    with cifarops.use_backend(backend), pytest.raises(error, match=re.escape(message)):
        call()
    assert_untouched(saved)
    assert torch.equal(torch.get_rng_state(), rng_state)


# Each block with the inputs that its first layer rejects, in training mode (BatchNorm counts batches and
# dropout draws before a wrong channel count, dtype or device is noticed by a later layer).
BLOCKS = {
    "PyramidBasicBlock": (lambda mode: PyramidBasicBlock(8, 12, 1, 0.5, checkpoint=mode), 8),
    "PyramidBottleneckBlock": (lambda mode: PyramidBottleneckBlock(8, 4, 2, 0.5, checkpoint=mode), 8),
    "ShakeShakeBlock": (lambda mode: ShakeShakeBlock(8, 12, 2, checkpoint=mode), 8),
    "WideBasicBlock": (lambda mode: WideBasicBlock(8, 12, 1, 0.3, checkpoint=mode), 8),
    "MaxoutConvLayer": (lambda mode: MaxoutConvLayer(8, 4, 2, 3, 1, 2, 2, 0.5, checkpoint=mode), 8),
    "FMPLayer": (lambda mode: FMPLayer(8, 8, 2, 0.5, 4, checkpoint=mode), 8),
    "StochasticPoolConvLayer": (lambda mode: StochasticPoolConvLayer(8, 4, checkpoint=mode), 8),
}
BAD_INPUTS = {
    "channels": lambda c: randn(2, c + 1, 6, 6),
    "float64": lambda c: randn(2, c, 6, 6, dtype=torch.float64),
    "bfloat16": lambda c: randn(2, c, 6, 6, dtype=torch.bfloat16),
    "meta": lambda c: randn(2, c, 6, 6, device="meta"),
}
# What a block's first check says of each (csrc-free: the blocks check in Python, models/blocks.py).
BLOCK_ERRORS = {
    "channels": (ValueError, "x must have shape (N, 8, H, W), got (2, 9, 6, 6)"),
    "float64": (TypeError, "x must have the parameters' dtype torch.float32 outside autocast, got torch.float64"),
    "bfloat16": (TypeError, "x must have the parameters' dtype torch.float32 outside autocast, got torch.bfloat16"),
    "meta": (ValueError, "x is on meta but the block's parameters are on cpu"),
}


@pytest.mark.parametrize("bad", BAD_INPUTS)
@pytest.mark.parametrize("mode", ["none", "full"])
@pytest.mark.parametrize("block", BLOCKS)
def test_bad_input_leaves_block_buffers_and_generator_alone(block, mode, bad):
    make, channels = BLOCKS[block]
    module = make(mode).train()
    x = BAD_INPUTS[bad](channels)
    saved, rng_state = module_state(module), torch.get_rng_state()
    error, message = BLOCK_ERRORS[bad]
    with pytest.raises(error, match=re.escape(f"{block}: {message}")):
        module(x.requires_grad_() if x.device.type == "cpu" else x)
    assert_untouched(saved)
    assert torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.parametrize("name", models.names())
def test_bad_input_leaves_zoo_models_alone(name):
    """A zoo model in training mode, with checkpointed blocks, given the wrong channel count or dtype."""
    model = small(name, checkpoint="full").train()
    size = 32 if name in ("maxout-goodfellow-cifar10", "stochastic-pool-zeiler-cifar10") else 16  # fixed by a linear layer
    saved, rng_state = module_state(model), torch.get_rng_state()
    first_block = {"fmp-graham-cifar10": "FMPLayer", "maxout-goodfellow-cifar10": "MaxoutConvLayer",
                   "stochastic-pool-zeiler-cifar10": "StochasticPoolConvLayer"}.get(name)
    for x in (randn(2, 4, size, size), randn(2, 3, size, size, dtype=torch.float64)):
        if first_block is not None:  # the first layer is a cifarops block, which checks its input
            error, message = ((ValueError, f"{first_block}: x must have shape (N, 3, H, W), got (2, 4,")
                              if x.shape[1] == 4 else
                              (TypeError, f"{first_block}: x must have the parameters' dtype torch.float32 outside "
                                          "autocast, got torch.float64"))
        else:  # a plain convolution stem: torch's own error
            error, message = ((RuntimeError, "expected input[2, 4, 16, 16] to have 3 channels, but got 4 channels")
                              if x.shape[1] == 4 else (RuntimeError, "expected scalar type Double but found Float"))
        with pytest.raises(error, match=re.escape(message)):
            model(x)
    assert_untouched(saved)
    assert torch.equal(torch.get_rng_state(), rng_state)


USER_BLOCKS = {
    "batch norm first": lambda: nn.Sequential(nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3)),
    "convolution first": conv_block,
}


@pytest.mark.parametrize("bad", BAD_INPUTS)
@pytest.mark.parametrize("user_block", USER_BLOCKS)
def test_checkpoint_adds_no_writes_to_a_user_block(user_block, bad):
    """A user's block cannot be checked for us: torch's BatchNorm counts a batch before it rejects a wrong
    channel count, and a convolution passes a meta input on to it. The Checkpoint wrapper must leave exactly
    what the block alone leaves, and the generator alone."""
    block = USER_BLOCKS[user_block]().train()
    wrapped = Checkpoint(copy.deepcopy(block))
    rng_state = torch.get_rng_state()
    writes, errors, x = [], [], BAD_INPUTS[bad](8)
    for module in (block, wrapped):
        before = [t._version for t in module.state_dict(keep_vars=True).values()]
        with pytest.raises(RuntimeError) as raised:  # torch's own layers' error
            module(x.requires_grad_() if x.device.type == "cpu" else x)
        errors.append(str(raised.value))
        writes.append([t._version - v for t, v in zip(module.state_dict(keep_vars=True).values(), before)])
    assert errors[0] == errors[1]  # the wrapper raises exactly what the block raises
    assert writes[0] == writes[1]
    for (name, a), b in zip(block.state_dict().items(), wrapped.block.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_fractional_max_pool_module_keeps_its_samples_buffer():
    samples = torch.rand(2, 3, 2, generator=_GENERATOR)
    layer = cifarops.FractionalMaxPool2d(2, output_size=4, _random_samples=samples)
    saved = module_state(layer)
    with pytest.raises(ValueError, match="_random_samples must have shape"):
        layer(randn(3, 3, 8, 8))  # a batch of 3 for samples of 2
    assert_untouched(saved)
