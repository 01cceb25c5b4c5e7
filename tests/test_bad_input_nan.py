"""NaN and infinities in the input come out where each op's formula puts them, on every backend.

ShakeDrop and Shake-Shake are products and sums: NaN stays NaN, an infinity stays infinite unless it is
multiplied by a zero coefficient (0 * inf = NaN) or meets the opposite infinity; the expected outputs are the
formulas evaluated here with torch's IEEE arithmetic in float64. Maxout and fractional max-pooling are
maxima: a NaN in a group or region wins, as torch.max and torch.nn.functional.fractional_max_pool2d decide
(their outputs, indices and gradients are the oracle). Probabilistic maxout has no PyTorch twin: a NaN in a
group gives NaN, and every backend matches the reference bit for bit in where NaN and infinities land.
"""

from __future__ import annotations

import pytest
import torch

import cifarops
import cifarops.functional as F
from cifarops.backends import op as _op

NAN, INF = float("nan"), float("inf")
BACKENDS = cifarops.available_backends("cpu")
KERNELS = [b for b in BACKENDS if b != "reference"]


def with_specials(shape, dtype=torch.float32, seed=0, fraction=0.2):
    """Random values with about `fraction` of them replaced by NaN, +inf and -inf, at fixed positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    pick = torch.rand(shape, generator=g, dtype=torch.float64)
    third = fraction / 3
    x[pick < third] = NAN
    x[(pick >= third) & (pick < 2 * third)] = INF
    x[(pick >= 2 * third) & (pick < fraction)] = -INF
    return x.to(dtype)


def assert_same_specials(actual, expected):
    """NaN in the same places, equal infinities (with sign) and finite values equal to rounding."""
    assert torch.equal(actual.isnan(), expected.isnan())
    torch.testing.assert_close(actual, expected.to(actual.dtype), equal_nan=True, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shake_drop_propagates_nan_and_inf(backend, dtype):
    n, c = 6, 5
    h = with_specials((n, c, 3, 3), dtype, seed=1).requires_grad_()
    shortcut = with_specials((n, 3, 3, 3), dtype, seed=2)  # narrower: added to the first 3 channels
    gate = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype)
    # Channel coefficients with exact zeros: with gate 0 the scale is 0 there, and 0 * inf is NaN.
    alpha = torch.tensor([0.0, 0.5, -1.0, 1.0, 0.25], dtype=dtype).repeat(n, 1)
    beta = torch.tensor([0.0, 1.0, 0.5, 0.0, 0.75], dtype=dtype).repeat(n, 1)
    with cifarops.use_backend(backend):
        y = F.shake_drop(h, shortcut, gate=gate, alpha=alpha, beta=beta)
    g64, a64, b64 = (t.double().reshape(*t.shape, *([1] * (4 - t.dim()))) for t in (gate.reshape(n, 1), alpha, beta))
    expected = (g64 + (1 - g64) * a64) * h.detach().double()
    expected[:, :3] += shortcut.double()
    assert expected.isnan().any() and expected.isinf().any()
    assert_same_specials(y, expected)

    grad_y = with_specials(y.shape, dtype, seed=3)
    grad_h, = torch.autograd.grad(y, h, grad_y)
    assert_same_specials(grad_h, (g64 + (1 - g64) * b64) * grad_y.double())


@pytest.mark.parametrize("backend", KERNELS)
def test_shake_drop_pixel_noise_places_specials_like_the_reference(backend):
    """Philox per-pixel coefficients: the signs of inf * alpha, and NaN, land where the reference puts them."""
    h = with_specials((4, 6, 5, 5), seed=4)
    shortcut = with_specials((4, 6, 5, 5), seed=5)
    gate, state = torch.zeros(4), torch.tensor([77, 0], dtype=torch.int64)
    args = (h, shortcut, 0.5, [-1.0, 1.0], [0.0, 1.0], "batch", "pixel", True, gate, None, None, state)
    with cifarops.use_backend(backend):
        got = cifarops.backends.op("shake_drop", h.device)(*args)[0]
    want = cifarops.reference.shake_drop(*args)[0]
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shake_shake_propagates_nan_and_inf(backend, dtype):
    n = 5
    h1 = with_specials((n, 4, 3, 3), dtype, seed=6).requires_grad_()
    h2 = with_specials((n, 4, 3, 3), dtype, seed=7).requires_grad_()
    shortcut = with_specials((n, 4, 3, 3), dtype, seed=8)
    # alpha 0 and 1 multiply one branch by an exact zero: its infinities become NaN.
    alpha = torch.tensor([0.0, 1.0, 0.5, 0.25, 1.0], dtype=dtype)
    beta = torch.tensor([1.0, 0.0, 0.5, 0.75, 0.0], dtype=dtype)
    with cifarops.use_backend(backend):
        y = F.shake_shake(h1, h2, shortcut, alpha=alpha, beta=beta)
    a, b = alpha.double().reshape(n, 1, 1, 1), beta.double().reshape(n, 1, 1, 1)
    expected = shortcut.double() + (a * h1.detach().double() + (1 - a) * h2.detach().double())
    assert expected.isnan().any() and expected.isinf().any()
    assert_same_specials(y, expected)

    grad_y = with_specials(y.shape, dtype, seed=9)
    grad_h1, grad_h2 = torch.autograd.grad(y, (h1, h2), grad_y)
    assert_same_specials(grad_h1, b * grad_y.double())
    assert_same_specials(grad_h2, (1 - b) * grad_y.double())


def torch_maxout(x, pieces, dim, grouping):
    """PyTorch's max over the groups of a view: values and autograd route NaN and ties as torch.max does."""
    size = x.shape[dim]
    if grouping == "contiguous":
        return x.unflatten(dim, (size // pieces, pieces)).max(dim + 1).values
    return x.unflatten(dim, (pieces, size // pieces)).max(dim).values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_maxout_nan_wins_like_torch_max(backend, grouping, dtype):
    x = with_specials((3, 12, 4, 4), dtype, seed=10, fraction=0.3).requires_grad_()
    with cifarops.use_backend(backend):
        y = F.maxout(x, 3, 1, grouping)
    want = torch_maxout(x, 3, 1, grouping)
    assert want.isnan().any() and want.isinf().any()
    assert torch.equal(y.isnan(), want.isnan())
    assert torch.equal(y.detach().nan_to_num(0.0), want.detach().nan_to_num(0.0))
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(11)).to(dtype)
    assert torch.equal(torch.autograd.grad(y, x, grad_y)[0], torch.autograd.grad(want, x, grad_y)[0])


def group_has_nan(x, pieces):
    return x.unflatten(1, (x.shape[1] // pieces, pieces)).isnan().any(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilistic_maxout_nan_in_a_group_gives_nan(backend):
    """Finite values and NaN: the expectation (softmax-weighted sum, evaluated here) and the training draw
    are NaN exactly for the groups that hold a NaN."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 8, 3, 3, generator=g)
    x[torch.rand(x.shape, generator=g) < 0.15] = NAN
    with cifarops.use_backend(backend):
        expectation = F.probabilistic_maxout(x, 2, training=False)
        torch.manual_seed(13)
        drawn = F.probabilistic_maxout(x, 2)
    z = x.double().unflatten(1, (4, 2))
    hand = (torch.softmax(z, dim=2) * z).sum(2)
    nan_groups = group_has_nan(x, 2)
    assert nan_groups.any() and not nan_groups.all()
    assert_same_specials(expectation, hand)
    assert torch.equal(drawn.isnan(), nan_groups)
    pieces = x.unflatten(1, (4, 2))
    assert bool((drawn == pieces[:, :, 0]).logical_or(drawn == pieces[:, :, 1]).logical_or(nan_groups).all())


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("training", [True, False])
def test_probabilistic_maxout_specials_agree_with_the_reference(backend, training):
    x = with_specials((4, 8, 3, 3), seed=14, fraction=0.4).requires_grad_()
    rng_state = torch.tensor([5, 0], dtype=torch.int64)

    def run():
        if training:
            return _op("probabilistic_maxout", x.device)(x, 2, 1, "contiguous", 0.5, rng_state)[0]
        return _op("probabilistic_maxout_expectation", x.device)(x, 2, 1, "contiguous", 0.5)

    with cifarops.use_backend(backend):
        got = run()
    with cifarops.use_backend("reference"):
        want = run()
    assert want.isnan().any() and not want.isnan().all()
    # NaN and infinities land in the same places; finite expectations agree to rounding.
    assert_same_specials(got.detach(), want.detach())
    if training:  # the draw returns an input element, so equal bit for bit, and its gradient goes there
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))
        grad_y = torch.ones_like(got)
        assert torch.equal(torch.autograd.grad(got, x, grad_y)[0], torch.autograd.grad(want, x, grad_y)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_probabilistic_maxout_draws_a_positive_infinity(backend, dtype):
    """Worked by hand: softmax(z / T) of a group holding +inf puts all its mass on its +inf pieces (shared
    equally by two), so the draw returns +inf and sends the gradient there, whatever the uniform; groups of
    -inf and finite values never draw the -inf (weight exp(-inf) = 0). A NaN still wins."""
    inf, nan = float("inf"), float("nan")
    groups = [[inf, 1.0], [-inf, inf], [2.0, inf, inf], [-inf, 3.0], [-inf, -inf, 0.5], [nan, inf]]
    want_y = [inf, inf, inf, 3.0, 0.5, nan]
    want_pieces = [{0}, {1}, {1, 2}, {1}, {2}, {0}]
    pieces = 3
    x = torch.tensor([g + [-inf] * (pieces - len(g)) for g in groups], dtype=dtype)  # (6, 3): dim 1 groups
    for s in range(8):  # several uniforms
        with cifarops.use_backend(backend):
            xs = x.clone().requires_grad_()
            y, piece, _ = _op("probabilistic_maxout", x.device)(xs, pieces, 1, "contiguous", 0.7,
                                                                torch.tensor([s, 4 * s], dtype=torch.int64))
        y = y.view(-1)
        assert torch.equal(y.isnan(), torch.tensor(want_y).isnan())
        assert torch.equal(y.nan_to_num(0.0), torch.tensor(want_y, dtype=dtype).nan_to_num(0.0)), (s, y)
        drawn = piece.view(-1).tolist()
        assert all(p in want for p, want in zip(drawn, want_pieces)), (s, drawn)
        grad = torch.autograd.grad(y.sum(), xs)[0]
        assert torch.equal(grad, torch.nn.functional.one_hot(torch.tensor(drawn), pieces).to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fractional_max_pool_nan_wins_like_pytorch(backend, dtype):
    x = with_specials((2, 3, 11, 9), dtype, seed=15, fraction=0.1).requires_grad_()
    samples = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(16), dtype=dtype)
    with cifarops.use_backend(backend):
        y, index = F.fractional_max_pool2d(x, 2, output_size=(7, 5), return_indices=True, _random_samples=samples)
    want, want_index = torch.nn.functional.fractional_max_pool2d(x, 2, output_size=(7, 5), return_indices=True,
                                                                 _random_samples=samples)
    assert want.isnan().any() and want.isinf().any()
    assert torch.equal(y.isnan(), want.isnan())
    assert torch.equal(y.detach().nan_to_num(0.0), want.detach().nan_to_num(0.0))
    assert torch.equal(index, want_index)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(17), dtype=dtype)
    assert torch.equal(torch.autograd.grad(y, x, grad_y)[0], torch.autograd.grad(want, x, grad_y)[0])


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("regions", ["disjoint", "overlapping"])
def test_graham_regions_place_nan_like_the_reference(backend, regions):
    """Graham's regions have no PyTorch twin: NaN in a region wins (checked by hand through the indices)
    and every backend chooses the reference's element."""
    x = with_specials((2, 3, 10, 10), seed=18, fraction=0.1)
    torch.manual_seed(19)
    with cifarops.use_backend(backend):
        y, index = F.fractional_max_pool2d(x, output_size=6, regions=regions, per_image=True, return_indices=True)
    torch.manual_seed(19)
    with cifarops.use_backend("reference"):
        want, want_index = F.fractional_max_pool2d(x, output_size=6, regions=regions, per_image=True,
                                                   return_indices=True)
    assert want.isnan().any()
    assert torch.equal(y.isnan(), want.isnan()) and torch.equal(index, want_index)
    assert torch.equal(y.nan_to_num(0.0), want.nan_to_num(0.0))
    # Each output is its input element at the chosen index: a NaN output points at a NaN input.
    assert torch.equal(x.flatten(2).gather(2, index.flatten(2)).isnan(), y.flatten(2).isnan())
