"""The argument types and compile-time options with which the launchers (one file per op here) call every
Triton kernel: (kernel, signature, constexprs) triples for triton.compile, each element type with the
heaviest options and each option in float32. tests/test_build.py compiles them all for sm_80 and sm_90
without a GPU, and scripts/kernel_report.py reports their registers, spills and SASS."""

from __future__ import annotations

import importlib
import itertools


def compile_options(kernel) -> dict:
    """The options its launcher launches a kernel with (its module's LAUNCH_OPTIONS[name]; none: Triton's
    defaults, 4 warps)."""
    return dict(getattr(importlib.import_module(kernel.fn.__module__), "LAUNCH_OPTIONS", {}).get(kernel.fn.__name__, {}))


def shake_drop_types(element: str, acc: str, width: str) -> dict:
    """_shake_drop_kernel's argument types (ShakeDrop's and stochastic depth's launcher)."""
    return {
        "h_ptr": f"*{element}", "shortcut_ptr": f"*{element}", "out_ptr": f"*{element}", "state_ptr": "*i64",
        "gate_ptr": f"*{acc}", "gate_stride": width, "keep": "fp32", "gate_value_bits": "i64", "gate_gain_bits": "i64",
        "coef_ptr": f"*{acc}", "coef_stride_n": width, "coef_stride_c": width, "lo": "fp32", "hi": "fp32",
        "coef_value_bits": "i64", "coef_stream": "i32", "numel": width, "channels": width, "spatial": width,
        "shortcut_channels": width,
    }


