"""ShakeDrop: hand-worked answers, every backend against the reference, gradients, layouts, dtypes,
torch.library and torch.compile integration, seeding and the statistics of the noise."""

from __future__ import annotations

import pytest
import torch

import cifarops
import cifarops.functional as F
from conftest import (COMPILE_BACKENDS, DTYPES, KERNEL_BACKENDS, assert_close, assert_compiled_step_equals_eager, ids,
                      matches_reference, namespace_for)
from layouts import LAYOUTS, in_layout

LEVELS = ["batch", "sample", "channel", "pixel"]


def run(h, shortcut=None, grad=None, **kwargs):
    """Forward and backward; returns (y, dh, dshortcut)."""
    h = h.detach().requires_grad_()
    if shortcut is not None:
        shortcut = shortcut.detach().requires_grad_()
    y = F.shake_drop(h, shortcut, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, h.grad, None if shortcut is None else shortcut.grad


# ------------------------------------------------------------------------------------- hand-worked answers


def test_known_answer_training(any_backend):
    device, _ = any_backend
    # Two samples, three channels, 1x2 planes; the shortcut has two channels (PyramidNet zero padding).
    h = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]], [[[-1.0, 2.0]], [[0.5, 8.0]], [[4.0, -2.0]]]], device=device)
    x = torch.tensor([[[[10.0, 20.0]], [[30.0, 40.0]]], [[[1.0, 1.0]], [[2.0, 2.0]]]], device=device)
    gate = torch.tensor([1.0, 0.0], device=device)
    alpha = torch.tensor([0.5, -0.25], device=device)
    beta = torch.tensor([0.2, 0.75], device=device)
    grad = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]], [[[4.0, 8.0]], [[-4.0, 2.0]], [[1.0, 0.0]]]], device=device)
    y, dh, dx = run(h, x, grad, gate=gate, alpha=alpha, beta=beta)
    # Sample 0: gate 1, scale 1 -> y = h + x. Sample 1: gate 0, scale alpha = -0.25 -> y = -h/4 + x.
    expected_y = torch.tensor(
        [[[[11.0, 22.0]], [[33.0, 44.0]], [[5.0, 6.0]]], [[[1.25, 0.5]], [[1.875, 0.0]], [[-1.0, 0.5]]]], device=device
    )
    # dh: sample 0 gate 1 -> grad; sample 1 gate 0 -> beta * grad = 0.75 * grad. dx: grad's first 2 channels.
    expected_dh = torch.tensor(
        [[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]], [[[3.0, 6.0]], [[-3.0, 1.5]], [[0.75, 0.0]]]], device=device
    )
    torch.testing.assert_close(y, expected_y, rtol=0, atol=0)
    torch.testing.assert_close(dh, expected_dh, rtol=0, atol=0)
    torch.testing.assert_close(dx, grad[:, :2], rtol=0, atol=0)


@pytest.mark.parametrize("alpha_range, expected", [((-1.0, 1.0), 0.5), ((0.0, 1.0), 0.75), ((0.5, 0.5), 0.75)])
def test_known_answer_evaluation(any_backend, alpha_range, expected):
    # E[b + a - b a] = (1 - p) + p E[a] with p = 0.5.
    device, _ = any_backend
    h = torch.tensor([[[[2.0]], [[4.0]]]], device=device)
    x = torch.tensor([[[[1.0]], [[-1.0]]]], device=device)
    y, dh, dx = run(h, x, p_drop=0.5, alpha_range=alpha_range, training=False)
    torch.testing.assert_close(y, x + expected * h, rtol=0, atol=0)
    torch.testing.assert_close(dh, torch.full_like(h, expected), rtol=0, atol=0)
    torch.testing.assert_close(dx, torch.ones_like(x), rtol=0, atol=0)


