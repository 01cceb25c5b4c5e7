"""The build and the op registry: what was compiled, schemas declared once, Triton kernels that compile."""

from __future__ import annotations

import os

import pytest
import torch

import cifarops
from cifarops.triton_kernels.variants import compile_options, variants

OPS = [
    "shake_drop", "_shake_drop_backward", "stochastic_depth", "_stochastic_depth_backward", "drop_activation",
    "drop_activation_", "_drop_activation_backward", "shake_shake", "_shake_shake_backward", "maxout", "_maxout_backward",
    "probabilistic_maxout", "probabilistic_maxout_expectation", "_probabilistic_maxout_expectation_backward",
    "fractional_max_pool2d", "_fractional_max_pool2d_backward", "stochastic_pool2d", "_stochastic_pool2d_backward",
    "stochastic_pool2d_expectation", "_stochastic_pool2d_expectation_backward",
]


def test_op_list_is_every_registered_op():
    """OPS is the registry itself, less the composite double-backward helper (pure PyTorch, no kernels)."""
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("cifarops::")}
    assert registered - {"_fractional_max_pool2d_select"} == set(OPS)


def test_compiled_extension_loaded():
    # CI builds the extension; a silent fallback to the reference would hide a broken build.
    info = cifarops.build_info()
    assert info["loaded"], info
    assert info["version"] == cifarops.__version__
    assert "cpu" in cifarops.available_backends("cpu")


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_cpu_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"cifarops::{name}", "CPU")


@pytest.mark.parametrize("name", OPS)
def test_triton_op_schema_equals_the_compiled_schema(name):
    """Schemas are declared once, in csrc/ops.cpp; the Triton ops must not drift from them."""
    compiled = str(getattr(torch.ops.cifarops, name).default._schema).split("::", 1)[1]
    triton = str(getattr(torch.ops.cifarops_triton, name).default._schema).split("::", 1)[1]
    assert compiled == triton


def test_backend_selection():
    assert cifarops.default_backend("cpu") == "cpu"
    with cifarops.use_backend("reference"):
        assert cifarops.select_backend("cpu") == "reference"
        with cifarops.use_backend(None):
            assert cifarops.select_backend("cpu") == "cpu"
    assert cifarops.select_backend("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        with cifarops.use_backend("gpu"):
            pass
    with cifarops.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="backend 'cuda' was requested but is not available for cpu"):
            cifarops.functional.shake_drop(torch.ones(2, 2))


def test_missing_extension_falls_back_with_one_warning(tmp_path):
    """Without _C, import works, warns once, and runs the reference on the CPU."""
    import subprocess
    import sys

    script = (
        "import sys, warnings, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'cifarops._C': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import cifarops, torch\n"
        "    y = cifarops.ShakeDrop()(torch.ones(2, 3), torch.ones(2, 3))\n"
        "ours = [w for w in caught if 'cifarops._C' in str(w.message)]\n"
        "assert len(ours) == 1, [str(w.message) for w in caught]\n"
        "assert cifarops.select_backend('cpu') == 'reference'\n"
        "print('ok', tuple(y.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CIFAROPS_BACKEND"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok (2, 3)" in result.stdout


def _local_memory_instructions(cubin: bytes, tmp_path) -> list[str]:
    """The LDL / STL instructions of a cubin's SASS (Triton's own cuobjdump): spills, or an array the compiler
    could not keep in registers."""
    import subprocess

    import triton

    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    sass = subprocess.run([tool, "-sass", str(path)], check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in sass.splitlines() if " LDL" in line or " STL" in line]


# The GPUs we ship for. CIFAROPS_TRITON_ARCHS narrows them, or with "none" leaves the compile to another step: CI
# compiles every variant for sm_90 twice elsewhere, with the GPU machines' triton in their torch 2.11 smoke and with
# this triton in the kernel report (scripts/kernel_report.py, which fails on a spill too), and a compile of every
# variant takes one to two minutes on a 2-core machine.
_ARCHS = os.environ.get("CIFAROPS_TRITON_ARCHS", "80,90")
TRITON_ARCHS = [int(arch) for arch in _ARCHS.split(",")] if _ARCHS != "none" else [
    pytest.param(90, marks=pytest.mark.skip(reason="CIFAROPS_TRITON_ARCHS=none: CI compiles these for sm_90 in its "
                                                   "torch 2.11 smoke and in the kernel report"))]


@pytest.mark.parametrize("arch", TRITON_ARCHS)
def test_triton_kernels_compile_for_gpus(arch, tmp_path):
    """Compile the Triton kernels to cubin for the GPUs we ship for, without a GPU (the interpreter skips
    Triton's real compiler, so this catches what TRITON_INTERPRET=1 tests cannot), and none uses local memory
    (no spill). The CUDA kernels' spills: scripts/kernel_report.py, run by CI after the CUDA build."""
    assert arch in (80, 90), f"CIFAROPS_TRITON_ARCHS: 80 and 90 are the GPUs we ship for, got {arch}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("run this test without TRITON_INTERPRET=1: interpreted kernels cannot be compiled")
    import triton
    from triton.backends.compiler import GPUTarget

    for kernel, signature, constexprs in variants():
        signature = {**signature, **{name: "constexpr" for name in constexprs}}
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=compile_options(kernel))
        assert compiled.asm["cubin"], kernel.__name__
        assert not _local_memory_instructions(compiled.asm["cubin"], tmp_path), (kernel.__name__, constexprs)


