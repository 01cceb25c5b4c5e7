"""Model benchmark: a training step's time and peak memory for each model, with cifarops layers vs the
reference layers and with each checkpoint mode vs none, and the largest batch that fits a memory budget.

    python -m cifarops.bench.models --models pyramidnet272-a200-shakedrop --batch 16 --budget-gb 16
    python -m cifarops.bench.models --models shake-shake26-2x96d --model-arg depth=14 --model-arg width=32 \
        --batch 32 --modes none --compile

``--compile`` adds torch.compile(fullgraph=True) rows for both layer sets (without checkpointing) and their
compile times, each from a fresh process with an empty Inductor cache; ``--compile-kernels`` a row of the
cifarops layers compiled as their opaque kernels (none decomposed), the measurement behind
``cifarops.backends.COMPILE_DECOMPOSED``.

A step is forward, cross-entropy, backward and an SGD (momentum) update. Times: all configurations of a
model in one process, their steps alternating after a warm-up (side by side, so that the machine's slow
spells hit all alike); the median per configuration. Memory: each configuration alone in its own process,
two steps: on a GPU torch.cuda.max_memory_allocated (parameters, gradients, optimiser state and
activations); on the CPU the process's resident high-water mark (VmHWM, reset just before the model is
built) above what it held then, with glibc told to map large blocks on their own (so freed tensors leave the resident set). The largest batch under the budget comes from a straight line through the peaks at
the batch and at half of it (memory grows linearly with the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

from cifarops import backends, peak_memory, progress

LAYERS = ("cifarops", "reference")
MODES = ("none", "full", "selective", "cheap")
COLUMNS = ["model", "layers", "checkpoint", "compiled", "batch", "step_ms", "vs_reference", "vs_none_time",
           "compile_s", "peak_mb", "vs_none_memory", "mb_per_sample", "vs_none_per_sample", "max_batch"]


def training_step(config: dict, device: torch.device):
    """The model of `config` and a function that runs one training step of it."""
    import cifarops.models as models

    model = models.create(config["model"], checkpoint=config["checkpoint"], reference=config["layers"] == "reference",
                          **config.get("overrides", {})).to(device)
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model, fullgraph=True) if config.get("compile") else model
    # compile "kernels": the cifarops kernels under torch.compile, none of them decomposed (read at the trace)
    decomposed = set() if config.get("compile") == "kernels" else backends.COMPILE_DECOMPOSED
    batch = config["batch"]
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        saved, backends.COMPILE_DECOMPOSED = backends.COMPILE_DECOMPOSED, decomposed
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["autocast"]):
                loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        finally:
            backends.COMPILE_DECOMPOSED = saved
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def time_worker(configs: list[dict]) -> list[float]:
    """Median step time (ms) of each configuration, measured side by side: after a warm-up, the steps
    of the configurations alternate (in a shuffled order each round), so that a slow spell of the machine
    hits all of them alike."""
    device = torch.device(configs[0]["device"])
    torch.manual_seed(0)
    steps = [training_step(config, device)[1] for config in configs]
    times = [[] for _ in configs]
    shuffler = random.Random(0)
    order = list(range(len(configs)))
    for round_ in range(configs[0]["warmup"] + configs[0]["steps"]):
        # each round in a fresh (seeded) order: no configuration always runs right after the same
        # neighbour, which leaves the caches and the allocator's free lists in its own state (a rotation
        # would: configuration i would always follow i - 1)
        shuffler.shuffle(order)
        for step, sink in ((steps[i], times[i]) for i in order):
            seconds = _timed(step, device)
            if round_ >= configs[0]["warmup"]:
                sink.append(seconds * 1e3)
    return [statistics.median(t) for t in times]


def _timed(step, device: torch.device) -> float:
    """Seconds one call of step takes, the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


def compile_worker(config: dict) -> float:
    """Seconds torch.compile takes for one configuration's training step, alone in a fresh process with an
    empty Inductor cache (_in_new_process): the first step's time less the second's, after a tiny compiled
    function has paid the process's one-time costs (imports, the C++ toolchain's probe). In the process that
    times all configurations the later ones would reuse kernels the earlier ones compiled."""
    device = torch.device(config["device"])
    warm = torch.compile(lambda a: (a * 2).relu().sum())
    warm(torch.randn(8, device=device, requires_grad=True)).backward()
    torch.manual_seed(0)
    _, step = training_step(config, device)
    first = _timed(step, device)
    return first - _timed(step, device)


