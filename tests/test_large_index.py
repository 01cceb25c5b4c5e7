"""Indexing past 2^31 (and 2^32) elements (issue 10), on a machine with a few GiB to spare.

Inputs are anonymous private mappings (`lazy_zeros`): zero, and committing memory only where written, so a
tensor of 2^32 + k elements costs the few thousand elements a test writes. Outputs of torch.empty are
lazy in the same way until a kernel writes them. What runs where:

- Triton (the TRITON_INTERPRET=1 run): every kernel, forward and backward, at 2^31..2^33 elements, with only
  the last programs of each launch run (`interpreted_tail_programs`: the interpreter runs programs one by
  one in Python, so all 2^22 of them would take hours). Their element indices, the Philox counter words
  (i.lo, i.hi: the hi word is non-zero past 2^32) and the memory offsets are those of the real launch; the
  outputs' tails are compared with the reference computed on the tail's elements alone.
- Compiled CPU kernels, every run: fractional max-pooling of one plane of 2^32 + 2^16 elements, which reads
  only its windows (int64 offsets and int64 flat indices past 2^32).
- Compiled CPU kernels, on request (CIFAROPS_LARGE_TESTS=1): ShakeDrop with pixel noise and maxout over
  2^31 + k elements. Their kernels process every element, so they write a 4 GiB output and take half a
  minute on two cores; they are not generated otherwise.
- scripts/gpu_large_index.py runs every op at full size on a GPU; its checking functions run here on small
  tensors of every backend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import mmap
import os
from pathlib import Path

import pytest
import torch

import cifarops
import cifarops.functional as F
from cifarops import reference
from conftest import KERNEL_BACKENDS, assert_close, ids

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_large_index", ROOT / "scripts" / "gpu_large_index.py")
gpu_large_index = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_large_index)

TAIL = 4096  # elements of each output compared at its end
TAIL_PROGRAMS = 16  # programs run per Triton launch: more than TAIL elements for every kernel's BLOCK (>= 256)
INTERPRETED_TRITON = ("cpu", "triton") in KERNEL_BACKENDS
LARGE_REQUESTED = os.environ.get("CIFAROPS_LARGE_TESTS") == "1"


def lazy_zeros(shape, dtype) -> torch.Tensor:
    """A zero tensor backed by an anonymous private mapping: pages are committed only when written (torch.zeros
    would write, and so commit, all of them)."""
    numel = 1
    for s in shape:
        numel *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    buffer = mmap.mmap(-1, numel * itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buffer, dtype=dtype, count=numel).view(shape)  # the tensor keeps the mapping alive


def resident_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


@contextlib.contextmanager
def bounded_memory(limit_gib: float):
    """The block commits less than `limit_gib` GiB (a check that the tensors above stayed lazy)."""
    before = resident_gib()
    yield
    grown = resident_gib() - before
    assert grown < limit_gib, f"resident memory grew by {grown:.2f} GiB"


def randn_(t: torch.Tensor, seed: int) -> torch.Tensor:
    t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)).to(t.dtype))
    return t


@contextlib.contextmanager
def interpreted_tail_programs(count: int):
    """Under TRITON_INTERPRET=1, every launch inside the block runs only its last `count` programs along axis
    0, seeing their true program ids and grid size. Kernels here index from tl.program_id alone."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    run, set_grid_dim, set_grid_idx = interpreter.InterpretedFunction.run, builder.set_grid_dim, builder.set_grid_idx
    skipped = [0]

    def tail_run(self, *args, grid, warmup, **kwargs):
        assert isinstance(grid, tuple), "launchers pass a tuple grid"
        skipped[0] = max(0, grid[0] - count)
        return run(self, *args, grid=(grid[0] - skipped[0], *grid[1:]), warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = tail_run
    builder.set_grid_dim = lambda nx, ny, nz: set_grid_dim(nx + skipped[0], ny, nz)
    builder.set_grid_idx = lambda x, y, z: set_grid_idx(x + skipped[0], y, z)
    try:
        yield
    finally:
        interpreter.InterpretedFunction.run = run
        del builder.set_grid_dim, builder.set_grid_idx  # the instance attributes: back to the class's methods


def tail_of(t: torch.Tensor, count: int = TAIL) -> torch.Tensor:
    return t.reshape(-1)[-count:]


SEED = torch.tensor([0x0123_4567_89AB_CDEF], dtype=torch.int64)
STATE = torch.tensor([0x0123_4567_89AB_CDEF, 12], dtype=torch.int64)  # an RNG state {seed, offset}
SHAKE_DROP_PIXEL = (0.5, (-1.0, 1.0), (0.0, 1.0), "batch", "pixel", True)
MAXOUT_STATE = torch.tensor([0x0123_4567_89AB_CDEF, 20], dtype=torch.int64)  # probabilistic maxout {seed, offset}


def philox_tail(numel: int, coef_range, stream: int) -> torch.Tensor:
    """ShakeDrop's pixel coefficients of the last TAIL logical indices, from the Philox oracle."""
    return gpu_large_index.philox_coefficient(STATE, numel - TAIL, (1, 1, 1, TAIL), coef_range, stream)


# ------------------------------------------------------------------------------------- Triton, interpreted

if INTERPRETED_TRITON:
    ops = torch.ops.cifarops_triton

    def test_triton_tail_programs_run_only_the_tail_and_see_the_true_grid():
        """The tail launcher of the interpreted tests: a launch of many programs runs only the last ones, with
        their own program ids; every earlier element is left unwritten."""
        x = torch.arange(10 * 1024, dtype=torch.float32).view(1, 1, 10, 1024)
        gate, alpha = torch.ones(1), torch.zeros(1, 1)
        with interpreted_tail_programs(3):
            y = torch.ops.cifarops_triton.shake_drop(x, None, *SHAKE_DROP_PIXEL, gate, alpha, alpha, None)[0]
        # Scale 1: the last 3 programs of 1024 elements copy x; torch.empty's other elements are untouched.
        assert torch.equal(y.reshape(-1)[-3 * 1024:], x.reshape(-1)[-3 * 1024:])
        with interpreted_tail_programs(10):  # as many as the grid: the whole launch
            assert torch.equal(
                torch.ops.cifarops_triton.shake_drop(x, None, *SHAKE_DROP_PIXEL, gate, alpha, alpha, None)[0], x)


    def test_triton_shake_drop_pixel_past_2_32():
        # 2 x 4 x 32768 x 16392 = 2^32 + 2^18 elements: the last ones have counter word i.hi = 1.
        shape, ranges = (2, 4, 32768, 16392), ((-1.0, 1.0), (0.0, 1.0))
        numel = 2 * 4 * 32768 * 16392
        assert numel > 2**32
        with bounded_memory(1.0):
            h, shortcut, grad_y = (lazy_zeros(shape, torch.bfloat16) for _ in range(3))
            for i, t in enumerate((h, shortcut, grad_y)):
                randn_(tail_of(t), i)
            gate = torch.tensor([1.0, 0.0])  # the tail is in sample 1, gate 0: the scale is the noise itself
            with interpreted_tail_programs(TAIL_PROGRAMS):
                y = ops.shake_drop(h, shortcut, *SHAKE_DROP_PIXEL, gate, None, None, STATE)[0]
                grad_h = ops._shake_drop_backward(grad_y, STATE, *SHAKE_DROP_PIXEL, gate, None)
            view = (1, 1, 1, TAIL)
            alpha, beta = philox_tail(numel, ranges[0], 1), philox_tail(numel, ranges[1], 2)
            want_y = reference.shake_drop(tail_of(h).view(view), tail_of(shortcut).view(view), *SHAKE_DROP_PIXEL,
                                          gate[1:], alpha, beta, STATE)[0]
            want_grad = reference.shake_drop_backward(tail_of(grad_y).view(view), STATE, *SHAKE_DROP_PIXEL, gate[1:],
                                                      beta)
            assert_close(tail_of(y), want_y.reshape(-1))
            assert_close(tail_of(grad_h), want_grad.reshape(-1))

    def test_triton_stochastic_depth_past_2_32():
        """Stochastic depth runs ShakeDrop's kernel on its flat grid here (samples past the per-sample grid's
        65535 blocks): the tail's 64-bit offsets into h, the shortcut and the output, forward and backward."""
        shape, p = (2, 4, 32768, 16392), 0.3
        with bounded_memory(1.0):
            h, shortcut, grad_y = (lazy_zeros(shape, torch.bfloat16) for _ in range(3))
            for i, t in enumerate((h, shortcut, grad_y)):
                randn_(tail_of(t), i)
            gate = torch.tensor([0.0, 1.0])  # the tail is in sample 1, kept: y = x + h / (1 - p)
            with interpreted_tail_programs(TAIL_PROGRAMS):
                y = ops.stochastic_depth(h, shortcut, p, "row", True, True, gate, STATE)[0]
                grad_h = ops._stochastic_depth_backward(grad_y, STATE, p, "row", True, True, gate)
            view = (1, 1, 1, TAIL)
            want_y = reference.stochastic_depth(tail_of(h).view(view), tail_of(shortcut).view(view), p, "row", True,
                                                True, gate[1:], STATE)[0]
            want_grad = reference.stochastic_depth_backward(tail_of(grad_y).view(view), STATE, p, "row", True, True,
                                                            gate[1:])
            assert_close(tail_of(y), want_y.reshape(-1))
            assert_close(tail_of(grad_h), want_grad.reshape(-1))

    def test_triton_shake_shake_past_2_32():
        shape = (2, 4, 32768, 16392)
        with bounded_memory(1.0):
            h1, h2, shortcut, grad_y = (lazy_zeros(shape, torch.bfloat16) for _ in range(4))
            for i, t in enumerate((h1, h2, shortcut, grad_y)):
                randn_(tail_of(t), i)
            alpha, beta = torch.tensor([0.9, 0.3]), torch.tensor([0.1, 0.7])
            with interpreted_tail_programs(TAIL_PROGRAMS):
                y, state = ops.shake_shake(h1, h2, shortcut, "shake", "shake", "sample", True, alpha, beta, None)
                grad_h1, grad_h2 = ops._shake_shake_backward(grad_y, state, beta, "shake", "sample")
            view = (1, 1, 1, TAIL)
            tails = (tail_of(t).view(view) for t in (h1, h2, shortcut))
            want_y, _ = reference.shake_shake(*tails, "shake", "shake", "sample", True, alpha[1:], beta[1:], None)
            want_h1, want_h2 = reference._shake_shake_backward(tail_of(grad_y).view(view), state, beta[1:], "shake", "sample")
            assert_close(tail_of(y), want_y.reshape(-1))
            assert_close(tail_of(grad_h1), want_h1.reshape(-1))
            assert_close(tail_of(grad_h2), want_h2.reshape(-1))

    @pytest.mark.parametrize("mode", ["maxout", "probabilistic", "expectation"])
    def test_triton_maxout_past_2_32_outputs(mode):
        # x: (outer 4, 2 channels, inner 2^30 + 2048): 2^32 + 8192 outputs and twice as many inputs, every
        # size below 2^31, so element counts formed from the sizes must be 64-bit; the last draws' Philox
        # counters have i.hi = 1.
        outer, inner = 4, 2**30 + 2048
        with bounded_memory(1.0):
            x = lazy_zeros((outer, 2, inner), torch.bfloat16)
            randn_(x[-1, :, -TAIL:], 0)
            grad_y = lazy_zeros((outer, 1, inner), torch.bfloat16)
            randn_(grad_y[-1, :, -TAIL:], 1)
            with interpreted_tail_programs(TAIL_PROGRAMS):
                if mode == "expectation":
                    y = ops.probabilistic_maxout_expectation(x, 2, 1, "contiguous", 0.5)
                    grad_x = ops._probabilistic_maxout_expectation_backward(grad_y, x, 2, 1, "contiguous", 0.5)
                else:
                    y, index = (ops.maxout(x, 2, 1, "contiguous") if mode == "maxout"
                                else ops.probabilistic_maxout(x, 2, 1, "contiguous", 0.5, MAXOUT_STATE)[:2])
                    grad_x = ops._maxout_backward(grad_y, index, 2, 1, "contiguous")
            part, grad_part = x[-1:, :, -TAIL:], grad_y[-1:, :, -TAIL:]
            if mode == "expectation":
                want_y = reference.probabilistic_maxout_expectation(part, 2, 1, "contiguous", 0.5)
                leaf = part.float().requires_grad_()
                reference.probabilistic_maxout_expectation(leaf, 2, 1, "contiguous", 0.5).backward(grad_part.float())
                want_grad = leaf.grad.to(x.dtype)
            else:
                if mode == "maxout":
                    want_y, want_index = reference.maxout(part, 2, 1, "contiguous")
                else:
                    first = outer * inner - TAIL  # logical index of the first output compared
                    assert first > 2**32
                    want_y, want_index, _ = gpu_large_index.expected_probabilistic_maxout(part, 2, 0.5, MAXOUT_STATE, first)
                assert torch.equal(index[-1:, :, -TAIL:], want_index)
                want_grad = reference.maxout_backward(grad_part, want_index, 2, 1, "contiguous")
            assert_close(y[-1:, :, -TAIL:], want_y)
            # Backward runs over inputs: its last programs cover the last channel's tail.
            assert_close(grad_x[-1:, 1:, -TAIL:], want_grad[:, 1:])


# ------------------------------------------------------------------------------- fractional max-pooling


FMP_PLANE = (1, 1, 2**16 + 1, 2**16)  # one plane of 2^32 + 2^16 elements
FMP_KERNEL, FMP_OUT = [3, 2], [3, 4]  # unequal sides: the CPU's generic path, which reads only the windows


def fmp_windows(x, draws, out_rows):
    """(values, int64 flat indices) of the windows of output rows `out_rows` (all columns), from the
    reference's regions: the first maximum of each window in row-major order (ATen's scan; no NaN here)."""
    height, width = x.shape[2:]
    row_begin, _ = reference.fmp_regions(height, FMP_OUT[0], FMP_KERNEL[0], "window", draws[0, 0, 1], None, x.dtype)
    col_begin, _ = reference.fmp_regions(width, FMP_OUT[1], FMP_KERNEL[1], "window", draws[0, 0, 0], None, x.dtype)
    rows = row_begin[out_rows, None] + torch.arange(FMP_KERNEL[0])
    cols = col_begin[:, None] + torch.arange(FMP_KERNEL[1])
    r, c = rows[:, None, :, None], cols[None, :, None, :]
    return x[0, 0][r, c], r * width + c


@pytest.fixture
def huge_fmp_plane():
    x = lazy_zeros(FMP_PLANE, torch.bfloat16)
    draws = torch.tensor([[[0.3, 0.8]]], dtype=torch.bfloat16)
    # Random values in every window (reads of the rest of the plane see zeros, and commit nothing).
    windows, flat = fmp_windows(x, draws, slice(None))
    values = torch.randn(windows.shape, generator=torch.Generator().manual_seed(3)).to(x.dtype)
    values[-1, -1, -1, :] += 10  # the last window's maximum on the plane's last row, inside the backward's tail
    x.view(-1)[flat.reshape(-1)] = values.reshape(-1)
    return x, draws


# The plane is a lazily committed CPU tensor: the CPU's backends (on a GPU, scripts/gpu_large_index.py's FMP check).
CPU_KERNEL_BACKENDS = [(d, b) for d, b in KERNEL_BACKENDS if d == "cpu"]


@pytest.mark.parametrize("device, backend", CPU_KERNEL_BACKENDS, ids=ids(CPU_KERNEL_BACKENDS))
def test_fmp_indices_past_2_32_in_one_plane(device, backend, huge_fmp_plane):
    x, draws = huge_fmp_plane
    with bounded_memory(1.0):
        with cifarops.use_backend(backend):
            y, index = F.fractional_max_pool2d(x, FMP_KERNEL, FMP_OUT, return_indices=True, _random_samples=draws)
        values, flat = fmp_windows(x, draws, slice(None))
        arg = values.flatten(2).argmax(-1, keepdim=True)
        want_index = flat.flatten(2).gather(-1, arg).squeeze(-1)
        assert int(want_index.max()) > 2**32  # the last window's position in the plane
        assert torch.equal(index[0, 0], want_index)
        assert torch.equal(y[0, 0], values.flatten(2).gather(-1, arg).squeeze(-1))


SP_PLANE, SP_KERNEL, SP_STRIDE = (1, 1, 1, 2**32 + 2**17), [1, 3], [1, 2**16]  # 65538 windows, the last past 2^32


@pytest.mark.parametrize("device, backend", CPU_KERNEL_BACKENDS, ids=ids(CPU_KERNEL_BACKENDS))
def test_stochastic_pool2d_windows_past_2_32_in_one_plane(device, backend):
    """Strided windows of one plane reach past 2^32 elements (int64 offsets): the last window's draw and
    expectation are its own, every other window of zeros draws nothing."""
    x = lazy_zeros(SP_PLANE, torch.bfloat16)
    out_w = (SP_PLANE[3] - SP_KERNEL[1]) // SP_STRIDE[1] + 1
    last = (out_w - 1) * SP_STRIDE[1]
    assert last > 2**32
    x[0, 0, 0, last:last + 3] = torch.tensor([1.0, 3.0, 0.0])  # S = 4: u = 0.5 draws the 3 (running sum 4 > 2)
    with bounded_memory(1.0):
        with cifarops.use_backend(backend):
            op = cifarops.backends.op("stochastic_pool2d", x.device)
            y, offset, _ = op(x, SP_KERNEL, SP_STRIDE, [0, 0], False, torch.full((1, 1, 1, out_w), 0.5), None)
            mean = F.stochastic_pool2d(x, SP_KERNEL, SP_STRIDE, training=False)
    assert y.shape == (1, 1, 1, out_w)
    assert y[0, 0, 0, -1].item() == 3.0 and offset[0, 0, 0, -1].item() == 1 and mean[0, 0, 0, -1].item() == 2.5
    assert not y[..., :-1].any() and not mean[..., :-1].any() and bool((offset[..., :-1] == 255).all())


if INTERPRETED_TRITON:

    def test_triton_fmp_backward_past_2_32(huge_fmp_plane):
        x, draws = huge_fmp_plane
        with bounded_memory(1.0):
            y, index, _ = torch.ops.cifarops_triton.fractional_max_pool2d(x, FMP_KERNEL, FMP_OUT, "window", draws, None,
                                                                           True, "pseudorandom", False, None)
            grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(y.dtype)
            with interpreted_tail_programs(TAIL_PROGRAMS):
                grad_x = torch.ops.cifarops_triton._fractional_max_pool2d_backward(
                    grad_y, index, list(FMP_PLANE[2:]), FMP_KERNEL, "window", draws, None, "pseudorandom", False, None)
            # The last TAIL inputs (end of the last row) are pooled only by the last output row.
            want = torch.zeros(TAIL, dtype=torch.float64)
            first = x.numel() - TAIL
            last_row = index[0, 0, -1]
            inside = last_row >= first
            assert inside.any()
            want.index_add_(0, last_row[inside] - first, grad_y[0, 0, -1][inside].double())
            assert torch.equal(tail_of(grad_x), want.to(x.dtype))


# ------------------------------------------------------------------------- compiled CPU kernels, on request

if LARGE_REQUESTED and ("cpu", "cpu") in KERNEL_BACKENDS:

    def test_cpu_shake_drop_pixel_past_2_31():
        """The compiled kernel over 2^31 + 2^12 bfloat16 elements (a 4 GiB output): the tail's Philox noise."""
        shape, ranges = (1, 1, 2**20 + 2, 2**11), ((-1.0, 1.0), (0.0, 1.0))
        numel = shape[2] * shape[3]
        h = lazy_zeros(shape, torch.bfloat16)
        randn_(tail_of(h), 0)
        y = torch.ops.cifarops.shake_drop(h, None, *SHAKE_DROP_PIXEL, torch.zeros(1), None, None, STATE)[0]
        alpha = philox_tail(numel, ranges[0], 1)
        want = reference.shake_drop(tail_of(h).view(1, 1, 1, TAIL), None, *SHAKE_DROP_PIXEL, torch.zeros(1),
                                    alpha, alpha, STATE)[0]
        assert_close(tail_of(y), want.reshape(-1))

    def test_cpu_maxout_offsets_past_2_31():
        """255 pieces over 2^31 + k inputs: input offsets past 2^31, a small output."""
        groups = 2**31 // 255 + 64
        x = lazy_zeros((1, groups * 255), torch.bfloat16)
        randn_(x[:, -255 * 16:], 0)
        y, index = torch.ops.cifarops.maxout(x, 255, 1, "contiguous")
        want_y, want_index = reference.maxout(x[:, -255 * 16:], 255, 1, "contiguous")
        assert torch.equal(y[:, -16:], want_y) and torch.equal(index[:, -16:], want_index)


# --------------------------------------------------------------------------------- the GPU script's checks


@pytest.mark.parametrize("op", gpu_large_index.OPS)
@pytest.mark.parametrize("device, backend", KERNEL_BACKENDS, ids=ids(KERNEL_BACKENDS))
def test_gpu_script_checks_pass_on_small_tensors(device, backend, op):
    shape = gpu_large_index.SHAPES[op][1]
    results = list(gpu_large_index.CHECKS[op](device, backend, shape))
    assert len(results) >= 2
    failed = [r for r in results if not r[1]]
    assert not failed, failed


@pytest.mark.parametrize("device, backend", KERNEL_BACKENDS, ids=ids(KERNEL_BACKENDS))
def test_gpu_script_checks_catch_a_wrong_tail(device, backend, monkeypatch):
    """A kernel that gets the last element wrong fails the script's tail check (and only that check)."""
    real = gpu_large_index.namespace(backend)

    class WrongTail:
        def __getattr__(self, name):
            op = getattr(real, name)
            if name != "shake_shake":
                return op

            def wrong(*args):
                out = op(*args)  # (y, rng_state)
                out[0].view(-1)[-1] += 1.0
                return out
            return wrong

    monkeypatch.setattr(gpu_large_index, "namespace", lambda backend: WrongTail())
    shape = gpu_large_index.SHAPES["shake_shake"][1]
    results = list(gpu_large_index.CHECKS["shake_shake"](device, backend, shape))
    failed = [label for label, ok, _ in results if not ok]
    assert failed == [f"forward sample {shape[0] - 1}"]


@pytest.mark.parametrize("device, backend", KERNEL_BACKENDS, ids=ids(KERNEL_BACKENDS))
def test_gpu_script_runs_and_reports(device, backend, capsys):
    """The script's entry point on small tensors: PASS lines and exit status 0; a backend that cannot run is
    a FAIL and exit status 1."""
    assert gpu_large_index.main(["--small", "--device", device, "--backends", backend, "--ops", "maxout"]) == 0
    out = capsys.readouterr().out
    assert f"PASS {backend} maxout" in out and "FAIL" not in out
    if "cuda" not in cifarops.available_backends("cpu"):
        assert gpu_large_index.main(["--small", "--device", "cpu", "--backends", "cuda", "--ops", "maxout"]) == 1
        assert "FAIL cuda" in capsys.readouterr().out
