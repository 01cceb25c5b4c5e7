"""Shake-Shake: hand-worked answers, every backend against the reference, gradients, layouts, dtypes,
torch.library and torch.compile integration, seeding and the statistics of alpha and beta."""

from __future__ import annotations

import re

import pytest
import torch

import cifarops
import cifarops.functional as F
from conftest import COMPILE_BACKENDS, DTYPES, assert_close, assert_compiled_step_equals_eager, ids, matches_reference, namespace_for
from layouts import LAYOUTS, in_layout

MODES = [(f, b) for f in ("shake", "even") for b in ("shake", "even", "keep")]


def run(h1, h2, shortcut=None, grad=None, **kwargs):
    """Forward and backward; returns (y, dh1, dh2, dshortcut)."""
    h1, h2 = h1.detach().requires_grad_(), h2.detach().requires_grad_()
    if shortcut is not None:
        shortcut = shortcut.detach().requires_grad_()
    y = F.shake_shake(h1, h2, shortcut, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, h1.grad, h2.grad, None if shortcut is None else shortcut.grad


def test_known_answer_training(any_backend):
    device, _ = any_backend
    h1 = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[8.0, 0.0]], [[-4.0, 4.0]]]], device=device)
    h2 = torch.tensor([[[[5.0, 6.0]], [[7.0, 8.0]]], [[[0.0, 8.0]], [[4.0, -4.0]]]], device=device)
    x = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]], [[[0.5, 0.5]], [[0.5, 0.5]]]], device=device)
    grad = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[4.0, 8.0]], [[-4.0, 2.0]]]], device=device)
    alpha = torch.tensor([0.25, 1.0], device=device)
    beta = torch.tensor([0.5, 0.75], device=device)
    y, dh1, dh2, dx = run(h1, h2, x, grad, alpha=alpha, beta=beta)
    # Sample 0: 0.25 h1 + 0.75 h2 + 1; sample 1: h1 + 0.5.
    expected = torch.tensor([[[[5.0, 6.0]], [[7.0, 8.0]]], [[[8.5, 0.5]], [[-3.5, 4.5]]]], device=device)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # dh1 = beta * grad, dh2 = (1 - beta) * grad: beta 0.5 for sample 0, 0.75 for sample 1.
    torch.testing.assert_close(dh1, torch.tensor([[[[0.5, 1.0]], [[1.5, 2.0]]], [[[3.0, 6.0]], [[-3.0, 1.5]]]], device=device), rtol=0, atol=0)
    torch.testing.assert_close(dh2, torch.tensor([[[[0.5, 1.0]], [[1.5, 2.0]]], [[[1.0, 2.0]], [[-1.0, 0.5]]]], device=device), rtol=0, atol=0)
    torch.testing.assert_close(dx, grad, rtol=0, atol=0)


def test_known_answer_evaluation_and_even(any_backend):
    device, _ = any_backend
    h1, h2 = torch.tensor([[2.0, 4.0]], device=device), torch.tensor([[6.0, -4.0]], device=device)
    for kwargs in ({"training": False}, {"forward_mode": "even", "backward_mode": "even"}):
        y, dh1, dh2, _ = run(h1, h2, **kwargs)
        torch.testing.assert_close(y, torch.tensor([[4.0, 0.0]], device=device), rtol=0, atol=0)
        torch.testing.assert_close(dh1, torch.full_like(h1, 0.5), rtol=0, atol=0)
        torch.testing.assert_close(dh2, torch.full_like(h1, 0.5), rtol=0, atol=0)


def test_keep_uses_alpha_in_backward(any_backend):
    """backward_mode="keep": beta = alpha, so the gradient is the true gradient of the forward mix."""
    device, _ = any_backend
    torch.manual_seed(3)
    h1, h2 = torch.ones(64, 3, device=device), torch.zeros(64, 3, device=device)
    y, dh1, dh2, _ = run(h1, h2, backward_mode="keep")
    torch.testing.assert_close(dh1, y)  # y = alpha when h1 = 1, h2 = 0
    torch.testing.assert_close(dh2, 1 - y)


