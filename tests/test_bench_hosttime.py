"""The benchmark report's host-time section: its arithmetic (medians, ratios, targets, the alternating
measurement under a fake clock), the kernel counter on known inputs, and one tiny run of the section."""

import contextlib
import csv
import gc

import pytest
import torch

import cifarops
from cifarops.bench import hosttime, kernels, report


def test_per_call_median_iqr_ratio_and_target():
    assert hosttime.per_call_us(5_000, 10) == 0.5
    assert hosttime.median_iqr([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, 2.0)  # quartiles 2 and 4
    assert hosttime.median_iqr([1.0, 2.0, 3.0, 10.0]) == (2.5, 3.0)  # inclusive quartiles 1.75 and 4.75
    assert hosttime.median_iqr([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError):
        hosttime.median_iqr([])
    assert hosttime.ratio(50.0, 200.0) == 0.25
    assert hosttime.met(0.5, 0.5) is True
    assert hosttime.met(0.51, 0.5) is False
    assert hosttime.met(None, 0.5) is None and hosttime.met(0.3, None) is None


class FakeClock:
    """A clock that only moves when a timed function runs (each adds its own cost)."""

    def __init__(self):
        self.now = 0
        self.log = []

    def __call__(self):
        return self.now

    def cost(self, name, ns):
        def fn():
            self.log.append(name)
            self.now += ns

        return fn


def test_measure_alternates_in_rotating_order_and_divides_by_the_calls():
    clock = FakeClock()
    fns = {"a": clock.cost("a", 100), "b": clock.cost("b", 300), "c": clock.cost("c", 600)}
    entered = []

    @contextlib.contextmanager
    def context(name):
        entered.append(name)
        clock.now += 1_000_000  # outside the clock: must not show in the samples
        yield

    contexts = {name: (lambda name=name: context(name)) for name in fns}
    samples = hosttime.measure(fns, rounds=3, inner=2, warmup=1, clock=clock, contexts=contexts)
    assert samples == {"a": [0.1] * 3, "b": [0.3] * 3, "c": [0.6] * 3}
    # warm-up once each, then rounds a b c / b c a / c a b, two calls per sample
    assert clock.log == ["a", "b", "c"] + [n for order in ("abc", "bca", "cab") for n in order for _ in range(2)]
    assert entered == ["a", "b", "c"] + list("abcbcacab")
    assert gc.isenabled()


def test_counter_counts_add_then_mul_as_two():
    x, y = torch.randn(3), torch.randn(3)
    ops, result = kernels.kernels_of(lambda: torch.mul(torch.add(x, y), y))
    assert ops == ["add", "mul"]
    assert torch.equal(result, (x + y) * y)


def test_counter_leaves_out_views_and_allocations():
    x = torch.randn(2, 3)

    def views_and_allocations():
        x.view(3, 2), x.t(), x[0], x.unsqueeze(0).expand(4, 2, 3), x.reshape(6), x.transpose(0, 1)
        torch.empty(4), torch.empty_like(x), torch.empty_strided((2,), (1,)), x.new_empty(3)
        return x.unflatten(1, (3, 1)).movedim(2, 0)

    with kernels.OpRecorder() as recorder:
        views_and_allocations()
    assert recorder.kernels == []
    assert {"view", "t", "select", "expand", "empty", "empty_like", "empty_strided"} <= set(recorder.ops)
    ops, _ = kernels.kernels_of(lambda: x.t().contiguous())  # a copy is a kernel
    assert ops == ["clone"]


def test_call_kernels_counts_forward_and_backward_apart():
    x = torch.randn(4, requires_grad=True)
    counted = kernels.call_kernels(lambda: torch.relu(x * 3), [x])
    assert counted.forward == ["mul", "relu"]
    assert counted.backward == ["threshold_backward", "mul"]
    assert kernels.CallKernels.describe(counted.forward) == "2: mul, relu"
    assert kernels.CallKernels.describe([]) == "0" and kernels.CallKernels.describe(None) == "-"
    with torch.no_grad():
        assert kernels.call_kernels(lambda: x + 1).backward is None
    # a tuple output: its first element is differentiated (FMP with return_indices)
    counted = kernels.call_kernels(lambda: torch.max(x.view(2, 2), 1), [x])
    assert counted.forward == ["max"] and len(counted.backward) >= 1


def test_view_list_names_aten_views():
    """Every op left out as a view is one in its schema (its output aliases its input), but _unsafe_view: a view
    at run time whose schema hides the alias (reshape's tail after a copy)."""
    x = torch.randn(2, 3)
    assert torch.ops.aten._unsafe_view(x, [3, 2]).data_ptr() == x.data_ptr()
    for name in kernels.VIEW_OPS - {"_unsafe_view"}:
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            schema = getattr(packet, overload)._schema
            if not any(isinstance(a.type, torch.TensorType) for a in schema.arguments):
                continue  # aten::split.str, TorchScript's string split
            assert schema.returns and all(r.alias_info is not None for r in schema.returns), f"aten::{name}.{overload}"
    for name in kernels.ALLOCATION_OPS:
        assert getattr(torch.ops.aten, name).overloads()


def test_section_runs_and_reports(tmp_path):
    backends = [b for b in cifarops.available_backends("cpu") if b != "reference"]
    threads = torch.get_num_threads()
    rows = hosttime.run(torch.device("cpu"), backends, quick=True, rounds=2, inner=1, verbose=False)
    assert torch.get_num_threads() == threads
    calls = {(r["call"], r["mode"]) for r in rows}
    assert len(calls) == 11  # 9 comparisons and the relu reference point, forward+backward and no_grad
    for r in rows:
        assert r["host_us"] > 0 and r["forward_kernels"] >= 1
        if r["mode"] == hosttime.NO_GRAD:
            assert r["backward_kernels"] is None
        if r["provider"].startswith("cifarops["):
            peer = next(p for p in rows if (p["call"], p["mode"]) == (r["call"], r["mode"])
                        and not p["provider"].startswith("cifarops["))
            assert r["ratio"] == pytest.approx(r["host_us"] / peer["host_us"])
            assert r["met"] == (None if r["target"] is None else r["ratio"] <= r["target"])
        else:
            assert r["ratio"] is None and r["met"] is None
    skipped = hosttime.run(torch.device("cpu"), backends, ops=["maxout"], rounds=1, inner=1, verbose=False,
                           skip=[("maxout", b) for b in backends])
    assert {r["call"] for r in skipped} == {"one C++ op with C++ autograd: relu"}

    env = {"device": "test", "torch": torch.__version__, "git": "abc", "date": "today"}
    hosttime.write_csv(str(tmp_path / "hosttime.csv"), rows, env)
    with open(tmp_path / "hosttime.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and written[0]["git"] == "abc" and written[0]["device"] == "test"
    section = hosttime.markdown(rows)
    report.write_markdown(str(tmp_path / "benchmark.md"), [], env, [], "notes", [section])
    text = (tmp_path / "benchmark.md").read_text()
    assert "## Host time per call and device kernels per call (issue 16)" in text
    assert "owruby-style + add" in text and "threshold_backward" in text


def test_probabilistic_maxout_peer():
    """The softmax+multinomial peer: one drawn piece per group, with the gradient; maxout as temperature -> 0."""
    from cifarops.bench.baselines import softmax_multinomial_maxout

    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    y = softmax_multinomial_maxout(x, 2)
    groups = x.unflatten(1, (4, 2))
    assert ((groups == y.unsqueeze(2)).sum(2) >= 1).all()
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(grad.unflatten(1, (4, 2)).sum(2), torch.ones_like(y))
    assert torch.equal(softmax_multinomial_maxout(x, 2, temperature=1e-4), groups.max(2).values)
