"""Fractional max-pooling: hand-worked planes for every mode, PyTorch's own op as a second oracle (outputs,
indices and gradients element for element), every backend against the reference, gradients, layouts,
dtypes, library and compiler integration, determinism, the bytes saved for backward, and the statistics of
Graham's random sequences."""

from __future__ import annotations

import math

import pytest
import torch

import cifarops
import cifarops.functional as F
from conftest import (COMPILE_BACKENDS, DTYPES, TOLERANCES, assert_close, deterministic, ids, matches_reference,
                      namespace_for)
from layouts import LAYOUTS, in_layout

GRAHAM = ["disjoint", "overlapping"]


def run(x, grad=None, **kwargs):
    """Forward and backward of F.fractional_max_pool2d(x, ...); returns (y, dx)."""
    x = x.detach().requires_grad_()
    y = F.fractional_max_pool2d(x, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, x.grad


def arange_plane(h, w, device, dtype=torch.float32):
    """One plane whose value is its flat index: every region's maximum is its bottom-right corner."""
    return torch.arange(h * w, device=device, dtype=torch.float64).reshape(1, 1, h, w).to(dtype)


def exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------- hand-worked answers


@pytest.mark.parametrize("u, rows", [(0.0, [1, 2, 4]), (0.5, [1, 3, 4])])
def test_known_answer_windows(any_backend, u, rows):
    """5 -> 3 with k = 2: alpha = (5 - 2) / (3 - 1) = 1.5. u = 0: starts 0, floor(1.5) = 1, and the last one
    5 - 2 = 3, so windows end at 1, 2, 4; u = 0.5: starts 0, floor(2.25) - floor(0.75) = 2, 3: ends 1, 3, 4."""
    device, _ = any_backend
    samples = torch.full((1, 1, 2), u, device=device)
    y, index = F.fractional_max_pool2d(arange_plane(5, 5, device), 2, output_size=3, return_indices=True,
                                       _random_samples=samples)
    want = torch.tensor([[5 * r + c for c in rows] for r in rows], device=device)
    exact(index[0, 0], want)
    exact(y[0, 0], want.float())


def test_known_answer_window_gradient_sums_overlaps(any_backend):
    """u = 0: windows start at rows and columns 0, 1, 3. A single 10 at (1, 1) lies in the four windows
    (0..1, 0..1) and wins them all, so it collects 4; every other window is all zeros and picks its first
    element: (3, 0), (3, 1), (3, 3), (0, 3), (1, 3)."""
    device, _ = any_backend
    x = torch.zeros(1, 1, 5, 5, device=device)
    x[0, 0, 1, 1] = 10.0
    y, dx = run(x, kernel_size=2, output_size=3, _random_samples=torch.zeros(1, 1, 2, device=device))
    want = torch.zeros(5, 5, device=device)
    want[1, 1] = 4
    for r, c in [(3, 0), (3, 1), (3, 3), (0, 3), (1, 3)]:
        want[r, c] = 1
    exact(dx[0, 0], want)


@pytest.mark.parametrize("regions, rows, cols", [
    # Boundaries a = [0, 2, 3, 5] for the rows and [0, 1, 3, 5] for the columns.
    ("disjoint", [1, 2, 4], [0, 2, 4]),     # [a_i, a_{i+1}): last rows 1, 2, 4; last columns 0, 2, 4
    ("overlapping", [2, 3, 4], [1, 3, 4]),  # [a_i, a_{i+1}], clipped: last rows 2, 3, 4; columns 1, 3, 4
])
def test_known_answer_graham_explicit_boundaries(any_backend, regions, rows, cols):
    device, _ = any_backend
    boundaries = torch.tensor([[[[0, 1, 3, 5], [0, 2, 3, 5]]]], device=device)  # index 0: columns
    y, index = F.fractional_max_pool2d(arange_plane(5, 5, device), output_size=3, regions=regions,
                                       boundaries=boundaries, return_indices=True)
    want = torch.tensor([[5 * r + c for c in cols] for r in rows], device=device)
    exact(index[0, 0], want)
    exact(y[0, 0], want.float())


def test_known_answer_graham_pseudorandom(any_backend):
    """5 -> 3, alpha = 5/3. u = 0: a = floor(5 i / 3) = 0, 1, 3, 5. u = 0.5: floor(5/3 (i + 0.5)) - floor(5/6)
    = 0, 2, 4, 5. Disjoint regions with u = 0 for the columns and 0.5 for the rows end at columns 0, 2, 4
    and rows 1, 3, 4."""
    device, _ = any_backend
    samples = torch.tensor([[[0.0, 0.5]]], device=device)
    y = F.fractional_max_pool2d(arange_plane(5, 5, device), output_size=3, regions="disjoint", _random_samples=samples)
    exact(y[0, 0], torch.tensor([[5 * r + c for c in (0, 2, 4)] for r in (1, 3, 4)], device=device).float())


def _paper_boundaries(size_in: int, size_out: int, u: float) -> list[int]:
    """Graham's a_i = floor(alpha (i + u)) - floor(alpha u), alpha = in / out, in exact rational arithmetic."""
    import fractions
    import math

    alpha, u = fractions.Fraction(size_in, size_out), fractions.Fraction(u)
    return [math.floor(alpha * (i + u)) - math.floor(alpha * u) for i in range(size_out + 1)]


def _f32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()


# u next to the places where i + u crosses a power of two in float32 (its ulp doubles there), next to 0, 1/2, 1.
GRAHAM_SAMPLES = [_f32(v) for v in (0.0, 2**-24, 0.5 - 3 * 2**-22, 0.5 - 2**-24, 0.5, 0.5 + 2**-23, 0.25 - 2**-25,
                                    0.75 + 2**-23, 1 - 2**-24, 1 - 3 * 2**-24, 1 / 3, 0.999)]
# alpha = 2 (the case that broke: 64 -> 32), 1.5, sqrt 2, cbrt 2
GRAHAM_SIZES = [(64, 32), (48, 32), (96, 64), (181, 128), (45, 32), (161, 128), (40, 32)]


@pytest.mark.parametrize("size_in, size_out", GRAHAM_SIZES)
def test_graham_pseudorandom_regions_are_the_papers_exactly(any_backend, size_in, size_out):
    """Every backend's pseudorandom regions are the exact a_i (Fraction arithmetic), so every step is
    floor(alpha) or ceil(alpha), at samples next to every power-of-two crossing of i + u. In float32 the old
    formula gave a_15 = 30, a_16 = 33 at in = 64, out = 32, u = 0.5 - 3 * 2^-22: a region 3 rows wide. Read
    through disjoint regions of a plane numbered row-major: y[i, j] is the last element of region (i, j)."""
    import math

    device, _ = any_backend
    plane = arange_plane(size_in, size_in, device)
    alpha_steps = {math.floor(size_in / size_out), math.ceil(size_in / size_out)}
    for u in GRAHAM_SAMPLES:
        a = _paper_boundaries(size_in, size_out, u)
        assert a[0] == 0 and a[-1] == size_in and {y - x for x, y in zip(a, a[1:])} <= alpha_steps, (u, a)
        samples = torch.full((1, 1, 2), u, device=device)
        y = F.fractional_max_pool2d(plane, output_size=size_out, regions="disjoint", _random_samples=samples)
        last = torch.tensor(a[1:], device=device) - 1
        want = (last.view(-1, 1) * size_in + last.view(1, -1)).float()
        exact(y[0, 0], want)


def test_known_answer_nan_and_inf(any_backend):
    """ATen's rule: the last NaN of a window wins (row-major), an all -inf window points at its first element."""
    device, _ = any_backend
    x = torch.zeros(1, 1, 4, 4, device=device)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = x[0, 0, 1, 0] = float("nan")
    zero = torch.zeros(1, 1, 2, device=device)
    y, index = F.fractional_max_pool2d(x, 2, output_size=3, return_indices=True, _random_samples=zero)
    assert torch.isnan(y[0, 0, 0, 0]) and index[0, 0, 0, 0] == 4  # NaNs at flat 0, 1, 4: the last is 4
    y, index = F.fractional_max_pool2d(torch.full((1, 1, 4, 4), float("-inf"), device=device), 2, output_size=3,
                                       return_indices=True, _random_samples=zero)
    exact(index[0, 0], torch.tensor([[0, 1, 2], [4, 5, 6], [8, 9, 10]], device=device))


# -------------------------------------------------------------------------------- PyTorch as second oracle


def pytorch_cases(device, dtype, count, seed):
    """Random (x, kernel, output, samples) cases, windows of every size PyTorch accepts."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    while len(cases) < count:
        h, w = (int(v) for v in torch.randint(4, 30, (2,), generator=g))
        oh, ow = (int(torch.randint(1, s, (1,), generator=g)) for s in (h, w))
        kh, kw = (int(torch.randint(1, s - o + 2, (1,), generator=g)) for s, o in ((h, oh), (w, ow)))
        x = torch.randn(2, 3, h, w, generator=g).to(dtype).to(device)
        samples = torch.rand(2, 3, 2, generator=g, dtype=torch.float64).to(dtype).clamp(max=0.99).to(device)
        cases.append((x, (kh, kw), (oh, ow), samples))
    return cases


def interpreted(device, backend) -> bool:
    """Triton kernels on CPU tensors: TRITON_INTERPRET=1, each program run in Python."""
    return backend == "triton" and device == "cpu"


def pytorch_result(x, kernel, output, samples, grad):
    x = x.detach().requires_grad_()
    y, index = torch.nn.functional.fractional_max_pool2d(x, kernel, output_size=output, return_indices=True,
                                                         _random_samples=samples)
    y.backward(grad)
    return y, index, x.grad


def summed_in_any_order(got, want, index, grad):
    """Input gradients that PyTorch's CUDA backward adds with atomics in any order, against ours (in row-major
    order): an input that n windows chose sums n terms of at most G = max |grad|, and two orders of that sum differ
    by at most n^2 eps G (n roundings of at most eps n G / 2 each, per order); inputs chosen once or never match
    within the dtype's tolerance."""
    planes = index.flatten(2) + torch.arange(index.shape[0] * index.shape[1], device=index.device).view(
        index.shape[0], index.shape[1], 1) * got[0, 0].numel()
    n = torch.bincount(planes.flatten(), minlength=got.numel()).view(got.shape).double()
    rtol, atol = TOLERANCES[got.dtype]
    bound = atol + rtol * want.double().abs() + n * n * torch.finfo(got.dtype).eps * float(grad.abs().max())
    error = (got.double() - want.double()).abs()
    assert bool((error <= bound).all()), f"{int((error > bound).sum())} gradients beyond the bound, worst {error.max()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_equals_pytorch(any_backend, dtype):
    """Outputs, indices and gradients equal to torch.nn.functional.fractional_max_pool2d's, element for
    element, for the same _random_samples (half types included: ATen's CPU intervals round in the storage
    type, its CUDA ones in float32, and so do ours on each device)."""
    device, backend = any_backend
    # Interpreted Triton runs each program in Python: 4 of the 12 random cases there (the others on every backend).
    for x, kernel, output, samples in pytorch_cases(device, dtype, 4 if interpreted(device, backend) else 12, seed=7):
        grad = torch.randn(2, 3, *output, device=device).to(dtype)
        try:
            want = pytorch_result(x, kernel, output, samples, grad)
        except RuntimeError as error:  # ATen's bfloat16 CPU intervals can overshoot the plane and assert
            assert "INTERNAL ASSERT" in str(error)
            continue
        x_ = x.detach().requires_grad_()
        y, index = F.fractional_max_pool2d(x_, kernel, output_size=output, return_indices=True, _random_samples=samples)
        y.backward(grad)
        exact(y, want[0])
        exact(index, want[1])
        if device == "cpu":
            exact(x_.grad, want[2])
        else:
            summed_in_any_order(x_.grad, want[2], index, grad)
        assert torch.equal(F.fractional_max_pool2d(x, kernel, output_size=output, _random_samples=samples), y)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_equals_pytorch_layouts_and_shapes(any_backend, layout):
    device, _ = any_backend
    torch.manual_seed(3)
    x = in_layout(torch.randn(3, 5, 17, 13, device=device), layout)
    samples = torch.rand(3, 5, 2, device=device)
    grad = torch.randn(3, 5, 11, 9, device=device)
    want = pytorch_result(x, (3, 2), (11, 9), samples, grad)
    x_ = x.detach().requires_grad_()
    y, index = F.fractional_max_pool2d(x_, (3, 2), output_size=(11, 9), return_indices=True, _random_samples=samples)
    y.backward(grad)
    exact(y, want[0])
    exact(index, want[1])
    assert_close(x_.grad, want[2])
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    # output_ratio: PyTorch's int(input * ratio) per axis; unbatched (C, H, W) input.
    plain = x.contiguous()
    y = F.fractional_max_pool2d(plain[0], 2, output_ratio=(0.5, 0.75), _random_samples=samples[:1])
    exact(y, torch.nn.functional.fractional_max_pool2d(plain[0], 2, output_size=(8, 9), _random_samples=samples[:1]))