def test_output_dtype(any_backend):
    device, _ = any_backend
    for dtype in DTYPES:
        h = torch.randn(3, 2, 2, 2, device=device).to(dtype)
        assert F.shake_shake(h, h, h).dtype == dtype


def compare_with_reference(h1, h2, shortcut, **kwargs):
    return matches_reference(run, h1, h2, shortcut, seed=99, **kwargs)


@pytest.mark.parametrize("forward_mode, backward_mode", MODES)
@pytest.mark.parametrize("level", ["batch", "sample"])
@pytest.mark.parametrize("with_shortcut", [False, True])
def test_matches_reference_modes(kernel_backend, forward_mode, backward_mode, level, with_shortcut):
    device, _ = kernel_backend
    h1, h2, x = (torch.randn(5, 6, 7, 3, device=device) for _ in range(3))
    compare_with_reference(h1, h2, x if with_shortcut else None, forward_mode=forward_mode, backward_mode=backward_mode, level=level)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference_dtypes_layouts(kernel_backend, dtype, layout):
    device, _ = kernel_backend
    h1, h2, x = (in_layout(torch.randn(4, 8, 5, 6, device=device).to(dtype), layout) for _ in range(3))
    y, *_ = compare_with_reference(h1, h2, x)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_mixed_layouts(kernel_backend):
    device, _ = kernel_backend
    h1 = in_layout(torch.randn(3, 4, 5, 6, device=device), "channels_last")
    h2 = torch.randn(3, 4, 5, 6, device=device)
    x = in_layout(torch.randn(3, 4, 5, 6, device=device), "sliced")
    compare_with_reference(h1, h2, x)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7), (1, 1, 1, 1), (3, 17, 1, 13), (2, 3, 2, 2, 2)])
def test_matches_reference_other_shapes(kernel_backend, shape):
    device, _ = kernel_backend
    h1, h2 = torch.randn(*shape, device=device), torch.randn(*shape, device=device)
    compare_with_reference(h1, h2, h1.clone())


def test_empty_batch(any_backend):
    device, _ = any_backend
    h = torch.randn(0, 6, 4, 4, device=device)
    y, dh1, dh2, dx = run(h, h, h)
    assert y.shape == dh1.shape == dh2.shape == dx.shape == h.shape


def test_gradcheck(kernel_backend):
    """With beta = alpha (keep), the backward is the true gradient."""
    device, _ = kernel_backend
    h1, h2, x = (torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3))
    alpha = torch.rand(3, dtype=torch.float64, device=device)

    def fn(h1, h2, x):
        return F.shake_shake(h1, h2, x, alpha=alpha, beta=alpha)

    assert torch.autograd.gradcheck(fn, (h1, h2, x))
    assert torch.autograd.gradgradcheck(fn, (h1, h2, x))
    assert torch.autograd.gradcheck(lambda a, b: F.shake_shake(a, b, training=False), (h1, h2))


def test_shortcut_gradient_is_the_incoming_gradient(kernel_backend):
    device, _ = kernel_backend
    h1, h2, x = (torch.randn(2, 4, 3, 3, device=device, requires_grad=True) for _ in range(3))
    y = F.shake_shake(h1, h2, x)
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, [x], grad)
    assert dx.data_ptr() == grad.data_ptr()


