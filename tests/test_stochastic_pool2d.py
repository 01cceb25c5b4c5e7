"""Stochastic pooling: hand-worked answers (the paper's figure, SPEC.md's rule), every backend against the reference
(dtypes, layouts, padding, ceil mode; property-based with ties, zeros, NaN and inf), where it reduces to max and
average pooling, the draw's frequencies, gradients, torch.library, torch.compile, torch.export, the checkpoint
tape, what backward saves, bad input and determinism."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import strategies as st

import cifarops
import cifarops.functional as F
from cifarops.reference import stochastic_pool2d_backward, stochastic_pool2d_sample
from conftest import (COMPILE_BACKENDS, DTYPES, assert_close, assert_compiled_step_equals_eager, deterministic, ids,
                      namespace_for)
from layouts import LAYOUTS, in_layout
from test_properties import assert_same, check, count_hypothesis_example, draw_tensor, on_backend_and_reference

def run(x, grad=None, **kwargs):
    """Forward and backward of F.stochastic_pool2d; returns (y, dx)."""
    x = x.detach().requires_grad_()
    y = F.stochastic_pool2d(x, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, x.grad


def one_region(values, device):
    return torch.tensor(values, dtype=torch.float32, device=device).reshape(1, 1, *torch.tensor(values).shape)


# ------------------------------------------------------------------------------------- hand-worked answers

# Zeiler & Fergus, figure 1: the rectified activations of a 3 x 3 region and their probabilities 0.4 and 0.6.
PAPER_REGION = [[1.6, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.4]]


@pytest.mark.parametrize("u, value, offset", [(0.0, 1.6, 0), (0.39, 1.6, 0), (0.41, 2.4, 8), (0.999, 2.4, 8)])
def test_papers_region_draws_in_proportion_to_the_activations(any_backend, u, value, offset):
    """p = a / sum a = (0.4, 0.6): u below 0.4 draws 1.6, above it 2.4; the gradient goes to the drawn element."""
    device, _ = any_backend
    x = one_region(PAPER_REGION, device)
    y, dx = run(x, kernel_size=3, uniforms=torch.full((1, 1, 1, 1), u, device=device))
    torch.testing.assert_close(y.flatten(), torch.tensor([value], device=device))
    assert dx.flatten().tolist() == [1.0 if i == offset else 0.0 for i in range(9)]


def test_papers_region_evaluation_is_the_probabilistic_weighting(any_backend):
    """0.4 * 1.6 + 0.6 * 2.4 = 2.08; the gradient (2 a_i - f) / S: (3.2 - 2.08) / 4 and (4.8 - 2.08) / 4, 0 for the
    zeros (a ReLU's inactive inputs)."""
    device, _ = any_backend
    y, dx = run(one_region(PAPER_REGION, device), kernel_size=3, training=False)
    torch.testing.assert_close(y.flatten(), torch.tensor([2.08], device=device))
    want = torch.zeros(9, device=device)
    want[0], want[8] = (3.2 - 2.08) / 4, (4.8 - 2.08) / 4
    torch.testing.assert_close(dx.flatten(), want)


def test_the_running_sum_rule_and_negative_activations(any_backend):
    """Region (1, -5, 2, 3) with a = (1, 0, 2, 3), S = 6: the first element whose running sum exceeds 6 u, never
    the negative one (weight 0), and u * S rounding up to S still draws the last positive element."""
    device, _ = any_backend
    x = one_region([[1.0, -5.0], [2.0, 3.0]], device)
    cases = [(0.0, 1.0, 0), (1 / 6 - 0.01, 1.0, 0), (1 / 6 + 0.01, 2.0, 2), (0.5 + 0.01, 3.0, 3),
             (1 - 2**-24, 3.0, 3)]
    op = cifarops.backends.op("stochastic_pool2d", torch.device(device))
    for u, value, offset in cases:
        y, chosen, state = op(x, [2, 2], [2, 2], [0, 0], False, torch.full((1, 1, 1, 1), u, device=device), None)
        assert (y.item(), chosen.item()) == (value, offset), u
        assert state.tolist() == [0, 0]  # explicit uniforms: nothing drawn


def test_a_region_without_positive_activation_outputs_zero_and_passes_no_gradient(any_backend):
    device, _ = any_backend
    x = one_region([[-1.0, 0.0], [-2.0, -0.0]], device)
    for training in (True, False):
        y, dx = run(x, kernel_size=2, training=training)
        assert y.item() == 0.0 and not dx.any()
    op = cifarops.backends.op("stochastic_pool2d", torch.device(device))
    assert op(x, [2, 2], [2, 2], [0, 0], False, None, None)[1].item() == 255


def test_nan_and_inf_propagate(any_backend):
    """A NaN in a region is drawn (its first NaN) and gives a NaN expectation; +inf takes all the probability."""
    device, _ = any_backend
    x = one_region([[1.0, math.nan, 2.0, math.inf, math.nan]], device).reshape(1, 1, 1, 5)
    y, dx = run(x, kernel_size=(1, 5))
    assert math.isnan(y.item()) and dx.flatten().tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert math.isnan(F.stochastic_pool2d(x, (1, 5), training=False).item())
    x = one_region([[1.0, 2.0, math.inf, 5.0]], device)
    y, dx = run(x, kernel_size=(1, 4), uniforms=torch.zeros(1, 1, 1, 1, device=device))
    assert y.item() == math.inf and dx.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    y, dx = run(x, kernel_size=(1, 4), training=False)
    assert y.item() == math.inf and not dx.any()


def test_padding_and_ceil_mode_regions_are_max_pool2ds(any_backend):
    """The regions are max_pool2d's (padding, ceil mode): where a region has one positive element, both modes give
    max_pool2d of the ReLU; where every element of a region is the same c > 0, both give c, avg_pool2d's."""
    device, _ = any_backend
    g = torch.Generator().manual_seed(0)
    for kernel, stride, padding, ceil in [(3, 2, 0, False), (3, 2, 1, True), ((2, 3), (1, 2), (1, 0), False),
                                          (2, 2, 0, True)]:
        kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil)
        x = -torch.rand(2, 3, 9, 8, generator=g) - 0.1
        x[..., ::3, ::3] = torch.rand(2, 3, 3, 3, generator=g) + 0.5  # sparse positive elements
        x = x.to(device)
        positives = torch.nn.functional.avg_pool2d((x > 0).float(), **kwargs, divisor_override=1)
        single = positives <= 1
        assert single.float().mean() > 0.5
        want = torch.nn.functional.max_pool2d(x.relu(), **kwargs)
        for training in (True, False):
            y = F.stochastic_pool2d(x, training=training, **kwargs)
            assert y.shape == want.shape
            torch.testing.assert_close(y[single], want[single])
        c = torch.full((2, 3, 9, 8), 0.75, device=device)
        for training in (True, False):
            torch.testing.assert_close(F.stochastic_pool2d(c, training=training, **kwargs),
                                       torch.nn.functional.avg_pool2d(c, **kwargs, count_include_pad=False))


