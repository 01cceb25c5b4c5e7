"""Maxout and probabilistic maxout: hand-worked answers, PyTorch's view+max as a second oracle, every
backend against the reference, gradients, layouts, dtypes, library and compiler integration, the bytes
saved for backward, and the statistics of the probabilistic draws."""

from __future__ import annotations

import math
import re

import pytest
import torch

import cifarops
import cifarops.functional as F
from conftest import (COMPILE_BACKENDS, DTYPES, assert_close, assert_compiled_step_equals_eager, deterministic, ids,
                      matches_reference, namespace_for)
from layouts import LAYOUTS, in_layout

GROUPINGS = ["contiguous", "strided"]


def run(fn, x, grad=None, **kwargs):
    """Forward and backward of fn(x, ...); returns (y, dx)."""
    x = x.detach().requires_grad_()
    y = fn(x, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, x.grad


def distinct(*shape, device="cpu", dtype=torch.float32):
    """Values without ties (a random permutation), so that every maximum is unique."""
    n = math.prod(shape)
    return (torch.randperm(n, device=device).to(torch.float64) / n - 0.5).reshape(shape).to(dtype)


# ------------------------------------------------------------------------------------- hand-worked answers


def test_known_answer_contiguous_and_strided(any_backend):
    device, _ = any_backend
    x = torch.tensor([[1.0, 5.0, 3.0, 2.0, 7.0, 7.0]], device=device)
    grad = torch.tensor([[10.0, 20.0, 30.0]], device=device)
    # Contiguous, k = 2: groups (1, 5), (3, 2), (7, 7) -> 5, 3, 7; the tie goes to the first piece.
    y, dx = run(F.maxout, x, grad, pieces=2, grouping="contiguous")
    torch.testing.assert_close(y, torch.tensor([[5.0, 3.0, 7.0]], device=device), rtol=0, atol=0)
    torch.testing.assert_close(dx, torch.tensor([[0.0, 10.0, 20.0, 0.0, 30.0, 0.0]], device=device), rtol=0, atol=0)
    # Strided, k = 2 (C/k = 3): groups (x0, x3), (x1, x4), (x2, x5) = (1, 2), (5, 7), (3, 7) -> 2, 7, 7.
    y, dx = run(F.maxout, x, grad, pieces=2, grouping="strided")
    torch.testing.assert_close(y, torch.tensor([[2.0, 7.0, 7.0]], device=device), rtol=0, atol=0)
    torch.testing.assert_close(dx, torch.tensor([[0.0, 0.0, 0.0, 10.0, 20.0, 30.0]], device=device), rtol=0, atol=0)
    # Strided, k = 3 (C/k = 2): groups (x0, x2, x4), (x1, x3, x5) = (1, 3, 7), (5, 2, 7) -> 7, 7.
    y, dx = run(F.maxout, x, grad[:, :2], pieces=3, grouping="strided")
    torch.testing.assert_close(y, torch.tensor([[7.0, 7.0]], device=device), rtol=0, atol=0)
    torch.testing.assert_close(dx, torch.tensor([[0.0, 0.0, 0.0, 0.0, 10.0, 20.0]], device=device), rtol=0, atol=0)


def test_known_answer_nan_propagates(any_backend):
    device, _ = any_backend
    nan = float("nan")
    x = torch.tensor([[1.0, nan, 3.0, nan, nan, 2.0]], device=device)
    y, dx = run(F.maxout, x, torch.tensor([[1.0, 2.0]], device=device), pieces=3)
    assert torch.isnan(y).all()
    # The first NaN of each group wins: pieces 1 and 0.
    torch.testing.assert_close(dx, torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 0.0]], device=device), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("pieces", [2, 3])