def test_only_coefficients_are_saved_for_backward(kernel_backend):
    device, _ = kernel_backend
    h1, h2, x = (torch.randn(8, 16, 8, 8, device=device, requires_grad=True) for _ in range(3))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        F.shake_shake(h1, h2, x)
    assert sum(saved) <= 8  # beta, one per sample: never h1, h2, the shortcut or y


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    h1, h2, x = (torch.randn(3, 4, 5, 5, device=device, requires_grad=True) for _ in range(3))
    alpha, beta = torch.rand(3, device=device), torch.rand(3, device=device)
    state = torch.tensor([12345, 8], dtype=torch.int64, device=device)  # explicit: the outputs are reproducible
    cl = in_layout(h1.detach(), "channels_last").requires_grad_()
    samples = [
        (h1, h2, x, "shake", "shake", "sample", True, alpha, beta, None),
        (h1, h2, None, "shake", "keep", "sample", True, alpha, None, None),
        (h1, h2, x, "shake", "shake", "sample", True, None, None, state),
        (h1, h2, x, "shake", "keep", "batch", True, None, None, state),
        (h1, h2, x, "even", "even", "sample", True, None, None, None),
        (h1, h2, x, "shake", "shake", "sample", False, None, None, None),
        (cl, h2, x, "shake", "shake", "sample", True, torch.rand(1, device=device).expand(3), beta.double(), None),
        (h1.detach()[:0].requires_grad_(), h2.detach()[:0], None, "shake", "shake", "sample", True, None, None, state),
    ]
    for args in samples:
        torch.library.opcheck(ns.shake_shake, args)
    for beta_, mode, level in [(beta, "shake", "sample"), (None, "shake", "sample"), (None, "keep", "batch"), (None, "even", "sample")]:
        torch.library.opcheck(ns._shake_shake_backward, (h1.detach().requires_grad_(), state, beta_, mode, level))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_fullgraph(device, backend):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.branch1 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.branch2 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.shake = cifarops.ShakeShake(backward_mode="keep")

        def forward(self, x):
            return self.shake(self.branch1(x), self.branch2(x), x)

    torch._dynamo.reset()
    block = Block().to(device)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    with cifarops.use_backend(backend):
        assert_compiled_step_equals_eager(compiled, block, x, seed=11, backend=backend)
        block.eval()
        assert_close(compiled(x), block(x))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_compiled_decomposition_equals_the_op_for_the_same_noise(device, backend):
    """Under torch.compile Shake-Shake is the reference's pointwise formulas (backends.COMPILE_DECOMPOSED),
    fused by Inductor: with explicit alpha and beta (per sample, per batch), with and without a shortcut, in
    channels_last and a half type, its output and the three gradients equal the op's eager ones, to rounding."""
    g = torch.Generator(device=device).manual_seed(3)
    h1, h2, s = (torch.randn(3, 4, 5, 5, device=device, generator=g) for _ in range(3))
    a, b = torch.rand(3, device=device, generator=g), torch.rand(3, device=device, generator=g)
    cases = [(h1, h2, s, a, b, "sample"), (h1, h2, None, a[:1], b[:1], "batch"),
             (in_layout(h1, "channels_last"), in_layout(h2, "channels_last"), in_layout(s, "channels_last"), a, b, "sample"),
             (h1.half(), h2.half(), s.half(), a, b, "sample")]

    def shake_shake(h1, h2, s, alpha, beta, level):
        return F.shake_shake(h1, h2, s, alpha=alpha, beta=beta, level=level)

    def step(fn, h1, h2, s, *rest):
        inputs = [t.detach().requires_grad_() for t in (h1, h2, s) if t is not None]
        y = fn(*inputs[:2], inputs[2] if s is not None else None, *rest)
        weight = torch.arange(y.numel(), device=y.device).reshape(y.shape).cos()
        return [y, *torch.autograd.grad((y.float() * weight).sum(), inputs)]

    torch._dynamo.reset()
    compiled = torch.compile(shake_shake, fullgraph=True, dynamic=False)  # the automatic choice: decomposed
    for case in cases:
        got = step(compiled, *case)
        with cifarops.use_backend(backend):
            want = step(shake_shake, *case)
        assert got[0].dtype == want[0].dtype and got[0].stride() == want[0].stride()  # the output's layout
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