def variants():
    """(kernel, signature, constexprs) for every Triton kernel: each element type with the heaviest options,
    and each option in float32."""
    import triton.language as tl

    from cifarops.triton_kernels.drop_activation import _drop_activation_kernel
    from cifarops.triton_kernels.maxout import _maxout_bwd_kernel, _maxout_fwd_kernel
    from cifarops.triton_kernels.shake_drop import _shake_drop_kernel
    from cifarops.triton_kernels.shake_shake import _shake_shake_bwd_kernel, _shake_shake_fwd_kernel

    for element in ("fp32", "fp64", "fp16", "bf16"):
        acc = "fp64" if element == "fp64" else "fp32"
        sources = (0, 1, 2, 3) if element == "fp32" else (3,)
        widths = ("i32", "i64") if element == "fp32" else ("i64",)  # Triton launches ints below 2^31 as i32
        for source, channels_last, width in itertools.product(sources, (False, True), widths):
            levels = (0, 1, 2, 3) if source == 3 else (0,)
            # The per-sample grid where it draws once a program: batch and sample level.
            for level, per_sample in itertools.product(levels, (False, True)):
                if per_sample and (source != 3 or level > 1):
                    continue
                yield _shake_drop_kernel, shake_drop_types(element, acc, width), {
                    "HAS_SHORTCUT": True, "CHANNELS_LAST": channels_last, "GATE_SOURCE": 3 if source == 3 else 1,
                    "GATE_LEVEL": level % 2, "COEF_SOURCE": source, "COEF_LEVEL": level, "PER_SAMPLE": per_sample,
                    "ACC": tl.float64 if acc == "fp64" else tl.float32, "BLOCK": 1024}
        # Stochastic depth: the same kernel with the gate drawn per sample (mode "row") and a constant coefficient
        # (both grids in float32, the per-sample one, where CIFAR's samples go, in the others).
        for channels_last, per_sample in itertools.product((False, True), (False, True) if element == "fp32" else (True,)):
            yield _shake_drop_kernel, shake_drop_types(element, acc, widths[-1]), {
                "HAS_SHORTCUT": True, "CHANNELS_LAST": channels_last, "GATE_SOURCE": 3, "GATE_LEVEL": 1,
                "COEF_SOURCE": 0, "COEF_LEVEL": 0, "PER_SAMPLE": per_sample,
                "ACC": tl.float64 if acc == "fp64" else tl.float32, "BLOCK": 1024}
        # Drop-Activation: the drawn mask in both layouts and directions; evaluation and the explicit mask in float32.
        drop_activation = {"in_ptr": f"*{element}", "y_ptr": f"*{element}", "mask_ptr": "*u8", "out_ptr": f"*{element}",
                           "state_ptr": "*i64", "keep": "fp32", "slope_bits": "i64", "numel": widths[-1],
                           "channels": widths[-1], "spatial": widths[-1]}
        modes = [(0, True, cl, back) for cl in (False, True) for back in (False, True)]
        if element == "fp32":
            modes += [(2, False, False, False), (2, False, False, True), (1, True, False, True)]
        for mask, training, channels_last, backward in modes:
            yield _drop_activation_kernel, drop_activation, {
                "MASK": mask, "TRAINING": training, "BACKWARD": backward, "CHANNELS_LAST": channels_last,
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
        yield from _stochastic_pool_variants(element)
        for width in widths:
            sizes = {n: width for n in ("outer", "inner", "pieces", "xs_o", "xs_c", "xs_i", "ys_o", "ys_c", "ys_i")}
            # Tiles of one 512-element row (CIFAR's planes) and, in float32, of 512 one-element rows (the dearest: a
            # split each).
            for mode, block_c in itertools.product((0, 1, 2) if element == "fp32" else (1,),
                                                   (512, 1) if element == "fp32" else (512,)):
                yield _maxout_fwd_kernel, {
                    "x_ptr": f"*{element}", "y_ptr": f"*{element}", "index_ptr": "*u8", "state_ptr": "*i64",
                    "lambda_bits": "i64", "groups": width, **sizes,
                }, {"MODE": mode, "STRIDED": True, "CHANNEL_FASTEST": False, "BLOCK": 512, "BLOCK_C": block_c}
            for expectation, block_c in itertools.product((False, True), (512, 1) if element == "fp32" else (512,)):
                yield _maxout_bwd_kernel, {
                    "grad_y_ptr": f"*{element}", "index_ptr": "*u8", "x_ptr": f"*{element}",
                    "grad_x_ptr": f"*{element}", "lambda_bits": "i64", "channels": width, **sizes,
                }, {"EXPECTATION": expectation, "STRIDED": False, "CHANNEL_FASTEST": True, "BLOCK": 512,
                    "BLOCK_C": block_c}


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
    # The 32-bit split (SMALL, below 2^31 elements) in float32's window-drawn and Graham-from-samples modes, NCHW.
    for (regions, explicit, draw, wide, span), channel_fastest, small in itertools.product(
            modes, (False, True) if element == "fp32" else (False,), (False, True)):
        if small and (element != "fp32" or channel_fastest or (regions, explicit) not in ((0, False), (1, True))
                      or draw and regions):
            continue
        pointers = {"samples_ptr": f"*{element}", "bnd_ptr": "*i64" if explicit else f"*{element}",
                    "alpha_ptr": f"*{acc}", "state_ptr": "*i64" if draw else f"*{acc}",
                    "index_ptr": "*i64" if wide else "*u8"}
        flags = {"REGIONS": regions, "EXPLICIT": explicit, "DRAW": draw, "WIDE": wide, "ROUND": False,
                 "CHANNEL_FASTEST": channel_fastest, "SPAN_W": span, "SMALL": small, "BLOCK": BLOCK}
        yield _fmp_fwd_kernel, {"x_ptr": f"*{element}", "y_ptr": f"*{element}", **pointers,
                                **{n: "i32" for n in ints}, "sample_max": "fp32"}, {**flags, "SPAN_H": span}
        yield _fmp_bwd_kernel, {"grad_y_ptr": f"*{element}", "grad_x_ptr": f"*{element}", **pointers,
                                **{n: "i32" for n in ints}, "steps_h": "i32", "steps_w": "i32",
                                "sample_max": "fp32"}, flags
    if element == "fp32":
        yield _fmp_table_kernel, {"state_ptr": "*i64", "table_ptr": "*i64", "lanes": "i32", "in_w": "i32",
                                  "out_w": "i32", "in_h": "i32", "out_h": "i32", "max_out": "i32",
                                  "length": "i32"}, {"BLOCK": 128}


def _stochastic_pool_variants(element):
    """Stochastic pooling's kernels as the launcher (triton_kernels/stochastic_pool2d.py) calls them, 3 x 3 windows
    (the paper's): forward drawn, from explicit uniforms and evaluation's weighting, backward from the offsets and the
    expectation's, both layouts, 32-bit (SMALL) and int64 indices in float32, stride 2 (2 x 2 windows containing an
    input) and stride 1 (3 x 3, the heaviest); the heaviest in the others; and a 2 x 2 draw in float32."""
    from cifarops.triton_kernels.stochastic_pool2d import (BLOCK, _stochastic_pool2d_bwd_kernel,
                                                           _stochastic_pool2d_fwd_kernel)

    sizes = {n: "i32" for n in ("channels", "in_h", "in_w", "out_h", "out_w", "stride_h", "stride_w", "pad_h", "pad_w")}
    fp32 = element == "fp32"
    forward = [(mode, cl, small, 3) for mode in ((0, 1, 2) if fp32 else (0, 2)) for cl in (False, True)
               for small in ((True, False) if fp32 else (False,))]
    if fp32:
        forward.append((0, False, True, 2))
    for mode, channels_last, small, k in forward:
        yield _stochastic_pool2d_fwd_kernel, {
            "x_ptr": f"*{element}", "y_ptr": f"*{element}", "offset_ptr": "*u8" if mode != 2 else f"*{element}",
            "u_ptr": "*fp32" if mode == 1 else f"*{element}", "state_ptr": "*i64" if mode == 0 else f"*{element}",
            "total": "i32" if small else "i64", **sizes,
        }, {"K_H": k, "K_W": k, "MODE": mode, "CHANNELS_LAST": channels_last, "SMALL": small, "ROUND": False,
            "BLOCK": BLOCK}
    backward = [(expectation, cl, small, span) for expectation in (False, True) for cl in (False, True)
                for small in ((True, False) if fp32 else (False,)) for span in ((2, 3) if fp32 else (3,))
                if span == 3 or small]
    for expectation, channels_last, small, span in backward:
        yield _stochastic_pool2d_bwd_kernel, {
            "grad_y_ptr": f"*{element}", "offset_ptr": f"*{element}" if expectation else "*u8", "x_ptr": f"*{element}",
            "grad_x_ptr": f"*{element}", "total": "i32" if small else "i64", **sizes,
        }, {"K_H": 3, "K_W": 3, "SPAN_H": span, "SPAN_W": span, "EXPECTATION": expectation,
            "CHANNELS_LAST": channels_last, "SMALL": small, "ROUND": False, "BLOCK": BLOCK}
