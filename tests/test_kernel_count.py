"""One call, one kernel (issue 16, item 5): counted with a TorchDispatchMode (cifarops.bench.kernels, shared
with the report's host-time section), a call of every layer, level and mode runs exactly one op in forward
and one in backward, in training and in evaluation. Views and allocations are left out (the lists are in
cifarops.bench.kernels); anything else counts: a torch.rand for the noise, a torch.full for an evaluation
constant, the zeros() autograd makes for the undefined gradient of an index output. FMP's random sequences
may use a second forward op for their boundary table.

Backward is counted for torch.autograd.grad of the output with respect to every differentiable input (the
shortcut's gradient included), the output gradient made outside the count.

Run on the compiled backends (cpu here; cuda on a GPU machine), whose autograd is in C++ and shared: the
Triton ops keep Python autograd and are not held to this.
"""

from __future__ import annotations

import pytest
import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.kernels import call_kernels

from conftest import KERNEL_BACKENDS, ids

COMPILED = [(d, b) for d, b in KERNEL_BACKENDS if b in ("cpu", "cuda")]
N, C, H, W = 2, 4, 4, 4


def leaves(device, *shapes):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=generator).to(device).requires_grad_() for s in shapes]


def assert_one_kernel_each(backend, forward, inputs, forward_allowed=1):
    """forward() runs `forward_allowed` counted ops and its backward exactly one, on `backend`."""
    with cifarops.use_backend(backend):
        counted = call_kernels(forward, inputs)
    ok = 1 <= len(counted.forward) <= forward_allowed and len(counted.backward) == 1
    assert ok, f"forward runs {counted.describe(counted.forward)}; backward runs {counted.describe(counted.backward)}"


# --- ShakeDrop -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shortcut", [None, C, C // 2], ids=["no-shortcut", "shortcut", "narrow-shortcut"])
@pytest.mark.parametrize("gate_level", F.GATE_LEVELS)
@pytest.mark.parametrize("level", F.LEVELS)
def test_shake_drop_one_kernel(device, backend, training, shortcut, gate_level, level):
    layer = cifarops.ShakeDrop(0.5, gate_level=gate_level, level=level).train(training)
    if shortcut is None:
        (h,) = leaves(device, (N, C, H, W))
        assert_one_kernel_each(backend, lambda: layer(h), [h])
    else:
        h, x = leaves(device, (N, C, H, W), (N, shortcut, H, W))
        assert_one_kernel_each(backend, lambda: layer(h, x), [h, x])


@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("shapes", [((1,), (1,), (1,)), ((N,), (N,), (N, C)), ((N,), (N, C, H, W), (N, C, H, W))],
                         ids=["batch", "sample-channel", "pixel"])
def test_shake_drop_explicit_noise_one_kernel(device, backend, shapes):
    h, x = leaves(device, (N, C, H, W), (N, C, H, W))
    gate_shape, alpha_shape, beta_shape = shapes
    gate = torch.ones(gate_shape, device=device)
    gate[0] = 0
    alpha = torch.rand(alpha_shape, device=device) * 2 - 1
    beta = torch.rand(beta_shape, device=device)
    assert_one_kernel_each(backend, lambda: F.shake_drop(h, x, gate=gate, alpha=alpha, beta=beta), [h, x])


# --- stochastic depth ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shortcut", [None, C, C // 2], ids=["no-shortcut", "shortcut", "narrow-shortcut"])
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False], ids=["scaled", "unscaled"])
def test_stochastic_depth_one_kernel(device, backend, training, shortcut, mode, scale_by_keep):
    layer = cifarops.StochasticDepth(0.3, mode, scale_by_keep).train(training)
    if shortcut is None:
        (h,) = leaves(device, (N, C, H, W))
        assert_one_kernel_each(backend, lambda: layer(h), [h])
    else:
        h, x = leaves(device, (N, C, H, W), (N, shortcut, H, W))
        assert_one_kernel_each(backend, lambda: layer(h, x), [h, x])
    gate = torch.tensor([1.0, 0.0], device=device)
    (h,) = leaves(device, (N, C, H, W))
    assert_one_kernel_each(backend, lambda: F.stochastic_depth(h, gate=gate), [h])


# --- Drop-Activation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("explicit", [False, True], ids=["drawn", "explicit-mask"])
@pytest.mark.parametrize("inplace", [False, True], ids=["", "inplace"])
def test_drop_activation_one_kernel(device, backend, training, explicit, inplace):
    (x,) = leaves(device, (N, C, H, W))
    mask = (torch.rand(N, C, H, W) < 0.5).to(device) if explicit and training else None
    if inplace:  # on a non-leaf copy of x made outside the count (its backward, CloneBackward, runs no kernel)
        h = x.clone()
        assert_one_kernel_each(backend, lambda: F.drop_activation(h, 0.9, training=training, mask=mask, inplace=True),
                               [x])
    else:
        assert_one_kernel_each(backend, lambda: F.drop_activation(x, 0.9, training=training, mask=mask), [x])


# --- Shake-Shake ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_shortcut", [False, True], ids=["no-shortcut", "shortcut"])
@pytest.mark.parametrize("level", F.SHAKE_LEVELS)
@pytest.mark.parametrize("backward_mode", F.SHAKE_BACKWARD_MODES)
@pytest.mark.parametrize("forward_mode", F.SHAKE_FORWARD_MODES)
def test_shake_shake_one_kernel(device, backend, training, with_shortcut, level, backward_mode, forward_mode):
    layer = cifarops.ShakeShake(forward_mode=forward_mode, backward_mode=backward_mode, level=level).train(training)
    tensors = leaves(device, *[(N, C, H, W)] * (3 if with_shortcut else 2))
    assert_one_kernel_each(backend, lambda: layer(*tensors), tensors)