@pytest.mark.parametrize("forward_mode, backward_mode", MODES)
def test_same_seed_same_result(kernel_backend, forward_mode, backward_mode):
    device, _ = kernel_backend
    h1, h2 = torch.randn(6, 5, 4, 4, device=device), torch.randn(6, 5, 4, 4, device=device)
    torch.manual_seed(7)
    first = run(h1, h2, h1, forward_mode=forward_mode, backward_mode=backward_mode)
    torch.manual_seed(7)
    second = run(h1, h2, h1, forward_mode=forward_mode, backward_mode=backward_mode)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    if forward_mode == "shake" or backward_mode == "shake":  # something is drawn: another seed, other noise
        torch.manual_seed(8)
        third = run(h1, h2, h1, forward_mode=forward_mode, backward_mode=backward_mode)
        assert not all(torch.equal(a, b) for a, b in zip(first, third))


def uniform_ok(samples: torch.Tensor, sigmas: float = 5.0) -> None:
    """Mean 1/2 and variance 1/12 of U[0, 1] within a few standard errors."""
    samples = samples.double().flatten()
    n = samples.numel()
    assert abs(samples.mean().item() - 0.5) < sigmas * (1 / 12 / n) ** 0.5
    assert abs(samples.var().item() - 1 / 12) < sigmas * (2 / 144 / n) ** 0.5