def test_nan_and_ties_in_every_kernel_path(kernel_backend, layout, grouping, pieces):
    """NaN and exact ties in planes (unit-stride rows) and along channels (channels_last): the same first
    maximum and first NaN as the reference."""
    device, _ = kernel_backend
    x = torch.randint(0, 3, (2, 6, 4, 5), device=device).float()  # many ties
    x[0, 1, 2, 3] = x[1, 4, 0, 0] = x[1, 5, 0, 0] = float("nan")
    x = in_layout(x, layout)
    grad = torch.arange(2 * (6 // pieces) * 20, device=device, dtype=torch.float32).reshape(2, 6 // pieces, 4, 5)
    got = run(F.maxout, x, grad, pieces=pieces, grouping=grouping)
    with cifarops.use_backend("reference"):
        want = run(F.maxout, x, grad, pieces=pieces, grouping=grouping)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_known_answer_other_dim(any_backend):
    device, _ = any_backend
    x = torch.tensor([[[1.0, 4.0], [2.0, 0.0]], [[-1.0, -3.0], [5.0, 6.0]]], device=device)  # (2, 2, 2)
    y = F.maxout(x, 2, dim=-1)
    torch.testing.assert_close(y, torch.tensor([[[4.0], [2.0]], [[-1.0], [6.0]]], device=device), rtol=0, atol=0)
    y = F.maxout(x, 2, dim=0)
    torch.testing.assert_close(y, torch.tensor([[[1.0, 4.0], [5.0, 6.0]]], device=device), rtol=0, atol=0)


def test_known_answer_expectation(any_backend):
    """z = (0, ln 3), lambda = 1: p = (1/4, 3/4), y = 3/4 ln 3, dy/dz_i = p_i (1 + z_i - y)."""
    device, _ = any_backend
    ln3 = math.log(3.0)
    x = torch.tensor([[0.0, ln3]], dtype=torch.float64, device=device)
    y, dx = run(F.probabilistic_maxout, x, pieces=2, temperature=1.0, training=False)
    expected_y = 0.75 * ln3
    torch.testing.assert_close(y, torch.tensor([[expected_y]], dtype=torch.float64, device=device))
    expected_dx = [0.25 * (1 + 0 - expected_y), 0.75 * (1 + ln3 - expected_y)]
    torch.testing.assert_close(dx, torch.tensor([expected_dx], dtype=torch.float64, device=device))
    # temperature 2 halves lambda: p = softmax((0, ln 3) / 2) = (1, sqrt 3) / (1 + sqrt 3).
    y = F.probabilistic_maxout(x, 2, temperature=2.0, training=False)
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(y, torch.tensor([[s3 / (1 + s3) * ln3]], dtype=torch.float64, device=device))


def test_probabilistic_low_temperature_is_maxout(any_backend):
    device, _ = any_backend
    x = distinct(4, 12, 3, 3, device=device)
    torch.testing.assert_close(F.probabilistic_maxout(x, 3, temperature=1e-4), F.maxout(x, 3), rtol=0, atol=0)


# -------------------------------------------------------------------------------- PyTorch as second oracle


@pytest.mark.parametrize("pieces", [2, 4])
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_matches_view_max(kernel_backend, pieces, grouping):
    device, _ = kernel_backend
    x = distinct(3, 8, 5, 4, device=device)
    groups = 8 // pieces
    x_ref = x.clone().requires_grad_()
    if grouping == "contiguous":
        want = x_ref.view(3, groups, pieces, 5, 4).max(2).values
    else:
        want = x_ref.view(3, pieces, groups, 5, 4).max(1).values
    grad = torch.randn_like(want)
    want.backward(grad)
    y, dx = run(F.maxout, x, grad, pieces=pieces, grouping=grouping)
    torch.testing.assert_close(y, want.detach(), rtol=0, atol=0)
    torch.testing.assert_close(dx, x_ref.grad, rtol=0, atol=0)


# ----------------------------------------------------------------------------- every backend vs reference


def compare_with_reference(fn, x, **kwargs):
    grad = torch.randn(fn(x, **kwargs).shape, device=x.device).to(x.dtype)
    return matches_reference(run, fn, x, grad, seed=5, **kwargs)


FUNCTIONS = {
    "maxout": lambda x, **kw: F.maxout(x, **kw),
    "sample": lambda x, **kw: F.probabilistic_maxout(x, temperature=0.7, **kw),
    "expectation": lambda x, **kw: F.probabilistic_maxout(x, temperature=0.7, training=False, **kw),
}


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("shape, dim, pieces", [((4, 12, 5, 3), 1, 3), ((4, 12, 5, 3), 1, 1), ((4, 6, 5, 4), -1, 2),
                                                ((6, 20), 1, 4), ((6, 20), 0, 2), ((2, 3, 4, 5, 6), 2, 2), ((10,), 0, 5)])
def test_matches_reference_shapes(kernel_backend, function, grouping, shape, dim, pieces):
    device, _ = kernel_backend
    compare_with_reference(FUNCTIONS[function], distinct(*shape, device=device), pieces=pieces, dim=dim, grouping=grouping)


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 1200, 2, 3), (3, 4, 1, 1100)], ids=["wide-channels", "wide-rows"])
def test_matches_reference_wide_rows_and_channels(kernel_backend, function, layout, shape):
    """Rows longer than one tile (the Triton kernels' several column blocks a row, with a partial last one) and
    tiles of many short rows: 1200 channels (600 groups, channels fastest in channels_last) of 6-element planes,
    planes of 1100 elements."""
    device, _ = kernel_backend
    x = in_layout(distinct(*shape, device=device), layout)
    compare_with_reference(FUNCTIONS[function], x, pieces=2, grouping="contiguous")


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference_dtypes_layouts(kernel_backend, function, dtype, layout):
    device, _ = kernel_backend
    x = in_layout(distinct(3, 8, 5, 6, device=device, dtype=dtype), layout)
    y, _ = compare_with_reference(FUNCTIONS[function], x, pieces=2, grouping="strided")
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_empty(kernel_backend, function):
    device, _ = kernel_backend
    for shape in [(0, 6, 3, 3), (2, 6, 0, 3)]:
        y, dx = run(FUNCTIONS[function], torch.randn(*shape, device=device), pieces=3)
        assert y.shape == (shape[0], 2, *shape[2:]) and dx.shape == shape


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_gradcheck(kernel_backend, grouping):
    device, backend = kernel_backend
    x = distinct(2, 6, 3, 2, device=device, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: F.maxout(x, 3, grouping=grouping), (x,))
    assert torch.autograd.gradgradcheck(lambda x: F.maxout(x, 3, grouping=grouping), (x,))
    expectation = lambda x: F.probabilistic_maxout(x, 3, grouping=grouping, temperature=0.5, training=False)  # noqa: E731
    assert torch.autograd.gradcheck(expectation, (x,))
    # A fixed RNG state fixes the draws: the sampled layer is then piecewise linear in x.
    ns = namespace_for(backend)
    rng_state = torch.tensor([11, 4], device=device)
    assert torch.autograd.gradcheck(lambda x: ns.probabilistic_maxout(x, 3, 1, grouping, 0.5, rng_state)[0], (x,))


