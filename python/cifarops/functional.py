"""The functional API: checks the user's arguments, draws the noise from torch's generators, picks the
backend and calls the op. Data flows module -> functional -> torch.ops.cifarops* (or reference) -> kernel.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops import backends, reference
from cifarops.ops import maxout as _maxout_ops
from cifarops.ops import shake_drop as _shake_drop_ops
from cifarops.ops import shake_shake as _shake_shake_ops
from cifarops.ops.common import check_choice, check_floating, check_nc_input, check_range, check_same_device, opmath_dtype

GATE_LEVELS = ("batch", "sample")
LEVELS = ("batch", "sample", "channel", "pixel")
SHAKE_FORWARD_MODES = ("shake", "even")
SHAKE_BACKWARD_MODES = ("shake", "even", "keep")
SHAKE_LEVELS = ("batch", "sample")


def _op(name: str, device: torch.device):
    backend = backends.select_backend(device)
    if backend == "reference":
        return getattr(reference, name)
    namespace = torch.ops.cifarops_triton if backend == "triton" else torch.ops.cifarops
    return getattr(namespace, name)


def draw_seed(device: torch.device) -> torch.Tensor:
    """A Philox key for per-element noise, from torch's generator of `device`: on the device, so no host
    sync, and traceable by torch.compile."""
    return torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)


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


def _explicit_gate(gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    op = "cifarops.shake_drop"
    check_floating(gate, "gate", op)
    check_same_device(gate, h, "gate", op)
    n = h.shape[0]
    if tuple(gate.shape) not in ((1,), (n,)):
        raise ValueError(f"{op}: gate must have shape (1,) or (N,) = ({n},), got {tuple(gate.shape)}")
    return gate.to(opmath_dtype(h.dtype)).expand(n)


def _explicit_coefficient(coef: torch.Tensor, name: str, h: torch.Tensor) -> torch.Tensor:
    """(1,), (N,), (N, C) or h-shaped coefficients, as the op's (N, C) view or h-shaped tensor."""
    op = "cifarops.shake_drop"
    check_floating(coef, name, op)
    check_same_device(coef, h, name, op)
    n, c = h.shape[0], h.shape[1]
    coef = coef.to(opmath_dtype(h.dtype))
    if tuple(coef.shape) in ((1,), (n,)):
        return coef.reshape(-1, 1).expand(n, c)
    if tuple(coef.shape) in ((n, c), tuple(h.shape)):
        return coef
    raise ValueError(
        f"{op}: {name} must have shape (1,), (N,) = ({n},), (N, C) = ({n}, {c}) or h's shape {tuple(h.shape)}, "
        f"got {tuple(coef.shape)}"
    )