@pytest.mark.parametrize("level", ["batch", "sample"])
def test_coefficient_statistics(kernel_backend, level):
    """h1 = 1, h2 = 0 leaves y = alpha and dh1 = beta per sample: read them off."""
    device, backend = kernel_backend
    # Interpreted Triton runs each program in Python: fewer draws (the standard errors widen to match; that it
    # draws the reference's numbers is tested on the same state above).
    samples = 500 if backend == "triton" and device == "cpu" else 20000
    torch.manual_seed(0)
    if level == "sample":
        h1, h2 = torch.ones(samples, 1, device=device), torch.zeros(samples, 1, device=device)
        y, dh1, _, _ = run(h1, h2)
        alpha, beta = y.flatten(), dh1.flatten()
    else:
        h1, h2 = torch.ones(4, 2, device=device), torch.zeros(4, 2, device=device)
        draws = [run(h1, h2, level="batch") for _ in range(max(samples // 10, 100))]
        assert all((y == y[0, 0]).all() for y, *_ in draws)  # one alpha for the whole batch
        alpha = torch.stack([y[0, 0] for y, *_ in draws])
        beta = torch.stack([dh1[0, 0] for _, dh1, _, _ in draws])
    uniform_ok(alpha)
    uniform_ok(beta)
    correlation = torch.corrcoef(torch.stack([alpha.double(), beta.double()]))[0, 1].item()
    assert abs(correlation) < 5 / alpha.numel() ** 0.5  # beta is drawn independently of alpha


def test_module(any_backend):
    device, _ = any_backend
    layer = cifarops.ShakeShake(forward_mode="even", backward_mode="keep", level="batch")
    assert "backward_mode='keep'" in repr(layer)
    h1, h2 = torch.randn(2, 3, 2, 2, device=device), torch.randn(2, 3, 2, 2, device=device)
    torch.testing.assert_close(layer(h1, h2), 0.5 * h1 + 0.5 * h2)
    layer.eval()
    torch.testing.assert_close(layer(h1, h2, h1), h1 + 0.5 * h1 + 0.5 * h2)


# ------------------------------------------------------------------- noise drawn inside the op (issue 16)

import cifarops.philox as philox  # noqa: E402
from cifarops import backends  # noqa: E402

CPU_BACKENDS = cifarops.available_backends("cpu")  # reference, cpu, and triton under TRITON_INTERPRET=1


def reveal(backend, n=6, seed=11, **kwargs):
    """alpha and beta read off a call (h1 = 1, h2 = 0, dy = 1: y = alpha and dh1 = beta exactly)."""
    torch.manual_seed(seed)
    with cifarops.use_backend(backend):
        return run(torch.ones(n, 3, 2), torch.zeros(n, 3, 2), **kwargs)


@pytest.mark.parametrize("forward_mode, backward_mode", MODES)
@pytest.mark.parametrize("level", ["batch", "sample"])
def test_same_generator_state_same_noise_on_every_backend(forward_mode, backward_mode, level):
    """torch.manual_seed(s) then a call: identical output and gradients on the reference, cpu and triton."""
    kwargs = dict(forward_mode=forward_mode, backward_mode=backward_mode, level=level)
    want = reveal("reference", **kwargs)
    for backend in CPU_BACKENDS:
        got = reveal(backend, **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(got[:3], want[:3])), backend
    h1, h2, x = (torch.randn(5, 4, 3, 3) for _ in range(3))
    for backend in CPU_BACKENDS:
        with cifarops.use_backend(backend):
            matches_reference(run, h1, h2, x, seed=5, **kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_manual_seed_reproduces_and_calls_differ(backend):
    first, again = reveal(backend, seed=3), reveal(backend, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first[:3], again[:3]))
    torch.manual_seed(3)
    with cifarops.use_backend(backend):
        one = run(torch.ones(6, 3), torch.zeros(6, 3))
        two = run(torch.ones(6, 3), torch.zeros(6, 3))
    assert not torch.equal(one[0], two[0]) and not torch.equal(one[1], two[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("level", ["batch", "sample"])
def test_hand_worked_oracle(backend, level):
    """The op's rng_state is philox.draw_state's for the same generator state, and alpha = u(i, 0),
    beta = u(i, 1) of that state with i = n (sample) or 0 (batch), computed here by hand."""
    n = 5
    h1, h2, x, grad = (torch.randn(n, 4, 3, 2) for _ in range(4))
    torch.manual_seed(21)
    want_state = philox.draw_state("cpu", 2)
    index = torch.arange(n) if level == "sample" else torch.zeros(n, dtype=torch.int64)
    alpha = philox.philox_uniform(want_state, index, 0).view(n, 1, 1, 1)
    beta = philox.philox_uniform(want_state, index, 1).view(n, 1, 1, 1)
    torch.manual_seed(21)
    op = backends._op_for_backend("shake_shake", backend)
    h1_, h2_ = h1.clone().requires_grad_(), h2.clone().requires_grad_()
    y, state = op(h1_, h2_, x, "shake", "shake", level, True, None, None, None)
    assert torch.equal(state, want_state)
    torch.testing.assert_close(y, alpha * h1 + (1 - alpha) * h2 + x)
    y.backward(grad)
    torch.testing.assert_close(h1_.grad, beta * grad)
    torch.testing.assert_close(h2_.grad, (1 - beta) * grad)
    # The generator moved exactly as draw_state moves it (the backward drew nothing): the next draws agree.
    after_op = philox.draw_state("cpu", 2)
    torch.manual_seed(21)
    philox.draw_state("cpu", 2)
    assert torch.equal(after_op, philox.draw_state("cpu", 2))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_explicit_state_replays_and_nothing_drawn_gives_zeros(backend):
    op = backends._op_for_backend("shake_shake", backend)
    h1, h2 = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    state = torch.tensor([-7, 12], dtype=torch.int64)
    rng = torch.get_rng_state()
    y1, s1 = op(h1, h2, None, "shake", "shake", "sample", True, None, None, state)
    y2, s2 = op(h1, h2, None, "shake", "shake", "sample", True, None, None, state)
    assert torch.equal(y1, y2) and torch.equal(s1, state) and torch.equal(s2, state)
    assert torch.equal(torch.get_rng_state(), rng)  # an explicit state draws nothing from the generator
    alpha = philox.philox_uniform(state, torch.arange(4), 0).view(4, 1, 1)
    torch.testing.assert_close(y1, alpha * h1 + (1 - alpha) * h2)
    for args in [("even", "even", "sample", True, None, None), ("shake", "shake", "sample", False, None, None),
                 ("shake", "shake", "sample", True, torch.full((4,), 0.25), torch.full((1,), 0.75))]:
        y, s = op(h1, h2, None, *args, None)
        assert torch.equal(s, torch.zeros(2, dtype=torch.int64))
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_failing_op_call_advances_no_generator(backend):
    op = backends._op_for_backend("shake_shake", backend)
    h = torch.randn(4, 3, 2)
    cases = [
        (dict(beta=torch.rand(3)), ValueError, "beta must have shape (1,) or (N,) = (4,), got (3,)"),
        (dict(h2=torch.randn(4, 3, 3)), ValueError, "h2 must have h1's shape (4, 3, 2), got (4, 3, 3)"),
        (dict(level="pixel"), ValueError, "level must be one of ('batch', 'sample'), got 'pixel'"),
        (dict(rng_state=torch.zeros(3, dtype=torch.int64)), ValueError, "rng_state must have two elements {seed, offset}"),
        (dict(h1=torch.ones(4, 3, 2, dtype=torch.int64)), TypeError, "h1 must be float32, float64, float16 or bfloat16"),
    ]
    rng = torch.get_rng_state()
    for bad, error, message in cases:
        args = dict(h1=h, h2=h, shortcut=None, forward_mode="shake", backward_mode="shake", level="sample",
                    training=True, alpha=None, beta=None, rng_state=None)
        args.update(bad)
        if backend == "reference":  # the reference has no checks: the functional runs the Python twin
            call = lambda: F.shake_shake(args["h1"], args["h2"], level=args["level"], beta=args["beta"])  # noqa: E731
            if "rng_state" in bad:
                continue
        else:
            call = lambda: op(*args.values())  # noqa: E731
        with pytest.raises(error, match=re.escape("cifarops.shake_shake: " + message)):
            call()
        assert torch.equal(torch.get_rng_state(), rng), bad


def test_double_backward_recomputes_the_drawn_beta(kernel_backend):
    """gradcheck of the backward op itself: its gradient is the forward mix with the same drawn beta
    (stream 1 for "shake", alpha's stream 0 for "keep")."""
    device, backend = kernel_backend
    ns = namespace_for(backend)
    state = torch.tensor([987654321, 20], dtype=torch.int64, device=device)
    g = torch.randn(3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    modes = [("shake", "sample"), ("keep", "sample"), ("shake", "batch"), ("even", "sample")]
    if backend == "triton" and device == "cpu":  # interpreted: each program in Python; the two drawn betas
        modes = modes[:2]
    for mode, level in modes:
        assert torch.autograd.gradcheck(lambda g: ns._shake_shake_backward(g, state, None, mode, level), (g,))
    h1, h2, x = (torch.randn(3, 2, 2, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3))
    fn = lambda a, b, c: ns.shake_shake(a, b, c, "shake", "keep", "sample", True, None, None, state)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h1, h2, x))
    assert torch.autograd.gradgradcheck(fn, (h1, h2, x))


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """The dispatcher ops a call runs, views and allocations left out."""

    IGNORED = {"empty", "empty_like", "empty_strided", "detach", "view", "_to_copy", "alias", "t"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.IGNORED:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("forward_mode, backward_mode", MODES)
@pytest.mark.parametrize("level", ["batch", "sample"])
@pytest.mark.parametrize("training", [True, False])
def test_one_op_forward_one_op_backward(kernel_backend, forward_mode, backward_mode, level, training):
    device, _ = kernel_backend
    layer = cifarops.ShakeShake(forward_mode=forward_mode, backward_mode=backward_mode, level=level).train(training)
    h1, h2, x = (torch.randn(2, 4, 4, 4, device=device, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 4, 4, 4, device=device)
    with _OpCounter() as forward:
        y = layer(h1, h2, x)
    with _OpCounter() as backward:
        torch.autograd.grad(y, [h1, h2, x], grad)
    assert forward.ops == ["shake_shake"]
    assert backward.ops == ["_shake_shake_backward"]