def test_known_answer_pixel_level_uses_philox(any_backend):
    """Pixel-level alpha is lo + (hi - lo) * u with u = u(logical index, stream 1) of the call's RNG state (the
    four words of each Philox call used in turn); with the gate closed y = alpha * h."""
    device, _ = any_backend
    h = torch.ones(2, 3, 4, 5, device=device)
    state = torch.tensor([0x0123456789ABCDEF, 8], device=device)
    gate = torch.zeros(2, device=device)
    op = cifarops.backends.op("shake_drop", torch.device(device))
    y, used = op(h, None, 0.5, [-1.0, 1.0], [0.0, 1.0], "batch", "pixel", True, gate, None, None, state)
    assert torch.equal(used, state)
    index = torch.arange(h.numel(), device=device).reshape(h.shape)
    u = cifarops.philox.philox_uniform(state, index, stream=1)
    # Equal up to one rounding: GPU kernels may fuse lo + (hi - lo) * u into one multiply-add.
    torch.testing.assert_close(y, -1.0 + 2.0 * u, rtol=0, atol=3e-7)


def _philox_uniform_by_hand(seed: int, offset: int, index: int, stream: int) -> float:
    """u(index, stream) in plain Python integers, from SPEC's definition: word index % 4 of Philox4x32-10 with
    counter {lo(o), hi(o), lo(index / 4), hi(index / 4)}, o = offset / 4 + stream (uint64), key {lo, hi}(seed)."""
    mask = 0xFFFFFFFF
    o = (offset % 2**64) // 4 + stream
    c = [o & mask, o >> 32 & mask, index // 4 & mask, index // 4 >> 32 & mask]
    k0, k1 = seed % 2**64 & mask, seed % 2**64 >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & mask, (p0 >> 32) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return (c[index % 4] >> 8) / 16777216.0


@pytest.mark.parametrize("offset", [8, 2**62 + 8, -(2**63), -(2**63) + 4, -4])  # as int64: 2^63, 2^63 + 4, 2^64 - 4
def test_offsets_past_two_to_the_63_are_uint64_on_every_backend(any_backend, offset):
    """An explicit state's offset is a uint64 held in an int64: offset / 4 must be the unsigned quotient on every
    backend (C++ divides a uint64; the Triton and reference shifts must not carry the sign in)."""
    device, _ = any_backend
    h = torch.ones(1, 1, 2, 3, device=device)
    state = torch.tensor([-0x0123456789ABCDEF, offset], device=device)
    op = cifarops.backends.op("shake_drop", torch.device(device))
    y, _ = op(h, None, 0.5, [0.0, 1.0], [0.0, 1.0], "batch", "pixel", True, torch.zeros(1, device=device), None,
              None, state)
    expected = [_philox_uniform_by_hand(-0x0123456789ABCDEF, offset, i, 1) for i in range(6)]
    torch.testing.assert_close(y.flatten().cpu(), torch.tensor(expected), rtol=0, atol=0)


def test_known_answer_noise_from_the_generator(any_backend):
    """After torch.manual_seed, a training call takes the state draw_state takes from the same generator state,
    and derives gate (stream 0, per sample), alpha (stream 1) and beta (stream 2, per channel) from it."""
    device, _ = any_backend
    h = torch.randn(3, 4, 2, 3, device=device, requires_grad=True)
    x = torch.randn(3, 2, 2, 3, device=device)
    torch.manual_seed(11)
    if device != "cpu":
        torch.cuda.manual_seed(11)
    y = F.shake_drop(h, x, p_drop=0.4, gate_level="sample", level="channel", alpha_range=(-1, 1), beta_range=(0, 1))
    y.backward(torch.ones_like(y))
    torch.manual_seed(11)
    if device != "cpu":
        torch.cuda.manual_seed(11)
    state = cifarops.philox.draw_state(torch.device(device), 3)
    u = cifarops.philox.philox_uniform
    gate = (u(state, torch.arange(3, device=device), 0) < 0.6).float().reshape(3, 1, 1, 1)
    alpha = (-1.0 + 2.0 * u(state, torch.arange(12, device=device), 1)).reshape(3, 4, 1, 1)
    beta = u(state, torch.arange(12, device=device), 2).reshape(3, 4, 1, 1)
    expected = (gate + (1 - gate) * alpha) * h.detach()
    expected[:, :2] += x
    assert_close(y, expected)  # within a rounding: a GPU fuses scale * h + x into one multiply-add
    torch.testing.assert_close(h.grad, (gate + (1 - gate) * beta).expand_as(h), rtol=0, atol=3e-7)


def test_the_generator_moves_once_per_call(any_backend):
    """Two calls draw different noise; the state a call used is what draw_state would have taken."""
    device, _ = any_backend
    h = torch.ones(2, 3, 4, 4, device=device)
    torch.manual_seed(5)
    op = cifarops.backends.op("shake_drop", torch.device(device))
    args = (h, None, 0.5, [-1.0, 1.0], [0.0, 1.0], "batch", "pixel", True, None, None, None, None)
    first, state1 = op(*args)
    second, state2 = op(*args)
    torch.manual_seed(5)
    assert torch.equal(state1, cifarops.philox.draw_state(torch.device(device), 3))
    assert torch.equal(state2, cifarops.philox.draw_state(torch.device(device), 3))
    assert not torch.equal(first, second)


def test_fp16_output_dtype_for_every_gate(any_backend):
    device, _ = any_backend
    h = torch.randn(4, 3, 2, 2, device=device, dtype=torch.float16)
    for gate in (torch.zeros(1, device=device), torch.ones(1, device=device)):
        assert F.shake_drop(h, gate=gate).dtype == torch.float16
        assert F.shake_drop(h, h, gate=gate).dtype == torch.float16
    assert F.shake_drop(h, training=False).dtype == torch.float16


# ----------------------------------------------------------------------------- every backend vs reference


def compare_with_reference(device, backend, h, shortcut, **kwargs):
    return matches_reference(run, h, shortcut, **kwargs)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("gate_level", ["batch", "sample"])
@pytest.mark.parametrize("shortcut_channels", [None, 6, 4])
def test_matches_reference_levels(kernel_backend, level, gate_level, shortcut_channels):
    device, backend = kernel_backend
    h = torch.randn(5, 6, 7, 3, device=device)
    x = None if shortcut_channels is None else torch.randn(5, shortcut_channels, 7, 3, device=device)
    compare_with_reference(device, backend, h, x, p_drop=0.5, gate_level=gate_level, level=level)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("level", ["sample", "pixel"])
def test_matches_reference_dtypes_layouts(kernel_backend, dtype, layout, level):
    device, backend = kernel_backend
    h = in_layout(torch.randn(4, 8, 5, 6, device=device).to(dtype), layout)
    x = in_layout(torch.randn(4, 5, 5, 6, device=device).to(dtype), layout)
    y, dh, dx = compare_with_reference(device, backend, h, x, p_drop=0.3, level=level, gate_level="sample")
    if layout == "channels_last":  # the layout is kept, not silently converted
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shortcut_channels", [16, 8])
@pytest.mark.parametrize("level", LEVELS)
def test_matches_reference_half_packets_with_shortcut(kernel_backend, dtype, layout, shortcut_channels, level):
    """The CUDA kernel's 16-byte packet path (8 half elements) with a shortcut, equal or narrower: every row
    (an H x W plane of 32 in NCHW, the 16 or 8 channels in channels_last) a multiple of the packet, so it is
    taken; test_matches_reference_dtypes_layouts' shapes take the scalar path."""
    device, backend = kernel_backend
    h = in_layout(torch.randn(4, 16, 4, 8, device=device).to(dtype), layout)
    x = in_layout(torch.randn(4, shortcut_channels, 4, 8, device=device).to(dtype), layout)
    compare_with_reference(device, backend, h, x, p_drop=0.3, level=level, gate_level="sample")


@pytest.mark.parametrize("shape, shortcut_channels", [((3, 9, 25, 20), 5), ((2, 1, 80, 60), 1)], ids=["C9", "C1"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("gate_level", ["batch", "sample"])
def test_matches_reference_large_samples(kernel_backend, shape, shortcut_channels, layout, level, gate_level):
    """Samples of 4500 and 4800 elements: the Triton kernel's per-sample grid (5 blocks of 1024 a sample, the last
    one partial), every level, with a narrower shortcut and with one channel; in CUDA the packet path."""
    device, backend = kernel_backend
    h = in_layout(torch.randn(*shape, device=device), layout)
    x = in_layout(torch.randn(shape[0], shortcut_channels, *shape[2:], device=device), layout)
    compare_with_reference(device, backend, h, x, p_drop=0.5, level=level, gate_level=gate_level)


TRITON_BACKENDS = [(d, b) for d, b in KERNEL_BACKENDS if b == "triton"]


@pytest.mark.parametrize("device, backend", TRITON_BACKENDS, ids=ids(TRITON_BACKENDS))
def test_triton_grid_per_sample_from_four_blocks(device, backend, monkeypatch):
    """The Triton launcher's grid: (samples, blocks of a sample) from PER_SAMPLE_MIN elements a sample (each
    program draws its sample's noise once), flat below."""
    from cifarops.triton_kernels import shake_drop as kernels

    launches = []
    real = kernels._shake_drop_kernel

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((tuple(grid), kwargs["PER_SAMPLE"]))
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(kernels, "_shake_drop_kernel", Recording())
    with cifarops.use_backend(backend):
        for spatial in (kernels.PER_SAMPLE_MIN // 2, kernels.PER_SAMPLE_MIN // 2 - 1):
            launches.clear()
            F.shake_drop(torch.randn(3, 2, spatial, device=device), p_drop=0.5)
            blocks = -(-2 * spatial // kernels.BLOCK)
            if 2 * spatial >= kernels.PER_SAMPLE_MIN:
                assert launches == [((3, blocks), True)]
            else:
                assert launches == [((-(-3 * 2 * spatial // kernels.BLOCK),), False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shortcut_channels", [None, 16, 8])
def test_matches_reference_without_spatial_dims(kernel_backend, dtype, level, shortcut_channels):
    """(N, C) inputs, whose C vector the kernels walk as a row (in CUDA packets where C holds whole ones): every
    level, including channel noise along the row."""
    device, backend = kernel_backend
    h = torch.randn(6, 16, device=device).to(dtype)
    x = None if shortcut_channels is None else torch.randn(6, shortcut_channels, device=device).to(dtype)
    compare_with_reference(device, backend, h, x, p_drop=0.4, gate_level="sample", level=level)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7), (2, 3, 2, 2, 2), (1, 1, 1, 1), (3, 17, 1, 13)])
def test_matches_reference_other_shapes(kernel_backend, shape):
    device, backend = kernel_backend
    h = torch.randn(*shape, device=device)
    for level in LEVELS:
        compare_with_reference(device, backend, h, h[:, :1].clone(), level=level, gate_level="sample")


def test_explicit_pixel_coefficients(kernel_backend):
    device, backend = kernel_backend
    h = torch.randn(3, 4, 5, 5, device=device)
    alpha, beta = torch.rand(3, 4, 5, 5, device=device) * 2 - 1, torch.rand(3, 4, 5, 5, device=device)
    compare_with_reference(device, backend, in_layout(h, "channels_last"), h, gate=torch.zeros(3, device=device), alpha=alpha, beta=beta)


def test_evaluation_matches_reference(kernel_backend):
    device, backend = kernel_backend
    h, x = torch.randn(4, 6, 3, 3, device=device), torch.randn(4, 2, 3, 3, device=device)
    compare_with_reference(device, backend, h, x, p_drop=0.2, alpha_range=(-0.5, 1.0), training=False)


@pytest.mark.parametrize("level", LEVELS)
def test_empty_batch(any_backend, level):
    device, _ = any_backend
    h, x = torch.randn(0, 6, 4, 4, device=device), torch.randn(0, 3, 4, 4, device=device)
    y, dh, dx = run(h, x, level=level, gate_level="sample")
    assert y.shape == h.shape and dh.shape == h.shape and dx.shape == x.shape


def test_zero_sized_planes(any_backend):
    device, _ = any_backend
    y, dh, _ = run(torch.randn(2, 3, 0, 4, device=device), level="pixel")
    assert y.shape == (2, 3, 0, 4) and dh.shape == (2, 3, 0, 4)


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("coef_shape", ["sample", "channel", "pixel"])
def test_gradcheck(kernel_backend, coef_shape):
    """With beta = alpha, ShakeDrop's backward is the true gradient, so gradcheck applies."""
    device, _ = kernel_backend
    h = torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(3, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    shape = {"sample": (3,), "channel": (3, 4), "pixel": (3, 4, 3, 2)}[coef_shape]
    coef = torch.rand(shape, dtype=torch.float64, device=device) * 2 - 1
    gate = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, device=device)

    def fn(h, x):
        return F.shake_drop(h, x, gate=gate, alpha=coef, beta=coef)

    assert torch.autograd.gradcheck(fn, (h, x))
    assert torch.autograd.gradgradcheck(fn, (h, x))


def test_gradcheck_evaluation(kernel_backend):
    device, _ = kernel_backend
    h = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, x: F.shake_drop(h, x, p_drop=0.3, training=False), (h, x))


def test_shortcut_gradient_is_the_incoming_gradient(kernel_backend):
    device, _ = kernel_backend
    h = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    x = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    y = F.shake_drop(h, x)
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, [x], grad)
    assert dx.data_ptr() == grad.data_ptr()  # no copy


def test_only_noise_is_saved_for_backward(kernel_backend):
    device, _ = kernel_backend
    h = torch.randn(8, 16, 8, 8, device=device, requires_grad=True)
    x = torch.randn(8, 16, 8, 8, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        F.shake_drop(h, x, level="channel")
    assert saved == [2]  # the RNG state {seed, offset} alone, where hooks see it; never the noise, h, x or y


# ------------------------------------------------------------------------------- library and compiler


def op_samples(device):
    h = torch.randn(3, 4, 5, 5, device=device, requires_grad=True)
    x = torch.randn(3, 2, 5, 5, device=device, requires_grad=True)
    gate = torch.tensor([1.0, 0.0, 1.0], device=device)
    coef = torch.rand(3, 4, device=device)
    state = torch.tensor([42, 4], device=device)
    common = (0.5, [-1.0, 1.0], [0.0, 1.0])
    yield (h, x, *common, "batch", "sample", True, gate, coef, coef * 0.5, None)
    yield (h, None, *common, "sample", "pixel", True, gate, None, None, state)
    yield (in_layout(h.detach(), "channels_last").requires_grad_(), x, *common, "batch", "pixel", True, None, None, coef, state)
    yield (h, x, *common, "batch", "channel", False, None, None, None, None)
    yield (h.detach()[:0].requires_grad_(), None, *common, "batch", "sample", True, gate[:0], coef[:0], coef[:0], None)


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    for args in op_samples(device):
        # The generator moves with every call, so opcheck's repeated calls get an explicit state.
        state = args[-1] if args[-1] is not None else torch.tensor([7, 0], device=device)
        args = (*args[:-1], state)
        torch.library.opcheck(ns.shake_drop, args)
        torch.library.opcheck(ns._shake_drop_backward, (args[0].detach(), state, *args[2:9], args[10]))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_fullgraph(device, backend):

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
            self.shake_drop = cifarops.ShakeDrop(0.5, level="channel")
            self.pixel = cifarops.ShakeDrop(0.5, level="pixel")

        def forward(self, x):
            return self.pixel(self.shake_drop(self.conv(x), x))

    torch._dynamo.reset()
    block = Block().to(device)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    with cifarops.use_backend(backend):
        # training, traced without graph breaks: the same seed draws the same noise as eager (a pinned backend
        # is compiled as its op; tests/test_compile.py compiles the automatic choice, the decomposition)
        assert_compiled_step_equals_eager(compiled, block, x, seed=11, backend=backend)
        block.eval()
        assert_close(compiled(x), block(x))


def explicit_noise_cases(device):
    """(h, shortcut, gate, alpha, beta, gate_level, level) with explicit noise at every level and shape, a
    narrower shortcut, channels_last and a half type."""
    g = torch.Generator(device=device).manual_seed(3)
    h = torch.randn(3, 4, 5, 5, device=device, generator=g)
    s = torch.randn(3, 2, 5, 5, device=device, generator=g)
    gate = torch.tensor([1.0, 0.0, 1.0], device=device)
    per_sample, per_channel = torch.rand(3, device=device, generator=g), torch.rand(3, 4, device=device, generator=g)
    per_pixel = torch.rand(h.shape, device=device, generator=g)
    yield h, s, gate, per_sample * 2 - 1, per_sample, "sample", "sample"
    yield h, None, gate[:1], per_channel, per_channel.flip(0), "batch", "channel"
    yield in_layout(h, "channels_last"), h, gate, per_pixel, per_pixel * 0.5, "sample", "pixel"
    yield h.half(), s.half(), gate, per_sample[:1], per_sample[1:2], "sample", "batch"


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_compiled_decomposition_equals_the_op_for_the_same_noise(device, backend):
    """Under torch.compile ShakeDrop is the reference's pointwise formulas (backends.COMPILE_DECOMPOSED), fused
    by Inductor: with explicit noise its output and both gradients equal the op's eager ones, to rounding."""
    def step(fn, h, s, *noise_and_levels):
        h = h.detach().requires_grad_()
        s = None if s is None else s.detach().requires_grad_()
        y = fn(h, s, *noise_and_levels)
        inputs = [h] + ([s] if s is not None else [])
        return [y, *torch.autograd.grad((y.float() * torch.arange(y.numel(), device=y.device).reshape(y.shape).cos()).sum(), inputs)]

    def shake_drop(h, s, gate, alpha, beta, gate_level, level):
        return F.shake_drop(h, s, gate=gate, alpha=alpha, beta=beta, gate_level=gate_level, level=level)

    torch._dynamo.reset()
    compiled = torch.compile(shake_drop, fullgraph=True, dynamic=False)  # the automatic choice: decomposed
    for case in explicit_noise_cases(device):
        got = step(compiled, *case)
        with cifarops.use_backend(backend):
            want = step(shake_drop, *case)
        assert got[0].dtype == want[0].dtype and got[0].stride() == want[0].stride()  # the output's layout
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


# ---------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("level", LEVELS)
def test_same_seed_same_result(kernel_backend, level):
    device, _ = kernel_backend
    h, x = torch.randn(6, 5, 4, 4, device=device), torch.randn(6, 5, 4, 4, device=device)
    torch.manual_seed(7)
    first = run(h, x, level=level, gate_level="sample")
    torch.manual_seed(7)
    second = run(h, x, level=level, gate_level="sample")
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    torch.manual_seed(8)  # another seed, nothing else changed: other noise
    third = run(h, x, level=level, gate_level="sample")
    assert not torch.equal(first[0], third[0]) and not torch.equal(first[1], third[1])


def standard_error_ok(samples: torch.Tensor, mean: float, var: float, sigmas: float = 5.0) -> None:
    samples = samples.double().flatten()
    n = samples.numel()
    assert abs(samples.mean().item() - mean) < sigmas * (var / n) ** 0.5, (samples.mean().item(), mean)
    # The variance of a sample variance of a uniform is below 2 var^2 / n (its kurtosis is under 3).
    assert abs(samples.var().item() - var) < sigmas * (2 * var**2 / n) ** 0.5, (samples.var().item(), var)


def batch_draws(device, backend) -> int:
    """Calls for a batch-level statistic (one draw per call). Interpreted Triton runs each launch in Python:
    fewer calls there (the standard errors widen to match); that it draws the reference's numbers for the same
    state is tested exactly in test_known_answer_noise_from_the_generator."""
    return 200 if backend == "triton" and device == "cpu" else 2000


@pytest.mark.parametrize("level", LEVELS)
def test_noise_statistics(kernel_backend, level):
    """With the gate closed (p_drop = 1), y = alpha * h and dh = beta * dy: read alpha and beta off ones."""
    device, backend = kernel_backend
    torch.manual_seed(0)
    shape = {"batch": (1, 1), "sample": (20000, 1), "channel": (200, 100), "pixel": (4, 5, 50, 20)}
    h = torch.ones(*shape[level], device=device)
    samples = []
    for _ in range(batch_draws(device, backend) if level == "batch" else 1):
        y, dh, _ = run(h, p_drop=1.0, level=level, alpha_range=(-1.0, 1.0), beta_range=(0.0, 1.0))
        samples.append((y.flatten()[:1] if level == "batch" else y, dh.flatten()[:1] if level == "batch" else dh))
    alpha = torch.cat([a.flatten() for a, _ in samples])
    beta = torch.cat([b.flatten() for _, b in samples])
    standard_error_ok(alpha, 0.0, 1 / 3)
    standard_error_ok(beta, 0.5, 1 / 12)
    if level != "batch":
        correlation = torch.corrcoef(torch.stack([alpha.double(), beta.double()]))[0, 1].item()
        assert abs(correlation) < 5 / alpha.numel() ** 0.5  # alpha and beta are independent draws


@pytest.mark.parametrize("gate_level", ["batch", "sample"])
def test_gate_rate(kernel_backend, gate_level):
    """alpha = beta = 0 leaves y = b * h: the gate opens with probability 1 - p_drop."""
    device, backend = kernel_backend
    torch.manual_seed(0)
    p_drop, n = 0.3, 20000
    if gate_level == "sample":
        y, _, _ = run(torch.ones(n, 1, device=device), p_drop=p_drop, alpha_range=(0, 0), beta_range=(0, 0), gate_level="sample")
        gates = y.flatten()
    else:
        h = torch.ones(4, 3, device=device)
        gates = torch.stack([run(h, p_drop=p_drop, alpha_range=(0, 0), beta_range=(0, 0))[0]
                             for _ in range(batch_draws(device, backend))])
        assert (gates == gates[:, :1, :1]).all()  # one draw for the whole batch
        gates = gates[:, 0, 0]
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    p = 1 - p_drop
    assert abs(gates.double().mean().item() - p) < 5 * (p * (1 - p) / gates.numel()) ** 0.5


def test_depth_schedule():
    assert cifarops.shake_drop_schedule(4) == [0.125, 0.25, 0.375, 0.5]
    assert cifarops.shake_drop_schedule(2, 0.2) == [0.1, 0.2]
    assert cifarops.shake_drop_schedule(0) == []


def test_module(any_backend):
    device, _ = any_backend
    layer = cifarops.ShakeDrop(0.25, (-1, 1), (0, 1), gate_level="sample", level="channel")
    assert "p_drop=0.25" in repr(layer) and "level='channel'" in repr(layer)
    h, x = torch.randn(2, 3, 2, 2, device=device), torch.randn(2, 3, 2, 2, device=device)
    layer.eval()
    torch.testing.assert_close(layer(h, x), x + (0.75 + 0.25 * 0.0) * h)
    assert layer(h).shape == h.shape
    layer.train()
    assert layer(h, x).shape == h.shape


def test_torch_export_keeps_one_node():
    """An exported model keeps the compiled op as one node and runs from the exported program."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shake_drop = cifarops.ShakeDrop(0.5)

        def forward(self, h, x):
            return self.shake_drop(h, x)

    block = Block().eval()
    h, x = torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 3)
    with cifarops.use_backend("cpu"):
        exported = torch.export.export(block, (h, x))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.cifarops.shake_drop.default) == 1
    torch.testing.assert_close(exported.module()(h, x), F.shake_drop(h, x, training=False))