def test_saved_bytes_are_an_eighth_of_view_max(kernel_backend):
    device, _ = kernel_backend

    def saved_bytes(fn):
        x = torch.randn(8, 64, 8, 8, device=device, requires_grad=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t, lambda t: t):
            fn(x)
        return sum(sizes)

    ours = saved_bytes(lambda x: F.maxout(x, 2))
    view_max = saved_bytes(lambda x: x.view(8, 32, 2, 8, 8).max(2).values)
    assert ours == 8 * 32 * 8 * 8  # one byte per output
    assert ours * 8 <= view_max


def test_deterministic_algorithms(kernel_backend):
    device, _ = kernel_backend
    x = torch.randn(4, 12, 6, 6, device=device)
    with deterministic():
        first = run(F.maxout, x, pieces=3)
        second = run(F.maxout, x, pieces=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------------- library and compiler


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    rng_state = torch.tensor([3, 8], device=device)
    for x, dim, grouping in [
        (distinct(3, 6, 4, 4, device=device), 1, "contiguous"),
        (in_layout(distinct(3, 6, 4, 4, device=device), "channels_last"), 1, "strided"),
        (distinct(5, 12, device=device), -1, "strided"),
        (torch.randn(0, 6, 2, device=device), 1, "contiguous"),
    ]:
        x.requires_grad_()
        torch.library.opcheck(ns.maxout, (x, 3, dim, grouping))
        torch.library.opcheck(ns.probabilistic_maxout, (x, 3, dim, grouping, 0.5, rng_state))
        torch.library.opcheck(ns.probabilistic_maxout_expectation, (x, 3, dim, grouping, 0.5))
        y, index = ns.maxout(x.detach(), 3, dim, grouping)
        torch.library.opcheck(ns._maxout_backward, (torch.randn_like(y), index, 3, dim, grouping))
        torch.library.opcheck(ns._probabilistic_maxout_expectation_backward, (torch.randn_like(y), x.detach(), 3, dim, grouping, 0.5))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_fullgraph(device, backend):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), cifarops.Maxout(2), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 12),
        cifarops.ProbabilisticMaxout(3, grouping="strided", temperature=0.5),
    ).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    with cifarops.use_backend(backend):
        assert_compiled_step_equals_eager(compiled, model, x, seed=11, backend=backend)
        model.eval()
        assert_close(compiled(x), model(x))


