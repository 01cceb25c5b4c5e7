"""CPU speed in fresh processes: `python -m cifarops.bench.processes` (issue 29, item 10).

A CPU kernel's speed can differ between processes where its outputs are fresh memory: page faults, and on a
virtual machine with free-page reporting the host's faults on memory the guest handed back (see
csrc/args/cpu_output_cache.h). This runs each op's headline case forward+backward, cifarops' CPU kernels side
by side with the eager reference and with what users run today (the op's baseline: ShakeDrop's owruby-style
layer, PyTorch's fractional_max_pool2d, maxout's view+max; medians after warm-up), in several fresh processes
one after another, and reports each process's speed-ups and the slowest, against the op's target (met when
the slowest process meets it against both). `--cache-off` runs the same processes
with the CPU output cache off as well (CIFAROPS_CPU_CACHE_MB=0), the behaviour before it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# op -> its target: cifarops' speed-up over the eager reference and the baseline in the slowest process
TARGETS = {"shake_drop": 1.3, "fractional_max_pool2d": 1.5, "maxout": 1.5}


def _case(op: str, tiny: bool):
    import torch

    from cifarops.bench import fractional_max_pool2d, maxout, shake_drop

    module = {"shake_drop": shake_drop, "fractional_max_pool2d": fractional_max_pool2d, "maxout": maxout}[op]
    shapes = None
    if tiny:  # the test's: a few KiB, the same code path
        shapes = [{"shake_drop": (4, 8, 8, 8), "fractional_max_pool2d": (4, 8, 16, 16), "maxout": (4, 16, 8, 8)}[op]]
    return module, module.cases([torch.float32], profile="quick", shapes=shapes)[0]


def worker(op: str, tiny: bool) -> dict:
    """One process's figures (ms) of forward+backward of cifarops[cpu], the eager reference and the baseline:
    each the lower of two medians after warm-up, taken alternately."""
    import torch

    from cifarops.bench.common import timed
    from cifarops.bench.timing import median_ms

    module, case = _case(op, tiny)
    device = torch.device("cpu")
    providers = module.providers(device)
    names = ("cifarops[cpu]", "reference", module.BASELINE)
    ms = {}
    for _ in range(2):  # alternating, so that all see the same state of the machine
        for name in names:
            fn = timed(module.make(case, device, providers[name]), "full")
            ms.setdefault(name, []).append(median_ms(fn, device, min_run_time=0.05 if tiny else 0.3)[0])
    ours, reference, baseline = (min(ms[name]) for name in names)
    return {"op": op, "shape": list(case.shape), "baseline": module.BASELINE, "cifarops_ms": ours,
            "reference_ms": reference, "baseline_ms": baseline, "vs_reference": reference / ours,
            "vs_baseline": baseline / ours}


def run(ops, processes: int, cache_off: bool = False, tiny: bool = False) -> list[dict]:
    """Every op in `processes` fresh processes; with the cache and, with `cache_off`, without it."""
    rows = []
    settings = [("on", {})] + ([("off", {"CIFAROPS_CPU_CACHE_MB": "0"})] if cache_off else [])
    for op in ops:
        for cache, extra in settings:
            runs = []
            for _ in range(processes):
                command = [sys.executable, "-m", "cifarops.bench.processes", "--worker", op] + (["--tiny"] if tiny else [])
                done = subprocess.run(command, env=dict(os.environ, **extra), capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"cifarops.bench.processes: the worker for {op} failed:\n{done.stderr}")
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = {"op": op, "shape": runs[0]["shape"], "baseline": runs[0]["baseline"], "cache": cache,
                   "target": TARGETS[op]}
            for key in ("cifarops_ms", "reference_ms", "baseline_ms", "vs_reference", "vs_baseline"):
                row[key] = [r[key] for r in runs]
            row["slowest"] = min(min(row["vs_reference"]), min(row["vs_baseline"]))
            row["met"] = row["slowest"] >= TARGETS[op]
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """A row per op and cache setting: each process's milliseconds and speed-ups, and the slowest speed-up."""

    def each(values, digits):
        return " ".join(f"{v:.{digits}f}" for v in values)

    lines = ["| op (float32, forward+backward) | output cache | cifarops ms | reference ms | baseline ms | "
             "vs reference | vs baseline | slowest | target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} {'x'.join(map(str, r['shape']))} | {r['cache']} | {each(r['cifarops_ms'], 2)} | "
                     f"{each(r['reference_ms'], 1)} | {r['baseline']}: {each(r['baseline_ms'], 1)} | "
                     f"{each(r['vs_reference'], 2)} | {each(r['vs_baseline'], 2)} | **{r['slowest']:.2f}x** | "
                     f"{r['target']}x {'met' if r['met'] else 'NOT met'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifarops.bench.processes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per op (default 5)")
    parser.add_argument("--ops", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    parser.add_argument("--cache-off", action="store_true", help="also run with CIFAROPS_CPU_CACHE_MB=0")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the test's): checks the plumbing, not speed")
    parser.add_argument("--worker", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.tiny)))
        return 0
    rows = run(args.ops, args.processes, args.cache_off, args.tiny)
    print(markdown(rows))
    return 0 if args.tiny or all(r["met"] for r in rows if r["cache"] == "on") else 1


if __name__ == "__main__":
    sys.exit(main())
