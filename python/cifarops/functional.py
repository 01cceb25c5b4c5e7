"""The functional API: checks the user's arguments, draws the noise from torch's generators (through
:func:`cifarops.noise.drawn`, which checkpointed blocks record and replay), picks the backend and calls the
op. Data flows module -> functional -> torch.ops.cifarops* (or reference) -> kernel.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from cifarops import backends, noise, reference
from cifarops import philox as _philox
from cifarops.ops import drop_activation as _drop_activation_ops
from cifarops.ops import fractional_max_pool2d as _fmp_ops
from cifarops.ops import maxout as _maxout_ops
from cifarops.ops import shake_drop as _shake_drop_ops
from cifarops.ops import shake_shake as _shake_shake_ops
from cifarops.ops import stochastic_depth as _stochastic_depth_ops
from cifarops.ops import stochastic_pool2d as _stochastic_pool_ops
from cifarops.ops.common import FLOATING, check_choice, check_floating, check_nc_input, check_range

GATE_LEVELS = ("batch", "sample")
LEVELS = ("batch", "sample", "channel", "pixel")
SHAKE_FORWARD_MODES = ("shake", "even")
SHAKE_BACKWARD_MODES = ("shake", "even", "keep")
SHAKE_LEVELS = ("batch", "sample")


def _autocast_common_dtype(*tensors: Optional[torch.Tensor]) -> tuple:
    """Under autocast, a branch (autocast's low precision) and a shortcut (say, the float32 network input)
    may differ in dtype: both are cast to the dtype the unfused ``shortcut + branch`` would have. Outside
    autocast a mismatch stays an error, which the op's checks name."""
    present = [t for t in tensors if isinstance(t, torch.Tensor)]
    if len({t.dtype for t in present}) < 2 or not torch.is_autocast_enabled(present[0].device.type):
        return tensors
    common = present[0].dtype
    for t in present[1:]:
        common = torch.promote_types(common, t.dtype)
    return tuple(t.to(common) if isinstance(t, torch.Tensor) else t for t in tensors)


def check_shake_drop_params(p_drop, alpha_range, beta_range, gate_level, level) -> tuple:
    """Validates ShakeDrop's hyper-parameters; returns the ranges as float pairs."""
    op = "cifarops.shake_drop"
    if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float)) or not 0.0 <= p_drop <= 1.0:
        raise ValueError(f"{op}: p_drop must be a number in [0, 1], got {p_drop!r}")
    alpha_range = check_range(alpha_range, "alpha_range", op)
    beta_range = check_range(beta_range, "beta_range", op)
    check_choice(gate_level, "gate_level", GATE_LEVELS, op)
    check_choice(level, "level", LEVELS, op)
    return alpha_range, beta_range


