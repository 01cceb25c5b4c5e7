"""Output of the benchmark: the terminal table, the CSV (with the machine's description) and Markdown."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from typing import Sequence

import torch

import cifarops
from cifarops import progress

COLUMNS = [
    "case", "mode", "provider", "median_ms", "iqr_ms", "vs_baseline", "vs_reference", "vs_compile", "gb_per_s", "of_copy",
    "saved_mb",
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def git_revision() -> str:
    try:
        root = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    info = cifarops.build_info()
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "cifarops": cifarops.__version__,
        "extension": "loaded" + (" with CUDA" if info.get("cuda") else "") if info["loaded"] else "missing",
        "git": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def format_row(row: dict) -> list[str]:
    def ratio(v):
        return f"{v:.2f}x" if v is not None else "-"

    return [
        row["case"],
        row["mode"],
        row["provider"],
        f"{row['median_ms']:.3f}",
        f"{row['iqr_ms']:.3f}",
        ratio(row["vs_baseline"]),
        ratio(row["vs_reference"]),
        ratio(row["vs_compile"]),
        f"{row['gb_per_s']:.1f}",
        f"{100 * row['of_copy']:.0f}%",
        "-" if row["saved_mb"] is None else f"{row['saved_mb']:.2f}",
    ]


HEADERS = ["case", "mode", "provider", "median ms", "IQR ms", "vs baseline", "vs reference", "vs compile", "GB/s",
           "of copy", "saved MB"]
WIDTHS = [44, 8, 20, 10, 8, 11, 12, 10, 7, 7, 8]


def print_header() -> None:
    progress.write("  ".join(h.ljust(w) for h, w in zip(HEADERS, WIDTHS)))


def print_row(row: dict) -> None:
    """The row, above the timing's progress bar if one is shown."""
    progress.write("  ".join(c.ljust(w) for c, w in zip(format_row(row), WIDTHS)))


def write_csv(path: str, rows: list[dict], env: dict, columns: list[str] = COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + list(env))
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row[k] for k in columns}, **env})


def write_markdown(path: str, rows: list[dict], env: dict, checks: list[tuple[str, str, str, str]], notes: str = "",
                   sections: Sequence[str] = ()) -> None:
    """The report's Markdown; `sections` (Markdown, each with its own heading) follow the timing table."""
    lines = ["# cifarops benchmark", ""]
    lines += [f"- **{k}**: {v}" for k, v in env.items()]
    lines += ["", "## Correctness (each backend against the reference)", "", "| op | backend | dtype | result |", "|---|---|---|---|"]
    lines += [f"| {op} | {backend} | {dtype} | {result} |" for op, backend, dtype, result in checks]
    lines += ["", "## Timing (medians after warm-up)", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    lines += ["", notes.strip()]
    for section in sections:
        lines += ["", section.strip()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
