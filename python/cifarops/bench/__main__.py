"""The benchmark report, the project's main job: `python -m cifarops.bench` (or `cifarops-bench`).

First every available backend is checked against the reference (a wrong backend is reported as FAIL and
never timed); then each case is timed in forward, backward and both, side by side with the eager reference,
the popular implementation's style and torch.compile of the reference, in one run. Writes a CSV and a
Markdown summary next to the terminal table. Then host time per call at tiny shapes beside the peer layers,
with the device kernels each call runs (`hosttime.csv`, a section of the Markdown), and the model level.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import cifarops
from cifarops import progress
from cifarops.bench import chart, fractional_max_pool2d, hosttime, maxout, report, shake_drop, shake_shake
from cifarops.bench import models as bench_models
from cifarops.bench.common import MODES, saved_bytes, timed
from cifarops.bench.timing import copy_bandwidth_gbs, median_ms

OPS = {
    "shake_drop": shake_drop,
    "shake_shake": shake_shake,
    "maxout": maxout,
    "fractional_max_pool2d": fractional_max_pool2d,
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


NOTES = """
vs baseline: how many times faster than what users run today (the op's baseline: the owruby-style ShakeDrop,
the hysts-style Shake-Shake, view+max maxout, PyTorch's native fractional max-pooling).
vs reference / vs compile: how many times faster than the eager reference / torch.compile of it.
GB/s counts the fewest bytes the op must move; 'of copy' divides it by a copy of the same size measured in
this run. 'saved MB' is what autograd keeps for backward after one forward pass ('-' for torch.compile,
whose saved tensors autograd's hooks do not see). owruby-style ShakeDrop 'backward' reuses one forward
pass, so it shows whichever gate that pass drew (an open gate makes its backward free); 'full' redraws
every call and is the fair comparison."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m cifarops.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {list(OPS)}")
    parser.add_argument("--backends", default=None, help="comma-separated cifarops backends to time (default: all available)")
    parser.add_argument("--dtypes", default=None, help="comma-separated (default: float32 on CPU, float32,bfloat16,float16 on GPU)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--shape", action="append", default=None, help="N,C,H,W (repeatable) instead of the default shapes")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile baseline (its compile time is long on CPU; --quick skips it there)")
    parser.add_argument("--out", default="bench/out", help="directory for the CSVs, Markdown and chart")
    parser.add_argument("--models", default=None,
                        help="comma-separated zoo models for the model-level section (default: PyramidNet-272 a=200; "
                             "with --quick, PyramidNet-110 a=270 and checkpoint modes none, full, selective); "
                             "'none' skips it")
    parser.add_argument("--model-batch", type=int, default=None, help="default: 128 on a GPU, 8 on the CPU (4 with --quick)")
    parser.add_argument("--model-steps", type=int, default=None, help="timed steps per configuration (default 7, 3 with --quick)")
    parser.add_argument("--no-host-time", action="store_true",
                        help="skip the host-time section (host time and kernels per call at tiny shapes)")
    parser.add_argument("--autocast", action="store_true", help="model section: bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="model section: channels_last")
    return parser.parse_args(argv)


def choose(value, allowed, what):
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {unknown}; choose from {list(allowed)}")
    return chosen


def run_models(args, device: torch.device) -> list[dict]:
    """The model-level section: python -m cifarops.bench.models with this report's settings."""
    gpu = device.type == "cuda"
    default_model = "pyramidnet110-a270-shakedrop" if args.quick else "pyramidnet272-a200-shakedrop"
    argv = ["--device", str(device), "--models", args.models or default_model, "--out", args.out,
            "--batch", str(args.model_batch or (128 if gpu else 4 if args.quick else 8)),
            "--steps", str(args.model_steps or (3 if args.quick else 7))]
    argv += ["--autocast"] * args.autocast + ["--channels-last"] * args.channels_last
    argv += ["--modes", "none,full,selective"] * args.quick
    argv += ["--compile"] * (not args.no_compile)  # compiled rows for both layer sets, and their compile times
    print("\nModel level: a training step per configuration (python -m cifarops.bench.models)", flush=True)
    return bench_models.run(bench_models.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    default_dtypes = "float32" if device.type == "cpu" else "float32,bfloat16,float16"
    dtypes = [DTYPES[d] for d in choose(args.dtypes or default_dtypes, DTYPES, "dtypes")]
    modes = choose(args.modes, MODES, "modes")
    ops = choose(args.ops, OPS, "ops")
    available = [b for b in cifarops.available_backends(device) if b != "reference"]
    backends = choose(args.backends, available, "backends") if args.backends else available
    shapes = [tuple(int(s) for s in shape.split(",")) for shape in args.shape] if args.shape else None
    min_run_time = 0.2 if args.quick else 0.5
    if args.quick and device.type == "cpu":
        args.no_compile = True  # Inductor's CPU compile of every case would take most of a quick run

    env = report.environment(device)
    print("cifarops benchmark")
    for key, value in env.items():
        print(f"  {key:10} {value}")

    print("\nCorrectness, each backend against the reference:")
    checks, failed = [], set()
    for op in ops:
        for backend in backends:
            for dtype in dtypes:
                problem = OPS[op].check_backend(backend, device, dtype)
                result = "ok" if problem is None else f"FAIL: {problem}"
                if problem:
                    failed.add((op, backend, dtype))
                name = str(dtype).replace("torch.", "")
                checks.append((op, backend, name, result))
                print(f"  {op:12} {backend:10} {name:9} {result}", flush=True)

    rows, copy_gbs = [], {}
    print()
    report.print_header()
    for op in ops:
        module = OPS[op]
        providers = module.providers(device)
        cases = module.cases(dtypes, quick=args.quick, shapes=shapes)
        bar = progress.Bar(len(cases) * len(modes), f"timing {op}", unit="case")  # shown on a terminal only
        for case in cases:
            copy_key = (case.numel, case.dtype)  # the same size as the case: in or out of cache alike
            if copy_key not in copy_gbs:
                copy_gbs[copy_key] = copy_bandwidth_gbs(case.numel, case.dtype, device)
            saved = {}
            for mode in modes:
                results = {}
                for name, provider in providers.items():
                    backend = name[len("cifarops[") : -1] if name.startswith("cifarops[") else None
                    if backend is not None and (backend not in backends or (op, backend, case.dtype) in failed):
                        continue
                    if name == "compile(reference)" and args.no_compile:
                        continue
                    bench = module.make(case, device, provider)
                    if name not in saved:  # compiled graphs save outside autograd's hooks: not observable
                        saved[name] = None if name.startswith("compile(") else saved_bytes(bench)
                    results[name] = median_ms(timed(bench, mode), device, min_run_time)
                for name, (ms, iqr) in results.items():
                    gbs = module.moved_bytes(case, mode) / (ms * 1e-3) / 1e9
                    row = {
                        "case": case.label,
                        "mode": mode,
                        "provider": name,
                        "median_ms": ms,
                        "iqr_ms": iqr,
                        "vs_baseline": results[module.BASELINE][0] / ms if module.BASELINE in results else None,
                        "vs_reference": results["reference"][0] / ms,
                        "vs_compile": results["compile(reference)"][0] / ms if "compile(reference)" in results else None,
                        "gb_per_s": gbs,
                        "of_copy": gbs / copy_gbs[copy_key],
                        "saved_mb": None if saved[name] is None else saved[name] / 2**20,
                    }
                    rows.append(row)
                    report.print_row(row)  # above the bar
                bar.update()
        bar.close()
    print(NOTES)
    for (numel, dtype), gbs in copy_gbs.items():
        print(f"  copy of {numel} {str(dtype)[6:]} elements: {gbs:.1f} GB/s")

    host_rows = None
    if not args.no_host_time:
        skip = [(op, backend) for op, backend, _ in failed]
        host_rows = hosttime.run(device, backends, ops=ops, quick=args.quick, skip=skip)
        print(hosttime.NOTES)

    os.makedirs(args.out, exist_ok=True)
    report.write_csv(os.path.join(args.out, "benchmark.csv"), rows, env)
    sections = [hosttime.markdown(host_rows)] if host_rows is not None else []
    if host_rows is not None:
        hosttime.write_csv(os.path.join(args.out, "hosttime.csv"), host_rows, env)
    report.write_markdown(os.path.join(args.out, "benchmark.md"), rows, env, checks, NOTES, sections)
    model_rows = None
    if args.models != "none":
        model_rows = run_models(args, device)
    baselines = {op: OPS[op].BASELINE for op in ops}
    chart.write_chart(os.path.join(args.out, "benchmark.png"), rows, baselines, model_rows,
                      f"cifarops on {env['device']}, torch {env['torch']}, {env['date']}")
    print(f"\nWrote {args.out}/benchmark.csv, benchmark.md and benchmark.png"
          + (", hosttime.csv" if host_rows is not None else "")
          + (", models.csv and models.md" if model_rows is not None else ""))
    if failed:
        print(f"FAILED correctness checks: {sorted((o, b, str(d)) for o, b, d in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