def test_a_1x1_kernel_is_the_relu(any_backend):
    device, _ = any_backend
    x = torch.randn(2, 3, 4, 5, device=device)
    for training in (True, False):
        y, dx = run(x, kernel_size=1, training=training)
        exact = 0 if training else None  # evaluation: a^2 / a, rounded twice
        torch.testing.assert_close(y, x.relu(), rtol=exact, atol=exact)
        torch.testing.assert_close(dx, (x > 0).float(), rtol=exact, atol=exact)  # (2a - a) / a = 1 in evaluation


# ------------------------------------------------------------------------------------- every backend


CASES = [((3, 3), (2, 2), (0, 0), False), ((3, 3), (2, 2), (1, 1), True), ((2, 3), (1, 2), (1, 0), False),
         ((3, 2), (3, 1), (1, 1), True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[f"k{c[0]}s{c[1]}p{c[2]}{'ceil' if c[3] else ''}" for c in CASES])
def test_matches_reference(kernel_backend, dtype, layout, case):
    """The same draws as the reference (offsets equal exactly), the same outputs and gradients in both modes, the
    input's layout kept."""
    device, _ = kernel_backend
    kernel, stride, padding, ceil = case
    x = in_layout(torch.randn(3, 5, 11, 10, device=device).to(dtype), layout)
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil)
    grad = torch.randn(F.stochastic_pool2d(x, training=False, **kwargs).shape, device=device).to(dtype)
    state = torch.tensor([987654321, 20], device=device)
    op = cifarops.backends.op("stochastic_pool2d", torch.device(device))
    y, offset, used = op(x, list(kernel), list(stride), list(padding), ceil, None, state)
    want_y, want_offset = stochastic_pool2d_sample(x, kernel, stride, padding, ceil, None, state)
    assert torch.equal(offset, want_offset) and torch.equal(used, state)
    assert_close(y, want_y)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    grad_x = namespace_for(kernel_backend[1])._stochastic_pool2d_backward(grad, offset, list(x.shape[2:]),
                                                                           list(kernel), list(stride), list(padding),
                                                                           ceil)
    assert_close(grad_x, stochastic_pool2d_backward(grad, want_offset, x.shape[2:], kernel, stride, padding, ceil))
    for training in (True, False):
        torch.manual_seed(3)
        got = run(x, grad, training=training, **kwargs)
        torch.manual_seed(3)
        with cifarops.use_backend("reference"):
            want = run(x, grad, training=training, **kwargs)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert_close(a, b)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "expanded"], ids=str)
