"""The report's picture (matplotlib, no display needed): one panel per op, the forward+backward time of
cifarops (green) and of what it is compared with (grey) at the op's headline case, and a panel of the models'
peak memory with and without checkpointing; the device and date in the title.

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


def _ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def op_panels(rows: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """Per op, at its headline case (the first the report timed): (provider, forward+backward ms), fastest
    first. The panel's title is the case."""
    headline, out = {}, {}
    for row in rows:
        headline.setdefault(row["case"].split(" ", 1)[0], row["case"])
    for case in headline.values():
        times = [(row["provider"], row["median_ms"]) for row in rows if row["case"] == case and row["mode"] == "full"]
        if times:
            out[case] = sorted(times, key=lambda item: item[1])
    return out


def model_panel(model_rows: Optional[list[dict]]) -> list[tuple[str, float, float]]:
    """(label, peak memory MB, step ms) of each eager cifarops model row, each checkpoint mode."""
    return [(f"{row['model']} batch {row['batch']}, checkpoint={row['checkpoint']}", row["peak_mb"], row["step_ms"])
            for row in model_rows or []
            if row["layers"] == "cifarops" and row.get("compiled", "eager") == "eager" and row["peak_mb"] is not None]


def write_chart(path: str, rows: list[dict], model_rows: Optional[list[dict]], title: str) -> None:
    """One panel per op (forward+backward time of each implementation at the op's headline case) and one for
    the models (peak memory of each checkpoint mode, the step time beside each bar)."""
    plt = _pyplot()
    panels = []
    for case, items in op_panels(rows).items():
        ours = min((ms for name, ms in items if name.startswith("cifarops")), default=None)
        notes = [f" {_ms(ms)} ms" + (f": cifarops {ms / ours:.1f}x faster" if ours and not name.startswith("cifarops")
                                     else "") for name, ms in items]
        panels.append((case.replace("fractional_max_pool2d", "FMP"), items,
                       "forward + backward time (ms), shorter is faster", notes))
    models = model_panel(model_rows)
    if models:
        panels.append(("models: a training step", [(label, mb) for label, mb, _ in models],
                       "peak memory (MB), shorter is less", [f" {mb:.0f} MB, step {ms:.0f} ms" for _, mb, ms in models]))
    if not panels:
        panels = [("nothing measured", [], "", [])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + sum(0.9 + 0.28 * len(p[1]) for p in panels)),
                             gridspec_kw={"height_ratios": [max(len(p[1]), 1) + 1.5 for p in panels]}, squeeze=False)
    for axis, (name, items, xlabel, notes) in zip(axes[:, 0], panels):
        values = [value for _, value in items]
        colors = ["tab:green" if label.startswith("cifarops") else "tab:gray" for label, _ in items]
        axis.barh(range(len(values)), values, color=colors)
        axis.set_yticks(range(len(values)), [label for label, _ in items], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlim(0, 1.45 * max(values + [1e-9]))
        axis.set_xlabel(xlabel, fontsize=8)
        axis.set_title(name, fontsize=9, loc="left")
        for i, (value, note) in enumerate(zip(values, notes)):
            axis.text(value, i, note, va="center", fontsize=7)
        if not items:
            axis.text(0.5, 0.5, "nothing measured", ha="center", transform=axis.transAxes)
    fig.suptitle(title, fontsize=10)
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
    rows = _read_csv(os.path.join(directory, "benchmark.csv"), ("median_ms",))
    models_csv = os.path.join(directory, "models.csv")
    model_rows = _read_csv(models_csv, ("peak_mb", "step_ms")) if os.path.exists(models_csv) else None
    for row in model_rows or []:
        row["batch"] = int(row["batch"])
    env = rows[0] if rows else {}
    title = f"cifarops on {env.get('device', '?')}, torch {env.get('torch', '?')}, {env.get('date', '?')}"
    path = os.path.join(directory, "benchmark.png")
    write_chart(path, rows, model_rows, title)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m cifarops.bench.chart DIR  (a report's output directory)")
    print(f"Wrote {redraw(sys.argv[1])}")
