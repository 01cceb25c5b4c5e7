"""The benchmark report, the project's main job: `python -m cifarops.bench` (or `cifarops-bench`).

First every available backend is checked against the reference (a wrong backend is reported as FAIL and
never timed); then each case is timed in forward, backward and both, side by side with the eager reference,
what users run today and torch.compile of the reference (compiled afresh for each case), in one run; then
host time per call at tiny shapes beside the peer layers, with the device kernels each call runs; then the
model level; and last one screen to act on (also `summary.md`) and the chart.

How much it runs: the default, every op at its CIFAR headline shape and two small networks (minutes);
`--full`, every shape and PyramidNet-272 (expect over two hours on a 2-core CPU: it says so at its start);
`--quick`, CI's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import cifarops
from cifarops import progress
from cifarops.bench import (chart, drop_activation, fractional_max_pool2d, hosttime, maxout, report, shake_drop,
                            shake_shake, stochastic_depth, stochastic_pool2d, summary)
from cifarops.bench import models as bench_models
from cifarops.bench.common import MODES, CompiledPerCase, saved_bytes, timed
from cifarops.bench.timing import copy_bandwidth_gbs, median_ms

OPS = {
    "shake_drop": shake_drop,
    "stochastic_depth": stochastic_depth,
    "drop_activation": drop_activation,
    "shake_shake": shake_shake,
    "maxout": maxout,
    "fractional_max_pool2d": fractional_max_pool2d,
    "stochastic_pool2d": stochastic_pool2d,
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


NOTES = """
vs baseline: how many times faster than what users run today (the op's baseline: the owruby-style ShakeDrop,
timm's drop_path plus the add (torchvision's stochastic_depth runs the same kernels), the official Drop-Activation
layer, the hysts-style Shake-Shake, view+max maxout, PyTorch's native fractional max-pooling, unfold + torch.multinomial stochastic pooling).
vs reference / vs compile: how many times faster than the eager reference / torch.compile of it.
GB/s counts the fewest bytes the op must move; 'of copy' divides it by a copy of the same size measured in
this run. 'saved MB' is what autograd keeps for backward after one forward pass ('-' for torch.compile,
whose saved tensors autograd's hooks do not see). owruby-style ShakeDrop 'backward' reuses one forward
pass, so it shows whichever gate that pass drew (an open gate makes its backward free); 'full' redraws
every call and is the fair comparison. compile(reference) is compiled afresh for each case, and a row that
did not run through its compiled graph stops the report."""

# The default run's compile budget: torch.compile of the reference is timed for the cases that start before
# this many seconds of compiling and compiled timing are spent; later ones say "not compiled: --full".
COMPILE_BUDGET_S = {"cpu": 150.0, "cuda": 60.0}
# What --full took end to end, measured (printed at its start). None: not measured on that kind of device yet.
FULL_DURATION = {
    "cpu": "over two hours on a 2-core CPU (measured 2026-12-07: 133.5 minutes, with builds and tests beside it for "
           "part of the time; checks, op timing and host time 11 minutes, then PyramidNet-272's model level, whose two "
           "compiled configurations compiled for 36 and 38 minutes)",
    "cuda": None,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m cifarops.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="CI's: one or two shapes per op, short timing, no compile on the CPU")
    profile.add_argument("--full", action="store_true",
                         help="the whole report: every shape, every case compiled, PyramidNet-272 at every checkpoint "
                              "mode, compiled (over two hours on a 2-core CPU)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {list(OPS)}")
    parser.add_argument("--backends", default=None, help="comma-separated cifarops backends to time (default: all available)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated (default: float32 on the CPU; on a GPU float32,bfloat16, with --full "
                             "float16 too)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--shape", action="append", default=None, help="N,C,H,W (repeatable) instead of the default shapes")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile baseline (its compile time is long on CPU; --quick skips it there)")
    parser.add_argument("--out", default="bench/out", help="directory for the CSVs, Markdown and chart")
    parser.add_argument("--models", default=None,
                        help="comma-separated zoo models for the model-level section (default: the small PyramidNet-110 "
                             "and Shake-Shake 26 variants, checkpoint none and full; --full: PyramidNet-272 a=200, every "
                             "mode; --quick: the small PyramidNet-110 at batch 4); 'none' skips it")
    parser.add_argument("--model-batch", type=int, default=None,
                        help="default: 128 on a GPU; on the CPU 32 (the default run's small networks), 4 with --quick, "
                             "8 with --full or --models")
    parser.add_argument("--model-steps", type=int, default=None, help="timed steps per configuration (default 7, 3 with --quick)")
    parser.add_argument("--no-host-time", action="store_true",
                        help="skip the host-time section (host time and kernels per call at tiny shapes)")
    parser.add_argument("--autocast", action="store_true", help="model section: bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="model section: channels_last")
    args = parser.parse_args(argv)
    args.profile = "quick" if args.quick else "full" if args.full else "default"
    return args


def choose(value, allowed, what):
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {unknown}; choose from {list(allowed)}")
    return chosen


DEFAULT_MODELS = "pyramidnet110-a270-shakedrop,shake-shake26-2x96d"  # their small variants (cifarops.models.SMALL)


def run_models(args, device: torch.device) -> list[dict]:
    """The model-level section: python -m cifarops.bench.models with this report's settings."""
    gpu = device.type == "cuda"
    small = args.profile != "full" and args.models is None  # the quick and default runs' networks are small
    models = args.models or {"quick": "pyramidnet110-a270-shakedrop", "default": DEFAULT_MODELS,
                             "full": "pyramidnet272-a200-shakedrop"}[args.profile]
    batch = args.model_batch or (128 if gpu else 4 if args.quick else 32 if small else 8)
    argv = ["--device", str(device), "--models", models, "--out", args.out, "--batch", str(batch),
            "--steps", str(args.model_steps or (3 if args.quick else 7))]
    argv += ["--autocast"] * args.autocast + ["--channels-last"] * args.channels_last
    argv += {"quick": ["--modes", "none,full,selective"], "default": ["--modes", "none,full", "--layers", "cifarops"],
             "full": []}[args.profile]
    argv += ["--small"] * small
    # compiled rows for both layer sets, and their compile times: the whole report's only
    argv += ["--compile"] * (args.profile == "full" and not args.no_compile)
    rows = bench_models.run(bench_models.parse_args(argv))
    if small:  # the summary and the chart say which networks these were (models.csv keeps the zoo names)
        rows = [{**row, "model": f"{row['model']} (small)"} for row in rows]
    return rows


class Sections:
    """The "section i of n" lines that show where a run is."""

    def __init__(self, names: list[str]):
        self.names, self.done, self.start = names, 0, time.monotonic()

    def next(self, name: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        print(f"\n==== section {self.done} of {len(self.names)}: {name} ({elapsed / 60:.1f} min so far)", flush=True)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # a recompile limit hit inside one case is an error, never rows of eager code labelled compiled
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        return _report(args)


def _report(args) -> int:
    device = torch.device(args.device)
    default_dtypes = "float32" if device.type == "cpu" else "float32,bfloat16,float16" if args.full else "float32,bfloat16"
    dtypes = [DTYPES[d] for d in choose(args.dtypes or default_dtypes, DTYPES, "dtypes")]
    modes = choose(args.modes, MODES, "modes")
    ops = choose(args.ops, OPS, "ops")
    available = [b for b in cifarops.available_backends(device) if b != "reference"]
    backends = choose(args.backends, available, "backends") if args.backends else available
    shapes = [tuple(int(s) for s in shape.split(",")) for shape in args.shape] if args.shape else None
    min_run_time = 0.1 if args.quick else 0.5  # quick: CI's, which proves the report runs
    if args.quick and device.type == "cpu":
        args.no_compile = True  # Inductor's CPU compile of every case would take most of a quick run
    compile_budget = COMPILE_BUDGET_S.get(device.type, 60.0) if args.profile == "default" else float("inf")

    env = report.environment(device)
    print(f"cifarops benchmark ({args.profile} run)")
    for key, value in env.items():
        print(f"  {key:10} {value}")
    if args.full:
        expected = FULL_DURATION.get(device.type)
        print(f"  expected   {expected or 'not yet measured on this kind of device'}")
    names = ["correctness", "op timing"] + ["host time"] * (not args.no_host_time) + ["models"] * (args.models != "none")
    sections = Sections(names + ["summary"])

    sections.next("correctness, each backend against the reference")
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

    sections.next("op timing, forward / backward / both, side by side")
    rows, copy_gbs, not_compiled, compile_spent = [], {}, [], 0.0
    report.print_header()
    for op in ops:
        module = OPS[op]
        providers = module.providers(device)
        cases = module.cases(dtypes, args.profile, shapes=shapes)
        bar = progress.Bar(len(cases) * len(modes), f"timing {op}", unit="case")  # shown on a terminal only
        for case in cases:
            copy_key = (case.numel, case.dtype)  # the same size as the case: in or out of cache alike
            if copy_key not in copy_gbs:
                copy_gbs[copy_key] = copy_bandwidth_gbs(case.numel, case.dtype, device)
            implementations = {}
            for name, provider in providers.items():
                backend = name[len("cifarops[") : -1] if name.startswith("cifarops[") else None
                if backend is not None and (backend not in backends or (op, backend, case.dtype) in failed):
                    continue
                if isinstance(provider, CompiledPerCase):
                    if args.no_compile:
                        continue
                    if compile_spent >= compile_budget:
                        not_compiled.append(case.label)
                        progress.write(f"  {case.label}: compile(reference) not compiled: --full "
                                       f"(this run's compile budget of {compile_budget:.0f} s is spent)")
                        continue
                    provider = provider.for_case()
                implementations[name] = provider
            saved = {}
            for mode in modes:
                results = {}
                for name, provider in implementations.items():
                    compiled = isinstance(providers[name], CompiledPerCase)
                    began, calls = time.monotonic(), compiled and providers[name].graph_calls
                    bench = module.make(case, device, provider)
                    if name not in saved:  # compiled graphs save outside autograd's hooks: not observable
                        saved[name] = None if compiled else saved_bytes(bench)
                    results[name] = median_ms(timed(bench, mode), device, min_run_time)
                    if compiled:
                        compile_spent += time.monotonic() - began
                        if providers[name].graph_calls == calls:
                            raise RuntimeError(f"{case.label} {mode}: compile(reference) never ran its compiled graph")
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
        sections.next("host time and kernels per call, at tiny shapes")
        skip = [(op, backend) for op, backend, _ in failed]
        host_rows = hosttime.run(device, backends, ops=ops, quick=args.profile != "full", skip=skip)
        print(hosttime.NOTES)

    os.makedirs(args.out, exist_ok=True)
    written = [os.path.join(args.out, "benchmark.csv"), os.path.join(args.out, "benchmark.md")]
    report.write_csv(written[0], rows, env)
    md_sections = [hosttime.markdown(host_rows)] if host_rows is not None else []
    if host_rows is not None:
        written.append(os.path.join(args.out, "hosttime.csv"))
        hosttime.write_csv(written[-1], host_rows, env)
    report.write_markdown(written[1], rows, env, checks, NOTES, md_sections)
    model_rows = None
    if args.models != "none":
        sections.next("models: a training step with and without checkpointing, peak memory")
        model_rows = run_models(args, device)
        written += [os.path.join(args.out, "models.csv"), os.path.join(args.out, "models.md")]

    sections.next("summary")
    baselines = {op: OPS[op].BASELINE for op in ops}
    failures = [f"{o} {b} {str(d)[6:]}" for o, b, d in sorted(failed, key=str)]
    op_summary = summary.op_rows(rows, baselines, host_rows, not_compiled)
    model_summary = summary.model_rows(model_rows)
    written += [os.path.join(args.out, "summary.md"), os.path.join(args.out, "benchmark.png")]
    with open(written[-2], "w") as f:
        f.write(summary.markdown(op_summary, model_summary, env, failures))
    chart.write_chart(written[-1], rows, model_rows, f"cifarops on {env['device']}, torch {env['torch']}, {env['date']}")
    print(summary.text(op_summary, model_summary, written, failures))
    print(f"\n{args.profile} run took {(time.monotonic() - sections.start) / 60:.1f} min")
    if failed:
        print(f"FAILED correctness checks: {sorted((o, b, str(d)) for o, b, d in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
