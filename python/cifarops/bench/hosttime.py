"""The report's host-time section (issue 16): what one call costs the host at a tiny shape, where the kernel
itself costs nothing, beside the peer layer it replaces, and the device kernels each call runs.

Host time is the thread CPU time (``time.thread_time_ns``) of the calling thread with torch on one thread
(``torch.set_num_threads(1)`` for the section, restored after), so that other processes on the machine and
ATen's worker threads do not count. Each sample times ``inner`` calls back to back (per-call time = total /
inner; this also averages the owruby-style gate, which skips work on half of the calls); the implementations
of a row alternate sample by sample, in a rotating order, after a warm-up; the figure is the median sample.
Training rows time ``torch.autograd.grad(forward(), inputs, grad)`` (no ``.grad`` accumulation), the
no_grad rows the forward alone. ``python -m cifarops.bench.hosttime`` runs this section alone.

The ratio is cifarops / peer (lower is better); the targets are issue 16's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Sequence

import torch

import cifarops
import cifarops.functional as F
from cifarops.bench.baselines import (hysts_shake_shake, official_drop_relu, owruby_shake_drop, softmax_multinomial_maxout,
                                      timm_drop_path, unfold_multinomial_pool)
from cifarops.bench.kernels import CallKernels, call_kernels

TRAINING, NO_GRAD = "forward+backward", "forward, no_grad"

COLUMNS = ["call", "shape", "mode", "provider", "host_us", "iqr_us", "ratio", "target", "met", "forward_kernels",
           "backward_kernels", "forward_ops", "backward_ops"]


# --- arithmetic --------------------------------------------------------------------------------------------

def per_call_us(total_ns: int, calls: int) -> float:
    """Microseconds per call of a sample that timed ``calls`` calls in ``total_ns`` nanoseconds."""
    return total_ns / calls / 1e3


def median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    """(median, interquartile range) of the samples; the IQR is 0 for fewer than two samples."""
    if not samples:
        raise ValueError("median_iqr: no samples")
    if len(samples) < 2:
        return float(samples[0]), 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return float(statistics.median(samples)), float(q3 - q1)


def ratio(ours: float, peer: float) -> float:
    """cifarops' host time over the peer's: below 1 is cheaper than the layer it replaces."""
    return ours / peer


def met(value: Optional[float], target: Optional[float]) -> Optional[bool]:
    """Whether a ratio meets a target (at most target); None when either is missing."""
    if value is None or target is None:
        return None
    return value <= target


def measure(fns: dict[str, Callable[[], object]], rounds: int, inner: int, warmup: int = 5,
            clock: Callable[[], int] = time.thread_time_ns,
            contexts: Optional[dict[str, Callable[[], ContextManager]]] = None) -> dict[str, list[float]]:
    """Per-call microseconds of every function, ``rounds`` samples of ``inner`` calls each: the functions
    alternate sample by sample, the order rotating every round (a, b, c; b, c, a; ...), after ``warmup`` calls
    of each. ``contexts[name]()`` (say, the backend choice) is entered around each sample of ``name``, outside
    the clock. The garbage collector is off while a sample runs."""
    names = list(fns)
    contexts = contexts or {}
    samples = {name: [] for name in names}
    enabled = gc.isenabled()
    try:
        for name in names:
            with contexts.get(name, contextlib.nullcontext)():
                for _ in range(warmup):
                    fns[name]()
        for r in range(rounds):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                fn = fns[name]
                with contexts.get(name, contextlib.nullcontext)():
                    gc.disable()
                    start = clock()
                    for _ in range(inner):
                        fn()
                    stop = clock()
                    if enabled:
                        gc.enable()
                samples[name].append(per_call_us(stop - start, inner))
    finally:
        if enabled:
            gc.enable()
    return samples


# --- the calls ---------------------------------------------------------------------------------------------

@dataclass
class Impl:
    """One implementation of a row: ``forward()`` and, for training rows, the leaves it differentiates."""

    forward: Callable[[], object]
    inputs: Sequence[torch.Tensor] = ()

    def timed(self, mode: str) -> Callable[[], object]:
        if mode == NO_GRAD:
            def run():
                with torch.no_grad():
                    return self.forward()
            return run
        out = self.forward()
        y = out[0] if isinstance(out, (tuple, list)) else out
        grad = torch.ones_like(y)  # made once, outside what is timed
        inputs = list(self.inputs)
        return lambda: torch.autograd.grad(self.forward(), inputs, grad)

    def kernels(self, mode: str) -> CallKernels:
        if mode == NO_GRAD:
            with torch.no_grad():
                return call_kernels(self.forward)
        return call_kernels(self.forward, self.inputs)


@dataclass
class Row:
    """One comparison: cifarops (per backend) beside its peer, or a reference point without a peer."""

    call: str
    op: Optional[str]  # the report's op name (for --ops); None: always run
    shape: tuple
    mode: str
    target: Optional[float]
    ours: Callable[[], Impl]  # built under the backend being measured
    peer_name: str  # for a reference point (op None): the name of `ours`
    peer: Optional[Callable[[], Impl]] = None


def _leaves(device, *shapes):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=generator).to(device).requires_grad_() for s in shapes]


def rows(device: torch.device) -> list[Row]:
    """The section's rows, at issue 16's shapes: ShakeDrop, stochastic depth and Shake-Shake (2, 4, 4, 4) with a shortcut,
    maxout and probabilistic maxout k = 2 on (2, 8, 4, 4), FMP 8x8 -> 6x6 and stochastic pooling 3x3 stride 2 on (2, 4, 8, 8)."""
    small, wide, plane = (2, 4, 4, 4), (2, 8, 4, 4), (2, 4, 8, 8)

    def shake_drop():
        h, x = _leaves(device, small, small)
        return Impl(lambda: F.shake_drop(h, x), (h, x))

    def owruby():
        h, x = _leaves(device, small, small)
        return Impl(lambda: owruby_shake_drop(h, x), (h, x))

    def stochastic_depth():
        h, x = _leaves(device, small, small)
        return Impl(lambda: F.stochastic_depth(h, x, p=0.5), (h, x))

    def timm():
        h, x = _leaves(device, small, small)
        return Impl(lambda: timm_drop_path(h, x, 0.5), (h, x))

    def drop_activation():
        (h,) = _leaves(device, small)
        return Impl(lambda: F.drop_activation(h), (h,))

    def official():
        (h,) = _leaves(device, small)
        return Impl(lambda: official_drop_relu(h), (h,))

    def shake_shake():
        h1, h2, x = _leaves(device, small, small, small)
        return Impl(lambda: F.shake_shake(h1, h2, x), (h1, h2, x))

    def hysts():
        h1, h2, x = _leaves(device, small, small, small)
        return Impl(lambda: hysts_shake_shake(h1, h2, x), (h1, h2, x))

    def maxout():
        (x,) = _leaves(device, wide)
        return Impl(lambda: F.maxout(x, 2), (x,))

    def view_max():
        (x,) = _leaves(device, wide)
        return Impl(lambda: x.unflatten(1, (x.shape[1] // 2, 2)).max(2).values, (x,))

    def probabilistic():
        (x,) = _leaves(device, wide)
        return Impl(lambda: F.probabilistic_maxout(x, 2), (x,))

    def softmax_multinomial():
        (x,) = _leaves(device, wide)
        return Impl(lambda: softmax_multinomial_maxout(x, 2), (x,))

    def fmp():
        (x,) = _leaves(device, plane)
        return Impl(lambda: F.fractional_max_pool2d(x, 2, output_size=(6, 6)), (x,))

    def native_fmp():
        (x,) = _leaves(device, plane)
        return Impl(lambda: torch.nn.functional.fractional_max_pool2d(x, 2, output_size=(6, 6)), (x,))

    def stochastic_pool():
        (x,) = _leaves(device, plane)
        return Impl(lambda: F.stochastic_pool2d(x, 3, 2), (x,))

    def unfold_multinomial():
        (x,) = _leaves(device, plane)
        return Impl(lambda: unfold_multinomial_pool(x, 3, 2), (x,))

    def relu():
        (h,) = _leaves(device, small)
        return Impl(lambda: torch.relu(h), (h,))

    return [
        Row("ShakeDrop + shortcut", "shake_drop", small, TRAINING, 0.5, shake_drop, "owruby-style + add", owruby),
        Row("ShakeDrop + shortcut", "shake_drop", small, NO_GRAD, 0.5, shake_drop, "owruby-style + add", owruby),
        Row("stochastic depth + shortcut", "stochastic_depth", small, TRAINING, 0.5, stochastic_depth,
            "timm drop_path + add", timm),
        Row("Drop-Activation", "drop_activation", small, TRAINING, 0.5, drop_activation, "official dropRelu", official),
        Row("Shake-Shake + shortcut", "shake_shake", small, TRAINING, 0.5, shake_shake, "hysts-style + add", hysts),
        Row("maxout k=2", "maxout", wide, TRAINING, 0.75, maxout, "view+max", view_max),
        Row("probabilistic maxout k=2", "maxout", wide, TRAINING, None, probabilistic, "softmax+multinomial",
            softmax_multinomial),
        Row("FMP 8x8 -> 6x6", "fractional_max_pool2d", plane, TRAINING, 0.8, fmp, "F.fractional_max_pool2d",
            native_fmp),
        Row("stochastic pooling 3x3/2", "stochastic_pool2d", plane, TRAINING, 0.5, stochastic_pool,
            "unfold+multinomial", unfold_multinomial),
        Row("one C++ op with C++ autograd: relu", None, small, TRAINING, None, relu, "torch.relu"),
        Row("one C++ op with C++ autograd: relu", None, small, NO_GRAD, None, relu, "torch.relu"),
    ]


# --- the section -------------------------------------------------------------------------------------------

def _backend(backend: Optional[str], device: torch.device) -> Callable[[], ContextManager]:
    """The context a backend is measured in: none for the automatic choice (the path a model takes), else
    `use_backend` (whose per-call backend lookup is then part of the figure)."""
    if not backend or backend == cifarops.backends.default_backend(device):
        return contextlib.nullcontext
    return lambda: cifarops.use_backend(backend)


def run(device: torch.device, backends: Sequence[str], ops: Optional[Sequence[str]] = None, quick: bool = False,
        rounds: Optional[int] = None, inner: Optional[int] = None, skip: Sequence[tuple[str, str]] = (),
        verbose: bool = True) -> list[dict]:
    """Measures every row on `device` for each cifarops backend in `backends` (pairs (op, backend) in
    `skip`, those that failed the correctness check, are left out) and counts its kernels; returns the report
    rows (COLUMNS)."""
    rounds = rounds or (40 if quick else 150)
    inner = inner or (10 if quick else 20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    try:
        if verbose:
            print_header()
        for row in rows(device):
            if ops is not None and row.op is not None and row.op not in ops:
                continue
            impls = {}  # name -> (backend or None, Impl)
            if row.op is None:
                impls[row.peer_name] = (None, row.ours())
            else:
                for backend in backends:
                    if (row.op, backend) not in skip:
                        with cifarops.use_backend(backend):
                            impls[f"cifarops[{backend}]"] = (backend, row.ours())
                if not impls:
                    continue
                impls[row.peer_name] = (None, row.peer())
            fns, contexts = {}, {}
            for name, (backend, impl) in impls.items():
                contexts[name] = _backend(backend, device)
                with contexts[name]():
                    fns[name] = impl.timed(row.mode)
            samples = measure(fns, rounds, inner, warmup=max(5, inner), contexts=contexts)
            stats = {name: median_iqr(s) for name, s in samples.items()}
            peer = stats.get(row.peer_name) if row.op is not None else None
            for name, (backend, impl) in impls.items():
                with contexts[name]():
                    kernels = impl.kernels(row.mode)
                mine = name.startswith("cifarops[")
                r = ratio(stats[name][0], peer[0]) if mine and peer is not None else None
                record = {
                    "op": row.op,  # not a CSV column: the report's summary reads it
                    "call": row.call,
                    "shape": str(tuple(row.shape)),
                    "mode": row.mode,
                    "provider": name,
                    "host_us": stats[name][0],
                    "iqr_us": stats[name][1],
                    "ratio": r,
                    "target": row.target if mine else None,
                    "met": met(r, row.target) if mine else None,
                    "forward_kernels": len(kernels.forward),
                    "backward_kernels": None if kernels.backward is None else len(kernels.backward),
                    "forward_ops": ", ".join(kernels.forward),
                    "backward_ops": "" if kernels.backward is None else ", ".join(kernels.backward),
                }
                out.append(record)
                if verbose:
                    print_row(record)
    finally:
        torch.set_num_threads(threads)
    return out


# --- output ------------------------------------------------------------------------------------------------

HEADERS = ["call", "shape", "mode", "provider", "host µs", "IQR µs", "ratio", "target", "met", "kernels fwd",
           "kernels bwd"]
WIDTHS = [36, 14, 17, 24, 8, 7, 7, 8, 7, 11, 11]


def format_row(row: dict) -> list[str]:
    def maybe(value, fmt):
        return "-" if value is None else fmt.format(value)

    verdict = {True: "met", False: "not met", None: "-"}[row["met"]]
    return [row["call"], row["shape"], row["mode"], row["provider"], f"{row['host_us']:.1f}", f"{row['iqr_us']:.1f}",
            maybe(row["ratio"], "{:.2f}x"), maybe(row["target"], "<= {:.2f}x"), verdict,
            str(row["forward_kernels"]), maybe(row["backward_kernels"], "{}")]


def print_header() -> None:
    print("\nHost time per call (thread CPU time, one thread, medians; ratio = cifarops / peer):", flush=True)
    print("  ".join(h.ljust(w) for h, w in zip(HEADERS, WIDTHS)), flush=True)


def print_row(row: dict) -> None:
    print("  ".join(c.ljust(w) for c, w in zip(format_row(row), WIDTHS)), flush=True)


NOTES = """Host time: thread CPU time per call (`time.thread_time_ns`, one torch thread), the median of samples of
back-to-back calls, each implementation of a call alternating with its peer in the same run. Training rows
are `torch.autograd.grad(forward(), inputs, grad)`, no_grad rows the forward alone (training mode). The
automatic backend runs as a model calls it (no override); another backend runs under `use_backend`. Ratio =
cifarops / peer, targets from issue 16. Kernels: dispatcher ops seen by a TorchDispatchMode below autograd,
forward and backward counted separately, views and allocations left out (the lists are in
`cifarops.bench.kernels`); owruby-style's ops depend on the gate the counted call drew (a closed gate adds
uniform_ and mul, forward and backward)."""


def markdown(rows_: list[dict]) -> str:
    lines = ["## Host time per call and device kernels per call (issue 16)", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows_]
    lines += ["", "Kernels each call runs:", "", "| call | mode | provider | forward | backward |", "|---|---|---|---|---|"]
    for row in rows_:
        fwd = CallKernels.describe(row["forward_ops"].split(", ") if row["forward_ops"] else [])
        bwd = "-" if row["backward_kernels"] is None else CallKernels.describe(
            row["backward_ops"].split(", ") if row["backward_ops"] else [])
        lines.append(f"| {row['call']} | {row['mode']} | {row['provider']} | {fwd} | {bwd} |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows_: list[dict], env: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + list(env))
        writer.writeheader()
        for row in rows_:
            writer.writerow({**{k: row[k] for k in COLUMNS}, **env})


def main(argv=None) -> int:
    """This section alone: ``python -m cifarops.bench.hosttime [--device D] [--quick] [--out DIR]``."""
    from cifarops.bench import report

    parser = argparse.ArgumentParser(prog="python -m cifarops.bench.hosttime", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="directory for hosttime.csv and hosttime.md (default: print only)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    backends = [b for b in cifarops.available_backends(device) if b != "reference"]
    env = report.environment(device)
    found = run(device, backends, quick=args.quick)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_csv(os.path.join(args.out, "hosttime.csv"), found, env)
        with open(os.path.join(args.out, "hosttime.md"), "w") as f:
            f.write(markdown(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