# ----------------------------------------------------------------------------- every backend vs reference

GRAHAM_MODES = [(r, s, p) for r in GRAHAM for s in ("pseudorandom", "random") for p in (False, True)]


def equals_reference(x, grad=None, seed=1234, **kwargs):
    """F.fractional_max_pool2d forward (with indices) and backward on the selected backend and on the
    reference, from the same seed (so the same draws): equal element for element."""
    def once():
        torch.manual_seed(seed)
        x_ = x.detach().requires_grad_()
        y, index = F.fractional_max_pool2d(x_, return_indices=True, **kwargs)
        y.backward(torch.ones_like(y) if grad is None else grad)
        return y, index, x_.grad

    got = once()
    with cifarops.use_backend("reference"):
        want = once()
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        exact(a, b)
    return got


@pytest.mark.parametrize("regions, sequence, per_image", GRAHAM_MODES, ids=[f"{r}-{s}-{'image' if p else 'channel'}" for r, s, p in GRAHAM_MODES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_graham_modes_match_reference(kernel_backend, regions, sequence, per_image, dtype):
    device, _ = kernel_backend
    x = torch.randn(2, 4, 15, 11, device=device).to(dtype)
    grad = torch.randn(2, 4, 9, 8, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    equals_reference(x, grad, output_size=(9, 8), regions=regions, sequence=sequence, per_image=per_image)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("regions", ["window"] + GRAHAM)
def test_layouts_match_reference(kernel_backend, layout, regions):
    device, _ = kernel_backend
    x = in_layout(torch.randn(2, 6, 12, 10, device=device), layout)
    kwargs = dict(kernel_size=3) if regions == "window" else {}
    y, index, _ = equals_reference(x, torch.randn(2, 6, 8, 7, device=device), output_size=(8, 7), regions=regions, **kwargs)
    assert index.dtype == torch.int64
    torch.manual_seed(1234)
    assert torch.equal(F.fractional_max_pool2d(x, output_size=(8, 7), regions=regions, **kwargs), y)


@pytest.mark.parametrize("regions", ["window"] + GRAHAM)
def test_empty_batch(kernel_backend, regions):
    device, _ = kernel_backend
    kwargs = dict(kernel_size=2) if regions == "window" else {}
    y, dx = run(torch.randn(0, 3, 10, 10, device=device), output_size=7, regions=regions, **kwargs)
    assert y.shape == (0, 3, 7, 7) and dx.shape == (0, 3, 10, 10)


def test_large_windows_use_wide_indices(kernel_backend):
    """Windows of more than 256 elements cannot store their offset in a byte: the op keeps int64 indices."""
    device, backend = kernel_backend
    x = torch.randn(1, 2, 40, 40, device=device)
    samples = torch.rand(1, 2, 2, device=device)
    y, index, state = namespace_for(backend).fractional_max_pool2d(x, [17, 17], [20, 20], "window", samples, None, False,
                                                                   "pseudorandom", False, None)
    assert torch.equal(state, torch.zeros(2, dtype=torch.int64, device=device))  # explicit draws: nothing drawn
    assert index.dtype == torch.int64
    exact(y, torch.nn.functional.fractional_max_pool2d(x, 17, output_size=20, _random_samples=samples))


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("regions", ["window"] + GRAHAM)
def test_gradcheck(kernel_backend, regions):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    # Small: the numerical Jacobians run the op once per element (slow in the Triton interpreter).
    x = (torch.randperm(2 * 2 * 6 * 5, device=device).double() / 100).reshape(2, 2, 6, 5).requires_grad_()  # no ties
    samples = torch.rand(2, 2, 2, dtype=torch.float64, device=device)
    kernel = [2, 2] if regions == "window" else []

    def pool(x, return_indices=False):
        return ns.fractional_max_pool2d(x, kernel, [4, 3], regions, samples, None, return_indices, "pseudorandom", False,
                                        None)[0]

    # fast_mode checks random projections of the Jacobians: a few calls instead of one per element.
    assert torch.autograd.gradcheck(pool, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(pool, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: pool(x, True), (x,), fast_mode=True)
    if backend != "triton" or device != "cpu":  # the full Jacobians too, where the kernels run natively
        assert torch.autograd.gradcheck(pool, (x,)) and torch.autograd.gradgradcheck(pool, (x,))


def test_saved_bytes_are_an_eighth_of_pytorch(kernel_backend):
    device, _ = kernel_backend

    def saved_bytes(fn):
        x = torch.randn(4, 8, 32, 32, device=device, requires_grad=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t, lambda t: t):
            fn(x)
        return sum(sizes)

    samples = torch.rand(4, 8, 2, device=device)
    ours = saved_bytes(lambda x: F.fractional_max_pool2d(x, 2, output_size=22, _random_samples=samples))
    pytorch = saved_bytes(lambda x: torch.nn.functional.fractional_max_pool2d(x, 2, output_size=22, _random_samples=samples))
    assert ours == 4 * 8 * 22 * 22 + samples.numel() * 4  # one byte per output, and the draws
    assert ours * 7 < pytorch


def test_deterministic_algorithms(kernel_backend):
    device, _ = kernel_backend
    x = torch.randn(4, 6, 20, 20, device=device)
    samples = torch.rand(4, 6, 2, device=device)
    with deterministic():
        first = run(x, kernel_size=3, output_size=13, _random_samples=samples)
        second = run(x, kernel_size=3, output_size=13, _random_samples=samples)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------------- library and compiler


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    samples = torch.rand(2, 3, 2, device=device)
    boundaries = F._fmp_random_boundaries(2, 3, (10, 9), (7, 6), device)
    state = torch.tensor([12345, 8], dtype=torch.int64, device=device)  # explicit: every run draws the same
    plain = ("pseudorandom", False, None)
    for x, kernel, regions, draws, noise in [
        (torch.randn(2, 3, 10, 9, device=device), [2, 3], "window", (samples, None), plain),
        (in_layout(torch.randn(2, 3, 10, 9, device=device), "channels_last"), [2, 2], "window", (samples, None), plain),
        (torch.randn(2, 3, 10, 9, device=device), [], "overlapping", (samples, None), plain),
        (torch.randn(2, 3, 10, 9, device=device), [], "disjoint", (None, boundaries), plain),
        (torch.randn(0, 3, 10, 9, device=device), [2, 2], "window", (samples[:0], None), plain),
        (torch.randn(2, 3, 10, 9, device=device), [2, 2], "window", (None, None), ("pseudorandom", False, state)),
        (torch.randn(2, 3, 10, 9, device=device), [], "overlapping", (None, None), ("random", True, state)),
        (torch.randn(2, 3, 10, 9, device=device), [], "disjoint", (None, None), ("random", False, state)),
    ]:
        x.requires_grad_()
        for return_indices in (False, True):
            torch.library.opcheck(ns.fractional_max_pool2d, (x, kernel, [7, 6], regions, *draws, return_indices, *noise))
            y, index, used = ns.fractional_max_pool2d(x.detach(), kernel, [7, 6], regions, *draws, return_indices, *noise)
            sequence, per_image, _ = noise
            backward_noise = (sequence, per_image, used if draws == (None, None) else None)
            torch.library.opcheck(ns._fractional_max_pool2d_backward,
                                  (torch.randn_like(y), index, [10, 9], kernel, regions, *draws, *backward_noise))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_equals_eager(device, backend):
    """With explicit draws, torch.compile(fullgraph=True) gives eager's result; without, it draws inside the graph."""
    torch._dynamo.reset()
    x = torch.randn(2, 4, 16, 16, device=device, requires_grad=True)
    samples = torch.rand(2, 4, 2, device=device)
    weights = torch.randn(2, 4, 11, 11, device=device)

    def pool(x):  # a linear loss, so that the gradient has no rounding of Inductor's own
        return (F.fractional_max_pool2d(x, 2, output_size=11, _random_samples=samples) * weights).sum()

    with cifarops.use_backend(backend):
        eager = torch.autograd.grad(pool(x), x)[0]
        compiled = torch.compile(pool, fullgraph=True)
        exact(torch.autograd.grad(compiled(x), x)[0], eager)
        # Without explicit draws every compiled call draws anew, as eager does (pytorch/pytorch#183249 is
        # PyTorch's op going wrong here), and each output is still a maximum of its own region of x.
        model = torch.compile(cifarops.FractionalMaxPool2d(output_ratio=0.7, regions="overlapping"), fullgraph=True)
        first, second = model(x), model(x)
        assert first.shape == (2, 4, 11, 11) and not torch.equal(first, second)
        for y in (first, second):
            assert torch.isin(y, x).all()


# ------------------------------------------------------------------------------------------ modes and noise


def test_per_image_shares_the_regions(kernel_backend):
    device, _ = kernel_backend
    x = arange_plane(11, 11, device).expand(3, 4, 11, 11)
    for regions, sequence in [("window", "pseudorandom"), ("overlapping", "random")]:
        kwargs = dict(kernel_size=2) if regions == "window" else {}
        y = F.fractional_max_pool2d(x, output_size=7, regions=regions, sequence=sequence, per_image=True, **kwargs)
        assert (y == y[:, :1]).all()  # one draw per image
        y = F.fractional_max_pool2d(x, output_size=7, regions=regions, sequence=sequence, **kwargs)
        assert not (y == y[:, :1]).all()  # one per (image, channel)


def test_same_seed_same_regions(kernel_backend):
    device, _ = kernel_backend
    x = torch.randn(4, 6, 16, 16, device=device)
    for kwargs in [dict(kernel_size=2), dict(regions="disjoint", sequence="random")]:
        torch.manual_seed(5)
        first = F.fractional_max_pool2d(x, output_size=11, **kwargs)
        torch.manual_seed(5)
        assert torch.equal(first, F.fractional_max_pool2d(x, output_size=11, **kwargs))


def test_random_sequences_are_a_uniform_shuffle(kernel_backend):
    """In = 7, out = 4: three increments of 2 and one of 1, so the 1 sits at each of the 4 positions with
    probability 1/4; 11 -> 8 has 3 twos among 8 steps: each of the 56 placements equally likely. Read off the
    outputs of disjoint regions over an arange plane (each region's maximum is its last row), and check the
    frequencies within five standard errors."""
    device, _ = kernel_backend
    torch.manual_seed(0)
    n = 4000
    y = F.fractional_max_pool2d(arange_plane(7, 11, device).expand(n, 1, 7, 11), output_size=(4, 8),
                                regions="disjoint", sequence="random")
    ends_rows = torch.div(y[:, 0, :, 0].long(), 11, rounding_mode="floor") + 1  # a_1 .. a_4
    steps = torch.diff(ends_rows, prepend=torch.zeros(n, 1, dtype=torch.long, device=device), dim=1)
    assert ((steps == 1) | (steps == 2)).all() and (steps.sum(1) == 7).all()
    for position in range(4):
        frequency = (steps[:, position] == 1).double().mean().item()
        assert abs(frequency - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)
    ends_cols = y[:, 0, 0, :].long() % 11 + 1
    col_steps = torch.diff(ends_cols, prepend=torch.zeros(n, 1, dtype=torch.long, device=device), dim=1)
    codes = ((col_steps == 2).long() * (2 ** torch.arange(8, device=device))).sum(1)
    counts = torch.bincount(codes, minlength=256).double()
    placements = [c for c in range(256) if bin(c).count("1") == 3]
    assert counts.sum() == counts[placements].sum() and len(placements) == 56
    expected = n / 56
    chi2 = ((counts[placements] - expected) ** 2 / expected).sum().item()
    assert chi2 < 55 + 5 * math.sqrt(2 * 55)  # chi-square with 55 degrees of freedom, five sigma


def test_module_and_model_average(any_backend):
    device, _ = any_backend
    layer = cifarops.FractionalMaxPool2d(2, output_ratio=0.75)
    assert repr(layer) == ("FractionalMaxPool2d(kernel_size=2, output_ratio=0.75, regions='window', "
                           "sequence='pseudorandom', per_image=False)")
    x = torch.randn(2, 3, 8, 8, device=device)
    samples = torch.rand(2, 3, 2, device=device)
    fixed = cifarops.FractionalMaxPool2d(2, output_size=6, _random_samples=samples)
    exact(fixed(x), torch.nn.FractionalMaxPool2d(2, output_size=6, _random_samples=samples)(x))
    assert torch.equal(fixed.state_dict()["_random_samples"], samples)
    model = torch.nn.Sequential(cifarops.FractionalMaxPool2d(output_ratio=0.75, regions="overlapping"),
                                torch.nn.Flatten(), torch.nn.Linear(3 * 36, 10)).to(device).eval()
    torch.manual_seed(9)
    averaged = cifarops.fmp_model_average(model, x, draws=5)
    torch.manual_seed(9)
    with torch.no_grad():
        want = sum(torch.softmax(model(x), -1) for _ in range(5)) / 5
    assert_close(averaged, want)
    assert_close(averaged.sum(-1), torch.ones(2, device=device))


# ------------------------------------------------------------------------- noise drawn inside the kernels

from cifarops import philox, reference  # noqa: E402

# The value a float32 u must reach to round to 1 in each half type (then the op takes the largest value below 1).
_ROUNDS_TO_ONE = {torch.float16: 1 - 2.0**-12, torch.bfloat16: 1 - 2.0**-9}


def _seed_reaching_one(n, draw_channels, dtype):
    """A seed whose first call's samples include a u that rounds to 1 in `dtype` (any seed for the others)."""
    for seed in range(200):
        torch.manual_seed(seed)
        state = philox.draw_state("cpu", reference.FMP_STREAMS)
        u = philox.philox_uniform(state, torch.arange(n * draw_channels * 2), 0)
        if dtype not in _ROUNDS_TO_ONE or float(u.max()) >= _ROUNDS_TO_ONE[dtype]:
            return seed
    raise AssertionError("no seed reaches 1")


def test_drawn_samples_never_reach_one():
    u = torch.tensor([0.0, 0.5, 1 - 2.0**-24, 1 - 2.0**-12, 1 - 2.0**-9])
    for dtype in DTYPES:
        v = reference.fmp_sample_from_uniform(u, dtype)
        assert v.dtype == dtype and bool((v < 1).all()) and bool((v >= 0).all())
    assert reference.fmp_sample_from_uniform(u, torch.float16)[-2] == 1 - 2.0**-11
    assert reference.fmp_sample_from_uniform(u, torch.bfloat16)[-1] == 1 - 2.0**-8


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_drawn_samples_equal_explicit_pytorch(any_backend, dtype):
    """Without draws the op draws u from the generator's state (Philox stream 0, one per (n, c, axis)) and
    rounds it to the input's dtype, never to 1: the regions are those of explicit _random_samples with those
    values, which torch's own op takes (outputs and indices equal). The seed is chosen so that a half-type
    u rounds up to 1 (taken as the largest value below 1)."""
    device, _ = any_backend
    n, c = 16, 64
    x = torch.randn(n, c, 8, 8, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    seed = _seed_reaching_one(n, c, dtype)
    torch.manual_seed(seed)
    state = philox.draw_state(device, reference.FMP_STREAMS)
    samples = reference.fmp_drawn_samples(state, n, c, dtype)
    assert bool((samples < 1).all())
    if dtype in _ROUNDS_TO_ONE:
        assert bool((samples == 1 - torch.finfo(dtype).eps / 2).any())  # the clamp is exercised
    torch.manual_seed(seed)
    y, index = F.fractional_max_pool2d(x, 2, output_size=6, return_indices=True)
    want_y, want_index = torch.nn.functional.fractional_max_pool2d(x, 2, output_size=6, return_indices=True,
                                                                   _random_samples=samples)
    exact(y, want_y)
    assert torch.equal(index, want_index)


MODES = [("window", "pseudorandom", False), ("window", "pseudorandom", True)] + GRAHAM_MODES


@pytest.mark.parametrize("regions, sequence, per_image", MODES, ids=[f"{r}-{s}-{p}" for r, s, p in MODES])
def test_same_generator_state_same_output_everywhere(kernel_backend, regions, sequence, per_image):
    """The same generator state gives the same regions on this backend and on the reference (the reference
    draws through python/cifarops/philox.py), the op returns the state it used, which the backward op takes,
    and the next call draws new regions."""
    device, backend = kernel_backend
    ns = namespace_for(backend)
    x = torch.randn(3, 4, 13, 11, device=device)
    kernel = [2, 2] if regions == "window" else []
    args = (x, kernel, [7, 6], regions, None, None, True, sequence, per_image, None)
    torch.manual_seed(11)
    state = philox.draw_state(device, reference.FMP_STREAMS)
    torch.manual_seed(11)
    y, index, used = ns.fractional_max_pool2d(*args)
    assert torch.equal(used, state)
    torch.manual_seed(11)
    want_y, want_index, want_state = reference.fractional_max_pool2d(*args)
    exact(y, want_y)
    assert torch.equal(index, want_index) and torch.equal(want_state, state)
    # explicit state: the same again, and the generator stays where it is
    before = torch.get_rng_state()
    again = ns.fractional_max_pool2d(*args[:-1], used)
    assert torch.equal(again[1], index) and torch.equal(again[2], used)
    assert torch.equal(torch.get_rng_state(), before)
    grad = torch.randn_like(y)
    grad_x = ns._fractional_max_pool2d_backward(grad, index, [13, 11], kernel, regions, None, None, sequence, per_image,
                                                used)
    exact(grad_x, reference.fractional_max_pool2d_backward(grad, index, [13, 11], kernel, regions, None, None, sequence,
                                                           per_image, used))
    assert not torch.equal(ns.fractional_max_pool2d(*args)[2], used)  # the next call: a new state


def test_manual_seed_reproduces_the_module(any_backend):
    device, _ = any_backend
    x = torch.randn(2, 3, 12, 12, device=device, requires_grad=True)
    for layer in (cifarops.FractionalMaxPool2d(2, output_size=7),
                  cifarops.FractionalMaxPool2d(output_ratio=0.7, regions="overlapping", sequence="random")):
        runs = []
        for _ in range(2):
            torch.manual_seed(21)
            y = layer(x)
            (grad,) = torch.autograd.grad(y.sum(), x)
            runs.append((y, grad, layer(x)))
        assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
        assert torch.equal(runs[0][2], runs[1][2]) and not torch.equal(runs[0][0], runs[0][2])


def test_failing_call_advances_no_generator(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    x = torch.randn(2, 3, 10, 10, device=device)
    before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state() if device == "cuda" else None
    for bad in (dict(output_size=[10, 7]), dict(regions="tiles"), dict(kernel_size=[2, 9])):
        args = dict(x=x, kernel_size=[2, 2], output_size=[7, 7], regions="window", samples=None, boundaries=None,
                    return_indices=False, sequence="pseudorandom", per_image=False, rng_state=None)
        args.update(bad)
        with pytest.raises(ValueError):
            ns.fractional_max_pool2d(*args.values())
    assert torch.equal(torch.get_rng_state(), before)
    if cuda_before is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_before)


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """The dispatcher ops a block runs, views, detach and allocations left out."""

    SKIP = ("detach", "view", "alias", "empty", "_to_copy", "t")

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (func.is_view or name in self.SKIP or name.startswith("empty")):
            self.ops.append(f"{func.namespace}.{name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("regions, sequence", [("window", "pseudorandom"), ("overlapping", "random")])
@pytest.mark.parametrize("training", [True, False])
def test_one_op_forward_one_op_backward(kernel_backend, regions, sequence, training):
    """A call is one dispatcher op forward and one backward (its rng_state and index carry no gradient: no
    zeros() for them), in training and in evaluation."""
    device, backend = kernel_backend
    namespace = "cifarops_triton" if backend == "triton" else "cifarops"
    kwargs = dict(kernel_size=2) if regions == "window" else dict(regions=regions, sequence=sequence)
    layer = cifarops.FractionalMaxPool2d(output_size=6, **kwargs).train(training)
    x = torch.randn(2, 4, 8, 8, device=device, requires_grad=True)
    grad = torch.randn(2, 4, 6, 6, device=device)
    layer(x)  # warm-up: the first call parses the layer's hyper-parameters
    with _OpCounter() as forward:
        y = layer(x)
    with _OpCounter() as backward:
        y.backward(grad)
    assert forward.ops == [f"{namespace}.fractional_max_pool2d"]
    assert backward.ops == [f"{namespace}._fractional_max_pool2d_backward"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_alpha_division_is_the_dtypes_own(dtype):
    """The Triton launcher's alphas are divided on the host without tensors (no tensor from host data on a GPU
    call path); torch's own division in the dtype is the oracle, operands rounded included (257 is 256 in
    bfloat16), as is half's overflow."""
    import itertools
    import math

    from cifarops.ops.fractional_max_pool2d import _divide_in

    pairs = list(itertools.product(range(0, 300, 7), range(1, 200, 3))) + [(257, 5), (4097, 3), (65519, 7), (70000, 3)]
    for a, b in pairs:
        want = (torch.tensor(a, dtype=dtype) / torch.tensor(b, dtype=dtype)).item()
        got = _divide_in(a, b, dtype)
        assert got == want or (math.isnan(got) and math.isnan(want)), (a, b, got, want)
