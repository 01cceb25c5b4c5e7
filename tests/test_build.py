"""The build and the op registry: what was compiled, schemas declared once, Triton kernels that compile."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

import cifarops

OPS = [
    "shake_drop", "_shake_drop_backward", "shake_shake", "_shake_shake_backward", "maxout", "_maxout_backward",
    "probabilistic_maxout", "probabilistic_maxout_expectation", "_probabilistic_maxout_expectation_backward",
    "fractional_max_pool2d", "_fractional_max_pool2d_backward",
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


def _triton_variants():
    """(kernel, signature, constexprs) for every Triton kernel: each element type with the heaviest options,
    and each option in float32."""
    import triton.language as tl

    from cifarops.triton_kernels.maxout import _maxout_bwd_kernel, _maxout_fwd_kernel
    from cifarops.triton_kernels.shake_drop import _shake_drop_kernel
    from cifarops.triton_kernels.shake_shake import _shake_shake_bwd_kernel, _shake_shake_fwd_kernel

    for element in ("fp32", "fp64", "fp16", "bf16"):
        acc = "fp64" if element == "fp64" else "fp32"
        sources = (0, 1, 2, 3) if element == "fp32" else (3,)
        widths = ("i32", "i64") if element == "fp32" else ("i64",)  # Triton launches ints below 2^31 as i32
        for source, channels_last, width in itertools.product(sources, (False, True), widths):
            levels = (0, 1, 2, 3) if source == 3 else (0,)
            for level in levels:
                yield _shake_drop_kernel, {
                    "h_ptr": f"*{element}", "shortcut_ptr": f"*{element}", "out_ptr": f"*{element}",
                    "state_ptr": "*i64", "gate_ptr": f"*{acc}", "gate_stride": width, "keep": "fp32",
                    "gate_value": "fp32", "coef_ptr": f"*{acc}", "coef_stride_n": width, "coef_stride_c": width,
                    "lo": "fp32", "hi": "fp32", "coef_value": "fp32", "coef_stream": "i32", "numel": width,
                    "channels": width, "spatial": width, "shortcut_channels": width,
                }, {"HAS_SHORTCUT": True, "CHANNELS_LAST": channels_last, "GATE_SOURCE": 3 if source == 3 else 1,
                    "GATE_LEVEL": level % 2, "COEF_SOURCE": source, "COEF_LEVEL": level,
                    "ACC": tl.float64 if acc == "fp64" else tl.float32, "BLOCK": 1024}
        for width, kind, per_sample in itertools.product(widths, (0, 1, 2) if element == "fp32" else (2,), (False, True)):
            common = {"coef_ptr": f"*{acc}", "coef_stride": width, "state_ptr": "*i64", "batch": width,
                      "sample_size": width}
            flags = {"KIND": kind, "PER_SAMPLE": per_sample, "IS_DOUBLE": element == "fp64", "BLOCK": 1024}
            yield _shake_shake_fwd_kernel, {
                "h1_ptr": f"*{element}", "h2_ptr": f"*{element}", "x_ptr": f"*{element}", "y_ptr": f"*{element}",
                **common,
            }, {**flags, "HAS_SHORTCUT": True}
            yield _shake_shake_bwd_kernel, {
                "g_ptr": f"*{element}", "g1_ptr": f"*{element}", "g2_ptr": f"*{element}", **common,
            }, {**flags, "STREAM": 1}
        yield from _fmp_variants(element, acc)
        for width in widths:
            sizes = {n: width for n in ("outer", "inner", "pieces", "xs_o", "xs_c", "xs_i", "ys_o", "ys_c", "ys_i")}
            for mode in (0, 1, 2) if element == "fp32" else (1,):
                yield _maxout_fwd_kernel, {
                    "x_ptr": f"*{element}", "y_ptr": f"*{element}", "index_ptr": "*u8", "state_ptr": "*i64",
                    "lambda_bits": "i64", "groups": width, **sizes,
                }, {"MODE": mode, "STRIDED": True, "CHANNEL_FASTEST": False, "BLOCK": 512}
            for expectation in (False, True):
                yield _maxout_bwd_kernel, {
                    "grad_y_ptr": f"*{element}", "index_ptr": "*u8", "x_ptr": f"*{element}",
                    "grad_x_ptr": f"*{element}", "lambda_bits": "i64", "channels": width, **sizes,
                }, {"EXPECTATION": expectation, "STRIDED": False, "CHANNEL_FASTEST": True, "BLOCK": 512}


def _fmp_variants(element, acc):
    """Fractional max-pooling's kernels as the launcher (triton_kernels/fractional_max_pool2d.py) calls them:
    window regions drawn, from explicit samples and with int64 indices; Graham's regions drawn and from a
    boundary table (explicit boundaries, random sequences); both layouts in float32, the heaviest in the others."""
    from cifarops.triton_kernels.fractional_max_pool2d import BLOCK, _fmp_bwd_kernel, _fmp_fwd_kernel, _fmp_table_kernel

    ints = ("total", "channels", "in_h", "in_w", "out_h", "out_w", "k_h", "k_w", "xs_n", "xs_c", "xs_h", "xs_w",
            "ys_n", "ys_c", "ys_h", "ys_w", "ss_n", "ss_c", "ss_a", "bs_n", "bs_c", "bs_a", "bs_i", "draw_channels")
    # (REGIONS, EXPLICIT, DRAW, WIDE, span): window drawn / from samples / int64 indices, Graham drawn / table
    modes = [(0, False, True, False, 2), (0, False, False, False, 3), (0, False, True, True, 2),
             (1, True, False, False, 2), (2, False, True, False, 3), (2, True, False, True, 3)]
    if element != "fp32":
        modes = [modes[0], modes[-1]]
    for (regions, explicit, draw, wide, span), channel_fastest in itertools.product(
            modes, (False, True) if element == "fp32" else (False,)):
        pointers = {"samples_ptr": f"*{element}", "bnd_ptr": "*i64" if explicit else f"*{element}",
                    "alpha_ptr": f"*{acc}", "state_ptr": "*i64" if draw else f"*{acc}",
                    "index_ptr": "*i64" if wide else "*u8"}
        flags = {"REGIONS": regions, "EXPLICIT": explicit, "DRAW": draw, "WIDE": wide, "ROUND": False,
                 "CHANNEL_FASTEST": channel_fastest, "SPAN_W": span, "BLOCK": BLOCK}
        yield _fmp_fwd_kernel, {"x_ptr": f"*{element}", "y_ptr": f"*{element}", **pointers,
                                **{n: "i32" for n in ints}, "sample_max": "fp32"}, {**flags, "SPAN_H": span}
        yield _fmp_bwd_kernel, {"grad_y_ptr": f"*{element}", "grad_x_ptr": f"*{element}", **pointers,
                                **{n: "i32" for n in ints}, "steps_h": "i32", "steps_w": "i32",
                                "sample_max": "fp32"}, flags
    if element == "fp32":
        yield _fmp_table_kernel, {"state_ptr": "*i64", "table_ptr": "*i64", "lanes": "i32", "in_w": "i32",
                                  "out_w": "i32", "in_h": "i32", "out_h": "i32", "max_out": "i32",
                                  "length": "i32"}, {"BLOCK": 128}


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_gpus(arch):
    """Compile the Triton kernels to cubin for the GPUs we ship for, without a GPU (the interpreter skips
    Triton's real compiler, so this catches what TRITON_INTERPRET=1 tests cannot)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("run this test without TRITON_INTERPRET=1: interpreted kernels cannot be compiled")
    import triton
    from triton.backends.compiler import GPUTarget

    for kernel, signature, constexprs in _triton_variants():
        signature = {**signature, **{name: "constexpr" for name in constexprs}}
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        assert compiled.asm["cubin"], kernel.__name__


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