def _draw_coefficient(level: str, coef_range: tuple[float, float], h: torch.Tensor) -> Optional[torch.Tensor]:
    """U[coef_range] at `level`, as the op's (N, C) view; None for pixel level (Philox in the kernel)."""
    n, c = h.shape[0], h.shape[1]
    if level == "pixel":
        return None
    shape = {"batch": (1, 1), "sample": (n, 1), "channel": (n, c)}[level]
    return torch.empty(shape, dtype=opmath_dtype(h.dtype), device=h.device).uniform_(*coef_range).expand(n, c)


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
    U[alpha_range] and beta ~ U[beta_range] per batch, sample, channel or pixel (``level``; pixel noise comes
    from a Philox stream, regenerated in backward rather than stored). Evaluation: ``y = shortcut +
    E[b + alpha - b*alpha] * h``. ``shortcut`` may have fewer channels than ``h``: it is added to the first
    channels (PyramidNet's zero-padded shortcut, without materialising the padding); None returns the scaled
    branch alone. ``gate`` ((1,) or (N,)), ``alpha`` and ``beta`` ((1,), (N,), (N, C) or h's shape) replace
    the random draws. The output has h's dtype.
    """
    alpha_range, beta_range = check_shake_drop_params(p_drop, alpha_range, beta_range, gate_level, level)
    check_nc_input(h, "h", "cifarops.shake_drop")
    _shake_drop_ops.check_shortcut(h, shortcut)
    op = _op("shake_drop", h.device)
    n, c, acc = h.shape[0], h.shape[1], opmath_dtype(h.dtype)
    if not training:
        if gate is not None or alpha is not None or beta is not None:
            raise ValueError("cifarops.shake_drop: gate, alpha and beta are training noise; pass training=True")
        expected = (1.0 - p_drop) + p_drop * (alpha_range[0] + alpha_range[1]) / 2
        # gate 0 makes the scale exactly the coefficient: y = x + E * h, and the gradient is E * dy.
        # Two tensors, not one passed twice: torch.compile rejects duplicate autograd.Function inputs.
        alpha, beta = (torch.full((1, 1), expected, dtype=acc, device=h.device).expand(n, c) for _ in range(2))
        zero_gate = torch.zeros((1,), dtype=acc, device=h.device).expand(n)
        return op(h, shortcut, zero_gate, alpha, beta, None, alpha_range, beta_range)

    if gate is None:
        gate = torch.empty((1 if gate_level == "batch" else n,), dtype=acc, device=h.device).bernoulli_(1.0 - p_drop)
    gate = _explicit_gate(gate, h)
    alpha = _explicit_coefficient(alpha, "alpha", h) if alpha is not None else _draw_coefficient(level, alpha_range, h)
    beta = _explicit_coefficient(beta, "beta", h) if beta is not None else _draw_coefficient(level, beta_range, h)
    seed = None
    if alpha is None or beta is None:
        seed = draw_seed(h.device)
    return op(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range)


def shake_drop_schedule(num_blocks: int, p_drop_last: float = 0.5) -> list[float]:
    """The linear-decay rule of the ShakeDrop paper: block l of L (1-based) gets p_drop = l / L * p_drop_last."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"cifarops.shake_drop_schedule: num_blocks must be a non-negative int, got {num_blocks!r}")
    if not 0.0 <= p_drop_last <= 1.0:
        raise ValueError(f"cifarops.shake_drop_schedule: p_drop_last must be in [0, 1], got {p_drop_last!r}")
    return [layer / num_blocks * p_drop_last for layer in range(1, num_blocks + 1)]


def check_shake_shake_params(forward_mode, backward_mode, level) -> None:
    op = "cifarops.shake_shake"
    check_choice(forward_mode, "forward_mode", SHAKE_FORWARD_MODES, op)
    check_choice(backward_mode, "backward_mode", SHAKE_BACKWARD_MODES, op)
    check_choice(level, "level", SHAKE_LEVELS, op)


def _per_sample_coefficient(coef: torch.Tensor, name: str, h1: torch.Tensor) -> torch.Tensor:
    """An explicit (1,) or (N,) coefficient as the op's (N,) tensor in the compute type."""
    op = "cifarops.shake_shake"
    check_floating(coef, name, op)
    check_same_device(coef, h1, name, op, ref_name="h1")
    n = h1.shape[0]
    if tuple(coef.shape) not in ((1,), (n,)):
        raise ValueError(f"{op}: {name} must have shape (1,) or (N,) = ({n},), got {tuple(coef.shape)}")
    return coef.to(opmath_dtype(h1.dtype)).expand(n)


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
    """
    check_shake_shake_params(forward_mode, backward_mode, level)
    check_nc_input(h1, "h1", "cifarops.shake_shake")
    _shake_shake_ops.check_like_h1(h2, h1, "h2")
    if shortcut is not None:
        _shake_shake_ops.check_like_h1(shortcut, h1, "shortcut")
    op = _op("shake_shake", h1.device)
    n, acc = h1.shape[0], opmath_dtype(h1.dtype)

    def constant(value):
        return torch.full((1,), value, dtype=acc, device=h1.device).expand(n)

    if not training:
        if alpha is not None or beta is not None:
            raise ValueError("cifarops.shake_shake: alpha and beta are training noise; pass training=True")
        return op(h1, h2, shortcut, constant(0.5), constant(0.5))

    def draw():
        return torch.rand((1 if level == "batch" else n,), dtype=acc, device=h1.device).expand(n)

    if alpha is not None:
        alpha = _per_sample_coefficient(alpha, "alpha", h1)
    else:
        alpha = draw() if forward_mode == "shake" else constant(0.5)
    if beta is not None:
        beta = _per_sample_coefficient(beta, "beta", h1)
    elif backward_mode == "keep":
        beta = alpha.clone()  # a separate tensor: torch.compile rejects one passed twice to autograd.Function
    else:
        beta = draw() if backward_mode == "shake" else constant(0.5)
    return op(h1, h2, shortcut, alpha, beta)


def maxout(x: torch.Tensor, pieces: int, dim: int = 1, grouping: str = "contiguous") -> torch.Tensor:
    """Maxout (Goodfellow et al., arXiv 1302.4389): the maximum over groups of ``pieces`` channels along
    ``dim``, turning C channels into C / pieces. ``grouping="contiguous"`` (pylearn2, Goodfellow's code)
    takes channels ``j*k .. j*k + k-1`` for output j; ``"strided"`` (Lua nn.Maxout) takes ``j, j + C/k, ...``.
    The gradient goes to the first maximum; NaN propagates. Saved for backward: one byte per output.
    """
    _maxout_ops.check_args(x, pieces, dim, grouping, "cifarops.maxout")
    return _op("maxout", x.device)(x, pieces, dim, grouping)[0]


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
    drawn from p per output element (Philox noise seeded from torch's generator; the gradient flows to the
    drawn piece). Evaluation: the expectation sum_i p_i z_i, whose gradient includes the softmax's own
    derivative. Grouping and ``dim`` as in :func:`maxout`.
    """
    op_name = "cifarops.probabilistic_maxout"
    _maxout_ops.check_args(x, pieces, dim, grouping, op_name, temperature)
    if not training:
        return _op("probabilistic_maxout_expectation", x.device)(x, pieces, dim, grouping, float(temperature))
    seed = draw_seed(x.device)
    return _op("probabilistic_maxout", x.device)(x, pieces, dim, grouping, float(temperature), seed)[0]