def memory_worker(config: dict) -> int:
    """Peak memory (bytes) of two training steps of one configuration, alone in this process: the model,
    its gradients, the optimiser's state and the activations."""
    device = torch.device(config["device"])
    torch.manual_seed(0)
    # where the CPU refuses the reset the peak counts from this fresh process's start: its imports, which stay
    # below the training's peak
    peak_memory.reset(device)
    start = torch.cuda.memory_allocated(device) if device.type == "cuda" else peak_memory.resident_bytes()
    _, step = training_step(config, device)
    for _ in range(2):  # the first step also allocates the gradients and the momentum buffers
        step()
    return peak_memory.peak_bytes(device) - start


def _in_new_process(kind: str, payload):
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="cifarops-inductor-") as cache:
        if kind == "compile":  # a cold compile: nothing from an earlier run's on-disk cache
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
        return _run_worker(kind, payload, env)


def _run_worker(kind: str, payload, env: dict):
    if kind == "memory":
        # glibc serves tensors of up to 32 MiB from its heap and keeps them when freed, so the resident peak
        # would count memory that no tensor holds any more; mapping every block over 1 MiB on its own gives
        # freed tensors back at once, and the resident peak is the peak of live tensors.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(2**20))
    done = subprocess.run(
        [sys.executable, "-m", "cifarops.bench.models", "--worker", json.dumps({"kind": kind, "payload": payload})],
        capture_output=True, text=True, env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"model benchmark worker failed ({kind}, {payload}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_batch(budget_bytes: float, batch: int, peak: float, half_peak: float) -> int:
    """The largest batch under the budget, on the line through (batch / 2, half_peak) and (batch, peak)."""
    slope = (peak - half_peak) / (batch - batch // 2)
    if slope <= 0:
        return -1
    fixed = peak - slope * batch
    return max(0, int((budget_bytes - fixed) // slope))


def benchmark(args) -> list[dict]:
    import cifarops.models as models

    rows = []
    for model in args.models:
        overrides = {**(models.SMALL[model] if args.small else {}), **args.overrides}
        base = {"model": model, "device": args.device, "batch": args.batch, "warmup": args.warmup,
                "steps": args.steps, "autocast": args.autocast, "channels_last": args.channels_last,
                "overrides": overrides}
        # (layers, checkpoint mode, compiled): torch.compile rows for both layer sets without checkpointing
        keys = [("cifarops", mode, False) for mode in args.modes] + [("reference", "none", False)] * ("reference" in args.layers)
        if args.compile:
            keys += [(layers, "none", True) for layers in LAYERS if layers in args.layers]
        if args.compile_kernels:
            keys.append(("cifarops", "none", "kernels"))
        configs = [{**base, "layers": layers, "checkpoint": mode, "compile": compiled} for layers, mode, compiled in keys]
        # on a terminal, a bar over the processes: the timing one, then a compile or two memory ones per row
        bar = progress.Bar(1 + sum(1 if key[2] else 2 for key in keys), model, unit="process")
        times = _in_new_process("time", configs)
        bar.update()
        results = {}
        for key, config, ms in zip(keys, configs, times):
            result = {"step_ms": ms, "compile_s": _in_new_process("compile", config) if key[2] else None}
            if not key[2]:  # memory: each configuration twice more in its own process (compiled: twice more compiles)
                peak = _in_new_process("memory", config)
                bar.update()
                half_peak = _in_new_process("memory", {**config, "batch": max(1, args.batch // 2)})
                result.update(peak_bytes=peak, per_sample=(peak - half_peak) / (args.batch - max(1, args.batch // 2)),
                              max_batch=max_batch(args.budget_gb * 2**30, args.batch, peak, half_peak))
            results[key] = result
            bar.update()
            memory = f"{result['peak_bytes'] / 2**20:9.0f} MB" if "peak_bytes" in result else ""
            compiled = f"compiled in {result['compile_s']:.0f} s" if key[2] else ""
            progress.write(f"  {model} {key[0]:9} {key[1]:9} {_compiled_name(key[2]):16} {ms:10.1f} ms  "
                           f"{memory}{compiled}")
        bar.close()
        ours = results.get(("cifarops", "none", False))

        def versus(result, other, field):
            return result[field] / other[field] if other and field in result and field in other else None

        for (layers, mode, compiled), result in results.items():
            reference = results.get(("reference", mode, bool(compiled)))
            mine = layers == "cifarops" and not compiled
            rows.append({
                "model": model, "layers": layers, "checkpoint": mode, "compiled": _compiled_name(compiled),
                "batch": args.batch, "step_ms": result["step_ms"],
                "vs_reference": reference["step_ms"] / result["step_ms"] if reference and layers == "cifarops" else None,
                "vs_none_time": versus(result, ours, "step_ms") if mine else None,
                "compile_s": result["compile_s"],
                "peak_mb": result["peak_bytes"] / 2**20 if "peak_bytes" in result else None,
                "vs_none_memory": versus(result, ours, "peak_bytes") if mine else None,
                "mb_per_sample": result["per_sample"] / 2**20 if "per_sample" in result else None,
                "vs_none_per_sample": versus(result, ours, "per_sample") if mine else None,
                "max_batch": result.get("max_batch"),
            })
    return rows


def _compiled_name(compiled) -> str:
    return {False: "eager", True: "compile", "kernels": "compile, kernels"}[compiled]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict], env: dict, args) -> str:
    lines = [f"# Model benchmark ({env['device']})", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += [f"- batch {args.batch}, 32x32, {'bf16 autocast' if args.autocast else 'float32'}"
              f"{', channels_last' if args.channels_last else ''}"
              f"{', small variants' if args.small else ''}{f', model args {args.overrides}' if args.overrides else ''}"
              f"; median of {args.steps} steps after {args.warmup}"
              f" warm-up; max_batch: the largest batch under {args.budget_gb} GiB", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    lines += ["", "vs_reference: reference-layer step time / this step time, both eager or both compiled (higher "
              "is faster). compile_s: torch.compile's tracing and code generation for the forward and backward graphs "
              "(the first step's time less the second's, in a fresh process with an empty cache). vs_none_time, "
              "vs_none_memory: this configuration / cifarops without checkpointing (lower is less). mb_per_sample: "
              "what one more image in the batch costs (the slope between the batch and half of it), which the "
              "activations make up; vs_none_per_sample compares it, independently of the batch size."]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    import cifarops.models as models

    parser = argparse.ArgumentParser(prog="python -m cifarops.bench.models", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="pyramidnet272-a200-shakedrop",
                        help=f"comma-separated, from {models.names()}")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on a GPU, 8 on the CPU")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--steps", type=int, default=7, help="timed steps per configuration (a median of few is noisy)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--autocast", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--small", action="store_true", help="each model's small variant (cifarops.models.SMALL)")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a hyper-parameter of every model (repeatable), e.g. depth=20; after --small")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(fullgraph=True) of each layer set, without checkpointing, and "
                             "its compile time (no memory columns: each would compile twice more)")
    parser.add_argument("--compile-kernels", action="store_true",
                        help="also time the cifarops layers compiled as their kernels, none decomposed "
                             "(cifarops.backends.COMPILE_DECOMPOSED emptied while tracing): the measurement behind "
                             "that choice")
    parser.add_argument("--budget-gb", type=float, default=None, help="default: the GPU's memory, or 16 on the CPU")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args
    gpu = args.device.startswith("cuda")
    args.batch = args.batch or (128 if gpu else 8)
    if args.batch < 2:
        parser.error("--batch must be at least 2 (the memory line needs two batch sizes)")
    if args.budget_gb is None:
        args.budget_gb = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else 16.0
    from cifarops.train.cli import UsageError, parse_model_args

    try:
        args.overrides = parse_model_args(args.model_arg)
    except UsageError as error:
        parser.error(str(error))
    for name, allowed in (("models", models.names()), ("modes", MODES), ("layers", LAYERS)):
        chosen = [v for v in getattr(args, name).split(",") if v]
        unknown = [v for v in chosen if v not in allowed]
        if unknown or not chosen:
            parser.error(f"--{name}: unknown {unknown}; choose from {list(allowed)}")
        setattr(args, name, chosen)
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        work = {"time": time_worker, "memory": memory_worker, "compile": compile_worker}[job["kind"]]
        print(json.dumps(work(job["payload"])))
        return 0
    from cifarops.bench import report

    env = report.environment(torch.device(args.device))
    print("cifarops model benchmark")
    for key, value in env.items():
        print(f"  {key:10} {value}")
    run(args, env)
    return 0


def run(args, env: Optional[dict] = None) -> list[dict]:
    """Measures, prints the table and writes models.csv and models.md under args.out; returns the rows."""
    from cifarops.bench import report

    env = env or report.environment(torch.device(args.device))
    rows = benchmark(args)
    text = markdown(rows, env, args)
    print()
    print(text)
    os.makedirs(args.out, exist_ok=True)
    report.write_csv(os.path.join(args.out, "models.csv"), rows, env, columns=COLUMNS)
    with open(os.path.join(args.out, "models.md"), "w") as f:
        f.write(text)
    print(f"Wrote {args.out}/models.csv and {args.out}/models.md")
    return rows


if __name__ == "__main__":
    sys.exit(main())