def shake_drop(
    h: torch.Tensor,
    shortcut: Optional[torch.Tensor] = None,
    *,
    p_drop: float = 0.5,
    alpha_range: Sequence[float] = (-1.0, 1.0),
    beta_range: Sequence[float] = (0.0, 1.0),
    gate_level: str = "batch",
    level: str = "sample",
    training: bool = True,
    gate: Optional[torch.Tensor] = None,
    alpha: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ShakeDrop (Yamada et al., arXiv 1802.02375), fused with the residual addition.

    Training: ``y = shortcut + (b + alpha - b*alpha) * h``, and the gradient to ``h`` is scaled by
    ``b + beta - b*beta`` instead; b ~ Bernoulli(1 - p_drop) per batch or sample (``gate_level``), alpha ~
    U[alpha_range] and beta ~ U[beta_range] per batch, sample, channel or pixel (``level``). The noise is drawn
    inside the kernel from the device generator's Philox state (regenerated in backward, never stored), so
    ``torch.manual_seed`` reproduces it on every backend. Evaluation: ``y = shortcut + E[b + alpha - b*alpha] * h``.
    ``shortcut`` may have fewer channels than ``h``: it is added to the first channels (PyramidNet's
    zero-padded shortcut, without materialising the padding); None returns the scaled branch alone. ``gate``
    ((1,) or (N,)), ``alpha`` and ``beta`` ((1,), (N,), (N, C) or h's shape) replace the random draws. The output
    has h's dtype (under autocast, that of ``shortcut + h``).
    """
    key = (type(p_drop), p_drop, alpha_range, beta_range, gate_level, level)  # the type: True == 1
    try:
        if backends._is_compiling():  # Dynamo would guard on the cache and compile again once it changes
            raise KeyError(key)
        p_drop, alpha_range, beta_range = _VALIDATED_SHAKE_DROP[key]
    except (KeyError, TypeError):  # new (or unhashable) hyper-parameters: validated once
        alpha_range, beta_range = check_shake_drop_params(p_drop, alpha_range, beta_range, gate_level, level)
        p_drop = float(p_drop)
        if not backends._is_compiling() and len(_VALIDATED_SHAKE_DROP) < 1024:
            _VALIDATED_SHAKE_DROP[key] = (p_drop, alpha_range, beta_range)
    return _shake_drop(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta)


# Hyper-parameters already validated, as the op takes them: a model calls the functional API with the same
# few settings every step, and validating them in Python costs more than the rest of the call.
_VALIDATED_SHAKE_DROP: dict = {}


def _residual_rare_cases(op, h, shortcut, **noise):
    """What a fused residual op's fast path leaves out: Python objects the schema would reject with a vaguer
    message, a meta / real device mix (which the backend choice, by h's device, would meet before the op's
    checks), and autocast's common dtype for a low-precision branch and a float32 shortcut. Returns (h, shortcut)."""
    for name, value in (("h", h), ("shortcut", shortcut), *noise.items()):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if shortcut is not None and shortcut.device != h.device:
        raise ValueError(f"{op}: shortcut is on {shortcut.device} but h is on {h.device}")
    return _autocast_common_dtype(h, shortcut)


def _shake_drop(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate=None, alpha=None,
                beta=None):
    """The op call behind F.shake_drop and the ShakeDrop module, with validated hyper-parameters: the op checks
    the tensors (in C++ for the compiled backends) before it draws anything."""
    if not isinstance(h, torch.Tensor) or gate is not None or alpha is not None or beta is not None or (
        shortcut is not None and (not isinstance(shortcut, torch.Tensor) or shortcut.dtype != h.dtype
                                  or shortcut.is_meta != h.is_meta)
    ):  # the rare cases, off the fast path
        h, shortcut = _residual_rare_cases("cifarops.shake_drop", h, shortcut, gate=gate, alpha=alpha, beta=beta)
    rng = noise.rng_state(h.device, _shake_drop_ops.STREAMS) if noise._active_tapes and training else None
    fn, first = backends.fast_ops("shake_drop", h)
    if first is not None:  # the direct entry that returns y alone
        return first(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta, rng)
    return fn(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta, rng)[0]


def shake_drop_schedule(num_blocks: int, p_drop_last: float = 0.5) -> list[float]:
    """The linear-decay rule of the ShakeDrop paper: block l of L (1-based) gets p_drop = l / L * p_drop_last."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"cifarops.shake_drop_schedule: num_blocks must be a non-negative int, got {num_blocks!r}")
    if isinstance(p_drop_last, bool) or not isinstance(p_drop_last, (int, float)) or not 0.0 <= p_drop_last <= 1.0:
        raise ValueError(f"cifarops.shake_drop_schedule: p_drop_last must be a number in [0, 1], got {p_drop_last!r}")
    return [layer / num_blocks * p_drop_last for layer in range(1, num_blocks + 1)]


def check_stochastic_depth_params(p, mode, scale_by_keep) -> float:
    """Validates stochastic depth's hyper-parameters; returns p as a float."""
    op = "cifarops.stochastic_depth"
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be a number in [0, 1], got {p!r}")
    check_choice(mode, "mode", _stochastic_depth_ops.MODES, op)
    if not isinstance(scale_by_keep, bool):
        raise TypeError(f"{op}: scale_by_keep must be a bool, got {type(scale_by_keep).__name__}")
    return float(p)


def stochastic_depth(
    h: torch.Tensor,
    shortcut: Optional[torch.Tensor] = None,
    *,
    p: float = 0.5,
    mode: str = "row",
    scale_by_keep: bool = True,
    training: bool = True,
    gate: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Stochastic depth (Huang et al., arXiv 1603.09382), fused with the residual addition.

    Training: ``y = shortcut + b * s * h`` with b ~ Bernoulli(1 - p) per sample (``mode="row"``) or once for the
    batch (``"batch"``), the conventions of timm's ``drop_path`` and torchvision's ``stochastic_depth`` (``p`` is
    the drop probability); s = 1 / (1 - p) with ``scale_by_keep`` (theirs), else 1 (Huang's original form).
    The gradient to ``h`` is ``b * s * dy``, the gate regenerated in backward from the state the forward drew
    (nothing stored). Evaluation: ``shortcut + h`` scaled, else ``shortcut + (1 - p) * h``. ``shortcut=None``
    returns ``b * s * h`` (timm's and torchvision's signature); a shortcut with fewer channels is added to the
    first channels, as for :func:`shake_drop`. ``gate`` ((1,) or (N,)) replaces the draw. See
    :func:`stochastic_depth_schedule` for Huang's linear rule.
    """
    key = (type(p), p, mode, scale_by_keep)  # the type: True == 1
    try:
        if backends._is_compiling():  # Dynamo would guard on the cache and compile again once it changes
            raise KeyError(key)
        p = _VALIDATED_STOCHASTIC_DEPTH[key]
    except (KeyError, TypeError):
        p_checked = check_stochastic_depth_params(p, mode, scale_by_keep)
        if not backends._is_compiling() and len(_VALIDATED_STOCHASTIC_DEPTH) < 1024:
            _VALIDATED_STOCHASTIC_DEPTH[key] = p_checked
        p = p_checked
    return _stochastic_depth(h, shortcut, p, mode, scale_by_keep, training, gate)


_VALIDATED_STOCHASTIC_DEPTH: dict = {}


def _stochastic_depth(h, shortcut, p, mode, scale_by_keep, training, gate=None):
    """The op call behind F.stochastic_depth and the StochasticDepth module, with validated hyper-parameters."""
    op = "cifarops.stochastic_depth"
    if not isinstance(h, torch.Tensor) or gate is not None or (
        shortcut is not None and (not isinstance(shortcut, torch.Tensor) or shortcut.dtype != h.dtype
                                  or shortcut.is_meta != h.is_meta)
    ):  # the rare cases, off the fast path
        h, shortcut = _residual_rare_cases(op, h, shortcut, gate=gate)
    rng = noise.rng_state(h.device, _stochastic_depth_ops.STREAMS) if noise._active_tapes and training else None
    fn, first = backends.fast_ops("stochastic_depth", h)
    if first is not None:  # the direct entry that returns y alone
        return first(h, shortcut, p, mode, scale_by_keep, training, gate, rng)
    return fn(h, shortcut, p, mode, scale_by_keep, training, gate, rng)[0]


def stochastic_depth_schedule(num_blocks: int, p_last: float = 0.5) -> list[float]:
    """Huang et al.'s linear rule: block l of L (1-based) gets p_l = l / L * p_last (the paper: p_L = 0.5)."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"cifarops.stochastic_depth_schedule: num_blocks must be a non-negative int, got {num_blocks!r}")
    if isinstance(p_last, bool) or not isinstance(p_last, (int, float)) or not 0.0 <= p_last <= 1.0:
        raise ValueError(f"cifarops.stochastic_depth_schedule: p_last must be a number in [0, 1], got {p_last!r}")
    return [layer / num_blocks * p_last for layer in range(1, num_blocks + 1)]


def check_drop_activation_keep(keep, op: str = "cifarops.drop_activation") -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
        raise ValueError(f"{op}: keep must be a number in [0, 1], got {keep!r}")
    return float(keep)


def drop_activation(x: torch.Tensor, keep: float = 0.95, *, training: bool = True,
                    mask: Optional[torch.Tensor] = None, inplace: bool = False) -> torch.Tensor:
    """Drop-Activation (Liang, Khoo & Yang, arXiv 1811.05850): each ReLU kept with probability ``keep`` and the
    identity otherwise, one draw per element: ``y = relu(x)`` where the mask is 1, ``y = x`` where it is 0. The
    mask is drawn inside the kernel from the device generator's Philox state and regenerated in backward (never
    stored); backward reads the output alone. Evaluation: ``keep * relu(x) + (1 - keep) * x``, the leaky ReLU of
    slope 1 - keep. ``mask`` (bool, x's shape; True keeps the ReLU) replaces the draw. ``inplace=True`` writes
    y into x and returns x, as ``relu(x, inplace=True)`` (x must not be a leaf that requires grad; the backward
    needs y alone, so nothing is lost). Under torch.compile and torch.export it is the out-of-place op and a copy
    into x, which the compiler may write in place."""
    if not isinstance(inplace, bool):
        raise TypeError(f"cifarops.drop_activation: inplace must be a bool, got {type(inplace).__name__}")
    op = "cifarops.drop_activation_" if inplace else "cifarops.drop_activation"
    return _drop_activation(x, check_drop_activation_keep(keep, op), training, mask, inplace)


def _drop_activation(x, keep, training, mask=None, inplace=False):
    """The op call behind F.drop_activation and the DropActivation module, with a validated keep."""
    op = "cifarops.drop_activation_" if inplace else "cifarops.drop_activation"
    for name, value in (("x", x), ("mask", mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    rng = noise.rng_state(x.device, _drop_activation_ops.STREAMS) if noise._active_tapes and training else None
    if inplace and not torch.compiler.is_compiling():
        fn, _ = backends.fast_ops("drop_activation_", x)
        fn(x, keep, training, mask, rng)
        return x
    fn, first = backends.fast_ops("drop_activation", x)
    if inplace:
        return x.copy_(fn(x, keep, training, mask, rng)[0])
    if first is not None:
        return first(x, keep, training, mask, rng)
    return fn(x, keep, training, mask, rng)[0]


def check_shake_shake_params(forward_mode, backward_mode, level) -> None:
    op = "cifarops.shake_shake"
    check_choice(forward_mode, "forward_mode", SHAKE_FORWARD_MODES, op)
    check_choice(backward_mode, "backward_mode", SHAKE_BACKWARD_MODES, op)
    check_choice(level, "level", SHAKE_LEVELS, op)


def shake_shake(
    h1: torch.Tensor,
    h2: torch.Tensor,
    shortcut: Optional[torch.Tensor] = None,
    *,
    forward_mode: str = "shake",
    backward_mode: str = "shake",
    level: str = "sample",
    training: bool = True,
    alpha: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Shake-Shake (Gastaldi, arXiv 1705.07485), fused with the residual addition.

    Training: ``y = shortcut + alpha * h1 + (1 - alpha) * h2``, and the gradients to the branches are
    ``beta * dy`` and ``(1 - beta) * dy``. ``forward_mode``: ``"shake"`` (alpha ~ U[0, 1]) or ``"even"``
    (alpha = 0.5); ``backward_mode``: ``"shake"`` (beta ~ U[0, 1], drawn independently), ``"even"`` (0.5) or
    ``"keep"`` (beta = alpha); ``level``: ``"batch"`` (one draw per mini-batch) or ``"sample"`` (one per image:
    the paper's best CIFAR-10 result, Shake-Shake-Image). Evaluation mixes with 0.5. ``shortcut=None``
    returns the mix alone. Explicit ``alpha`` / ``beta`` of shape (1,) or (N,) replace the draws.

    The noise is drawn inside the op from torch's generator of the device (cifarops.philox). The op checks
    its arguments itself (csrc/args/shake_shake.cpp; the Python twin in cifarops.ops.shake_shake for the
    Triton and reference backends) before it draws.
    """
    if not isinstance(h1, torch.Tensor) or not isinstance(h2, torch.Tensor) or (
        shortcut is not None and not isinstance(shortcut, torch.Tensor)
    ):
        for t, name in ((h1, "h1"), (h2, "h2"), (shortcut, "shortcut")):
            if t is not None or name != "shortcut":
                check_nc_input(t, name, "cifarops.shake_shake")
    for t, name in ((alpha, "alpha"), (beta, "beta")):
        if t is not None and not isinstance(t, torch.Tensor):
            check_floating(t, name, "cifarops.shake_shake")
    if h2.dtype != h1.dtype or (shortcut is not None and shortcut.dtype != h1.dtype):
        h1, h2, shortcut = _autocast_common_dtype(h1, h2, shortcut)
    op, first = backends.fast_ops("shake_shake", h1)
    state = None
    if op is reference.shake_shake or noise._active_tapes:
        # The reference has no checks of its own, and a checkpointed block draws its state here: check first.
        drawing = _shake_shake_ops.check_op_args(
            h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, None
        )
        if drawing:
            state = noise.rng_state(h1.device, _shake_shake_ops.STREAMS)
    if first is not None:
        return first(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state)
    return op(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state)[0]


# The compiled ops' callables: an OpOverload, or the direct entry (a builtin) that backends.fast_op gives.
_COMPILED_OP_TYPES = (torch._ops.OpOverload, type(len))


def _maxout_checks(fn, x, pieces, dim, grouping, op, temperature=None) -> None:
    """What the op itself cannot check: hyper-parameters of the wrong Python type (a bool or float for an int,
    a str for a float), and everything on the reference backend (a plain function, not a compiled op). The
    compiled and Triton ops check the rest themselves, with the same exception types and messages."""
    if (
        type(pieces) is not int or type(dim) is not int or type(grouping) is not str or type(fn) not in _COMPILED_OP_TYPES
        or (temperature is not None and type(temperature) is not float and type(temperature) is not int)
    ):
        _maxout_ops.check_args(x, pieces, dim, grouping, op, temperature)


def maxout(x: torch.Tensor, pieces: int, dim: int = 1, grouping: str = "contiguous") -> torch.Tensor:
    """Maxout (Goodfellow et al., arXiv 1302.4389): the maximum over groups of ``pieces`` channels along
    ``dim``, turning C channels into C / pieces. ``grouping="contiguous"`` (pylearn2, Goodfellow's code)
    takes channels ``j*k .. j*k + k-1`` for output j; ``"strided"`` (Lua nn.Maxout) takes ``j, j + C/k, ...``.
    The gradient goes to the first maximum; NaN propagates. Saved for backward: one byte per output.
    """
    if not isinstance(x, torch.Tensor):
        _maxout_ops.check_args(x, pieces, dim, grouping, "cifarops.maxout")
    fn, first = backends.fast_ops("maxout", x)
    _maxout_checks(fn, x, pieces, dim, grouping, "cifarops.maxout")
    if first is not None:
        return first(x, pieces, dim, grouping)
    return fn(x, pieces, dim, grouping)[0]


def probabilistic_maxout(
    x: torch.Tensor,
    pieces: int,
    dim: int = 1,
    grouping: str = "contiguous",
    *,
    temperature: float = 1.0,
    training: bool = True,
) -> torch.Tensor:
    """Probabilistic maxout (Springenberg & Riedmiller, arXiv 1312.6116, section 3).

    Each group's pieces z get probabilities p = softmax(lambda * z) with lambda = 1 / ``temperature`` (the
    paper's inverse temperature; temperature -> 0 gives maxout). Training: the output is z_i for one piece i
    drawn from p per output element, inside the kernel, from the Philox state of torch's generator of x's
    device (the gradient flows to the drawn piece). Evaluation: the expectation sum_i p_i z_i, whose gradient
    includes the softmax's own derivative. Grouping and ``dim`` as in :func:`maxout`.
    """
    op_name = "cifarops.probabilistic_maxout"
    if not isinstance(x, torch.Tensor):
        _maxout_ops.check_args(x, pieces, dim, grouping, op_name, temperature)
    if not training:
        fn = backends.fast_op("probabilistic_maxout_expectation", x)
        _maxout_checks(fn, x, pieces, dim, grouping, op_name, temperature)
        return fn(x, pieces, dim, grouping, float(temperature))
    fn, first = backends.fast_ops("probabilistic_maxout", x)
    _maxout_checks(fn, x, pieces, dim, grouping, op_name, temperature)
    state = noise.rng_state(x.device, _maxout_ops.STREAMS) if noise._active_tapes else None
    if first is not None:
        return first(x, pieces, dim, grouping, float(temperature), state)
    return fn(x, pieces, dim, grouping, float(temperature), state)[0]


def parse_stochastic_pool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
                            op: str = "cifarops.stochastic_pool2d") -> tuple:
    """kernel_size, stride (None: kernel_size) and padding as [height, width] lists, the types checked (the
    values are the op's to check)."""
    kernel = list(_stochastic_pool_ops.pair(kernel_size, "kernel_size", op))
    stride = list(kernel) if stride is None else list(_stochastic_pool_ops.pair(stride, "stride", op))
    padding = list(_stochastic_pool_ops.pair(padding, "padding", op))
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    return kernel, stride, padding, ceil_mode


def stochastic_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False, *,
                      training: bool = True, uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557) of a (N, C, H, W) or (C, H, W) input, with
    max_pool2d's ``kernel_size``, ``stride`` (default: ``kernel_size``), ``padding`` and ``ceil_mode`` (padded
    positions weigh 0). Training: each output is one element of its region, drawn with probability a_i / sum a
    (a = max(x, 0): the activations after a ReLU), one uniform per output drawn inside the kernel from the device
    generator's Philox state, or ``uniforms`` (float32, the output's shape, u in [0, 1)); the gradient goes to
    the drawn element, and a region with no positive activation outputs 0 and passes none. Saved for backward:
    one byte per output. Evaluation: the probabilistic weighting sum a^2 / sum a of each region, and its
    gradient. NaN in a region propagates to its output."""
    op = "cifarops.stochastic_pool2d"
    return _stochastic_pool2d(input, *parse_stochastic_pool2d(kernel_size, stride, padding, ceil_mode, op),
                              training, uniforms)


def _stochastic_pool2d(x, kernel, stride, padding, ceil_mode, training, uniforms=None):
    """The op call behind F.stochastic_pool2d and the StochasticPool2d module, with parsed sizes."""
    op = "cifarops.stochastic_pool2d"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor, got {type(x).__name__}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
        if isinstance(uniforms, torch.Tensor):
            uniforms = uniforms.unsqueeze(0)
    if not training:
        if uniforms is not None:
            raise ValueError(f"{op}: uniforms are training noise; pass training=True")
        y = backends.fast_op("stochastic_pool2d_expectation", x)(x, kernel, stride, padding, ceil_mode)
    else:
        if uniforms is not None and not isinstance(uniforms, torch.Tensor):
            raise TypeError(f"{op}: uniforms must be a torch.Tensor, got {type(uniforms).__name__}")
        state = noise.rng_state(x.device, _stochastic_pool_ops.STREAMS) if noise._active_tapes and uniforms is None else None
        fn, first = backends.fast_ops("stochastic_pool2d", x)
        if first is not None:
            y = first(x, kernel, stride, padding, ceil_mode, uniforms, state)
        else:
            y = fn(x, kernel, stride, padding, ceil_mode, uniforms, state)[0]
    return y.squeeze(0) if unbatched else y


FMP_SEQUENCES = ("pseudorandom", "random")


def _fmp_output_size(size_in, output_size, output_ratio, op):
    """PyTorch's rule: output_size, or int(input * output_ratio) per axis; exactly one of them."""
    if (output_size is None) == (output_ratio is None):
        raise ValueError(f"{op}: pass exactly one of output_size and output_ratio (PyTorch would silently ignore one)")
    if output_size is not None:
        return _fmp_ops._pair_of_ints(output_size, "output_size", op)
    ratios = (output_ratio, output_ratio) if isinstance(output_ratio, (int, float)) else tuple(output_ratio)
    if len(ratios) != 2 or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < 1 for r in ratios):
        raise ValueError(f"{op}: output_ratio must be a number or a pair of numbers in (0, 1), got {output_ratio!r}")
    return tuple(int(i * r) for i, r in zip(size_in, ratios))


def _fmp_random_boundaries(n, c, size_in, size_out, device, state=None):
    """Graham's random sequences as the ops draw them (reference.fmp_drawn_boundaries, Philox stream 1): per
    axis, in - out increments of 2 and the rest 1, each placement equally likely. (n, c, 2, max(out) + 1)
    int64, [width, height]; from `state`, else from torch's generator of `device`."""
    if state is None:
        state = _philox.draw_state(device, _fmp_ops.STREAMS)
    return reference.fmp_drawn_boundaries(state, n, c, size_in, size_out)


def _fmp_explicit(t, name, x, trailing, op):
    """An explicit draw of shape (N, C, *trailing) or, shared per image, (N, 1, *trailing): expanded to (N, C, ...)."""
    n, c = x.shape[0], x.shape[1]
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 + len(trailing) or t.shape[0] != n or t.shape[1] not in (1, c) or any(
        want is not None and got != want for got, want in zip(t.shape[2:], trailing)
    ):
        dims = ", ".join(str(d) if d is not None else "L" for d in trailing)
        raise ValueError(f"{op}: {name} must have shape (N, C, {dims}) or (N, 1, {dims}) with N = {n}, C = {c}, "
                         f"got {tuple(t.shape)}")
    return t.expand(n, c, *t.shape[2:])


def fractional_max_pool2d(
    input: torch.Tensor,
    kernel_size=None,
    output_size=None,
    output_ratio=None,
    return_indices: bool = False,
    _random_samples: Optional[torch.Tensor] = None,
    *,
    regions: str = "window",
    sequence: str = "pseudorandom",
    per_image: bool = False,
    boundaries: Optional[torch.Tensor] = None,
):
    """Fractional max-pooling (Graham, arXiv 1412.6071) of a (N, C, H, W) or (C, H, W) input.

    With the defaults it is ``torch.nn.functional.fractional_max_pool2d``: k x k windows whose starts follow
    ATen's intervals; given the same ``_random_samples`` ((N, C, 2), the input's dtype, u in [0, 1), index 0
    for the width) the outputs, indices and gradients are PyTorch's, element for element. Exactly one of
    ``output_size`` and ``output_ratio`` (in (0, 1); PyTorch's int(input * ratio)).

    Graham's modes: ``regions="disjoint"`` or ``"overlapping"`` (no ``kernel_size``; 1 < input / output <= 2)
    with ``sequence="pseudorandom"`` (a_i = floor(alpha (i + u)) - floor(alpha u), u from the samples) or
    ``"random"`` (increments of 1 and 2 in a uniformly random order). ``per_image=True`` shares one draw across
    the channels of an image (Graham); the default draws per (image, channel) (PyTorch). Explicit draws:
    ``_random_samples`` for pseudorandom sequences, ``boundaries`` ((N, C or 1, 2, L) int64, a_0 = 0 ...
    a_out = input, index 0 for the width) for any sequence; they may be shared per image with C = 1. Their
    values are checked on the CPU (ValueError); on a GPU on the device, without a host sync (a bad draw stops
    the kernel, and the next synchronising call raises "device-side assert triggered"), or with
    CIFAROPS_CHECK_VALUES=1 read back and raised at once as on the CPU (a host sync every call).

    Backward is deterministic and gathers, without atomics. Saved for backward: one byte per output (its
    offset inside the region) unless ``return_indices``, which returns PyTorch's int64 flat indices h * W + w.
    """
    if _random_samples is None and boundaries is None and type(input) is torch.Tensor and not backends._is_compiling():
        # The usual call (hyper-parameters seen before, a 4-D input, draws made by the op): parsed once. Not
        # under torch.compile, whose trace would fill the caches and then fail its own guards on them.
        last = _fmp_last
        try:
            if (kernel_size is last[0] and output_size is last[1] and output_ratio is last[2] and regions is last[3]
                    and sequence is last[4]):  # the very objects of the last call (a layer's own): no key to build
                kernel, size_out, ratio = last[5]
            else:
                kernel, size_out, ratio = _FMP_PARSED[_fmp_key(kernel_size, output_size, output_ratio, regions,
                                                               sequence)]
                _remember_fmp(kernel_size, output_size, output_ratio, regions, sequence, (kernel, size_out, ratio))
        except (KeyError, TypeError):
            pass
        else:
            if input.dim() == 4 and input.dtype in _FLOATING and not noise._active_tapes:
                if size_out is None:
                    size_out = [int(input.shape[2] * ratio[0]), int(input.shape[3] * ratio[1])]
                fn, first = backends.fast_ops("fractional_max_pool2d", input)
                if first is not None and not return_indices:  # the direct entry that returns y alone
                    return first(input, kernel, size_out, regions, None, None, False, sequence, per_image, None)
                if fn is not _reference_fmp:  # the compiled and Triton ops check the rest themselves
                    y, index, _ = fn(input, kernel, size_out, regions, None, None, return_indices, sequence,
                                     per_image, None)
                    return (y, index) if return_indices else y
    op = FMP_OP
    check_nc_input(input, "input", op)
    dim = input.dim()
    if dim != 3 and dim != 4:
        raise ValueError(f"{op}: input must be 3- or 4-dimensional ((C, H, W) or (N, C, H, W)), got shape {tuple(input.shape)}")
    check_choice(regions, "regions", _fmp_ops.REGIONS, op)
    check_choice(sequence, "sequence", FMP_SEQUENCES, op)
    x = input.unsqueeze(0) if dim == 3 else input
    size_out = _fmp_output_size(x.shape[2:], output_size, output_ratio, op)
    kernel = _fmp_kernel(kernel_size, regions, op)
    try:  # valid: remembered for the next call
        key = _fmp_key(kernel_size, output_size, output_ratio, regions, sequence)
        if not backends._is_compiling() and len(_FMP_PARSED) < 1024:  # (no guard on the cache's size)
            ratio = None if output_ratio is None else (
                (output_ratio, output_ratio) if isinstance(output_ratio, (int, float)) else tuple(output_ratio))
            _FMP_PARSED[key] = (kernel, None if ratio else list(size_out), ratio)
    except TypeError:  # unhashable (a list): parsed every call
        pass
    return _fmp_call(x, kernel, list(size_out), return_indices, _random_samples, boundaries, regions, sequence,
                     per_image, dim == 3)


FMP_OP = "cifarops.fractional_max_pool2d"
# The values of explicit draws on a GPU (samples in [0, 1), boundaries in steps of 1 or 2) are checked on the
# device (the CUDA kernels' FmpParams::check_draws, torch._assert_async for the Triton and reference ops): no host
# sync, an asynchronous "device-side assert triggered". CIFAROPS_CHECK_VALUES=1 reads them back instead and raises
# the CPU's ValueError at once, a host sync on every call. CPU tensors are always read and checked.
CHECK_DEVICE_VALUES = os.environ.get("CIFAROPS_CHECK_VALUES", "") == "1"
_FLOATING = frozenset(FLOATING)
# Validated FMP hyper-parameters -> (kernel, output size or None, output ratio or None), as the op takes them.
_FMP_PARSED: dict = {}


_fmp_last: tuple = (object(),) * 5 + (None,)  # the hyper-parameter objects of the last cached call, parsed


def _remember_fmp(*last) -> None:
    global _fmp_last
    _fmp_last = last


def _fmp_key(kernel_size, output_size, output_ratio, regions, sequence) -> tuple:
    """The cache key of FMP's hyper-parameters. It tells 2 from 2.0 and True (hash-equal, but not the same
    argument): the values with their types, and a tuple's element types. TypeError for what cannot be a key."""
    key = [regions, sequence]
    for value in (kernel_size, output_size, output_ratio):
        key.append(value)
        key.append(type(value) if type(value) is not tuple else tuple(map(type, value)))
    return tuple(key)


def _fmp_kernel(kernel_size, regions, op) -> list:
    if regions != "window":
        if kernel_size is not None:
            raise ValueError(f"{op}: kernel_size is for regions='window'; Graham's {regions!r} regions take none")
        return []
    if kernel_size is None:
        raise ValueError(f"{op}: regions='window' needs kernel_size")
    return list(_fmp_ops._pair_of_ints(kernel_size, "kernel_size", op))


def _fmp_call(x, kernel, size_out, return_indices, samples, boundaries, regions, sequence, per_image, unbatched):
    """The op call of fractional_max_pool2d for a 4-D x, parsed sizes and checked names: the op checks the rest
    (in C++ for the compiled backends) and draws the regions itself when no draws are given."""
    op = FMP_OP
    state = None
    if samples is not None or boundaries is not None:
        if samples is not None and boundaries is not None:
            raise ValueError(f"{op}: pass _random_samples or boundaries, not both")
        if samples is not None:
            if sequence == "random":
                raise ValueError(f"{op}: _random_samples draw pseudorandom sequences; pass boundaries for explicit ones")
            samples = _fmp_explicit(samples, "_random_samples", x, (2,), op)
        else:
            if regions == "window":
                raise ValueError(f"{op}: boundaries are for Graham's 'disjoint' and 'overlapping' regions")
            boundaries = _fmp_explicit(boundaries, "boundaries", x, (2, None), op)
        if x.device.type != "cpu" and not torch.compiler.is_compiling():
            # Shapes, dtypes and devices here, before the backend is chosen by x's device; the values only when
            # asked (a host read, a device sync every call). The CPU ops read the values themselves.
            _fmp_ops.check_args(x, kernel, size_out, regions, op, sequence=sequence)
            _fmp_ops.check_draws(x, tuple(x.shape[2:]), size_out, regions, samples, boundaries, op,
                                 values=CHECK_DEVICE_VALUES, sequence=sequence)
    elif noise._active_tapes:  # a checkpointed block records the state (else the op draws it itself)
        state = noise.rng_state(x.device, _fmp_ops.STREAMS)
    fn = backends.fast_op("fractional_max_pool2d", x)
    if fn is _reference_fmp:  # the compiled and Triton ops check their own arguments
        kernel_, size_out_, size_in = _fmp_ops.check_args(x, kernel, size_out, regions, op, sequence=sequence)
        compiling = torch.compiler.is_compiling()
        _fmp_ops.check_draws(x, size_in, size_out_, regions, samples, boundaries, op,
                             values=(x.device.type == "cpu" or CHECK_DEVICE_VALUES) and not compiling,
                             device_values=not compiling, sequence=sequence, rng_state=state)
    y, index, _ = fn(x, kernel, size_out, regions, samples, boundaries, return_indices, sequence, per_image, state)
    if unbatched:
        y, index = y.squeeze(0), index.squeeze(0)
    return (y, index) if return_indices else y


@torch.no_grad()
def fmp_model_average(model: torch.nn.Module, input: torch.Tensor, draws: int = 12, *, softmax: bool = True) -> torch.Tensor:
    """Graham's FMP model averaging (arXiv 1412.6071): the mean of the model's
    output over ``draws`` independent draws of every fractional max-pooling layer's regions (each call of a
    layer draws anew, in eval mode too, as PyTorch's). ``softmax`` averages class probabilities (the paper's
    test-time rule) rather than logits. Put the model in eval mode first, for BatchNorm and dropout."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"cifarops.fmp_model_average: draws must be a positive int, got {draws!r}")
    total = None
    for _ in range(draws):
        out = model(input)
        out = torch.softmax(out.float(), dim=-1) if softmax else out
        total = out if total is None else total + out
    return total / draws


_reference_fmp = reference.fractional_max_pool2d
