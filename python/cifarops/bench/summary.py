"""The report's last screen: one table a person can act on, also written as `summary.md`.

Per op, at its headline case (the first case the report timed for it) in forward+backward: the fastest
cifarops backend, how many times faster it is than what users run today and than torch.compile of the
reference ("not compiled: --full" where the run's compile budget left it out), the bytes it saves for
backward against the baseline's, and its host time per call against the peer it replaces. Per model: step
time and peak memory of cifarops layers without and with checkpointing.
"""

from __future__ import annotations

import statistics
from typing import Optional, Sequence

OP_HEADERS = ["op", "headline case", "backend", "vs what users run today", "vs compile(reference)",
              "saved for backward", "host time"]
MODEL_HEADERS = ["model", "batch", "checkpoint", "step", "peak memory", "vs no checkpointing"]


def _size(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 0.1 else f"{mb * 1024:.1f} KB"


def _op(case: str) -> str:
    return case.split(" ", 1)[0]


def op_rows(rows: Sequence[dict], baselines: dict[str, str], host_rows: Optional[Sequence[dict]],
            not_compiled: Sequence[str] = ()) -> list[dict]:
    """One entry per op. `not_compiled`: the cases whose compile(reference) the run left out."""
    headline = {}
    for row in rows:
        headline.setdefault(_op(row["case"]), row["case"])
    out = []
    for op, case in headline.items():
        full = {r["provider"]: r for r in rows if r["case"] == case and r["mode"] == "full"}
        ours = [r for name, r in full.items() if name.startswith("cifarops[")]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["median_ms"])
        baseline = full.get(baselines.get(op))
        if best["vs_compile"] is not None:
            vs_compile = f"{best['vs_compile']:.2f}x"
        else:
            vs_compile = "not compiled: --full" if case in not_compiled else "not timed"
        saved = "-"
        if best["saved_mb"] is not None and baseline is not None and baseline["saved_mb"] is not None:
            saved = f"{_size(best['saved_mb'])} vs {_size(baseline['saved_mb'])}"
        host = [h["ratio"] for h in host_rows or () if h.get("op") == op and h["provider"] == best["provider"]
                and h["ratio"] is not None and h["mode"] == "forward+backward"]
        out.append({
            "op": op,
            "case": case[len(op) + 1:],
            "backend": best["provider"][len("cifarops["):-1],
            "vs_baseline": "-" if best["vs_baseline"] is None else f"{best['vs_baseline']:.2f}x ({baselines.get(op)})",
            "vs_compile": vs_compile,
            "saved": saved,
            "host": f"{statistics.median(host):.2f}x" if host else "-",
        })
    return out


def model_rows(rows: Optional[Sequence[dict]]) -> list[dict]:
    """The model level's eager cifarops rows, each checkpoint mode."""
    out = []
    for row in rows or ():
        if row["layers"] != "cifarops" or row["compiled"] != "eager":
            continue
        memory = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f} MB"
        versus = []
        if row["checkpoint"] != "none":
            if row.get("vs_none_time"):
                versus.append(f"time {row['vs_none_time']:.2f}x")
            if row.get("vs_none_memory"):
                versus.append(f"memory {row['vs_none_memory']:.2f}x")
        out.append({"model": row["model"], "batch": str(row["batch"]), "checkpoint": row["checkpoint"],
                    "step": f"{row['step_ms']:.0f} ms", "peak": memory, "versus": ", ".join(versus) or "-"})
    return out


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)] if rows else [len(h) for h in headers]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [headers, *rows]]


def text(ops: list[dict], models: list[dict], files: Sequence[str], failed: Sequence[str] = ()) -> str:
    """The terminal screen."""
    lines = ["Summary (forward+backward at each op's headline shape; ratios > 1x are faster)", ""]
    lines += _table(OP_HEADERS, [[r["op"], r["case"], r["backend"], r["vs_baseline"], r["vs_compile"], r["saved"],
                                  r["host"]] for r in ops])
    if models:
        lines += ["", "Models: a training step (forward, loss, backward, SGD), cifarops layers", ""]
        lines += _table(MODEL_HEADERS, [[r["model"], r["batch"], r["checkpoint"], r["step"], r["peak"], r["versus"]]
                                        for r in models])
    lines += ["", "host time: cifarops / the peer layer's, per call at a tiny shape (below 1x is cheaper)."]
    if failed:
        lines += ["", "FAILED correctness checks (never timed): " + ", ".join(failed)]
    lines += ["", "Files written:"] + [f"  {f}" for f in files]
    return "\n".join(lines)


def markdown(ops: list[dict], models: list[dict], env: dict, failed: Sequence[str] = ()) -> str:
    lines = ["# cifarops benchmark summary", "", f"{env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"{env.get('date', '?')} (git {env.get('git', '?')}). Forward+backward at each op's headline shape; "
             "ratios above 1x are faster; host time is cifarops / the peer's per call (below 1x is cheaper).", ""]
    lines += ["| " + " | ".join(OP_HEADERS) + " |", "|" + "---|" * len(OP_HEADERS)]
    lines += [f"| {r['op']} | {r['case']} | {r['backend']} | {r['vs_baseline']} | {r['vs_compile']} | {r['saved']} | "
              f"{r['host']} |" for r in ops]
    if models:
        lines += ["", "| " + " | ".join(MODEL_HEADERS) + " |", "|" + "---|" * len(MODEL_HEADERS)]
        lines += [f"| {r['model']} | {r['batch']} | {r['checkpoint']} | {r['step']} | {r['peak']} | {r['versus']} |"
                  for r in models]
    if failed:
        lines += ["", "**FAILED correctness checks** (never timed): " + ", ".join(failed)]
    return "\n".join(lines) + "\n"
