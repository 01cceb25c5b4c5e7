"""Stochastic depth in Triton: ShakeDrop's kernel (triton_kernels/shake_drop.py) with a zero coefficient and the
gate worth s, so one pass computes out = shortcut + b * s * h (SPEC.md; the same gate, Philox stream 0, as
csrc/args/stochastic_depth.cpp draws). The backward pass is the same kernel with no shortcut.
"""

from cifarops.triton_kernels.shake_drop import launch

GATE_LEVELS = {"row": "sample", "batch": "batch"}


def keep_scale(p: float, scale_by_keep: bool) -> float:
    """s: 1 / (1 - p) when scaled (0 at p = 1, where every gate is 0), else 1."""
    if not scale_by_keep:
        return 1.0
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def stochastic_depth_apply(h, shortcut, p, mode, scale_by_keep, training, gate, state):
    """Launches the kernel; arguments were checked by the caller (cifarops.ops.stochastic_depth)."""
    if not training:
        return launch(h, shortcut, state, gate_value=1.0 if scale_by_keep else 1.0 - p, coef_value=0.0)
    return launch(h, shortcut, state, keep=1.0 - p, gate_level=GATE_LEVELS[mode], gate=gate,
                  gate_gain=keep_scale(p, scale_by_keep), coef_value=0.0)