@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("shape", [(1,), (N,)])
def test_shake_shake_explicit_noise_one_kernel(device, backend, shape):
    h1, h2, x = leaves(device, (N, C, H, W), (N, C, H, W), (N, C, H, W))
    alpha, beta = torch.rand(shape, device=device), torch.rand(shape, device=device)
    assert_one_kernel_each(backend, lambda: F.shake_shake(h1, h2, x, alpha=alpha, beta=beta), [h1, h2, x])


# --- maxout and probabilistic maxout --------------------------------------------------------------------------

MAXOUT_CASES = [((N, 8, H, W), 1, 2), ((N, 12, H, W), 1, 3), ((N, C, H, 6), -1, 2), ((N, 8), 1, 4)]


@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grouping", ["contiguous", "strided"])
@pytest.mark.parametrize("shape,dim,pieces", MAXOUT_CASES, ids=[f"{len(s)}d-dim{d}-k{k}" for s, d, k in MAXOUT_CASES])
def test_maxout_one_kernel(device, backend, training, grouping, shape, dim, pieces):
    layer = cifarops.Maxout(pieces, dim, grouping).train(training)
    (x,) = leaves(device, shape)
    assert_one_kernel_each(backend, lambda: layer(x), [x])


@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grouping", ["contiguous", "strided"])
@pytest.mark.parametrize("shape,dim,pieces", MAXOUT_CASES, ids=[f"{len(s)}d-dim{d}-k{k}" for s, d, k in MAXOUT_CASES])
def test_probabilistic_maxout_one_kernel(device, backend, training, grouping, shape, dim, pieces):
    layer = cifarops.ProbabilisticMaxout(pieces, dim, grouping, temperature=0.5).train(training)
    (x,) = leaves(device, shape)
    assert_one_kernel_each(backend, lambda: layer(x), [x])


# --- fractional max-pooling ----------------------------------------------------------------------------------

FMP_MODES = [
    dict(kernel_size=2),
    dict(kernel_size=(3, 2)),
    dict(kernel_size=2, return_indices=True),
    dict(regions="disjoint"),
    dict(regions="disjoint", per_image=True),
    dict(regions="overlapping", return_indices=True),
    dict(regions="disjoint", sequence="random"),
    dict(regions="overlapping", sequence="random", per_image=True),
]


def _fmp_label(kwargs):
    return "-".join(f"{k}={v}" for k, v in kwargs.items()).replace(" ", "")


@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kwargs", FMP_MODES, ids=[_fmp_label(k) for k in FMP_MODES])
def test_fractional_max_pool2d_one_kernel(device, backend, training, kwargs):
    layer = cifarops.FractionalMaxPool2d(output_size=(6, 6), **kwargs).train(training)
    (x,) = leaves(device, (N, C, 8, 8))
    allowed = 2 if kwargs.get("sequence") == "random" else 1  # the boundary table may be a second kernel
    assert_one_kernel_each(backend, lambda: layer(x), [x], forward_allowed=allowed)


def _boundaries(device, channels):
    """Disjoint 8 -> 6 sequences: increments 1, 1, 2, 1, 1, 2 on both axes, (N, channels, 2, 7) int64."""
    row = torch.tensor([0, 1, 2, 4, 5, 6, 8], device=device)
    return row.expand(N, channels, 2, 7).contiguous()


@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("explicit", ["samples", "samples-per-image", "disjoint-boundaries",
                                      "overlapping-boundaries-per-image"])
def test_fractional_max_pool2d_explicit_draws_one_kernel(device, backend, explicit):
    (x,) = leaves(device, (N, C, 8, 8))
    if explicit == "samples":
        samples = torch.rand(N, C, 2, device=device)
        call = lambda: F.fractional_max_pool2d(x, 2, output_size=(6, 6), _random_samples=samples)  # noqa: E731
    elif explicit == "samples-per-image":
        samples = torch.rand(N, 1, 2, device=device)
        call = lambda: F.fractional_max_pool2d(x, output_size=(6, 6), _random_samples=samples,  # noqa: E731
                                               regions="disjoint")
    elif explicit == "disjoint-boundaries":
        boundaries = _boundaries(device, C)
        call = lambda: F.fractional_max_pool2d(x, output_size=(6, 6), regions="disjoint",  # noqa: E731
                                               boundaries=boundaries)
    else:
        boundaries = _boundaries(device, 1)
        call = lambda: F.fractional_max_pool2d(x, output_size=(6, 6), regions="overlapping",  # noqa: E731
                                               sequence="random", boundaries=boundaries)
    assert_one_kernel_each(backend, call, [x])


# --- stochastic pooling -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", COMPILED, ids=ids(COMPILED))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("explicit", [False, True], ids=["drawn", "explicit-uniforms"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_stochastic_pool2d_one_kernel(device, backend, training, explicit, channels_last):
    (x,) = leaves(device, (N, C, 9, 9))
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    uniforms = torch.rand(N, C, 5, 5, device=device) if explicit and training else None
    assert_one_kernel_each(backend, lambda: F.stochastic_pool2d(x, 3, 2, 1, True, training=training,
                                                                uniforms=uniforms), [x])
