"""The CPU output cache (csrc/args/cpu_output_cache.h): the compiled CPU ops' large outputs reuse the blocks
earlier outputs freed, within a limit; what they compute does not change (the oracles: torch's own ops)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

import cifarops
import cifarops.functional as F
from cifarops import _extension

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="the cache is the compiled extension's")

MiB = 2**20


@pytest.fixture(autouse=True)
def default_limit():
    limit = cifarops.cpu_cache_info()["limit_bytes"]
    yield
    cifarops.set_cpu_cache_limit(limit / MiB)


def _maxout(x):
    with cifarops.use_backend("cpu"):
        return F.maxout(x, 2)


def _view_amax(x):
    return x.unflatten(1, (x.shape[1] // 2, 2)).amax(2)


def test_a_freed_output_block_serves_the_next_output_of_its_size():
    x = torch.randn(64, 64, 32, 32)  # 8 MiB output
    cifarops.empty_cpu_cache()
    first = _maxout(x)
    pointer = first.data_ptr()
    del first
    before = cifarops.cpu_cache_info()
    assert before["cached_bytes"] >= 8 * MiB
    second = _maxout(x)
    after = cifarops.cpu_cache_info()
    assert second.data_ptr() == pointer
    assert after["hits"] > before["hits"] and after["misses"] == before["misses"]  # the output and its index
    torch.testing.assert_close(second, _view_amax(x), rtol=0, atol=0)


def test_outputs_on_reused_blocks_are_every_element_recomputed():
    shape = (32, 64, 32, 32)
    for scale in (1.0, -3.0, 0.5):  # each call lands on the previous call's block, full of its numbers
        x = torch.randn(shape) * scale
        torch.testing.assert_close(_maxout(x), _view_amax(x), rtol=0, atol=0)
    h, shortcut = torch.randn(shape), torch.randn(shape)
    with cifarops.use_backend("reference"):
        want = F.shake_drop(h, shortcut, training=False)
    for _ in range(3):
        with cifarops.use_backend("cpu"):
            torch.testing.assert_close(F.shake_drop(h, shortcut, training=False), want)


def test_small_outputs_use_torchs_allocator():
    before = cifarops.cpu_cache_info()
    y = _maxout(torch.randn(4, 8, 8, 8))
    del y
    after = cifarops.cpu_cache_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_the_limit_bounds_what_is_kept_and_empty_frees_it():
    x = torch.randn(64, 64, 32, 32)  # 8 MiB outputs: blocks of 10 MiB (rounded to 2 MiB, with the header)
    cifarops.empty_cpu_cache()
    cifarops.set_cpu_cache_limit(12)
    outputs = [_maxout(x) for _ in range(3)]
    del outputs
    info = cifarops.cpu_cache_info()
    assert 8 * MiB <= info["cached_bytes"] <= 12 * MiB and info["limit_bytes"] == 12 * MiB
    cifarops.empty_cpu_cache()
    assert cifarops.cpu_cache_info()["cached_bytes"] == 0
    cifarops.set_cpu_cache_limit(0)
    y = _maxout(x)
    del y
    assert cifarops.cpu_cache_info()["cached_bytes"] == 0
    before = cifarops.cpu_cache_info()["misses"]
    _maxout(x)
    assert cifarops.cpu_cache_info()["misses"] == before + 2  # the output and its one-byte index


def test_a_lower_limit_evicts_the_oldest_blocks_at_once():
    cifarops.empty_cpu_cache()
    outputs = [_maxout(torch.randn(64, 64, 32, 32)) for _ in range(2)]
    del outputs
    assert cifarops.cpu_cache_info()["cached_bytes"] >= 16 * MiB
    cifarops.set_cpu_cache_limit(11)
    assert 0 < cifarops.cpu_cache_info()["cached_bytes"] <= 11 * MiB


def test_outputs_are_ordinary_resizable_tensors():
    y = _maxout(torch.randn(64, 64, 32, 32))
    y.resize_(80, 32, 32, 32)  # past the block: a new one
    y.fill_(2.0)
    assert y.sum().item() == 2.0 * y.numel()
    z = _maxout(torch.randn(64, 64, 32, 32)).clone()  # and clone, pickle, numpy work on them
    torch.testing.assert_close(torch.from_numpy(z.numpy()), z)


def test_threads_share_the_cache_safely():
    x = torch.randn(32, 64, 32, 32)
    want = _view_amax(x)
    errors = []

    def work():
        try:
            for _ in range(20):
                torch.testing.assert_close(_maxout(x), want, rtol=0, atol=0)
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = cifarops.cpu_cache_info()
    assert 0 <= info["cached_bytes"] <= info["limit_bytes"]


def test_the_memory_profiler_sees_cached_outputs():
    x = torch.randn(64, 64, 32, 32)
    _maxout(x)  # a block is kept: the profiled call is a hit
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        y = _maxout(x)
        del y
    # the op allocated its 8 MiB output and its 2 MiB index (one byte per output); both were freed
    (op,) = [e for e in prof.events() if e.name == "cifarops::maxout"]
    assert op.cpu_memory_usage == 10 * MiB
    freed = sorted(-e.cpu_memory_usage for e in prof.events() if e.name == "[memory]" and e.cpu_memory_usage < 0)
    assert freed == [2 * MiB, 8 * MiB]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                          check=False)


def test_the_environment_sets_the_limit_and_a_bad_value_is_named():
    code = "import cifarops; print(cifarops.cpu_cache_info()['limit_bytes'])"
    assert _run(code, CIFAROPS_CPU_CACHE_MB="0").stdout.strip() == "0"
    assert _run(code, CIFAROPS_CPU_CACHE_MB="64").stdout.strip() == str(64 * MiB)
    assert _run(code, CIFAROPS_CPU_CACHE_MB="").stdout.strip() == str(1024 * MiB)
    bad = _run(code, CIFAROPS_CPU_CACHE_MB="lots")
    assert bad.returncode != 0 and "CIFAROPS_CPU_CACHE_MB" in bad.stderr and "'lots'" in bad.stderr


def test_a_forked_child_allocates_and_frees_outputs():
    code = """
