"""Shared test configuration: which (device, backend) pairs run here, and one tolerance table.

Backends that cannot run on this machine are not generated at all (rather than skipped): CPU CI runs the
`cpu` backend in one pytest process and the `triton` backend in a second one under TRITON_INTERPRET=1;
a GPU machine adds `cuda` and `triton` on CUDA tensors.
"""

from __future__ import annotations

import collections
import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import cifarops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (device, backend) pairs under test, the reference excepted: it is the oracle.
KERNEL_BACKENDS = [(d, b) for d in DEVICES for b in cifarops.available_backends(d) if b != "reference"]
# Every backend, the reference included, for tests with hand-worked answers.
ALL_BACKENDS = [(d, b) for d in DEVICES for b in cifarops.available_backends(d)]

# torch.compile cases: Inductor cannot compile Triton kernels for CPU tensors (the interpreter is eager-only),
# so the Triton backend is compiled only where it runs on a GPU; the reference is compiled too.
COMPILE_BACKENDS = [(d, b) for d, b in KERNEL_BACKENDS if not (b == "triton" and d == "cpu")] + [("cpu", "reference")]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (rtol, atol) per dtype. Kernels compute in the reference's precision, so differences are rounding only
# (a fused multiply-add on a GPU, say).
TOLERANCES = {
    torch.float32: (1e-6, 1e-6),
    torch.float64: (1e-12, 1e-12),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms(True) inside the block."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def ids(pairs):
    return [f"{d}-{b}" for d, b in pairs]


def assert_close(actual, expected, dtype=None):
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_compiled_step_equals_eager(compiled, module, x, seed: int, backend: str) -> None:
    """A training step of compiled (torch.compile of module) equals module's eager step from the same seed:
    output and the gradients of x and of every parameter, to rounding (inductor reorders the arithmetic
    around the ops). The compiled and Triton ops draw their noise inside the op from the generator's state,
    in the graph as in eager, so the same seed gives the same noise. The reference's traced draws take their
    key from the graph's own RNG (cifarops.philox.draw_state: same distributions, another stream), so there
    the compiled step must repeat itself under the same seed instead. Either way another seed must change
    the step (or the comparison would hold for any noise)."""
    def step(fn, seed):
        torch.manual_seed(seed)
        y = fn(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *module.parameters()])
        return [y.detach(), *grads]

    traced = step(compiled, seed)
    expected = step(module, seed) if backend != "reference" else step(compiled, seed)
    for a, b in zip(traced, expected):
        assert_close(a, b)
    assert not torch.equal(step(compiled, seed + 1)[0], traced[0]), "the compiled step does not depend on the seed"


def namespace_for(backend: str):
    """The torch.ops namespace whose ops run on `backend`."""
    return torch.ops.cifarops_triton if backend == "triton" else torch.ops.cifarops


def matches_reference(run, *args, seed: int = 1234, **kwargs):
    """Runs run(*args, **kwargs), which returns a tuple of tensors (or None), on the selected backend and on
    the reference from the same seed, asserts that the two agree in dtype, shape and value, and returns
    the backend's tuple."""
    torch.manual_seed(seed)
    got = run(*args, **kwargs)
    torch.manual_seed(seed)
    with cifarops.use_backend("reference"):
        want = run(*args, **kwargs)
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            assert_close(a, b)
    return got


@pytest.fixture(params=KERNEL_BACKENDS, ids=ids(KERNEL_BACKENDS))
def kernel_backend(request):
    """(device, backend) of a kernel backend, with that backend selected for the test."""
    device, backend = request.param
    with cifarops.use_backend(backend):
        yield device, backend


@pytest.fixture(params=ALL_BACKENDS, ids=ids(ALL_BACKENDS))
def any_backend(request):
    device, backend = request.param
    with cifarops.use_backend(backend):
        yield device, backend


# ------------------------------------------------------------------------------------- hypothesis profiles

