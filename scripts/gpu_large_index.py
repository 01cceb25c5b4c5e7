"""Indexing past 2^31 elements on a GPU: every op, forward and backward, on tensors of more than 2^31
elements (about 4.3 GB each in bfloat16; an 80 GB card holds every case), on the `cuda` and `triton`
backends. Each output is checked at its tail and at a random sample of whole samples (or planes) against
the reference computed on those slices alone; per-element Philox noise is regenerated there from its 64-bit
logical index (cifarops.philox), so the slices need no full-size reference.

    python scripts/gpu_large_index.py                     # every op, cuda and triton
    python scripts/gpu_large_index.py --backends cuda --ops shake_drop maxout
    python scripts/gpu_large_index.py --small --device cpu --backends cpu   # the same checks on small tensors

Prints one PASS/FAIL line per op, backend and check; exits 1 on any failure (2 when nothing could run).
The checking functions take the tensor shapes as arguments, so tests/test_large_index.py runs them on small
CPU tensors.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Iterator

import torch

import cifarops
from cifarops import reference
from cifarops.philox import philox_uniform

BIG = 2**31

# op -> (full-size shape, small shape); full sizes have more than 2^31 elements (and FMP's huge plane has
# more than 2^31 elements in one plane, so that its int64 flat indices pass 2^31 too).
SHAPES = {
    "shake_drop": ((33, 64, 1024, 1000), (5, 6, 3, 4)),        # 2.16e9 elements
    "shake_shake": ((33, 64, 1024, 1000), (5, 6, 3, 4)),
    # pieces 2: 2.16e9 outputs (the Philox indices of probabilistic maxout), 4.3e9 inputs
    "maxout": ((33, 256, 1024, 500), (5, 6, 3, 4)),
    "probabilistic_maxout": ((33, 256, 1024, 500), (5, 6, 3, 4)),
    "probabilistic_maxout_expectation": ((33, 256, 1024, 500), (5, 6, 3, 4)),
    "fractional_max_pool2d": ((33, 64, 1024, 1000), (5, 3, 9, 8)),
    "fractional_max_pool2d_huge_plane": ((1, 1, 46400, 46400), (1, 1, 23, 21)),  # one plane of 2.15e9
    # 3x3 stride 2 with padding and ceil mode: 2.16e9 inputs (the backward's 64-bit grid), 0.54e9 outputs
    "stochastic_pool2d": ((33, 64, 1024, 1000), (5, 3, 9, 8)),
}
OPS = [name for name in SHAPES]


def namespace(backend: str):
    return torch.ops.cifarops_triton if backend == "triton" else torch.ops.cifarops


def checked_samples(n: int, count: int, generator: torch.Generator) -> list[int]:
    """The last sample (the tail, where 64-bit indices matter most), the first, and `count` random others."""
    picks = {0, n - 1} | {int(i) for i in torch.randint(0, n, (count,), generator=generator)}
    return sorted(picks)


def compare(label: str, got: torch.Tensor, want: torch.Tensor, exact: bool) -> tuple[str, bool, str]:
    got, want = got.cpu(), want.cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        return label, False, f"shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}"
    if exact or not got.is_floating_point():
        ok = torch.equal(got, want)
        return label, ok, "" if ok else f"{int((got != want).sum())} elements differ"
    # Backends compute in float32 and round once, like the reference: bfloat16 differs by rounding only.
    try:
        torch.testing.assert_close(got, want, rtol=8e-3, atol=8e-3)
        return label, True, ""
    except AssertionError as error:
        return label, False, str(error).splitlines()[0]


def philox_coefficient(state: torch.Tensor, first: int, shape, coef_range, stream: int) -> torch.Tensor:
    """lo + (hi - lo) u for the elements of logical (NCHW) indices first, first + 1, ... laid out in `shape`,
    under the RNG state {seed, offset}."""
    count = 1
    for s in shape:
        count *= s
    index = torch.arange(first, first + count, dtype=torch.int64, device=state.device).reshape(shape)
    lo, hi = coef_range
    return lo + (hi - lo) * philox_uniform(state, index, stream)


def expected_probabilistic_maxout(x: torch.Tensor, pieces: int, temperature: float, rng_state: torch.Tensor,
                                  first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, index, near_boundary) of probabilistic maxout over dim 1 (contiguous groups) of a slice whose first
    output has logical index `first`: the inverse CDF of softmax(z / temperature) at the Philox uniform
    u(rng_state, logical index, stream 0) of each output. near_boundary marks draws within 1e-5 of a step of the CDF, where a last-bit difference in
    exp (a GPU's approximate exp2, say) may pick the neighbouring piece."""
    values = [v.float() for v in reference.maxout_pieces(x, pieces, 1, "contiguous")]
    best = torch.stack(values).amax(0)
    lam = torch.tensor(1.0 / temperature, dtype=torch.float32).item()
    cumulative = torch.cumsum(torch.stack([torch.exp((v - best) * lam) for v in values]), 0)
    logical = torch.arange(first, first + best.numel(), dtype=torch.int64, device=rng_state.device).reshape(best.shape)
    target = philox_uniform(rng_state, logical, 0).to(best.device) * cumulative[-1]
    index = (target >= cumulative).sum(0).clamp(max=pieces - 1).to(torch.uint8)
    near_boundary = ((target - cumulative[:-1]).abs() <= 1e-5 * cumulative[-1]).any(0)
    y = torch.gather(torch.stack(values), 0, index.long().unsqueeze(0)).squeeze(0).to(x.dtype)
    return y, index, near_boundary


