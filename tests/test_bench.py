"""The benchmark report's chart: which rows it shows, its ratios worked by hand, and a real PNG."""

from cifarops.bench import chart


def _row(case, provider, mode="full", vs_baseline=None, saved_mb=None):
    return {"case": case, "provider": provider, "mode": mode, "vs_baseline": vs_baseline, "saved_mb": saved_mb}


ROWS = [
    _row("maxout (128, 384, 32, 32) float32", "cifarops[cpu]", vs_baseline=8.9, saved_mb=24.0),
    _row("maxout (128, 384, 32, 32) float32", "view+max", vs_baseline=1.0, saved_mb=192.0),
    _row("maxout (128, 384, 32, 32) float32", "cifarops[cpu]", mode="forward", vs_baseline=5.0, saved_mb=24.0),
    _row("maxout (128, 384, 32, 32) float32", "reference", vs_baseline=0.6, saved_mb=300.0),
]
MODEL_ROWS = [
    {"model": "m", "batch": 8, "layers": "cifarops", "checkpoint": "none", "vs_none_memory": 1.0},
    {"model": "m", "batch": 8, "layers": "cifarops", "checkpoint": "full", "vs_none_memory": 0.47,
     "vs_none_per_sample": 0.22},
    {"model": "m", "batch": 8, "layers": "reference", "checkpoint": "none", "vs_none_memory": None},
]


def test_chart_shows_cifarops_forward_backward_speedups_only():
    assert chart.speedups(ROWS) == [("maxout (128, 384, 32, 32) float32 [cpu]", 8.9)]


def test_chart_memory_ratios():
    savings = chart.memory_savings(ROWS, {"maxout": "view+max"}, MODEL_ROWS)
    assert savings == [("maxout (128, 384, 32, 32) float32 [cpu] saved (24.0 vs 192 MB)", 24.0 / 192.0),
                       ("m checkpoint=full: peak at batch 8", 0.47), ("m checkpoint=full: memory per image", 0.22)]


def test_chart_skips_baselines_that_keep_next_to_nothing():
    rows = [_row("shake_drop (8, 8, 8, 8) float32", "cifarops[cpu]", saved_mb=0.01),
            _row("shake_drop (8, 8, 8, 8) float32", "owruby-style", saved_mb=0.0001)]
    assert chart.memory_savings(rows, {"shake_drop": "owruby-style"}, None) == []


def test_chart_writes_a_png(tmp_path):
    path = tmp_path / "benchmark.png"
    chart.write_chart(str(path), ROWS, {"maxout": "view+max"}, MODEL_ROWS, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chart.write_chart(str(path), [], {}, None, "nothing measured")  # an empty report still draws
    assert path.stat().st_size > 0


def test_chart_redraws_from_a_reports_csvs(tmp_path):
    from cifarops.bench import report

    env = {"device": "test device", "torch": "x", "date": "today"}
    rows = [{**row, "median_ms": 1.0, "iqr_ms": 0.1, "vs_reference": 1.0, "vs_compile": None, "gb_per_s": 1.0,
             "of_copy": 0.5} for row in ROWS]
    report.write_csv(str(tmp_path / "benchmark.csv"), rows, env)
    path = chart.redraw(str(tmp_path))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