# ---------------------------------------------------------------------------------------------- noise


def test_same_seed_same_draws(kernel_backend):
    device, _ = kernel_backend
    x = torch.randn(6, 12, 4, 4, device=device)
    torch.manual_seed(4)
    first = run(F.probabilistic_maxout, x, pieces=3)
    torch.manual_seed(4)
    second = run(F.probabilistic_maxout, x, pieces=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(5)
    assert not torch.equal(first[0], run(F.probabilistic_maxout, x, pieces=3)[0])


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_draw_frequencies_follow_the_softmax(kernel_backend, temperature):
    """Each piece is drawn with probability softmax(z / temperature)_i, within five standard errors."""
    device, _ = kernel_backend
    torch.manual_seed(0)
    z = torch.tensor([0.0, 0.5, -1.0, 1.0], device=device)
    n = 40000
    x = z.repeat(n, 1)  # (n, 4): one group of four pieces per row
    y = F.probabilistic_maxout(x, 4, temperature=temperature).flatten()
    p = torch.softmax(z / temperature, 0)
    for i in range(4):
        frequency = (y == z[i]).double().mean().item()
        assert abs(frequency - p[i].item()) < 5 * math.sqrt(p[i].item() * (1 - p[i].item()) / n), (i, frequency)


def test_modules(any_backend):
    device, _ = any_backend
    layer = cifarops.Maxout(2, dim=1, grouping="strided")
    assert repr(layer) == "Maxout(pieces=2, dim=1, grouping='strided')"
    x = distinct(2, 4, 3, device=device)
    torch.testing.assert_close(layer(x), torch.maximum(x[:, :2], x[:, 2:]))
    probabilistic = cifarops.ProbabilisticMaxout(2, temperature=0.25)
    assert "temperature=0.25" in repr(probabilistic)
    probabilistic.eval()
    z = torch.stack([x[:, 0::2], x[:, 1::2]])
    torch.testing.assert_close(probabilistic(x), (torch.softmax(z / 0.25, 0) * z).sum(0))


# ------------------------------------------------------------- noise drawn inside the kernels (issue 16)

CPU_BACKENDS = cifarops.available_backends("cpu")  # reference, cpu, and triton under TRITON_INTERPRET=1


def test_same_generator_state_same_pieces_on_every_backend():
    """torch.manual_seed(s) then one call: the same drawn pieces on the reference, the C++ kernel and Triton
    (interpreted), for NCHW, channels_last and a last-dim layout; and the state each returns is the same."""
    cases = [((3, 12, 5, 7), 1, "contiguous", "contiguous"), ((3, 12, 5, 7), 1, "strided", "channels_last"),
             ((4, 9, 12), -1, "contiguous", "contiguous"), ((2, 6, 1, 3), 1, "strided", "contiguous")]
    for shape, dim, grouping, layout in cases:
        x = in_layout(torch.randn(*shape), layout)
        results = {}
        for backend in CPU_BACKENDS:
            torch.manual_seed(7)
            with cifarops.use_backend(backend):
                y, index, state = cifarops.backends.op("probabilistic_maxout", x.device)(x, 3, dim, grouping, 0.8, None)
            results[backend] = (y, index, state)
        want = results["reference"]
        for backend, got in results.items():
            for a, b in zip(got, want):
                assert torch.equal(a, b), (backend, shape, dim, grouping, layout)


def test_manual_seed_reproduces_and_the_next_call_draws_anew(kernel_backend):
    device, backend = kernel_backend
    x = torch.randn(4, 12, 6, 6, device=device)
    op = namespace_for(backend).probabilistic_maxout
    torch.manual_seed(123)
    first = op(x, 3, 1, "contiguous", 1.0, None)
    second = op(x, 3, 1, "contiguous", 1.0, None)
    torch.manual_seed(123)
    again = op(x, 3, 1, "contiguous", 1.0, None)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], second[1]) and not torch.equal(first[2], second[2])
    # The returned state replays the call exactly, drawing nothing from the generator.
    generator_state = torch.get_rng_state()
    replay = op(x, 3, 1, "contiguous", 1.0, first[2])
    assert torch.equal(torch.get_rng_state(), generator_state)
    assert all(torch.equal(a, b) for a, b in zip(first, replay))