def test_setup_lists_every_subpackage():
    """A wheel holds only the packages setup.py names: an editable install would hide a missing one."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    setup = (root / "setup.py").read_text()
    subpackages = [p.parent.name for p in (root / "python" / "cifarops").glob("*/__init__.py")]
    assert subpackages
    for name in subpackages:
        assert f'"cifarops.{name}"' in setup, name


def test_compiled_ops_have_their_autograd_in_cpp():
    """Every compiled op's autograd is a C++ kernel on the Autograd key (issue 16: a Python autograd boundary
    costs ~25 µs a call), and no op that draws lacks the nondeterministic_seeded tag."""
    import cifarops  # noqa: F401  (registers the ops)

    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("cifarops::")]
    assert names
    # Composite (pure PyTorch) or never differentiated again: autograd comes from the ops they call.
    exempt = {"cifarops::_fractional_max_pool2d_select", "cifarops::_probabilistic_maxout_expectation_backward"}
    missing = [n for n in names if n not in exempt and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "Autograd")]
    assert not missing, missing
    for name in names:
        op = getattr(torch.ops.cifarops, name.split("::")[1]).default
        draws = any(a.name == "rng_state" for a in op._schema.arguments) and not name.split("::")[1].startswith("_")
        assert (torch.Tag.nondeterministic_seeded in op.tags) == draws, name


def test_cuda_kernels_registered_exactly_in_a_cuda_build():
    """A CUDA build registers a CUDA kernel for every op, a CPU build none. scripts/check_torch_versions.sh sets
    CIFAROPS_EXPECT_CUDA=1 where it built the CUDA kernels (CI's torch 2.11.0+cu130), so a build that silently
    dropped them fails there."""
    info = cifarops.build_info()
    if os.environ.get("CIFAROPS_EXPECT_CUDA") == "1":
        assert info["cuda"], info
    has_cuda = {name: torch._C._dispatch_has_kernel_for_dispatch_key(f"cifarops::{name}", "CUDA") for name in OPS}
    assert all(has_cuda.values()) if info["cuda"] else not any(has_cuda.values()), (info, has_cuda)


def _setup_module():
    """setup.py as a module: only its definitions run (setup() is called under __main__ alone)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "setup.py"
    spec = importlib.util.spec_from_file_location("cifarops_setup_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("env, torch_cuda, nvcc, expected", [
    ({}, None, None, False),  # a CPU torch, no toolkit
    ({}, None, "13.0", False),  # a CPU torch: nvcc alone builds nothing for CUDA
    ({}, "13.0", None, False),  # a CUDA torch without nvcc: CPU kernels (the Triton backend runs the GPU)
    ({}, "13.0", "13.0", True),
    ({}, "13.0", "13.2", True),  # minor versions are compatible (torch itself only warns)
    ({"CIFAROPS_CUDA": "0"}, "12.8", "13.0", False),  # the way out of a mismatch
    ({"FORCE_CUDA": "0"}, "12.8", "13.0", False),
    ({"CIFAROPS_CUDA": "1"}, "13.0", "13.0", True),  # insists (scripts/check_torch_versions.sh, no GPU needed)
    ({"FORCE_CUDA": "1"}, "13.0", "13.0", True),
    ({"CIFAROPS_CUDA": "0", "FORCE_CUDA": "1"}, "13.0", "13.0", False),  # cifarops' own switch first
])
def test_setup_builds_cuda_kernels_when_asked_or_matched(env, torch_cuda, nvcc, expected):
    assert _setup_module().want_cuda(env, torch_cuda, nvcc, "/opt/cuda") is expected


def test_setup_refuses_a_cuda_version_mismatch_naming_both_ways_out():
    setup = _setup_module()
    with pytest.raises(RuntimeError) as caught:
        setup.want_cuda({}, "12.8", "13.0", "/opt/cuda")
    message = str(caught.value)
    for words in ("CUDA 12.8", "CUDA 13.0", "/opt/cuda", "CIFAROPS_CUDA=0", "CUDA_HOME"):
        assert words in message, (words, message)
    with pytest.raises(RuntimeError, match="CIFAROPS_CUDA must be 0 .* or 1 .*, got 'yes'"):
        setup.want_cuda({"CIFAROPS_CUDA": "yes"}, None, None)


@pytest.mark.parametrize("env, torch_cuda, nvcc, words", [
    ({"CIFAROPS_CUDA": "1"}, None, "13.0", "this torch is a CPU build"),
    ({"FORCE_CUDA": "1"}, "13.0", None, "there is no nvcc in CUDA_HOME (/opt/cuda)"),
    ({"CIFAROPS_CUDA": "1"}, "12.8", "13.0", "CIFAROPS_CUDA=0"),  # insisting does not get past a mismatch
])
def test_setup_insisting_on_cuda_fails_clearly_where_it_cannot_build(env, torch_cuda, nvcc, words):
    with pytest.raises(RuntimeError) as caught:
        _setup_module().want_cuda(env, torch_cuda, nvcc, "/opt/cuda")
    assert words in str(caught.value)


def test_setup_reads_the_nvcc_release(tmp_path):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n")
    fake.chmod(0o755)
    setup = _setup_module()
    assert setup.nvcc_release(str(tmp_path)) == "12.8"
    assert setup.nvcc_release(str(tmp_path / "missing")) is None
    assert setup.nvcc_release(None) is None