# "ci" (the default) runs a fixed number of examples per property test, derived from each test's own source
# (derandomize), so every CI run checks the same cases and a failure reproduces; "long" runs many more, freshly
# random, for local runs: CIFAROPS_HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties*.py.
# No example database: a failure prints its @reproduce_failure blob instead (print_blob).
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
HYPOTHESIS_PROFILE = os.environ.get("CIFAROPS_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(HYPOTHESIS_PROFILE)

# Examples run per pytest node id, counted by the property tests themselves (count_hypothesis_example), so the
# CI log says how many cases ran.
HYPOTHESIS_EXAMPLES: collections.Counter = collections.Counter()


def count_hypothesis_example() -> None:
    """Called once per example in each property test's body."""
    node = os.environ.get("PYTEST_CURRENT_TEST", "unknown").split(" ")[0]
    HYPOTHESIS_EXAMPLES[node] += 1


def pytest_sessionfinish(session):
    """Under pytest-xdist (scripts/test.sh runs -n 2) each worker sends its counts to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["hypothesis_examples"] = dict(HYPOTHESIS_EXAMPLES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # pytest-xdist's, on the controller: a worker finished
    HYPOTHESIS_EXAMPLES.update(getattr(node, "workeroutput", {}).get("hypothesis_examples", {}))


def pytest_terminal_summary(terminalreporter):
    if not HYPOTHESIS_EXAMPLES:
        return
    per_file: collections.Counter = collections.Counter()
    tests: dict = collections.defaultdict(int)
    for node, count in HYPOTHESIS_EXAMPLES.items():
        path = node.split("::")[0]
        per_file[path] += count
        tests[path] += 1
    terminalreporter.section(f"hypothesis examples run (profile {HYPOTHESIS_PROFILE})")
    for path, count in sorted(per_file.items()):
        terminalreporter.write_line(f"{path}: {count} examples in {tests[path]} tests")


# ------------------------------------------------------------------------------------- the smoke subset

# What proves a torch version (scripts/check_torch_versions.sh, and CI for the GPU machines' torch): the build
# and registration, every op on the CPU against the reference, gradcheck and opcheck, the C++ autograd nodes,
# torch.compile of one op, and the Triton kernels compiled to cubin without local memory. `pytest -m smoke`.
# A name here that matches no test fails the run (a renamed test must not drop out of the subset silently).
SMOKE = {
    "test_build.py": None,  # every test of the file
    "test_autograd_nodes.py": None,
    "test_shake_drop.py": {"test_matches_reference_dtypes_layouts", "test_gradcheck", "test_opcheck",
                           "test_torch_compile_fullgraph"},
    "test_shake_shake.py": {"test_matches_reference_dtypes_layouts", "test_gradcheck", "test_opcheck"},
    "test_maxout.py": {"test_matches_reference_dtypes_layouts", "test_gradcheck", "test_opcheck"},
    "test_fractional_max_pool2d.py": {"test_graham_modes_match_reference", "test_layouts_match_reference",
                                      "test_gradcheck", "test_opcheck"},
}


def pytest_configure(config):
    config.addinivalue_line("markers", "smoke: the subset that proves a torch version (tests/conftest.py SMOKE)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    seen = collections.defaultdict(set)
    for item in items:
        file = os.path.basename(str(item.fspath))
        names = SMOKE.get(file, ())
        if file in SMOKE and (names is None or item.originalname in names):
            item.add_marker(pytest.mark.smoke)
            seen[file].add(item.originalname)
    if "smoke" not in (config.getoption("-m") or ""):
        return
    collected_files = {os.path.basename(str(item.fspath)) for item in items}
    here = os.path.dirname(__file__)
    missing = [file for file in SMOKE if not os.path.exists(os.path.join(here, file))]
    missing += [f"{file}::{name}" for file, names in SMOKE.items() if names and file in collected_files
                for name in sorted(names - seen[file])]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SMOKE names tests that do not exist: {missing}")