def test_draw_hand_worked_oracle(any_backend):
    """The draw worked out by hand: with a known state, u of output (o, j, i) is Philox word
    (logical % 4) of logical // 4 at stream 0 (cifarops.philox.philox_uniform), logical = (o * groups + j) *
    inner + i; the piece drawn is the first whose cumulative softmax weight (maximum subtracted) exceeds
    u * total."""
    from cifarops.philox import philox_uniform

    device, backend = any_backend
    state = torch.tensor([0x1234_5678_9ABC_DEF0 - 2**63, 40], dtype=torch.int64)
    temperature = 0.6
    x = torch.tensor([[[[0.3, -1.0]], [[0.2, 0.5]], [[1.5, 0.4]], [[-0.7, 0.0]], [[0.9, 0.9]], [[0.1, -2.0]]],
                      [[[2.0, 0.0]], [[1.0, 1.0]], [[0.5, -0.5]], [[0.0, 0.3]], [[-1.0, 0.8]], [[0.6, 0.6]]]],
                     dtype=torch.float64)  # (2, 6, 1, 2): contiguous groups of 3 -> (2, 2, 1, 2)
    pieces, groups, inner = 3, 2, 2
    op = cifarops.backends.op("probabilistic_maxout", torch.device(device))
    y, index, used = op(x.to(device), pieces, 1, "contiguous", temperature, state.to(device))
    y, index = y.cpu(), index.cpu()
    assert torch.equal(used.cpu(), state)
    lam = 1.0 / temperature
    flat = x.reshape(2, 6, 2)
    for o in range(2):
        for j in range(groups):
            for i in range(inner):
                z = [flat[o, j * pieces + p, i].item() for p in range(pieces)]
                logical = (o * groups + j) * inner + i
                u = philox_uniform(state, torch.tensor([logical]), 0).item()
                weights = [math.exp(lam * (v - max(z))) for v in z]
                target, cumulative, want = u * sum(weights), 0.0, pieces - 1
                for p, w in enumerate(weights):
                    cumulative += w
                    if target < cumulative:
                        want = p
                        break
                assert index[o, j, 0, i].item() == want, (o, j, i, u)
                assert y[o, j, 0, i].item() == z[want]