def test_explicit_uniforms_in_another_layout_than_x(kernel_backend, layout):
    """The uniforms are read at each output's logical position whatever their strides and x's layout."""
    device, _ = kernel_backend
    x = torch.randn(2, 3, 9, 9, device=device).contiguous(memory_format=torch.channels_last)
    u = torch.rand(2, 3, 4, 4, device=device)
    if layout == "channels_last":
        x, u = x.contiguous(), u.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        u = u.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        u = u[:1].expand(2, 3, 4, 4)
    op = cifarops.backends.op("stochastic_pool2d", torch.device(device))
    y, offset, _ = op(x, [3, 3], [2, 2], [0, 0], False, u, None)
    want_y, want_offset = stochastic_pool2d_sample(x, (3, 3), (2, 2), (0, 0), False, u.contiguous(), None)
    assert torch.equal(offset, want_offset) and torch.equal(y, want_y)


def test_property_matches_reference(kernel_backend):
    """Any shape, kernel, stride, padding and ceil mode, with ties, zeros, NaN and inf, in every layout: the same
    draws as the reference and the same values (NaN equal NaN) in both modes."""
    device, backend = kernel_backend

    def body(data):
        count_hypothesis_example()
        kh, kw = data.draw(st.integers(1, 4), label="kh"), data.draw(st.integers(1, 4), label="kw")
        sh, sw = data.draw(st.integers(1, 3), label="sh"), data.draw(st.integers(1, 3), label="sw")
        ph, pw = data.draw(st.integers(0, kh // 2), label="ph"), data.draw(st.integers(0, kw // 2), label="pw")
        ceil = data.draw(st.booleans(), label="ceil_mode")
        h, w = data.draw(st.integers(max(1, kh - 2 * ph), 12), label="H"), data.draw(st.integers(max(1, kw - 2 * pw), 12),
                                                                                     label="W")
        shape = (data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 6), label="C"), h, w)
        dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
        x = draw_tensor(data, shape, dtype, device, "x")
        training = data.draw(st.booleans(), label="training")
        kwargs = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), ceil_mode=ceil, training=training)

        def once():
            leaf = x.detach().clone().requires_grad_()
            y = F.stochastic_pool2d(leaf, **kwargs)
            y.backward(torch.ones_like(y))
            return y, leaf.grad

        got, want = on_backend_and_reference(backend, 7, once)
        # Training: selections, and gradients of ones summed (exact in any order); evaluation rounds.
        assert_same(got, want, exact=training and dtype != torch.float16 and dtype != torch.bfloat16,
                    condition=10.0)

    check(backend, body)


