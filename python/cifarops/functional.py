"""The functional API: checks the user's arguments, draws the noise from torch's generators (through
:func:`cifarops.noise.drawn`, which checkpointed blocks record and replay), picks the backend and calls the
op. Data flows module -> functional -> torch.ops.cifarops* (or reference) -> kernel.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops import backends, noise, reference
from cifarops.ops import fractional_max_pool2d as _fmp_ops
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
    return noise.drawn(lambda: torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device))


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
    dtype = opmath_dtype(h.dtype)

    def draw():
        if tuple(coef_range) == (0.0, 1.0):
            # torch.rand is uniform_(0, 1), draw for draw; torch.export.load (torch 2.13) cannot read back a
            # uniform_ traced with its default range (its argument `from` is a Python keyword).
            return torch.rand(shape, dtype=dtype, device=h.device)
        return torch.empty(shape, dtype=dtype, device=h.device).uniform_(*coef_range)

    return noise.drawn(draw).expand(n, c)


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
    the random draws. The output has h's dtype (under autocast, that of ``shortcut + h``).
    """
    alpha_range, beta_range = check_shake_drop_params(p_drop, alpha_range, beta_range, gate_level, level)
    h, shortcut = _autocast_common_dtype(h, shortcut)
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

    # Explicit noise is checked before anything is drawn: a bad beta must not move the generator (or a
    # checkpoint tape) by drawing the gate first.
    gate = _explicit_gate(gate, h) if gate is not None else None
    alpha = _explicit_coefficient(alpha, "alpha", h) if alpha is not None else None
    beta = _explicit_coefficient(beta, "beta", h) if beta is not None else None
    if gate is None:
        gate_shape = (1 if gate_level == "batch" else n,)
        gate = noise.drawn(lambda: torch.empty(gate_shape, dtype=acc, device=h.device).bernoulli_(1.0 - p_drop))
        gate = _explicit_gate(gate, h)
    if alpha is None:
        alpha = _draw_coefficient(level, alpha_range, h)
    if beta is None:
        beta = _draw_coefficient(level, beta_range, h)
    seed = None
    if alpha is None or beta is None:
        seed = draw_seed(h.device)
    return op(h, shortcut, gate, alpha, beta, seed, alpha_range, beta_range)


def shake_drop_schedule(num_blocks: int, p_drop_last: float = 0.5) -> list[float]:
    """The linear-decay rule of the ShakeDrop paper: block l of L (1-based) gets p_drop = l / L * p_drop_last."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"cifarops.shake_drop_schedule: num_blocks must be a non-negative int, got {num_blocks!r}")
    if isinstance(p_drop_last, bool) or not isinstance(p_drop_last, (int, float)) or not 0.0 <= p_drop_last <= 1.0:
        raise ValueError(f"cifarops.shake_drop_schedule: p_drop_last must be a number in [0, 1], got {p_drop_last!r}")
    return [layer / num_blocks * p_drop_last for layer in range(1, num_blocks + 1)]


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
    op = backends.op("shake_shake", h1.device)
    state = None
    if op is reference.shake_shake or noise._active_tapes:
        # The reference has no checks of its own, and a checkpointed block draws its state here: check first.
        drawing = _shake_shake_ops.check_op_args(
            h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, None
        )
        if drawing:
            state = noise.rng_state(h1.device, _shake_shake_ops.STREAMS)
    return op(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state)[0]


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


def _fmp_random_boundaries(n, c, size_in, size_out, device):
    """Graham's random sequences: per axis, in - out increments of 2 and the rest 1, in a uniformly random order
    (the ranks of i.i.d. uniform keys are a uniform permutation). (n, c, 2, max(out) + 1) int64, [width, height]."""
    length = max(size_out) + 1
    axes = []
    for i, o in ((size_in[1], size_out[1]), (size_in[0], size_out[0])):
        ranks = torch.rand(n, c, o, device=device).argsort(-1).argsort(-1)
        steps = 1 + (ranks < i - o).long()
        a = torch.cat([torch.zeros(n, c, 1, dtype=torch.int64, device=device), steps.cumsum(-1)], -1)
        axes.append(torch.nn.functional.pad(a, (0, length - o - 1), value=i))
    return torch.stack(axes, 2)


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
    a_out = input, index 0 for the width) for any sequence; they may be shared per image with C = 1, and their
    values are checked (one host read; skipped under torch.compile, where the kernels clamp to the plane).

    Backward is deterministic and gathers, without atomics. Saved for backward: one byte per output (its
    offset inside the region) unless ``return_indices``, which returns PyTorch's int64 flat indices h * W + w.
    """
    op = "cifarops.fractional_max_pool2d"
    check_nc_input(input, "input", op)
    if input.dim() not in (3, 4):
        raise ValueError(f"{op}: input must be 3- or 4-dimensional ((C, H, W) or (N, C, H, W)), got shape {tuple(input.shape)}")
    check_choice(regions, "regions", _fmp_ops.REGIONS, op)
    check_choice(sequence, "sequence", FMP_SEQUENCES, op)
    if regions == "window" and sequence == "random":
        raise ValueError(f"{op}: sequence='random' is for Graham's 'disjoint' and 'overlapping' regions")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    size_in = tuple(x.shape[2:])
    size_out = _fmp_output_size(size_in, output_size, output_ratio, op)
    if regions == "window" and kernel_size is None:
        raise ValueError(f"{op}: regions='window' needs kernel_size")
    kernel = [] if regions != "window" else list(_fmp_ops._pair_of_ints(kernel_size, "kernel_size", op))
    if regions != "window" and kernel_size is not None:
        raise ValueError(f"{op}: kernel_size is for regions='window'; Graham's {regions!r} regions take none")
    _fmp_ops.check_args(x, kernel, size_out, regions, op)
    if _random_samples is not None and boundaries is not None:
        raise ValueError(f"{op}: pass _random_samples or boundaries, not both")
    n, c = x.shape[0], x.shape[1]
    explicit = _random_samples is not None or boundaries is not None
    samples = None
    if _random_samples is not None:
        if sequence == "random":
            raise ValueError(f"{op}: _random_samples draw pseudorandom sequences; pass boundaries for explicit ones")
        samples = _fmp_explicit(_random_samples, "_random_samples", x, (2,), op)
    elif boundaries is not None:
        if regions == "window":
            raise ValueError(f"{op}: boundaries are for Graham's 'disjoint' and 'overlapping' regions")
        boundaries = _fmp_explicit(boundaries, "boundaries", x, (2, None), op)
    elif sequence == "random":
        boundaries = noise.drawn(lambda: _fmp_random_boundaries(n, 1 if per_image else c, size_in, size_out, x.device))
        boundaries = boundaries.expand(n, c, -1, -1)
    else:
        samples = noise.drawn(lambda: torch.rand(n, 1 if per_image else c, 2, dtype=x.dtype, device=x.device))
        samples = samples.expand(n, c, 2)
    _fmp_ops.check_draws(x, size_in, size_out, regions, samples, boundaries, op,
                         values=explicit and not torch.compiler.is_compiling())
    y, index = _op("fractional_max_pool2d", x.device)(x, kernel, list(size_out), regions, samples, boundaries,
                                                      return_indices)
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
