"""The benchmark report: its chart and summary (which rows they show, ratios worked by hand, a real PNG), the
profiles, and that every compile(reference) row really ran compiled."""

import csv

import pytest
import torch

from cifarops.bench import chart, summary
from cifarops.bench.common import CompiledPerCase, profile_shapes


def _row(case, provider, mode="full", median_ms=1.0, vs_baseline=None, vs_compile=None, saved_mb=None):
    return {"case": case, "provider": provider, "mode": mode, "median_ms": median_ms, "vs_baseline": vs_baseline,
            "vs_compile": vs_compile, "saved_mb": saved_mb}


MAXOUT = "maxout (128, 384, 32, 32) float32 k=2"
ROWS = [
    _row(MAXOUT, "cifarops[cpu]", median_ms=30.0, vs_baseline=8.0, vs_compile=16.0, saved_mb=24.0),
    _row(MAXOUT, "cifarops[triton]", median_ms=60.0, vs_baseline=4.0, vs_compile=8.0, saved_mb=24.0),
    _row(MAXOUT, "view+max", median_ms=240.0, vs_baseline=1.0, saved_mb=192.0),
    _row(MAXOUT, "compile(reference)", median_ms=480.0),
    _row(MAXOUT, "cifarops[cpu]", mode="forward", median_ms=10.0),
    _row("maxout (128, 4800) float32 k=2", "cifarops[cpu]", median_ms=0.2),  # not the headline case
    _row("shake_drop (128, 64, 32, 32) float32", "cifarops[cpu]", median_ms=12.0, vs_baseline=1.25, saved_mb=0.0005),
    _row("shake_drop (128, 64, 32, 32) float32", "owruby-style", median_ms=15.0, saved_mb=0.0001),
]
MODEL_ROWS = [
    {"model": "m", "batch": 8, "layers": "cifarops", "checkpoint": "none", "compiled": "eager", "step_ms": 100.0,
     "peak_mb": 1000.0, "vs_none_time": 1.0, "vs_none_memory": 1.0},
    {"model": "m", "batch": 8, "layers": "cifarops", "checkpoint": "full", "compiled": "eager", "step_ms": 150.0,
     "peak_mb": 470.0, "vs_none_time": 1.5, "vs_none_memory": 0.47},
    {"model": "m", "batch": 8, "layers": "reference", "checkpoint": "none", "compiled": "eager", "step_ms": 110.0,
     "peak_mb": 1000.0, "vs_none_time": None, "vs_none_memory": None},
]
BASELINES = {"maxout": "view+max", "shake_drop": "owruby-style"}


def test_each_profile_takes_its_shapes_and_the_default_the_headline_one():
    full, quick = [(1,), (2,), (3,)], [(2,), (3,)]
    assert profile_shapes("full", full, quick) == full
    assert profile_shapes("quick", full, quick) == quick
    assert profile_shapes("default", full, quick) == [(2,)]


def test_chart_has_one_panel_per_op_at_its_headline_case_fastest_first():
    panels = chart.op_panels(ROWS)
    assert list(panels) == [MAXOUT, "shake_drop (128, 64, 32, 32) float32"]
    assert panels[MAXOUT] == [("cifarops[cpu]", 30.0), ("cifarops[triton]", 60.0), ("view+max", 240.0),
                              ("compile(reference)", 480.0)]


def test_chart_model_panel_shows_the_eager_cifarops_rows():
    assert chart.model_panel(MODEL_ROWS) == [("m batch 8, checkpoint=none", 1000.0, 100.0),
                                             ("m batch 8, checkpoint=full", 470.0, 150.0)]


