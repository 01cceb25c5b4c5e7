"""Stochastic depth: hand-worked answers from SPEC.md (Huang's form and timm's / torchvision's scaled one),
every backend against the reference, the gate from the generator's Philox state, gradients, layouts, dtypes,
torch.library, torch.compile, torch.export and the checkpoint tape, bad input, and the gate's statistics."""

from __future__ import annotations

import re

import pytest
import torch

import cifarops
import cifarops.functional as F
from conftest import (COMPILE_BACKENDS, DTYPES, assert_close, assert_compiled_step_equals_eager, ids,
                      matches_reference, namespace_for)
from layouts import LAYOUTS, in_layout


def run(h, shortcut=None, grad=None, **kwargs):
    """Forward and backward; returns (y, dh, dshortcut)."""
    h = h.detach().requires_grad_()
    if shortcut is not None:
        shortcut = shortcut.detach().requires_grad_()
    y = F.stochastic_depth(h, shortcut, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, h.grad, None if shortcut is None else shortcut.grad


# ------------------------------------------------------------------------------------- hand-worked answers


@pytest.mark.parametrize("scale_by_keep, s", [(True, 1 / 0.75), (False, 1.0)], ids=["scaled", "huang"])
def test_known_answer_training(any_backend, scale_by_keep, s):
    """y = x + b * s * h with the gate given: sample 0 kept, sample 1 dropped; a shortcut of 2 of 3 channels."""
    device, _ = any_backend
    h = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]], [[[-1.0, 2.0]], [[0.5, 8.0]], [[4.0, -2.0]]]], device=device)
    x = torch.tensor([[[[10.0, 20.0]], [[30.0, 40.0]]], [[[1.0, 1.0]], [[2.0, 2.0]]]], device=device)
    grad = torch.arange(12.0, device=device).reshape(h.shape) - 3
    gate = torch.tensor([1.0, 0.0], device=device)
    y, dh, dx = run(h, x, grad, p=0.25, scale_by_keep=scale_by_keep, gate=gate)
    s = torch.tensor(s, dtype=torch.float32).item()  # s as the kernels hold it: rounded to float32
    expected_y = torch.tensor(
        [[[[10 + s, 20 + 2 * s]], [[30 + 3 * s, 40 + 4 * s]], [[5 * s, 6 * s]]], [[[1.0, 1.0]], [[2.0, 2.0]], [[0.0, 0.0]]]],
        device=device)
    assert_close(y, expected_y)
    assert_close(dh, torch.cat([grad[:1] * s, grad[1:] * 0]))
    torch.testing.assert_close(dx, grad[:, :2], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_known_answer_gate_from_philox(any_backend, mode):
    """The gate is u(n, stream 0) < 1 - p per sample (mode "row") or u(0, stream 0) for the batch, the same
    uniform as ShakeDrop's gate, from the call's RNG state; with s = 1 / (1 - p)."""
    device, _ = any_backend
    h = torch.randn(16, 3, 2, 2, device=device)
    state = torch.tensor([0x0123456789ABCDEF, 12], device=device)
    op = cifarops.backends.op("stochastic_depth", torch.device(device))
    y, used = op(h, None, 0.4, mode, True, True, None, state)
    assert torch.equal(used, state)
    index = torch.arange(16 if mode == "row" else 1, device=device)
    kept = (cifarops.philox.philox_uniform(state, index, stream=0) < 0.6).float().expand(16)
    assert 0 < kept.sum() < 16 or mode == "batch"
    assert_close(y, h * (kept * torch.tensor(1 / 0.6)).reshape(16, 1, 1, 1))


@pytest.mark.parametrize("scale_by_keep, factor", [(True, 1.0), (False, 0.7)], ids=["scaled", "huang"])
def test_known_answer_evaluation(any_backend, scale_by_keep, factor):
    device, _ = any_backend
    h = torch.tensor([[[[2.0]], [[4.0]]]], device=device)
    x = torch.tensor([[[[1.0]], [[-1.0]]]], device=device)
    y, dh, dx = run(h, x, p=0.3, scale_by_keep=scale_by_keep, training=False)
    assert_close(y, x + torch.tensor(factor, dtype=torch.float32).item() * h)
    assert_close(dh, torch.full_like(h, factor))
    torch.testing.assert_close(dx, torch.ones_like(x), rtol=0, atol=0)


def test_p_one_drops_everything_and_p_zero_nothing(any_backend):
    """p = 1 with scale_by_keep: y = x, not 0 * inf (SPEC.md); p = 0: y = x + h."""
    device, _ = any_backend
    h, x = torch.randn(4, 3, 2, 2, device=device), torch.randn(4, 3, 2, 2, device=device)
    y, dh, _ = run(h, x, p=1.0)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    torch.testing.assert_close(dh, torch.zeros_like(h), rtol=0, atol=0)
    y, dh, _ = run(h, x, p=0.0)
    assert_close(y, x + h)
    torch.testing.assert_close(dh, torch.ones_like(h), rtol=0, atol=0)


# ------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False], ids=["scaled", "huang"])
@pytest.mark.parametrize("shortcut_channels", [None, 6, 4])
def test_matches_reference_modes(kernel_backend, mode, scale_by_keep, shortcut_channels):
    device, _ = kernel_backend
    h = torch.randn(9, 6, 7, 3, device=device)
    x = None if shortcut_channels is None else torch.randn(9, shortcut_channels, 7, 3, device=device)
    matches_reference(run, h, x, p=0.5, mode=mode, scale_by_keep=scale_by_keep)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, shortcut_channels", [((4, 8, 5, 6), 5), ((4, 16, 4, 8), 8), ((3, 4, 32, 40), 4)],
                         ids=["scalar", "packets", "per-sample-grid"])
