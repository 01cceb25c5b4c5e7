"""Progress bars (cifarops.progress): tqdm on a terminal, nothing but the plain lines elsewhere or without tqdm;
the benchmark report's long parts (the op timing, the model level's processes) show one, with their rows above
it."""

from __future__ import annotations

import csv
import io
import sys

import pytest

from cifarops import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.skipif(progress._tqdm is None, reason="tqdm is not installed (the bars need it)")
def test_a_bar_shows_on_a_terminal_only_and_lines_go_above_it():
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        with progress.Bar(4, "work", stream, unit="case", mininterval=0) as bar:
            for i in range(4):
                progress.write(f"row {i}", stream)
                bar.update(postfix=f"at {i}")
    assert log.getvalue() == "row 0\nrow 1\nrow 2\nrow 3\n"  # exactly the lines
    shown = terminal.getvalue()
    assert "work:  75%|" in shown and "| 3/4 [" in shown and "case/s, at 2]" in shown
    assert [line for line in shown.replace("\r", "\n").split("\n") if line.startswith("row")] == [
        "row 0", "row 1", "row 2", "row 3"]


@pytest.mark.skipif(progress._tqdm is None, reason="tqdm is not installed (the bars need it)")
def test_new_numbers_show_at_once_the_count_at_its_interval():
    terminal = Terminal()
    with progress.Bar(10, "work", terminal, mininterval=3600) as bar:
        bar.update()
        bar.update()
        assert "2/10" not in terminal.getvalue()  # the count waits for its interval
        bar.update(postfix="loss 0.5")
        assert "3/10" in terminal.getvalue() and "loss 0.5" in terminal.getvalue()  # the numbers do not


def test_without_tqdm_a_terminal_gets_only_the_lines(monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", None)
    terminal = Terminal()
    with progress.Bar(2, "work", terminal) as bar:
        progress.write("row", terminal)
        bar.update()
    assert terminal.getvalue() == "row\n" and not bar.shown


@pytest.mark.skipif(progress._tqdm is None, reason="tqdm is not installed (the bars need it)")
def test_the_report_times_each_op_under_a_bar(tmp_path, monkeypatch):
    from cifarops.bench.__main__ import main

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["--ops", "shake_drop", "--backends", "cpu", "--shape", "2,4,4,4", "--shape", "2,4,8,8", "--modes",
                 "forward,full", "--quick", "--no-host-time", "--models", "none", "--out", str(tmp_path)]) == 0
    shown = terminal.getvalue()
    assert "timing shake_drop: 100%|" in shown and "| 4/4 [" in shown  # 2 shapes x 2 modes
    timing = shown.split("\nSummary")[0]  # the summary screen at the end names the op too
    rows = [line for line in timing.replace("\r", "\n").split("\n") if line.startswith("shake_drop")]
    with open(tmp_path / "benchmark.csv") as f:
        written = list(csv.DictReader(f))
    assert {r["provider"] for r in written} >= {"reference", "cifarops[cpu]"} and len(written) >= 2 * 2 * 2
    # above the bar, each row the report timed, in its order
    assert len(rows) == len(written), rows
    for row, r in zip(rows, written):
        assert row.startswith(r["case"]) and row[len(r["case"]):].split()[:2] == [r["mode"], r["provider"]], row


@pytest.mark.skipif(progress._tqdm is None, reason="tqdm is not installed (the bars need it)")
def test_the_model_benchmark_counts_its_processes_under_a_bar(monkeypatch):
    from cifarops.bench import models as bench

    args = bench.parse_args(["--models", "wrn28-10", "--small", "--modes", "none,full", "--compile", "--batch", "4"])
    def worker(kind, payload):
        return {"time": lambda: [5.0] * len(payload), "compile": lambda: 1.0,
                "memory": lambda: 2**20 * payload["batch"]}[kind]()

    monkeypatch.setattr(bench, "_in_new_process", worker)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    bench.benchmark(args)
    # 1 timing process, 2 memory processes for each of 3 eager rows, 1 compile process for each of 2 compiled rows
    assert "wrn28-10: 100%|" in terminal.getvalue() and "| 9/9 [" in terminal.getvalue()