def fill(shape, dtype, device, generator_seed: int) -> torch.Tensor:
    """A random tensor made on the device in slices (a full-size float32 temporary would not fit)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    g = torch.Generator(device=device).manual_seed(generator_seed)
    for n in range(shape[0]):
        out[n] = torch.randn(shape[1:], generator=g, device=device, dtype=torch.float32).to(dtype)
    return out


Check = tuple[str, bool, str]


def check_shake_drop(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    """Pixel-level ShakeDrop, forward with a narrower shortcut and backward: both Philox streams."""
    ops = namespace(backend)
    h = fill(shape, dtype, device, 1)
    shortcut = fill((shape[0], shape[1] // 2, *shape[2:]), dtype, device, 2)
    gate = (torch.arange(shape[0], device=device) % 3 == 0).float()
    state = torch.tensor([0x1234_5678_9ABC_DEF, 16], dtype=torch.int64, device=device)
    ranges = ((-1.0, 1.0), (0.0, 1.0))
    common = (0.5, *ranges, "batch", "pixel", True)
    y, _ = ops.shake_drop(h, shortcut, *common, gate, None, None, state)
    per_sample = h[0].numel()
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        alpha = philox_coefficient(state, n * per_sample, h[n:n + 1].shape, ranges[0], 1)
        want, _ = reference.shake_drop(h[n:n + 1], shortcut[n:n + 1], *common, gate[n:n + 1], alpha, alpha, state)
        yield compare(f"forward sample {n}", y[n:n + 1], want, exact=False)
    del y
    grad_h = ops._shake_drop_backward(h, state, *common, gate, None)  # h stands in for an incoming gradient
    for n in picks:
        beta = philox_coefficient(state, n * per_sample, h[n:n + 1].shape, ranges[1], 2)
        want = reference.shake_drop_backward(h[n:n + 1], state, *common, gate[n:n + 1], beta)
        yield compare(f"backward sample {n}", grad_h[n:n + 1], want, exact=False)


def check_shake_shake(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    ops = namespace(backend)
    h1, h2 = fill(shape, dtype, device, 1), fill(shape, dtype, device, 2)
    alpha = torch.rand(shape[0], generator=torch.Generator().manual_seed(3)).to(device)
    beta = torch.rand(shape[0], generator=torch.Generator().manual_seed(4)).to(device)
    # h1 doubles as the shortcut: one tensor less to hold
    y, state = ops.shake_shake(h1, h2, h1, "shake", "shake", "sample", True, alpha, beta, None)
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        s = slice(n, n + 1)
        want, _ = reference.shake_shake(h1[s], h2[s], h1[s], "shake", "shake", "sample", True, alpha[s], beta[s], None)
        yield compare(f"forward sample {n}", y[s], want, exact=False)
    del y, h2
    grad_h1, grad_h2 = ops._shake_shake_backward(h1, state, beta, "shake", "sample")
    for n in picks:
        s = slice(n, n + 1)
        want1, want2 = reference._shake_shake_backward(h1[s], state, beta[s], "shake", "sample")
        yield compare(f"backward h1 sample {n}", grad_h1[s], want1, exact=False)
        yield compare(f"backward h2 sample {n}", grad_h2[s], want2, exact=False)


def check_chosen_backward(ops, y, index, picks) -> Iterator[Check]:
    """The backward of maxout and of the probabilistic draw (each input gets its group's gradient if chosen),
    with y standing in for the incoming gradient."""
    grad_x = ops._maxout_backward(y, index, 2, 1, "contiguous")
    for n in picks:
        want = reference.maxout_backward(y[n:n + 1], index[n:n + 1], 2, 1, "contiguous")
        yield compare(f"backward sample {n}", grad_x[n:n + 1], want, exact=True)


def check_maxout(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    ops = namespace(backend)
    x = fill(shape, dtype, device, 1)
    y, index = ops.maxout(x, 2, 1, "contiguous")
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        want_y, want_index = reference.maxout(x[n:n + 1], 2, 1, "contiguous")
        yield compare(f"forward sample {n}", y[n:n + 1], want_y, exact=True)
        yield compare(f"index sample {n}", index[n:n + 1], want_index, exact=True)
    del x
    yield from check_chosen_backward(ops, y, index, picks)


def check_probabilistic_maxout(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    """Training-mode draws: one Philox uniform per output, whose logical index passes 2^31 (full size)."""
    ops = namespace(backend)
    x = fill(shape, dtype, device, 1)
    rng_state = torch.tensor([-0x0FED_CBA9_8765_4321, 12], dtype=torch.int64, device=device)
    y, index, _ = ops.probabilistic_maxout(x, 2, 1, "contiguous", 0.5, rng_state)
    per_sample = y[0].numel()
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        s = slice(n, n + 1)
        _, want_index, near_boundary = expected_probabilistic_maxout(x[s], 2, 0.5, rng_state, n * per_sample)
        differ = int(((index[s] != want_index) & ~near_boundary).sum())
        yield f"index sample {n}", differ == 0, f"{differ} draws differ away from a CDF step" if differ else ""
        # y is the piece the kernel drew (wherever the draw itself was a tie within rounding)
        drawn = torch.gather(torch.stack(reference.maxout_pieces(x[s], 2, 1, "contiguous")), 0,
                             index[s].long().unsqueeze(0)).squeeze(0)
        yield compare(f"forward sample {n}", y[s], drawn, exact=True)
    del x
    yield from check_chosen_backward(ops, y, index, picks)


def check_probabilistic_maxout_expectation(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    ops = namespace(backend)
    x = fill(shape, dtype, device, 1)
    y = ops.probabilistic_maxout_expectation(x, 2, 1, "strided", 0.5)
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        want = reference.probabilistic_maxout_expectation(x[n:n + 1], 2, 1, "strided", 0.5)
        yield compare(f"forward sample {n}", y[n:n + 1], want, exact=False)
    grad_x = ops._probabilistic_maxout_expectation_backward(y, x, 2, 1, "strided", 0.5)
    for n in picks:
        xs = x[n:n + 1].float().requires_grad_()
        reference.probabilistic_maxout_expectation(xs, 2, 1, "strided", 0.5).backward(y[n:n + 1].float())
        yield compare(f"backward sample {n}", grad_x[n:n + 1], xs.grad.to(dtype), exact=False)


def _check_fmp(device, backend, shape, kernel, dtype, samples) -> Iterator[Check]:
    ops = namespace(backend)
    x = fill(shape, dtype, device, 1)
    out = [max(1, (s * 7) // 10) for s in shape[2:]]
    draws = torch.rand(shape[0], shape[1], 2, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    y, index, _ = ops.fractional_max_pool2d(x, kernel, out, "window", draws, None, True, "pseudorandom", False, None)
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        s = slice(n, n + 1)
        want_y, want_index, _ = reference.fractional_max_pool2d(x[s], kernel, out, "window", draws[s], None, True)
        yield compare(f"forward sample {n}", y[s], want_y, exact=True)
        yield compare(f"indices sample {n}", index[s], want_index, exact=True)
    del x
    grad_x = ops._fractional_max_pool2d_backward(y, index, list(shape[2:]), kernel, "window", draws, None,
                                                 "pseudorandom", False, None)
    for n in picks:
        s = slice(n, n + 1)
        want = reference.fractional_max_pool2d_backward(y[s], index[s], shape[2:], kernel, "window", draws[s], None)
        yield compare(f"backward sample {n}", grad_x[s], want, exact=True)


def check_fractional_max_pool2d(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    return _check_fmp(device, backend, shape, [2, 2], dtype, samples)


def check_fractional_max_pool2d_huge_plane(device, backend, shape, dtype=torch.float32, band=4) -> Iterator[Check]:
    """One plane of more than 2^31 elements, 3 x 2 windows: int64 flat indices h * W + w past 2^31. A whole
    plane is too big for the reference, so the first and last `band` output rows are checked against their
    windows (regions from the reference's fmp_regions, the first maximum of each, in row-major order), and
    the gradient of the input rows that only the last band's outputs cover against a float64 sum."""
    ops = namespace(backend)
    x = fill(shape, dtype, device, 1)
    height, width = shape[2:]
    kernel = [3, 2]
    out = [(height * 7) // 10, (width * 7) // 10]
    draws = torch.rand(1, 1, 2, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    y, index, _ = ops.fractional_max_pool2d(x, kernel, out, "window", draws, None, True, "pseudorandom", False, None)
    row_begin, row_end = reference.fmp_regions(height, out[0], kernel[0], "window", draws[0, 0, 1], None, dtype)
    col_begin, _ = reference.fmp_regions(width, out[1], kernel[1], "window", draws[0, 0, 0], None, dtype)
    plane = x[0, 0]
    cols = col_begin[:, None] + torch.arange(kernel[1], device=device)  # (out_w, kw)
    for label, (a, b) in (("head", (0, band)), ("tail", (out[0] - band, out[0]))):
        rows = row_begin[a:b, None] + torch.arange(kernel[0], device=device)  # (band, kh)
        r, c = rows[:, None, :, None], cols[None, :, None, :]
        values = plane[r, c].flatten(2)  # (band, out_w, kh * kw), row-major inside each window
        flat = (r * width + c).expand(b - a, out[1], kernel[0], kernel[1]).flatten(2)
        arg = values.argmax(-1, keepdim=True)  # the first maximum: ATen's scan when there is no NaN
        yield compare(f"forward {label} rows", y[0, 0, a:b], values.gather(-1, arg).squeeze(-1), exact=True)
        yield compare(f"indices {label} rows", index[0, 0, a:b], flat.gather(-1, arg).squeeze(-1), exact=True)
    del x, plane
    grad_x = ops._fractional_max_pool2d_backward(y, index, [height, width], kernel, "window", draws, None,
                                                 "pseudorandom", False, None)
    first_row = int(row_end[out[0] - band - 1])  # rows from here on are pooled by the last band alone
    chosen = index[0, 0, out[0] - band:].flatten() - first_row * width
    grads = y[0, 0, out[0] - band:].flatten().double()
    keep = chosen >= 0
    want = torch.zeros((height - first_row) * width, dtype=torch.float64, device=device)
    want.index_add_(0, chosen[keep], grads[keep])
    yield compare("backward tail rows", grad_x[0, 0, first_row:].flatten(), want.to(dtype), exact=False)


def check_stochastic_pool2d(device, backend, shape, dtype=torch.bfloat16, samples=3) -> Iterator[Check]:
    """The training draw (explicit uniforms, so that each sample's reference draws alike), its gathered backward and
    evaluation's weighting, per sample against the reference."""
    ops = namespace(backend)
    pool = ([3, 3], [2, 2], [1, 1], True)
    x = fill(shape, dtype, device, 1)
    out = [reference.stochastic_pool2d_output_size(s, 3, 2, 1, True) for s in shape[2:]]
    uniforms = torch.rand(shape[0], shape[1], *out, generator=torch.Generator(device=device).manual_seed(6),
                          device=device)
    y, offset, _ = ops.stochastic_pool2d(x, *pool, uniforms, None)
    picks = checked_samples(shape[0], samples, torch.Generator().manual_seed(0))
    for n in picks:
        s = slice(n, n + 1)
        want_y, want_offset = reference.stochastic_pool2d_sample(x[s], *pool, uniforms[s], None)
        yield compare(f"forward sample {n}", y[s], want_y, exact=True)
        yield compare(f"offsets sample {n}", offset[s], want_offset, exact=True)
    del uniforms
    grad_x = ops._stochastic_pool2d_backward(y, offset, list(shape[2:]), *pool)
    for n in picks:
        s = slice(n, n + 1)
        want = reference.stochastic_pool2d_backward(y[s], offset[s], shape[2:], *pool)
        yield compare(f"backward sample {n}", grad_x[s], want, exact=False)
    del grad_x, offset, y
    mean = ops.stochastic_pool2d_expectation(x, *pool)
    for n in picks:
        want = reference.stochastic_pool2d_expectation_values(x[n:n + 1], *pool)
        yield compare(f"evaluation sample {n}", mean[n:n + 1], want, exact=False)


CHECKS: dict[str, Callable[..., Iterator[Check]]] = {
    "shake_drop": check_shake_drop,
    "shake_shake": check_shake_shake,
    "maxout": check_maxout,
    "probabilistic_maxout": check_probabilistic_maxout,
    "probabilistic_maxout_expectation": check_probabilistic_maxout_expectation,
    "fractional_max_pool2d": check_fractional_max_pool2d,
    "fractional_max_pool2d_huge_plane": check_fractional_max_pool2d_huge_plane,
    "stochastic_pool2d": check_stochastic_pool2d,
}


def run(ops, backends, device, small: bool) -> tuple[int, int]:
    """Runs the checks; returns (passed, failed)."""
    passed = failed = 0
    for backend in backends:
        if backend not in cifarops.available_backends(device):
            print(f"FAIL {backend}: not available on {device} (available: {cifarops.available_backends(device)})")
            failed += 1
            continue
        for op in ops:
            shape = SHAPES[op][1 if small else 0]
            numel = 1
            for s in shape:
                numel *= s
            start = time.perf_counter()
            try:
                results = list(CHECKS[op](device, backend, shape))
            except Exception as error:  # an out-of-memory or a kernel error is a failure of this op, not the end
                results = [("raised", False, f"{type(error).__name__}: {error}")]
            for label, ok, detail in results:
                print(f"{'PASS' if ok else 'FAIL'} {backend} {op} {tuple(shape)} ({numel / 1e9:.2f}e9 elements) "
                      f"{label}{': ' + detail if detail else ''}", flush=True)
                passed, failed = passed + ok, failed + (not ok)
            print(f"     {backend} {op}: {time.perf_counter() - start:.1f} s", flush=True)
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return passed, failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", choices=OPS, default=OPS)
    parser.add_argument("--backends", nargs="+", choices=("cuda", "triton", "cpu"), default=["cuda", "triton"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the small shapes (a quick check of the script itself)")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("FAIL no CUDA device")
        return 2
    passed, failed = run(args.ops, args.backends, args.device, args.small)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