def test_matches_reference_dtypes_layouts(kernel_backend, dtype, layout, shape, shortcut_channels):
    """Odd rows (the CUDA kernel's scalar path), whole 16-byte packets, and samples of 5120 elements (the Triton
    per-sample grid, one draw per program)."""
    device, _ = kernel_backend
    h = in_layout(torch.randn(shape, device=device).to(dtype), layout)
    x = in_layout(torch.randn(shape[0], shortcut_channels, *shape[2:], device=device).to(dtype), layout)
    y, _, _ = matches_reference(run, h, x, p=0.3)
    if layout == "channels_last":  # the layout is kept, not silently converted
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(5, 7), (0, 3, 2, 2), (2, 3, 0, 4)], ids=["NC", "empty-batch", "empty-planes"])
def test_matches_reference_other_shapes(kernel_backend, shape):
    device, _ = kernel_backend
    matches_reference(run, torch.randn(shape, device=device), None, p=0.5)


def test_evaluation_and_explicit_gate_match_reference(kernel_backend):
    device, _ = kernel_backend
    h, x = torch.randn(3, 4, 3, 3, device=device), torch.randn(3, 4, 3, 3, device=device)
    matches_reference(run, h, x, p=0.2, scale_by_keep=False, training=False)
    matches_reference(run, h, x, p=0.2, gate=torch.tensor([0.0, 1.0, 1.0], device=device))
    matches_reference(run, h, None, p=0.2, gate=torch.tensor([1.0], dtype=torch.float64, device=device))


# ---------------------------------------------------------------------------------------------- gradients


def test_gradcheck(kernel_backend):
    """With the gate given, stochastic depth is linear in h and x, so gradcheck and gradgradcheck apply."""
    device, _ = kernel_backend
    h = torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(3, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    gate = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64, device=device)

    def fn(h, x):
        return F.stochastic_depth(h, x, p=0.3, gate=gate)

    assert torch.autograd.gradcheck(fn, (h, x))
    assert torch.autograd.gradgradcheck(fn, (h, x))
    assert torch.autograd.gradcheck(lambda h: F.stochastic_depth(h, p=0.3, scale_by_keep=False, training=False), (h,))


def test_only_the_state_is_saved_for_backward(kernel_backend):
    device, _ = kernel_backend
    h = torch.randn(8, 16, 8, 8, device=device, requires_grad=True)
    x = torch.randn(8, 16, 8, 8, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        F.stochastic_depth(h, x, p=0.2)
    assert saved == [2]  # the RNG state {seed, offset} alone: never the gate, h, x or y


def test_shortcut_gradient_is_the_incoming_gradient(kernel_backend):
    device, _ = kernel_backend
    h = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    x = torch.randn(2, 2, 3, 3, device=device, requires_grad=True)
    y = F.stochastic_depth(h, x, p=0.5)
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, [x], grad)
    torch.testing.assert_close(dx, grad[:, :2], rtol=0, atol=0)