def test_chart_writes_a_png(tmp_path):
    path = tmp_path / "benchmark.png"
    chart.write_chart(str(path), ROWS, MODEL_ROWS, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chart.write_chart(str(path), [], None, "nothing measured")  # an empty report still draws
    assert path.stat().st_size > 0


def test_chart_redraws_from_a_reports_csvs(tmp_path):
    from cifarops.bench import models, report

    env = {"device": "test device", "torch": "x", "date": "today"}
    rows = [{**row, "iqr_ms": 0.1, "vs_reference": 1.0, "gb_per_s": 1.0, "of_copy": 0.5} for row in ROWS]
    report.write_csv(str(tmp_path / "benchmark.csv"), rows, env)
    full = [{column: row.get(column) for column in models.COLUMNS} for row in MODEL_ROWS]
    report.write_csv(str(tmp_path / "models.csv"), full, env, columns=models.COLUMNS)
    path = chart.redraw(str(tmp_path))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_summary_takes_the_fastest_backend_at_the_headline_case():
    host = [{"op": "maxout", "provider": "cifarops[cpu]", "mode": "forward+backward", "ratio": 0.5},
            {"op": "maxout", "provider": "cifarops[cpu]", "mode": "forward+backward", "ratio": 0.7},
            {"op": "maxout", "provider": "cifarops[cpu]", "mode": "forward, no_grad", "ratio": 0.1},
            {"op": "maxout", "provider": "view+max", "mode": "forward+backward", "ratio": None}]
    ops = summary.op_rows(ROWS, BASELINES, host, not_compiled=["shake_drop (128, 64, 32, 32) float32"])
    assert ops == [
        {"op": "maxout", "case": "(128, 384, 32, 32) float32 k=2", "backend": "cpu", "vs_baseline": "8.00x (view+max)",
         "vs_compile": "16.00x", "saved": "24.0 MB vs 192.0 MB", "host": "0.60x"},
        {"op": "shake_drop", "case": "(128, 64, 32, 32) float32", "backend": "cpu",
         "vs_baseline": "1.25x (owruby-style)", "vs_compile": "not compiled: --full", "saved": "0.5 KB vs 0.1 KB",
         "host": "-"},
    ]


def test_summary_of_the_models_compares_checkpointing_with_none():
    assert summary.model_rows(MODEL_ROWS) == [
        {"model": "m", "batch": "8", "checkpoint": "none", "step": "100 ms", "peak": "1000 MB", "versus": "-"},
        {"model": "m", "batch": "8", "checkpoint": "full", "step": "150 ms", "peak": "470 MB",
         "versus": "time 1.50x, memory 0.47x"},
    ]
    screen = summary.text(summary.op_rows(ROWS, BASELINES, None), summary.model_rows(MODEL_ROWS), ["out/summary.md"])
    assert "8.00x (view+max)" in screen and "time 1.50x, memory 0.47x" in screen and "  out/summary.md" in screen


@pytest.fixture
def eager_compile(monkeypatch):
    """Dynamo alone (no Inductor code generation): the same caches and recompile limit, in seconds; and each
    timing two calls (what is timed does not matter to these tests, that every call ran compiled does)."""
    from cifarops.bench import __main__ as bench

    monkeypatch.setattr(CompiledPerCase, "BACKEND", "eager")
    monkeypatch.setattr(bench, "median_ms", lambda fn, device, min_run_time: (fn(), fn(), (1.0, 0.0))[-1])
    monkeypatch.setattr(bench, "copy_bandwidth_gbs", lambda numel, dtype, device: 1.0)


def test_one_compiled_function_for_every_shape_falls_back_to_eager_but_per_case_never(eager_compile):
    """The defect this guards against: one torch.compile(dynamic=False) for an op's every case stops
    compiling after recompile_limit shapes and runs eager, silently; compiled afresh per case, every call
    of every case goes through a compiled graph."""
    compiled = CompiledPerCase(lambda x: x * 2 + 1)
    shared = compiled.for_case()
    limit = torch._dynamo.config.recompile_limit
    for n in range(1, limit + 4):
        shared(torch.randn(n))
    assert compiled.graph_calls == limit  # the shapes past the limit ran eager, as the old report's rows did
    compiled.graph_calls = 0
    for n in range(1, limit + 4):
        compiled.for_case()(torch.randn(n))
    assert compiled.graph_calls == limit + 3


def _report_rows(path):
    with open(path / "benchmark.csv") as f:
        return list(csv.DictReader(f))


def test_the_reports_compiled_rows_ran_compiled_past_the_recompile_limit(tmp_path, eager_compile):
    from cifarops.bench.__main__ import main

    shapes = [f"2,{c},4,4" for c in range(1, torch._dynamo.config.recompile_limit + 3)]
    argv = ["--ops", "shake_drop", "--backends", "cpu", "--modes", "full", "--no-host-time", "--models", "none",
            "--full", "--out", str(tmp_path)] + [a for s in shapes for a in ("--shape", s)]
    assert main(argv) == 0  # it raises where a compiled row did not run its graph
    compiled = [r for r in _report_rows(tmp_path) if r["provider"] == "compile(reference)"]
    assert len(compiled) == len(shapes)


def test_the_report_fails_loudly_where_a_case_reuses_another_cases_compile(tmp_path, monkeypatch, eager_compile):
    from cifarops.bench.__main__ import main

    shared = {}

    def shared_compile(self):  # the old report: one compiled function for every case
        if "fn" not in shared:
            shared["fn"] = torch.compile(self.fn, dynamic=False, backend="eager")
        return shared["fn"]

    monkeypatch.setattr(CompiledPerCase, "for_case", shared_compile)
    shapes = [f"2,{c},4,4" for c in range(1, torch._dynamo.config.recompile_limit + 3)]
    argv = ["--ops", "shake_drop", "--backends", "cpu", "--modes", "full", "--no-host-time", "--models", "none",
            "--full", "--out", str(tmp_path)] + [a for s in shapes for a in ("--shape", s)]
    with pytest.raises(Exception, match="recompile|compiled graph"):
        main(argv)


def test_the_default_run_leaves_compiles_past_its_budget_to_full(tmp_path, monkeypatch, capsys, eager_compile):
    from cifarops.bench import __main__ as bench

    monkeypatch.setitem(bench.COMPILE_BUDGET_S, "cpu", 0.0)
    argv = ["--ops", "shake_drop,maxout", "--backends", "cpu", "--shape", "2,4,4,4", "--modes", "full",
            "--no-host-time", "--models", "none", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    shown = capsys.readouterr().out
    assert "compile(reference) not compiled: --full" in shown
    assert "section 1 of 3: correctness" in shown and "section 3 of 3: summary" in shown
    assert not [r for r in _report_rows(tmp_path) if r["provider"] == "compile(reference)"]
    written = (tmp_path / "summary.md").read_text()
    assert written.count("not compiled: --full") == 2 and (tmp_path / "benchmark.png").stat().st_size > 0


@pytest.mark.parametrize("profile, models, batch, modes, small, compiled", [
    ("default", ["pyramidnet110-a270-shakedrop", "shake-shake26-2x96d"], 32, ["none", "full"], True, False),
    ("quick", ["pyramidnet110-a270-shakedrop"], 4, ["none", "full", "selective"], True, False),
    ("full", ["pyramidnet272-a200-shakedrop"], 8, ["none", "full", "selective", "cheap"], False, True),
])
def test_each_run_chooses_its_model_level(monkeypatch, profile, models, batch, modes, small, compiled):
    from cifarops.bench import __main__ as bench

    seen = {}
    monkeypatch.setattr(bench.bench_models, "run", lambda args: seen.setdefault("args", args) and [
        {"model": models[0], "layers": "cifarops", "compiled": "eager"}])
    args = bench.parse_args(["--device", "cpu"] + ([f"--{profile}"] if profile != "default" else []))
    rows = bench.run_models(args, torch.device("cpu"))
    chosen = seen["args"]
    assert (chosen.models, chosen.batch, chosen.modes, chosen.small, chosen.compile) == (models, batch, modes, small,
                                                                                          compiled)
    assert rows[0]["model"] == models[0] + (" (small)" if small else "")