import os, torch, cifarops, cifarops.functional as F
x = torch.randn(64, 64, 32, 32)
with cifarops.use_backend("cpu"):
    y = F.maxout(x, 2)
    del y
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)  # as DataLoader workers do: GNU OpenMP's thread pool does not survive a fork
        ok = torch.equal(F.maxout(x, 2), x.unflatten(1, (32, 2)).amax(2))
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    done = _run(code)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "8", True])
def test_a_bad_limit_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="megabytes"):
        cifarops.set_cpu_cache_limit(bad)


def test_the_five_process_benchmark_reports_each_process(capsys):
    from cifarops.bench import processes

    rows = processes.run(["maxout"], processes=2, cache_off=True, tiny=True)
    assert [r["cache"] for r in rows] == ["on", "off"]
    for r in rows:
        assert len(r["vs_reference"]) == len(r["vs_baseline"]) == 2
        assert r["slowest"] == min(r["vs_reference"] + r["vs_baseline"]) > 0
        assert r["vs_baseline"][1] == pytest.approx(r["baseline_ms"][1] / r["cifarops_ms"][1])
        assert r["met"] == (r["slowest"] >= processes.TARGETS["maxout"])
    table = processes.markdown(rows)
    assert "maxout 4x16x8x8" in table and "| off |" in table and "view+max:" in table
    # the command of docs/benchmarks.md, shrunk
    assert processes.main(["--cache-off", "--processes", "1", "--ops", "shake_drop", "--tiny"]) == 0
    printed = capsys.readouterr().out
    assert "shake_drop 4x8x8x8 | on |" in printed and "shake_drop 4x8x8x8 | off |" in printed