def test_checkpointed_block_has_the_same_gradients(kernel_backend):
    """Under cifarops.checkpoint the forward's gate is recorded and replayed: outputs and gradients equal
    the block's without checkpointing, for the same seed."""
    device, _ = kernel_backend
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    layer = cifarops.StochasticDepth(0.5)

    def block(x):
        return layer(torch.relu(conv(x)), x)

    def step(checkpointed):
        x = torch.randn(6, 4, 5, 5, device=device, generator=torch.Generator(device).manual_seed(2)).requires_grad_()
        torch.manual_seed(5)
        y = cifarops.checkpoint.checkpoint(block, x) if checkpointed else block(x)
        grads = torch.autograd.grad(y.square().sum(), [x, conv.weight])
        return [y, *grads]

    for a, b in zip(step(True), step(False), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------- library and compiler


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    h = torch.randn(3, 4, 5, 5, device=device, requires_grad=True)
    x = torch.randn(3, 2, 5, 5, device=device, requires_grad=True)
    state = torch.tensor([42, 4], device=device)
    gate = torch.tensor([1.0, 0.0, 1.0], device=device)
    cases = [(h, x, 0.5, "row", True, True, None, state), (h, None, 0.2, "batch", False, True, gate, state),
             (in_layout(h.detach(), "channels_last").requires_grad_(), x, 0.5, "row", True, False, None, state)]
    for args in cases:
        torch.library.opcheck(ns.stochastic_depth, args)
        torch.library.opcheck(ns._stochastic_depth_backward, (args[0].detach(), state, *args[2:7]))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_fullgraph(device, backend):

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
            self.drop = cifarops.StochasticDepth(0.5)
            self.drop_batch = cifarops.StochasticDepth(0.3, "batch", scale_by_keep=False)

        def forward(self, x):
            return self.drop_batch(self.drop(self.conv(x), x))

    torch._dynamo.reset()
    block = Block().to(device)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(4, 4, 6, 6, device=device, requires_grad=True)
    with cifarops.use_backend(backend):
        assert_compiled_step_equals_eager(compiled, block, x, seed=11, backend=backend)
        block.eval()
        assert_close(compiled(x), block(x))


def test_torch_export_keeps_one_node():
    block = cifarops.StochasticDepth(0.5).eval()
    h, x = torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 3)
    with cifarops.use_backend("cpu"):
        exported = torch.export.export(block, (h, x))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.cifarops.stochastic_depth.default) == 1
    expected = h.clone()
    expected[:, :2] += x  # evaluation, scaled: y = x + h on the shortcut's channels, h beyond them
    torch.testing.assert_close(exported.module()(h, x), expected)


# ---------------------------------------------------------------------------------------------- noise


def test_same_seed_same_result_and_the_generator_moves(kernel_backend):
    device, _ = kernel_backend
    h = torch.randn(64, 2, 2, 2, device=device)
    torch.manual_seed(7)
    first, second = F.stochastic_depth(h, p=0.5), F.stochastic_depth(h, p=0.5)
    torch.manual_seed(7)
    torch.testing.assert_close(F.stochastic_depth(h, p=0.5), first, rtol=0, atol=0)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_gate_rate(kernel_backend, mode):
    """The kept fraction is 1 - p: per sample in one call of 4096 samples, per call over 400 calls at batch level."""
    device, _ = kernel_backend
    p = 0.3
    torch.manual_seed(3)
    if mode == "row":
        kept = F.stochastic_depth(torch.ones(4096, 1, device=device), p=p, scale_by_keep=False)
    else:
        kept = torch.cat([F.stochastic_depth(torch.ones(2, 1, device=device), p=p, mode="batch", scale_by_keep=False)[0]
                          for _ in range(400)])
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / kept.numel()) ** 0.5


def test_schedule_and_module(any_backend):
    assert cifarops.stochastic_depth_schedule(4) == [0.125, 0.25, 0.375, 0.5]
    assert cifarops.stochastic_depth_schedule(0) == []
    device, _ = any_backend
    layer = cifarops.StochasticDepth(0.25, "batch", scale_by_keep=False)
    assert repr(layer) == "StochasticDepth(p=0.25, mode='batch', scale_by_keep=False)"
    h, x = torch.randn(2, 3, 2, 2, device=device), torch.randn(2, 3, 2, 2, device=device)
    assert_close(layer.eval()(h, x), x + 0.75 * h)
    assert layer.train()(h).shape == h.shape


# ---------------------------------------------------------------------------------------------- bad input

BAD_INPUT = [
    ({"p": 1.5}, ValueError, "p must be a number in [0, 1]"),
    ({"p": -0.1}, ValueError, "p must be a number in [0, 1]"),
    ({"mode": "sample"}, ValueError, "mode must be one of ('row', 'batch')"),
    ({"gate": "ones"}, TypeError, "gate must be a torch.Tensor"),
    ({"gate": torch.ones(3)}, ValueError, "gate must have shape (1,) or (N,) = (2,)"),
    ({"gate": torch.ones(2, dtype=torch.int64)}, TypeError, "gate must be a floating-point tensor"),
    ({"gate": torch.ones(2), "training": False}, ValueError, "gate is training noise"),
    ({"shortcut": torch.ones(2, 5, 3, 3)}, ValueError, "shortcut has 5 channels, more than h's 4"),
    ({"shortcut": torch.ones(2, 4, 3, 3, dtype=torch.float64)}, TypeError, "shortcut must have h's dtype"),
    ({"h": torch.ones(4)}, ValueError, "h must have at least 2 dimensions"),
    ({"h": torch.ones(2, 4, dtype=torch.int32)}, TypeError, "h must be float32, float64, float16 or bfloat16"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_INPUT, ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_is_named_before_anything_is_drawn(any_backend, kwargs, error, message):
    device, _ = any_backend
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    h = kwargs.pop("h", torch.ones(2, 4, 3, 3, device=device))
    shortcut = kwargs.pop("shortcut", None)
    before = torch.get_rng_state()
    with pytest.raises(error, match="cifarops.stochastic_depth: " + re.escape(message)):
        F.stochastic_depth(h, shortcut, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)  # nothing drawn