def test_gradcheck_and_gradgradcheck(kernel_backend):
    device, _ = kernel_backend
    # small (each input costs gradcheck two calls; the Triton interpreter runs each in Python), still with padding,
    # ceil mode and overlapping windows
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    state = torch.tensor([11, 4], device=device)
    op = cifarops.backends.op("stochastic_pool2d", torch.device(device))
    train = lambda t: op(t, [3, 3], [2, 2], [1, 1], True, None, state)[0]  # noqa: E731
    assert torch.autograd.gradcheck(train, (x,))
    assert torch.autograd.gradgradcheck(train, (x,), fast_mode=True)  # a random projection of the full Jacobian
    evaluate = lambda t: F.stochastic_pool2d(t, 3, 2, 1, training=False)  # noqa: E731
    # away from kinks: every element positive (a ReLU's corner at 0 has no derivative)
    assert torch.autograd.gradcheck(evaluate, (x.detach().abs().add(0.1).requires_grad_(),))


def test_only_the_offsets_are_saved(kernel_backend):
    """Training saves one byte per output (the drawn offset), nothing input-sized."""
    device, _ = kernel_backend
    x = torch.randn(4, 6, 15, 15, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = F.stochastic_pool2d(x, 3, 2)
    assert [(t.dtype, t.shape) for t in saved] == [(torch.uint8, y.shape)]


def test_same_seed_same_draws_and_frequencies(kernel_backend):
    """The same seed draws the same elements; over many draws each element of a region is drawn with probability
    a_i / sum a (within 5 standard errors)."""
    device, _ = kernel_backend
    a = torch.tensor([0.5, 0.0, 1.0, 2.0, -1.0, 0.5], device=device).reshape(1, 1, 2, 3)
    x = a.expand(8000, 1, 2, 3).contiguous()
    torch.manual_seed(1)
    y1 = F.stochastic_pool2d(x, (2, 3))
    torch.manual_seed(1)
    y2 = F.stochastic_pool2d(x, (2, 3))
    assert torch.equal(y1, y2) and not torch.equal(y1, F.stochastic_pool2d(x, (2, 3)))
    p = a.relu().flatten() / a.relu().sum()
    for value in (0.5, 1.0, 2.0):
        expected = p[a.flatten() == value].sum().item()
        frequency = (y1 == value).float().mean().item()
        assert abs(frequency - expected) < 5 * math.sqrt(expected * (1 - expected) / x.shape[0]), value


def test_module_unbatched_input_and_checkpoint(any_backend):
    device, _ = any_backend
    pool = cifarops.StochasticPool2d(3, 2, padding=1, ceil_mode=True)
    assert repr(pool) == "StochasticPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True)"
    x = torch.rand(2, 4, 9, 9, device=device)
    torch.manual_seed(0)
    batched = pool(x)
    torch.manual_seed(0)
    unbatched = pool(x[0])
    torch.manual_seed(0)
    assert torch.equal(unbatched, F.stochastic_pool2d(x[:1], 3, 2, 1, True)[0])
    assert batched.shape == (2, 4, 5, 5)
    pool.eval()
    torch.testing.assert_close(pool(x), F.stochastic_pool2d(x, 3, 2, 1, True, training=False))
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    pool.train()

    def step(checkpointed):
        torch.manual_seed(5)
        h = torch.randn(2, 4, 9, 9, device=device, requires_grad=True)
        block = lambda t: pool(conv(t).relu())  # noqa: E731
        y = cifarops.checkpoint.checkpoint(block, h) if checkpointed else block(h)
        return [y, *torch.autograd.grad(y.square().sum(), [h, conv.weight])]

    for a, b in zip(step(True), step(False), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_deterministic_backward(kernel_backend):
    """The backward gathers (no atomics): two runs agree bit for bit, under use_deterministic_algorithms too."""
    device, _ = kernel_backend
    x = torch.randn(4, 8, 11, 11, device=device)  # stride 1: each input in up to nine windows
    with deterministic():
        torch.manual_seed(2)
        first = run(x, kernel_size=3, stride=1)
        torch.manual_seed(2)
        second = run(x, kernel_size=3, stride=1)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    x = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
    state = torch.tensor([42, 4], device=device)
    uniforms = torch.rand(2, 3, 5, 5, device=device)
    for t in (x, in_layout(x.detach(), "channels_last").requires_grad_()):
        for args in [(t, [3, 3], [2, 2], [1, 1], True, None, state), (t, [3, 2], [2, 2], [1, 0], False, None, None),
                     (t, [3, 3], [2, 2], [1, 1], True, uniforms, None)]:
            torch.library.opcheck(ns.stochastic_pool2d, args)
        y, offset, _ = ns.stochastic_pool2d(t, [3, 3], [2, 2], [1, 1], True, None, state)
        g = torch.randn_like(y)
        torch.library.opcheck(ns._stochastic_pool2d_backward, (g, offset, list(t.shape[2:]), [3, 3], [2, 2], [1, 1],
                                                               True))
        torch.library.opcheck(ns.stochastic_pool2d_expectation, (t, [3, 3], [2, 2], [1, 1], True))
        torch.library.opcheck(ns._stochastic_pool2d_expectation_backward, (g, t.detach(), [3, 3], [2, 2], [1, 1],
                                                                           True))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                cifarops.StochasticPool2d(3, 2, ceil_mode=True), torch.nn.Conv2d(6, 4, 1)).to(device)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 3, 10, 10, device=device, requires_grad=True)
    with cifarops.use_backend(backend):
        assert_compiled_step_equals_eager(compiled, block, x, seed=11, backend=backend)
        block.eval()
        assert_close(compiled(x), block(x))


