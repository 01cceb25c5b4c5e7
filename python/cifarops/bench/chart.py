"""The report's picture (matplotlib, no display needed): how many times faster each op is than what users
run today, and how much memory each op and each checkpoint mode saves."""

from __future__ import annotations

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
    baseline, where the baseline keeps at least 1 MB), and per model the peak of each checkpoint mode
    relative to none."""
    saved = {(row["case"], row["provider"]): row["saved_mb"] for row in rows if row["mode"] == "full"}
    out = []
    for (case, provider), mb in saved.items():
        op_baseline = next((b for prefix, b in baselines.items() if case.startswith(prefix)), None)
        base = saved.get((case, op_baseline))
        # a baseline that keeps next to nothing (ShakeDrop's keeps its gate) makes a ratio of noise
        if provider.startswith("cifarops[") and mb is not None and base and base >= 1.0:
            out.append((f"{case} {provider[len('cifarops'):]} saved for backward ({mb:.1f} vs {base:.0f} MB)",
                        mb / base))
    for row in model_rows or []:
        if row["layers"] == "cifarops" and row["checkpoint"] != "none" and row["vs_none_memory"]:
            out.append((f"{row['model']} batch {row['batch']} checkpoint={row['checkpoint']} peak", row["vs_none_memory"]))
    return out


def write_chart(path: str, rows: list[dict], baselines: dict[str, str], model_rows: Optional[list[dict]],
                title: str) -> None:
    plt = _pyplot()
    fast = speedups(rows)
    lean = memory_savings(rows, baselines, model_rows)
    height = 1.5 + 0.28 * max(len(fast), len(lean), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, height))
    for axis, items, xlabel, color in (
        (left, fast, "times faster than what users run today (forward+backward)", "tab:green"),
        (right, lean, "memory relative to the baseline / no checkpointing (lower is better)", "tab:blue"),
    ):
        labels = [label for label, _ in items]
        values = [value for _, value in items]
        axis.barh(range(len(values)), values, color=color)
        axis.set_yticks(range(len(values)), labels, fontsize=7)
        axis.invert_yaxis()
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_xlabel(xlabel, fontsize=8)
        for i, value in enumerate(values):
            axis.text(value, i, f" {value:.2f}x", va="center", fontsize=7)
        if not items:
            axis.text(0.5, 0.5, "nothing measured", ha="center", transform=axis.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