def _knife_edge_input(u: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pieces (0, d) per output, where u is the output's uniform: they weigh 1 and w = draw_exp(d) (temperature
    1), and piece 0 is drawn exactly when u (1 + w) < 1. For u in [1/2, 1) d sits at log(1/u - 1) moved by -32 to
    +32 float32 steps (one step per output, cycling), so that every such draw is decided by the weight's last
    bits; for u < 1/2 (no boundary: piece 0 always) d is -1. Returns (d, the pieces drawn by that rule, worked in
    float32 with numpy)."""
    import numpy as np

    from cifarops.reference import draw_exp

    un = u.numpy().astype(np.float64)
    base = np.where(un >= 0.5, np.log(np.maximum(1.0 / un - 1.0, 1e-30)), -1.0).astype(np.float32)
    step = (np.arange(len(un)) % 65 - 32).astype(np.int32)
    d = (base.view(np.int32) + np.where(un >= 0.5, step, 0)).view(np.float32)  # neighbouring floats of base
    d = np.minimum(np.where(np.isfinite(d), d, np.float32(-1.0)), np.float32(0.0))
    w = draw_exp(torch.from_numpy(d)).numpy()
    total = (np.float32(1.0) + w).astype(np.float32)
    want = np.where((u.numpy() * total).astype(np.float32) < np.float32(1.0), 0, 1).astype(np.uint8)
    return torch.from_numpy(d).to(dtype), torch.from_numpy(want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rows", [True, False], ids=["rows", "columns"])
def test_draws_decide_alike_at_the_boundary(kernel_backend, dtype, rows):
    """SPEC's "the same decisions on every backend" where it is hardest: draws on the boundary between two
    pieces, where exp's last bit (an FMA, a device expf) would flip them. Every backend draws the pieces of the
    rule u (1 + w) < 1 worked by hand in float32 (as the reference does): along rows (the CUDA forward's rows of
    four) and down the channels of (N, C) inputs."""
    from cifarops.philox import philox_uniform

    device, backend = kernel_backend
    state = torch.tensor([0x5EED_0123_4567, 12], dtype=torch.int64)
    n = 4096
    d, want = _knife_edge_input(philox_uniform(state, torch.arange(n), 0), dtype)
    x = torch.stack([torch.zeros_like(d), d])  # (2, n): piece 0 is the maximum, 0
    x = x.unsqueeze(0) if rows else x.t()  # (1, 2, n): one row of n outputs; (n, 2): n outputs of one group
    ops = namespace_for(backend)
    _, index, _ = ops.probabilistic_maxout(x.to(device), 2, 1, "contiguous", 1.0, state.to(device))
    assert torch.equal(index.cpu().reshape(-1), want)
    # The sweep straddles the boundary: both pieces are drawn in most of its 65-step runs.
    runs = want[: n - n % 65].view(-1, 65)
    assert ((runs.min(1).values == 0) & (runs.max(1).values == 1)).sum() > len(runs) // 4


def test_draw_exp_is_exp():
    """The draw's weight against math.exp: within 2e-7 relative for |d| < 1, 4e-6 down to 2^-126, exactly 1 at
    0, and 0 below 2^-126 (where t = d log2(e) < -126) and at -inf."""
    from cifarops.reference import draw_exp

    d = torch.cat([-torch.rand(200_000, dtype=torch.float64) * 90, -torch.logspace(-30, 0, 2000, dtype=torch.float64),
                   torch.tensor([0.0, -87.33, -87.34, -100.0, -math.inf], dtype=torch.float64)]).float()
    w = draw_exp(d).double()
    exact = torch.tensor([math.exp(v) for v in d.double().tolist()], dtype=torch.float64)
    normal = exact >= 2.0**-126 * 1.000_01
    rel = ((w - exact) / exact)[normal].abs()
    assert rel[d.abs()[normal] < 1].max() < 2e-7 and rel.max() < 4e-6
    assert w[d == 0].eq(1).all() and w[exact < 2.0**-126 * 0.999_99].eq(0).all()


def test_uniforms_are_philox_words_in_logical_order():
    """A single piece per group with two pieces of equal value but one: pieces = 2 and z = (0, 0) gives
    piece 1 exactly when u >= 1/2, so the drawn pieces read the uniforms back, for 37 outputs (quads, a
    ragged tail, and rows that start inside a quad)."""
    from cifarops.philox import philox_uniform

    state = torch.tensor([987654321, 4], dtype=torch.int64)
    x = torch.zeros(1, 2, 37)  # outer 1, groups 1, inner 37
    want = (philox_uniform(state, torch.arange(37), 0) >= 0.5).to(torch.uint8)
    for backend in CPU_BACKENDS:
        with cifarops.use_backend(backend):
            _, index, _ = cifarops.backends.op("probabilistic_maxout", x.device)(x, 2, 1, "contiguous", 1.0, state)
        assert torch.equal(index.view(-1), want), backend
    x = torch.zeros(3, 6, 5)  # rows of 5: each row starts at a different lane of its quad
    want = (philox_uniform(state, torch.arange(3 * 3 * 5), 0) >= 0.5).to(torch.uint8).view(3, 3, 5)
    for backend in CPU_BACKENDS:
        with cifarops.use_backend(backend):
            _, index, _ = cifarops.backends.op("probabilistic_maxout", x.device)(x, 2, 1, "contiguous", 1.0, state)
        assert torch.equal(index, want), backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_failing_call_advances_no_generator(backend):
    x = torch.randn(2, 6, 3, 3)
    bad_calls = [
        (lambda op: op(x, 4, 1, "contiguous", 1.0, None), ValueError, "x.shape[1] = 6 channels are not divisible by pieces = 4"),
        (lambda op: op(x, 2, 1, "contiguous", -1.0, None), ValueError, "temperature must be a positive number"),
        (lambda op: op(x, 2, 1, "other", 1.0, None), ValueError, "grouping must be one of ('contiguous', 'strided')"),
        (lambda op: op(x, 2, 1, "contiguous", 1.0, torch.zeros(3, dtype=torch.int64)), ValueError,
         "rng_state must have two elements {seed, offset}, got 3"),
        (lambda op: op(torch.ones(2, 6, 3, 3, dtype=torch.int32), 2, 1, "contiguous", 1.0, None), TypeError,
         "x must be float32, float64, float16 or bfloat16, got torch.int32"),
    ]
    with cifarops.use_backend(backend):
        op = cifarops.backends.op("probabilistic_maxout", torch.device("cpu"))
        # The reference function itself checks nothing: the functional checks for it (below).
        for call, error, message in bad_calls if backend != "reference" else []:
            before = torch.get_rng_state()
            with pytest.raises(error, match=re.escape("cifarops.probabilistic_maxout: " + message)):
                call(op)
            assert torch.equal(torch.get_rng_state(), before)
        before = torch.get_rng_state()
        with pytest.raises(ValueError):
            F.probabilistic_maxout(x, 4)
        assert torch.equal(torch.get_rng_state(), before)


def _dispatched(fn):
    """The ops below autograd that fn runs (a TorchDispatchMode), views and detach left out."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:  # detach (AccumulateGrad's) and views launch nothing
                seen.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    with Record():
        out = fn()
    return seen, out


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layer", ["maxout", "probabilistic"])
def test_one_op_forward_one_op_backward(kernel_backend, layer, training):
    """Training and evaluation: one dispatcher op forward and one backward, and no zeros() for the index's
    undefined gradient."""
    device, backend = kernel_backend
    module = cifarops.Maxout(2) if layer == "maxout" else cifarops.ProbabilisticMaxout(2, temperature=0.5)
    module.train(training)
    x = torch.randn(2, 8, 4, 4, device=device, requires_grad=True)
    forward, y = _dispatched(lambda: module(x))
    grad = torch.ones_like(y)
    backward, _ = _dispatched(lambda: y.backward(grad))
    names = {("maxout", True): ("maxout", "_maxout_backward"), ("maxout", False): ("maxout", "_maxout_backward"),
             ("probabilistic", True): ("probabilistic_maxout", "_maxout_backward"),
             ("probabilistic", False): ("probabilistic_maxout_expectation",
                                        "_probabilistic_maxout_expectation_backward")}[(layer, training)]
    assert forward == [names[0]], forward
    assert backward == [names[1]], backward
    with torch.no_grad():
        no_grad, _ = _dispatched(lambda: module(x))
    assert no_grad == [names[0]], no_grad