def test_torch_export_keeps_one_node():
    layer = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(), cifarops.StochasticPool2d(3, 2)).eval()
    x = torch.randn(2, 4, 9, 9)
    with cifarops.use_backend("cpu"):
        exported = torch.export.export(layer, (x,))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.cifarops.stochastic_pool2d_expectation.default) == 1
    torch.testing.assert_close(exported.module()(x), layer(x))


# ---------------------------------------------------------------------------------------------- bad input

BAD_INPUT = [
    ({"kernel_size": 0}, ValueError, "kernel_size must be positive, got (0, 0)"),
    ({"kernel_size": 16}, ValueError, "kernel_size (16, 16) has more than 255 elements"),
    ({"kernel_size": (2**32, 1), "stride": 1}, ValueError, "kernel_size (4294967296, 1) has more than 255 elements"),
    ({"stride": 2**32}, ValueError, "stride must be positive and below 2^31, got (4294967296, 4294967296)"),
    ({"x": torch.ones(2, 4, 0, 5), "padding": 1}, ValueError, "x must have a positive spatial size, got (0, 5)"),
    ({"kernel_size": (2, 2.0)}, TypeError, "kernel_size must hold ints"),
    ({"kernel_size": (1, 2, 3)}, ValueError, "kernel_size must be a pair (height, width)"),
    ({"stride": 0}, ValueError, "stride must be positive and below 2^31, got (0, 0)"),
    ({"padding": 2}, ValueError, "padding (2, 2) must be non-negative and at most half of kernel_size (3, 3)"),
    ({"padding": -1}, ValueError, "padding (-1, -1) must be non-negative"),
    ({"ceil_mode": 1}, TypeError, "ceil_mode must be a bool"),
    ({"x": torch.ones(2, 4, 2, 2)}, ValueError, "x of spatial size (2, 2) is too small for kernel_size (3, 3)"),
    ({"x": torch.ones(2, 4, 5, 5, dtype=torch.int32)}, TypeError, "x must be float32, float64, float16 or bfloat16"),
    ({"x": torch.ones(1, 2, 4, 5, 5)}, ValueError, "x must be 4-dimensional (N, C, H, W)"),
    ({"uniforms": torch.rand(2, 4, 3, 3)}, ValueError, "uniforms must have the output's shape (2, 4, 2, 2)"),
    ({"uniforms": torch.rand(2, 4, 2, 2, dtype=torch.float64)}, TypeError, "uniforms must be float32"),
    ({"uniforms": torch.rand(2, 4, 2, 2), "training": False}, ValueError, "uniforms are training noise"),
    ({"uniforms": [0.5]}, TypeError, "uniforms must be a torch.Tensor"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_INPUT, ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_is_named_before_anything_is_drawn(any_backend, kwargs, error, message):
    device, _ = any_backend
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    x = kwargs.pop("x", torch.ones(2, 4, 5, 5, device=device))
    call = {"kernel_size": 3, "stride": 2, **kwargs}
    def states():
        return [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if device == "cuda" else [])

    before = states()
    with pytest.raises(error, match=re.escape("cifarops.stochastic_pool2d: " + message)):
        F.stochastic_pool2d(x, **call)
    assert all(torch.equal(a, b) for a, b in zip(states(), before, strict=True))


def test_evaluations_second_derivative_is_an_error_on_every_backend(any_backend):
    """Double backward through the weighting is not implemented: an error naming the op, never a silent None; the
    first derivative with create_graph=True works."""
    device, _ = any_backend
    x = torch.rand(2, 3, 7, 7, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(F.stochastic_pool2d(x, 3, 2, training=False).square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=re.escape("cifarops.stochastic_pool2d: the second derivative")):
        torch.autograd.grad(grad.sum(), x)


def test_module_checks_its_settings_at_construction():
    for kwargs, error, message in [(dict(kernel_size=0), ValueError, "kernel_size must be positive"),
                                   (dict(kernel_size=3, padding=2), ValueError, "padding (2, 2) must be non-negative"),
                                   (dict(kernel_size=3, stride=0), ValueError, "stride must be positive"),
                                   (dict(kernel_size=3, ceil_mode="yes"), TypeError, "ceil_mode must be a bool")]:
        with pytest.raises(error, match=re.escape("cifarops.StochasticPool2d: " + message)):
            cifarops.StochasticPool2d(**kwargs)


def test_backward_ops_check_their_arguments(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    g = torch.ones(2, 4, 2, 2, device=device)
    offset = torch.zeros(2, 4, 2, 2, dtype=torch.uint8, device=device)
    op = "cifarops._stochastic_pool2d_backward: "
    with pytest.raises(TypeError, match=re.escape(op + "offset must be uint8")):
        ns._stochastic_pool2d_backward(g, offset.long(), [5, 5], [3, 3], [2, 2], [0, 0], False)
    with pytest.raises(ValueError, match=re.escape(op + "offset must have grad_y's shape")):
        ns._stochastic_pool2d_backward(g, offset[:1], [5, 5], [3, 3], [2, 2], [0, 0], False)
    with pytest.raises(ValueError, match=re.escape(op + "grad_y's spatial size (2, 2) is not the output size (3, 3)")):
        ns._stochastic_pool2d_backward(g, offset, [7, 7], [3, 3], [2, 2], [0, 0], False)
    op = "cifarops._stochastic_pool2d_expectation_backward: "
    x = torch.ones(2, 4, 5, 5, device=device)
    with pytest.raises(TypeError, match=re.escape(op + "grad_y must have x's dtype")):
        ns._stochastic_pool2d_expectation_backward(g.double(), x, [3, 3], [2, 2], [0, 0], False)
    with pytest.raises(ValueError, match=re.escape(op + "grad_y must have the output's shape (2, 4, 2, 2)")):
        ns._stochastic_pool2d_expectation_backward(g[:, :1], x, [3, 3], [2, 2], [0, 0], False)
