"""The report's picture (matplotlib, no display needed): how many times faster each op is than what users
run today, and how much memory each op and each checkpoint mode saves.

`python -m cifarops.bench.chart DIR` redraws DIR/benchmark.png from a report's CSVs.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Optional


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # setup_env.sh installs it; a bare `pip install cifarops` does not
        raise SystemExit("the benchmark chart needs matplotlib: pip install matplotlib (or cifarops[bench])") from error
    return plt


def speedups(rows: list[dict]) -> list[tuple[str, float]]:
    """(label, times faster than the baseline) for every cifarops provider's forward+backward row."""
    return [
        (f"{row['case']} {row['provider'][len('cifarops'):]}", row["vs_baseline"])
        for row in rows
        if row["mode"] == "full" and row["provider"].startswith("cifarops[") and row["vs_baseline"]
    ]


def memory_savings(rows: list[dict], baselines: dict[str, str], model_rows: Optional[list[dict]]) -> list[tuple[str, float]]:
    """(label, memory relative to the baseline): bytes saved for backward per op case (cifarops / the op's
    baseline, where the baseline keeps at least 1 MB), and per model the peak and the memory per image of
    each checkpoint mode relative to none."""
    saved = {(row["case"], row["provider"]): row["saved_mb"] for row in rows if row["mode"] == "full"}
    out = []
    for (case, provider), mb in saved.items():
        op_baseline = next((b for prefix, b in baselines.items() if case.startswith(prefix)), None)
        base = saved.get((case, op_baseline))
        # a baseline that keeps next to nothing (ShakeDrop's keeps its gate) makes a ratio of noise
        if provider.startswith("cifarops[") and mb is not None and base and base >= 1.0:
            out.append((f"{case} {provider[len('cifarops'):]} saved ({mb:.1f} vs {base:.0f} MB)",
                        mb / base))
    for row in model_rows or []:
        if row["layers"] == "cifarops" and row["checkpoint"] != "none" and row["vs_none_memory"]:
            name = f"{row['model']} checkpoint={row['checkpoint']}"
            out.append((f"{name}: peak at batch {row['batch']}", row["vs_none_memory"]))
            if row.get("vs_none_per_sample"):
                out.append((f"{name}: memory per image", row["vs_none_per_sample"]))
    return out


def write_chart(path: str, rows: list[dict], baselines: dict[str, str], model_rows: Optional[list[dict]],
                title: str) -> None:
    plt = _pyplot()
    panels = [
        (speedups(rows), "times faster than what users run today (forward + backward; right of the line is faster)",
         "tab:green"),
        (memory_savings(rows, baselines, model_rows),
         "memory relative to the baseline or to no checkpointing (left of the line is less)", "tab:blue"),
    ]
    heights = [max(len(items), 1) for items, _, _ in panels]
    fig, axes = plt.subplots(2, 1, figsize=(12, 1.6 + 0.3 * sum(heights)), gridspec_kw={"height_ratios": heights})
    for axis, (items, xlabel, color) in zip(axes, panels):
        labels = [label.replace("fractional_max_pool2d", "fmp") for label, _ in items]  # fit the margin
        values = [value for _, value in items]
        axis.barh(range(len(values)), values, color=color)
        axis.set_yticks(range(len(values)), labels, fontsize=7)
        axis.invert_yaxis()
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_xlim(0, 1.18 * max(values + [1.0]))
        axis.set_xlabel(xlabel, fontsize=8)
        for i, value in enumerate(values):
            axis.text(value, i, f" {value:.2f}x", va="center", fontsize=7)
        if not items:
            axis.text(0.5, 0.5, "nothing measured", ha="center", transform=axis.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_csv(path: str, numbers: tuple[str, ...]) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in numbers:
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
    return rows


def redraw(directory: str) -> str:
    """DIR/benchmark.png from DIR/benchmark.csv (and DIR/models.csv if there is one)."""
    from cifarops.bench.__main__ import OPS

    rows = _read_csv(os.path.join(directory, "benchmark.csv"), ("vs_baseline", "saved_mb"))
    models_csv = os.path.join(directory, "models.csv")
    model_rows = _read_csv(models_csv, ("vs_none_memory", "vs_none_per_sample")) if os.path.exists(models_csv) else None
    for row in model_rows or []:
        row["batch"] = int(row["batch"])
    env = rows[0] if rows else {}
    title = f"cifarops on {env.get('device', '?')}, torch {env.get('torch', '?')}, {env.get('date', '?')}"
    path = os.path.join(directory, "benchmark.png")
    write_chart(path, rows, {op: module.BASELINE for op, module in OPS.items()}, model_rows, title)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m cifarops.bench.chart DIR  (a report's output directory)")
    print(f"Wrote {redraw(sys.argv[1])}")
