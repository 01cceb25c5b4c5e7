"""Pure-PyTorch versions of every op: the test oracle and the fallback backend.

Each function mirrors its torch.library op argument for argument and output for output: its noise comes from
an explicit rng_state or from the state cifarops.philox.draw_state takes from torch's generator, exactly as
the kernels take it, so the same generator state gives the same numbers on every backend. It computes in the
same precision as the kernels: float64 for float64 tensors, float32 otherwise, rounded once at the end. It
checks nothing itself (backends.op runs the ops' Python checks in front of it) and imports nothing from the
ops it checks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cifarops.philox import draw_state, philox_uniform, philox_uniform_range


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------- ShakeDrop


def shake_drop_scale(gate: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """b + c - b*c, written b + (1 - b) c: exact for gates of 0 and 1 (same form as the kernels)."""
    return gate + (1 - gate) * coef


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


SHAKE_DROP_STREAMS = 3  # the gate, alpha and beta (csrc/include/cifarops/shake_drop.h)


def _uniform_at(state: torch.Tensor, shape: tuple, like: torch.Tensor, stream: int) -> torch.Tensor:
    """u(index, stream) for the logical indices of a (broadcastable) `shape` of h: batch (1, 1), sample (N, 1),
    channel (N, C) or pixel (h's shape), as float32 shaped to broadcast against h."""
    numel = 1
    for size in shape:
        numel *= size
    index = torch.arange(numel, dtype=torch.int64, device=like.device).reshape(*shape, *([1] * (like.dim() - len(shape))))
    return philox_uniform(state, index, stream)


_LEVEL_SHAPES = {"batch": lambda h: (1, 1), "sample": lambda h: (h.shape[0], 1),
                 "channel": lambda h: tuple(h.shape[:2]), "pixel": lambda h: tuple(h.shape)}


def _shake_drop_noise(h, p_drop, alpha_range, coef_range, gate_level, level, training, gate, coef, state, stream):
    """(gate, coefficient) broadcastable to h in the compute type: explicit, drawn from `state`, or evaluation's
    constants (gate 0, coefficient E[b + alpha - b alpha])."""
    acc = opmath_dtype(h.dtype)
    if not training:
        expected = (1.0 - p_drop) + p_drop * (alpha_range[0] + alpha_range[1]) / 2
        return torch.zeros((), dtype=acc, device=h.device), torch.full((), expected, dtype=acc, device=h.device)
    if gate is None:
        u = _uniform_at(state, (1,) if gate_level == "batch" else (h.shape[0],), h, stream=0)
        gate = (u < 1.0 - p_drop).to(acc)  # compared in float32, as the kernels do (a Python scalar takes u's dtype)
    else:
        gate = _per_sample(gate.to(acc).expand(h.shape[0]), h)
    if coef is None:
        # float32 bounds made on the device (a fill each, never a host-to-device copy)
        lo, hi = (torch.full((), float(v), dtype=torch.float32, device=h.device) for v in coef_range)
        coef = (lo + (hi - lo) * _uniform_at(state, _LEVEL_SHAPES[level](h), h, stream)).to(acc)
    else:
        coef = coef.to(acc)
        if coef.dim() == 1:
            coef = _per_sample(coef.expand(h.shape[0]), h)
        elif coef.dim() == 2 and h.dim() != 2:
            coef = coef.reshape(*coef.shape, *([1] * (h.dim() - 2)))
    return gate, coef


def _draws(training, *noise) -> bool:
    return training and any(t is None for t in noise)


def shake_drop_backward(grad_y, rng_state, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta):
    """grad_h = (b + beta - b * beta) * grad_y, the noise regenerated from rng_state (the `_shake_drop_backward` op)."""
    b, c = _shake_drop_noise(grad_y, p_drop, alpha_range, beta_range, gate_level, level, training, gate, beta,
                             rng_state, stream=2)
    scale = shake_drop_scale(b, c)
    return (grad_y.to(scale.dtype) * scale).to(grad_y.dtype)  # grad_y first: its layout, whatever the noise's


class _ShakeDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta,
                rng_state):
        b, c = _shake_drop_noise(h, p_drop, alpha_range, alpha_range, gate_level, level, training, gate, alpha,
                                 rng_state, stream=1)
        scale = shake_drop_scale(b, c)
        y = h.to(scale.dtype) * scale  # h first: the output keeps h's layout (channels_last) as the kernels'
        if shortcut is not None:
            y[:, : shortcut.shape[1]] += shortcut.to(scale.dtype)
        state = rng_state.clone()
        ctx.save_for_backward(state, gate, beta)
        ctx.args = (p_drop, alpha_range, beta_range, gate_level, level, training)
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.mark_non_differentiable(state)
        return y.to(h.dtype), state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        state, gate, beta = ctx.saved_tensors
        p_drop, alpha_range, beta_range, gate_level, level, training = ctx.args
        grad_h = shake_drop_backward(grad_y, state, p_drop, alpha_range, beta_range, gate_level, level, training,
                                     gate, beta)
        grad_shortcut = None if ctx.shortcut_channels is None else grad_y[:, : ctx.shortcut_channels]
        return (grad_h, grad_shortcut) + (None,) * 10


def shake_drop(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha, beta, rng_state):
    """The `shake_drop` op: y = shortcut + (b + alpha - b * alpha) * h; backward uses beta. Returns (y, rng_state).

    Training noise is drawn from `rng_state` (or, when None, from the state draw_state takes from torch's
    generator, as the compiled kernels do) unless given: gate (1,) or (N,); alpha, beta (1,), (N,), (N, C) or h's
    shape. Evaluation uses gate 0 and E[b + alpha - b alpha]. A shortcut with fewer channels than h is added to
    h's first channels (PyramidNet's zero padding).
    """
    if rng_state is None:
        draws = _draws(training, gate, alpha, beta)
        rng_state = draw_state(h.device, SHAKE_DROP_STREAMS) if draws else torch.zeros(2, dtype=torch.int64, device=h.device)
    return _ShakeDrop.apply(h, shortcut, p_drop, alpha_range, beta_range, gate_level, level, training, gate, alpha,
                            beta, rng_state)


# ----------------------------------------------------------------------------------------- stochastic depth


def _stochastic_depth_scale(h, p, mode, scale_by_keep, training, gate, state):
    """b * s broadcastable to h in the compute type (SPEC.md): the gate drawn from `state` (stream 0, per sample
    for mode "row", once for "batch") or given, s = 1 / (1 - p) when scaled (0 at p = 1); evaluation's constant."""
    acc = opmath_dtype(h.dtype)
    if not training:
        return torch.full((), 1.0 if scale_by_keep else 1.0 - p, dtype=acc, device=h.device)
    if gate is None:
        u = _uniform_at(state, (h.shape[0],) if mode == "row" else (1,), h, stream=0)
        gate = (u < 1.0 - p).to(acc)
    else:
        gate = _per_sample(gate.to(acc).expand(h.shape[0]), h)
    s = (1.0 / (1.0 - p) if p < 1.0 else 0.0) if scale_by_keep else 1.0
    return gate * torch.full((), s, dtype=acc, device=h.device)


def stochastic_depth_backward(grad_y, rng_state, p, mode, scale_by_keep, training, gate):
    """grad_h = b * s * grad_y, the gate regenerated from rng_state (the `_stochastic_depth_backward` op)."""
    scale = _stochastic_depth_scale(grad_y, p, mode, scale_by_keep, training, gate, rng_state)
    return (grad_y.to(scale.dtype) * scale).to(grad_y.dtype)


class _StochasticDepth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, shortcut, p, mode, scale_by_keep, training, gate, rng_state):
        scale = _stochastic_depth_scale(h, p, mode, scale_by_keep, training, gate, rng_state)
        y = h.to(scale.dtype) * scale
        if shortcut is not None:
            y[:, : shortcut.shape[1]] += shortcut.to(scale.dtype)
        state = rng_state.clone()
        ctx.save_for_backward(state, gate)
        ctx.args = (p, mode, scale_by_keep, training)
        ctx.shortcut_channels = None if shortcut is None else shortcut.shape[1]
        ctx.mark_non_differentiable(state)
        return y.to(h.dtype), state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        state, gate = ctx.saved_tensors
        grad_h = stochastic_depth_backward(grad_y, state, *ctx.args, gate)
        grad_shortcut = None if ctx.shortcut_channels is None else grad_y[:, : ctx.shortcut_channels]
        return (grad_h, grad_shortcut) + (None,) * 6


def stochastic_depth(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state):
    """The `stochastic_depth` op: y = shortcut + b * s * h (Huang et al.; timm's DropPath and torchvision's
    StochasticDepth when scaled). Returns (y, rng_state); the gate is drawn as for `shake_drop`'s."""
    if rng_state is None:
        draws = training and gate is None
        rng_state = draw_state(h.device, 1) if draws else torch.zeros(2, dtype=torch.int64, device=h.device)
    return _StochasticDepth.apply(h, shortcut, p, mode, scale_by_keep, training, gate, rng_state)


# ----------------------------------------------------------------------------------------- Drop-Activation


def _drop_activation_kept(v, keep, training, mask, state):
    """The mask (True: the ReLU is kept), shaped like v: u(NCHW index, stream 0) < keep, or the given one."""
    if mask is not None:
        return mask
    u = philox_uniform_range(state, v.numel(), 0, v.device).reshape(v.shape)  # the NCHW order, whatever v's layout
    return u < keep  # float32 u against keep as float32, as the kernels


def drop_activation_backward(grad_y, y, rng_state, keep, training, mask):
    """grad_x from grad_y and the output y (the `_drop_activation_backward` op): training passes grad_y where
    y != 0 or the ReLU was dropped; evaluation scales it by 1 - keep where y <= 0."""
    acc = opmath_dtype(grad_y.dtype)
    g, yy = grad_y.to(acc), y.to(acc)
    if training:
        kept = _drop_activation_kept(grad_y, keep, training, mask, rng_state)
        return torch.where((yy != 0) | ~kept, g, torch.zeros((), dtype=acc, device=g.device)).to(grad_y.dtype)
    slope = torch.full((), 1.0 - keep, dtype=acc, device=g.device)
    return torch.where(yy > 0, g, slope * g).to(grad_y.dtype)


class _DropActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, training, mask, rng_state):
        acc = opmath_dtype(x.dtype)
        v = x.to(acc)
        if training:
            kept = _drop_activation_kept(x, keep, training, mask, rng_state)
            y = torch.where(kept & (v < 0), torch.zeros((), dtype=acc, device=x.device), v)
        else:
            y = torch.where(v < 0, torch.full((), 1.0 - keep, dtype=acc, device=x.device) * v, v)
        y = y.to(x.dtype)
        state = rng_state.clone()
        ctx.save_for_backward(y, state, mask)
        ctx.args = (keep, training)
        ctx.mark_non_differentiable(state)
        return y, state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        y, state, mask = ctx.saved_tensors
        return drop_activation_backward(grad_y, y, state, *ctx.args, mask), None, None, None, None


def drop_activation(x, keep, training, mask, rng_state):
    """The `drop_activation` op (Liang, Khoo & Yang): y = m ? relu(x) : x with m ~ Bernoulli(keep) per element in
    training, the leaky ReLU of slope 1 - keep in evaluation. Returns (y, rng_state)."""
    if rng_state is None:
        draws = training and mask is None
        rng_state = draw_state(x.device, 1) if draws else torch.zeros(2, dtype=torch.int64, device=x.device)
    return _DropActivation.apply(x, keep, training, mask, rng_state)


# --------------------------------------------------------------------------------------------- Shake-Shake



def shake_shake_mix(alpha: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """alpha h1 + (1 - alpha) h2, in the kernels' order of operations."""
    return alpha * h1 + (1 - alpha) * h2


def _shake_shake_draws(forward_mode: str, backward_mode: str, training: bool, alpha, beta) -> bool:
    """Whether the op takes an RNG state: alpha drawn, or beta drawn by its backward."""
    if not training:
        return False
    alpha_drawn = alpha is None and forward_mode == "shake"
    return alpha_drawn or (beta is None and (backward_mode == "shake" or (backward_mode == "keep" and alpha_drawn)))


def shake_shake_coefficient(
    x: torch.Tensor, coef: Optional[torch.Tensor], state: Optional[torch.Tensor], stream: Optional[int], level: str
) -> torch.Tensor:
    """One coefficient per sample, shaped (N, 1, ...) in the compute type: the explicit (1,) or (N,) ``coef``,
    else u(i, stream) of ``state`` (i = n at level "sample", 0 at "batch") when ``stream`` is given, else 0.5."""
    n, acc = x.shape[0], opmath_dtype(x.dtype)
    if coef is not None:
        values = coef.to(acc).expand(n)
    elif stream is not None:
        index = torch.arange(n, dtype=torch.int64, device=x.device)
        if level == "batch":
            index = torch.zeros_like(index)
        values = philox_uniform(state, index, stream).to(acc)
    else:
        values = torch.full((n,), 0.5, dtype=acc, device=x.device)
    return values.reshape(n, *([1] * (x.dim() - 1)))


def _shake_shake_backward(
    grad_y: torch.Tensor, rng_state: torch.Tensor, beta: Optional[torch.Tensor], backward_mode: str, level: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta * grad_y, (1 - beta) * grad_y) (the `_shake_shake_backward` op): beta explicit, else recomputed
    from rng_state: backward_mode "shake" (stream 1), "keep" (the forward's drawn alpha, stream 0), "even" (0.5)."""
    stream = {"shake": 1, "keep": 0}.get(backward_mode) if beta is None else None
    b = shake_shake_coefficient(grad_y, beta, rng_state, stream, level)
    g = grad_y.to(b.dtype)
    return (b * g).to(grad_y.dtype), ((1 - b) * g).to(grad_y.dtype)


class _ShakeShake(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state):
        drawn = training and alpha is None and forward_mode == "shake"
        a = shake_shake_coefficient(h1, alpha, state, 0 if drawn else None, level)
        y = shake_shake_mix(a, h1.to(a.dtype), h2.to(a.dtype))
        if shortcut is not None:
            y = y + shortcut.to(a.dtype)
        # Where the backward's beta comes from (as csrc/args/shake_shake.cpp's beta_source).
        explicit, mode = None, "even"
        if training:
            if beta is not None:
                explicit = beta
            elif backward_mode == "keep":
                explicit, mode = (alpha, "even") if alpha is not None else (None, "keep" if drawn else "even")
            else:
                mode = backward_mode
        ctx.save_for_backward(state, explicit)
        ctx.mode, ctx.level, ctx.has_shortcut = mode, level, shortcut is not None
        ctx.mark_non_differentiable(state)
        return y.to(h1.dtype), state

    @staticmethod
    def backward(ctx, grad_y, _grad_state):
        state, beta = ctx.saved_tensors
        grad_h1, grad_h2 = _shake_shake_backward(grad_y, state, beta, ctx.mode, ctx.level)
        return (grad_h1, grad_h2, grad_y if ctx.has_shortcut else None) + (None,) * 7


def shake_shake(
    h1: torch.Tensor,
    h2: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    forward_mode: str,
    backward_mode: str,
    level: str,
    training: bool,
    alpha: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    rng_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = shortcut + alpha * h1 + (1 - alpha) * h2; backward scales the gradient by beta and 1 - beta (the
    `shake_shake` op, same noise): returns y and the RNG state used (zeros when nothing is drawn)."""
    if not _shake_shake_draws(forward_mode, backward_mode, training, alpha, beta):
        state = torch.zeros((2,), dtype=torch.int64, device=h1.device)
    elif rng_state is not None:
        state = rng_state.reshape(2).clone()
    elif torch.compiler.is_compiling() and h1.device.type == "cpu":
        # draw_state's random_ does not trace; in eager this reads the same random64() (randint over the full
        # range is random64 % (2^64 - 1) - 2^63: the sign flip undoes the shift). TODO(lead): fold into draw_state.
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=h1.device) ^ (-(2**63))
        state = torch.cat([seed, torch.zeros_like(seed)])
    else:
        state = draw_state(h1.device, 2)
    return _ShakeShake.apply(h1, h2, shortcut, forward_mode, backward_mode, level, training, alpha, beta, state)


# ------------------------------------------------------------------------------------------------- Maxout


def maxout_pieces(x: torch.Tensor, pieces: int, dim: int, grouping: str) -> list[torch.Tensor]:
    """The k pieces of every group, each shaped like the output: contiguous grouping takes channels
    j*k + piece, strided grouping takes piece*(C/k) + j."""
    dim = dim % x.dim()
    groups = x.shape[dim] // pieces
    if grouping == "contiguous":
        grouped = x.unflatten(dim, (groups, pieces))
        return [grouped.select(dim + 1, p) for p in range(pieces)]
    grouped = x.unflatten(dim, (pieces, groups))
    return [grouped.select(dim, p) for p in range(pieces)]


def _first_max(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise maximum over a list and the index of the first maximum; NaN wins (and propagates)."""
    best = values[0]
    arg = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    for p, v in enumerate(values[1:], start=1):
        take = ~torch.isnan(best) & ((v > best) | torch.isnan(v))
        best = torch.where(take, v, best)
        arg = torch.where(take, torch.full_like(arg, p), arg)
    return best, arg


# ln(2)^n / n! in float32, n = 8 down to 0, and log2(e) in float32 (csrc/include/cifarops/rounding.h's draw_exp).
_DRAW_EXP_TAYLOR = tuple(float.fromhex(h) for h in (
    "0x1.62c022p-20", "0x1.ffcbfcp-17", "0x1.430912p-13", "0x1.5d87fep-10", "0x1.3b2ab6p-7", "0x1.c6b08ep-5",
    "0x1.ebfbe0p-3", "0x1.62e430p-1", "0x1.0p+0"))
_LOG2E_FLOAT32 = float.fromhex("0x1.715476p+0")


def draw_exp(d: torch.Tensor) -> torch.Tensor:
    """exp(d) for float32 d <= 0, bit for bit as every kernel computes the draw's weights (rounding.h's draw_exp):
    2^t, t = d log2(e), as 2^floor(t) times a degree-8 Taylor polynomial of 2^(t - floor(t)), each operation one
    float32 rounding (torch's eager ops round once each), and 0 below t = -126."""
    t = torch.clamp_max(d * _LOG2E_FLOAT32, 0.0)
    k = torch.floor(t)
    f = t - k
    p = torch.full_like(f, _DRAW_EXP_TAYLOR[0])
    for c in _DRAW_EXP_TAYLOR[1:]:
        p = p * f + c
    scale = ((k.clamp_min(-126).to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(t > -126, p * scale, torch.zeros_like(p))


def _output_index(shape, dim: int, device) -> torch.Tensor:
    """Logical (outer, group, inner) index of every output element: the Philox counter of its draw."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n, dtype=torch.int64, device=device).reshape(shape)


def maxout_backward(grad_y: torch.Tensor, index: torch.Tensor, pieces: int, dim: int, grouping: str) -> torch.Tensor:
    """grad_x: each input gets its group's gradient if it is the chosen piece, else 0 (`_maxout_backward`)."""
    dim = dim % grad_y.dim()
    parts = [torch.where(index == p, grad_y, torch.zeros_like(grad_y)) for p in range(pieces)]
    if grouping == "contiguous":
        return torch.stack(parts, dim + 1).flatten(dim, dim + 1)
    return torch.stack(parts, dim).flatten(dim, dim + 1)


class _Maxout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pieces, dim, grouping, temperature=None, rng_state=None):
        values = [v.to(opmath_dtype(x.dtype)) for v in maxout_pieces(x, pieces, dim, grouping)]
        best, arg = _first_max(values)
        if temperature is not None:  # probabilistic maxout: a categorical draw per output element
            lam = torch.tensor(1.0 / temperature, dtype=best.dtype).item()  # in the compute type, as the kernels
            # The draw decides in float32 with draw_exp, whatever the dtype: the same piece on every backend. A
            # piece equal to the maximum weighs 1 (exp(inf - inf) would be NaN for a +inf maximum, whose softmax
            # limit draws it).
            weights = [torch.where(v == best, 1.0, draw_exp(((v - best) * lam).float())) for v in values]
            cumulative = [weights[0]]
            for w in weights[1:]:
                cumulative.append(cumulative[-1] + w)
            u = philox_uniform(rng_state, _output_index(best.shape, dim, x.device), stream=0)
            target = u * cumulative[-1]
            drawn = torch.full_like(arg, pieces - 1)
            for p in reversed(range(pieces)):
                drawn = torch.where(target < cumulative[p], torch.full_like(drawn, p), drawn)
            arg = torch.where(torch.isnan(best), arg, drawn)
            best = torch.gather(torch.stack(values), 0, arg.long().unsqueeze(0)).squeeze(0)
        ctx.save_for_backward(arg)
        ctx.args = (pieces, dim, grouping)
        ctx.mark_non_differentiable(arg)
        ctx.set_materialize_grads(False)
        return best.to(x.dtype), arg

    @staticmethod
    def backward(ctx, grad_y, _grad_index):
        (arg,) = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None, None, None
        return maxout_backward(grad_y, arg, *ctx.args), None, None, None, None, None


def maxout(x: torch.Tensor, pieces: int, dim: int, grouping: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, index): the maximum of each group of `pieces` along `dim` and the first winning piece as uint8."""
    return _Maxout.apply(x, pieces, dim, grouping)


def probabilistic_maxout(
    x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float, rng_state: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, index, rng_state): piece i ~ softmax(z / temperature) per output element, drawn by inverse CDF with
    u = philox_uniform(rng_state, logical output index, stream 0) (`probabilistic_maxout`); the state is the
    explicit one, else drawn from the generator of x's device as the compiled op draws it (one stream). The
    gradient flows to the drawn piece."""
    if rng_state is not None:
        state = rng_state
    elif torch.compiler.is_compiling():
        # Dynamo traces neither Tensor.random_ (draw_state's exact random64()) nor the CUDA generator's
        # offset: under torch.compile the reference takes a traceable key instead (randint over the int64
        # range; not bit-equal to the compiled op's draw, which nothing compares under compile).
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=x.device)
        state = torch.cat([seed, torch.zeros_like(seed)])
    else:
        state = draw_state(x.device, 1)
    y, index = _Maxout.apply(x, pieces, dim, grouping, temperature, state)
    return y, index, state


def probabilistic_maxout_expectation(x: torch.Tensor, pieces: int, dim: int, grouping: str, temperature: float) -> torch.Tensor:
    """sum_i softmax(z / temperature)_i z_i, differentiated by PyTorch's autograd (an independent oracle of
    the kernels' hand-derived backward)."""
    z = torch.stack([v.to(opmath_dtype(x.dtype)) for v in maxout_pieces(x, pieces, dim, grouping)])
    return (torch.softmax(z / temperature, dim=0) * z).sum(0).to(x.dtype)


# ------------------------------------------------------------------------------- fractional max-pooling

FMP_REGIONS = ("window", "disjoint", "overlapping")
FMP_SEQUENCES = ("pseudorandom", "random")
# Philox streams of one call that draws (csrc/include/cifarops/fractional_max_pool2d.h): 0, the samples of
# pseudorandom sequences and windows; 1, the steps of random sequences.
FMP_SAMPLE_STREAM, FMP_SEQUENCE_STREAM, FMP_STREAMS = 0, 1, 2


def _fmp_dense_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last when stored that way, else NCHW (as csrc/args/common.h)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def fmp_sample_from_uniform(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """u (float32 in [0, 1)) in `dtype`, rounded to nearest, never 1: where rounding reaches 1, the largest value
    of `dtype` below 1."""
    v = u.to(dtype)
    below_one = 1 - torch.finfo(dtype).eps / 2
    return torch.where(v >= 1, torch.full_like(v, below_one), v)


def fmp_drawn_samples(state: torch.Tensor, n: int, draw_channels: int, dtype: torch.dtype) -> torch.Tensor:
    """The (n, draw_channels, 2) samples a call draws from `state`: u of (n, c', axis) at logical index
    (n * C' + c') * 2 + axis of stream 0."""
    index = torch.arange(n * draw_channels * 2, dtype=torch.int64, device=state.device)
    u = philox_uniform(state, index, FMP_SAMPLE_STREAM)
    return fmp_sample_from_uniform(u, dtype).reshape(n, draw_channels, 2)


def fmp_drawn_boundaries(state: torch.Tensor, n: int, draw_channels: int, size_in, size_out) -> torch.Tensor:
    """The (n, draw_channels, 2, max(out) + 1) random sequences a call draws from `state` ([width, height]):
    selection sampling, step i of (n, c', axis) is 2 when bits24 * (out - i) < twos_left * 2^24, bits24 from the
    logical index ((n * C' + c') * 2 + axis) * max(out) + i of stream 1; padded with the input size."""
    max_out = max(size_out)
    planes = n * draw_channels
    device = state.device
    axes = []
    for axis, (i_, o) in enumerate(((size_in[1], size_out[1]), (size_in[0], size_out[0]))):
        base = (torch.arange(planes, dtype=torch.int64, device=device) * 2 + axis) * max_out
        index = base[:, None] + torch.arange(o, dtype=torch.int64, device=device)
        bits = (philox_uniform(state, index, FMP_SEQUENCE_STREAM) * 16777216.0).long()
        twos = torch.full((planes,), i_ - o, dtype=torch.int64, device=device)
        position = torch.zeros(planes, dtype=torch.int64, device=device)
        a = [position]
        for k in range(o):
            two = (bits[:, k] * (o - k) < twos * 16777216).long()
            twos = twos - two
            position = position + 1 + two
            a.append(position)
        a += [torch.full((planes,), i_, dtype=torch.int64, device=device)] * (max_out - o)
        axes.append(torch.stack(a, -1))
    return torch.stack(axes, 1).reshape(n, draw_channels, 2, max_out + 1)


def fmp_resolve_draws(n, c, size_in, size_out, samples, boundaries, sequence, per_image, rng_state, dtype, device,
                      may_draw_state: bool):
    """(samples, boundaries, state) of one call: the explicit draws with a zero state, else those drawn from
    rng_state (or, when `may_draw_state`, from torch's generator of `device`, as the compiled ops take it)."""
    if samples is not None or boundaries is not None:
        return samples, boundaries, torch.zeros(2, dtype=torch.int64, device=device)
    if rng_state is not None or not may_draw_state:
        state = rng_state
    elif torch.compiler.is_compiling() and torch.device(device).type == "cpu":
        # Dynamo cannot trace draw_state's in-place random_ on the CPU: a traceable draw (other numbers than the
        # compiled ops would take from the same generator state, still a fresh draw per call).
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)
        state = torch.cat([seed, torch.zeros_like(seed)])
    else:
        state = draw_state(device, FMP_STREAMS)
    draw_channels = 1 if per_image else c
    if sequence == "random":
        return None, fmp_drawn_boundaries(state, n, draw_channels, size_in, size_out).expand(n, c, 2, -1), state
    return fmp_drawn_samples(state, n, draw_channels, dtype).expand(n, c, 2), None, state


def fmp_span(regions: str, kernel: int) -> int:
    """The widest region along an axis: byte offsets inside a region are row * span_w + column."""
    return {"window": kernel, "disjoint": 2, "overlapping": 3}[regions]


def fmp_interval_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The type ATen computes its window starts in: the storage type on the CPU (half types round after every
    operation), the compute type on CUDA."""
    return dtype if torch.device(device).type == "cpu" else opmath_dtype(dtype)


def fmp_regions(
    size_in: int, size_out: int, kernel: int, regions: str, u: Optional[torch.Tensor], boundaries: Optional[torch.Tensor],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(begin, end), int64 of shape (..., size_out): output i pools [begin_i, end_i) along one axis. u: (...,)
    samples in `dtype` (the input's); boundaries: (..., >= size_out + 1) int64. Same arithmetic as
    csrc/include/cifarops/fractional_max_pool2d.h, clamps included."""
    if regions == "window":
        t = fmp_interval_dtype(dtype, u.device)
        u = u.to(t).unsqueeze(-1)
        # Scalars filled on the device and divided there in t (no tensor from host data, no copy)
        alpha = (torch.scalar_tensor(size_in - kernel, dtype=t, device=u.device)
                 / torch.scalar_tensor(max(size_out - 1, 1), dtype=t, device=u.device))
        i = torch.arange(size_out, device=u.device).to(t)
        start = ((i + u) * alpha).to(torch.int32).long() - (u * alpha).to(torch.int32).long()
        start = start.clamp(0, size_in - kernel)
        start[..., -1] = size_in - kernel
        return start, start + kernel
    i = torch.arange(size_out + 1, device=(u if u is not None else boundaries).device)
    if boundaries is None:
        # Exactly floor(alpha (i + u)) - floor(alpha u), alpha = in / out: with W = floor(in u) (exact in float64
        # for samples of float32 or narrower), floor((in i + W) / out) - floor(W / out); see SPEC and
        # csrc/include/cifarops/fractional_max_pool2d.h. Every step is floor(alpha) or ceil(alpha).
        w = torch.floor(size_in * u.to(torch.float64).unsqueeze(-1)).long()
        a = torch.div(size_in * i + w, size_out, rounding_mode="floor") - torch.div(w, size_out, rounding_mode="floor")
    else:
        a = boundaries[..., : size_out + 1].clone()
    a = torch.minimum(torch.maximum(a, i), size_in - size_out + i)
    a[..., 0], a[..., size_out] = 0, size_in
    end = a[..., 1:] + (1 if regions == "overlapping" else 0)
    return a[..., :-1], end.clamp(max=size_in)


def _fmp_axes(grad_or_x_shape, input_size, output_size, kernel_size, regions, samples, boundaries, dtype):
    """(row_begin, row_end, col_begin, col_end), each (N, C, out) int64."""
    kh, kw = kernel_size if regions == "window" else (0, 0)
    rows = fmp_regions(input_size[0], output_size[0], kh, regions,
                       None if samples is None else samples[..., 1], None if boundaries is None else boundaries[:, :, 1],
                       dtype)
    cols = fmp_regions(input_size[1], output_size[1], kw, regions,
                       None if samples is None else samples[..., 0], None if boundaries is None else boundaries[:, :, 0],
                       dtype)
    return (*rows, *cols)


def _fmp_choice_to_flat(index, row_begin, row_end, col_begin, col_end, width, span_w):
    """Flat h * W + w of each output's choice, and whether it lies inside the output's region."""
    r0, r1 = row_begin.unsqueeze(-1), row_end.unsqueeze(-1)
    c0, c1 = col_begin.unsqueeze(-2), col_end.unsqueeze(-2)
    if index.dtype == torch.uint8:
        off = index.long()
        h, w = r0 + off // span_w, c0 + off % span_w
    else:
        flat = index.long()
        h, w = torch.div(flat, width, rounding_mode="floor"), flat % width
        h = torch.where(flat < 0, -1, h)
    inside = (h >= r0) & (h < r1) & (w >= c0) & (w < c1)
    return h * width + w, inside


def fractional_max_pool2d_backward(
    grad_y: torch.Tensor, index: torch.Tensor, input_size: Sequence[int], kernel_size: Sequence[int], regions: str,
    samples: Optional[torch.Tensor], boundaries: Optional[torch.Tensor], sequence: str = "pseudorandom",
    per_image: bool = False, rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """grad_x: each output's gradient added to the input it chose, in row-major output order, in the storage
    type (`_fractional_max_pool2d_backward`; ATen's CPU loop adds the same way). Draws from rng_state (the
    forward's) when neither samples nor boundaries are given."""
    n, c, out_h, out_w = grad_y.shape
    height, width = input_size
    samples, boundaries, _ = fmp_resolve_draws(n, c, (height, width), (out_h, out_w), samples, boundaries, sequence,
                                               per_image, rng_state, grad_y.dtype, grad_y.device, False)
    axes = _fmp_axes(grad_y.shape, input_size, (out_h, out_w), kernel_size, regions, samples, boundaries, grad_y.dtype)
    span_w = fmp_span(regions, kernel_size[1] if regions == "window" else 0)
    flat, inside = _fmp_choice_to_flat(index, *axes, width, span_w)
    # Global targets of the contributing outputs, in row-major output order; each round adds every target's
    # next contribution (at most one per target), rounding to the storage type as `grad_x[i] += g` does.
    plane = torch.arange(n * c, device=grad_y.device).reshape(n, c, 1, 1) * (height * width)
    targets = (plane + flat)[inside]
    grads = grad_y[inside].to(opmath_dtype(grad_y.dtype))
    if torch.compiler.is_compiling():  # the rounds below need a host read: add in the compute type instead
        grad_x = torch.zeros(n * c * height * width, dtype=grads.dtype, device=grad_y.device)
        return grad_x.index_add_(0, targets, grads).to(grad_y.dtype).reshape(n, c, height, width)
    grad_x = torch.zeros(n * c * height * width, dtype=grad_y.dtype, device=grad_y.device)
    if targets.numel():
        order = torch.sort(targets, stable=True).indices
        sorted_targets = targets[order]
        rank = torch.empty_like(order)
        positions = torch.arange(order.numel(), device=order.device)
        rank[order] = positions - torch.searchsorted(sorted_targets, sorted_targets, side="left")
        for r in range(int(rank.max()) + 1):
            chosen = rank == r
            t = targets[chosen]
            grad_x[t] = (grad_x[t].to(grads.dtype) + grads[chosen]).to(grad_y.dtype)
    return grad_x.reshape(n, c, height, width).contiguous(memory_format=_fmp_dense_format(index))


def fractional_max_pool2d_select(
    values: torch.Tensor, index: torch.Tensor, kernel_size: Sequence[int], regions: str,
    samples: Optional[torch.Tensor], boundaries: Optional[torch.Tensor], sequence: str = "pseudorandom",
    per_image: bool = False, rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """values (input-shaped) at each output's choice, 0 where the choice lies outside the output's region: the
    gradient of the backward op with respect to grad_y (double backward)."""
    n, c, height, width = values.shape
    samples, boundaries, _ = fmp_resolve_draws(n, c, (height, width), tuple(index.shape[2:]), samples, boundaries,
                                               sequence, per_image, rng_state, values.dtype, values.device, False)
    axes = _fmp_axes(values.shape, (height, width), index.shape[2:], kernel_size, regions, samples, boundaries,
                     values.dtype)
    flat, inside = _fmp_choice_to_flat(index, *axes, width, fmp_span(regions, kernel_size[1] if regions == "window" else 0))
    picked = torch.gather(values.reshape(n, c, -1), 2, torch.where(inside, flat, 0).reshape(n, c, -1))
    return torch.where(inside, picked.reshape(index.shape), torch.zeros_like(picked).reshape(index.shape))


class _FractionalMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, output_size, regions, samples, boundaries, return_indices):
        n, c, height, width = x.shape
        out_h, out_w = output_size
        r0, r1, c0, c1 = _fmp_axes(x.shape, (height, width), output_size, kernel_size, regions, samples, boundaries, x.dtype)
        kh, kw = kernel_size if regions == "window" else (0, 0)
        span_h, span_w = fmp_span(regions, kh), fmp_span(regions, kw)
        # Every (dh, dw) of the widest region, masked to the real one: (N, C, out_h, out_w, span_h * span_w).
        dh = torch.arange(span_h, device=x.device).repeat_interleave(span_w)
        dw = torch.arange(span_w, device=x.device).repeat(span_h)
        h = r0[:, :, :, None, None] + dh
        w = c0[:, :, None, :, None] + dw
        valid = (h < r1[:, :, :, None, None]) & (w < c1[:, :, None, :, None])
        flat = (h.clamp(max=height - 1) * width + w.clamp(max=width - 1)).reshape(n, c, -1)
        values = torch.gather(x.reshape(n, c, -1), 2, flat).reshape(valid.shape)
        values = torch.where(valid, values, torch.full_like(values, float("-inf")))
        # ATen's `v > best || isnan(v)` scan: the last NaN if there is one, else the first maximum.
        nan = torch.isnan(values)
        last_nan = nan.shape[-1] - 1 - torch.argmax(nan.flip(-1).to(torch.uint8), -1)
        first_max = torch.argmax(torch.where(nan, torch.full_like(values, float("-inf")), values).to(opmath_dtype(x.dtype)), -1)
        offset = torch.where(nan.any(-1), last_nan, first_max)
        y = torch.gather(values, -1, offset.unsqueeze(-1)).squeeze(-1)
        if return_indices or span_h * span_w > 256:
            chosen_h = torch.gather(h.expand(valid.shape), -1, offset.unsqueeze(-1)).squeeze(-1)
            chosen_w = torch.gather(w.expand(valid.shape), -1, offset.unsqueeze(-1)).squeeze(-1)
            index = chosen_h * width + chosen_w
        else:
            index = offset.to(torch.uint8)
        fmt = _fmp_dense_format(x)
        y, index = y.contiguous(memory_format=fmt), index.contiguous(memory_format=fmt)
        ctx.save_for_backward(index, samples, boundaries)
        ctx.args = ((height, width), kernel_size, regions)
        ctx.mark_non_differentiable(index)
        return y, index

    @staticmethod
    def backward(ctx, grad_y, _grad_index):
        index, samples, boundaries = ctx.saved_tensors
        input_size, kernel_size, regions = ctx.args
        grad_x = fractional_max_pool2d_backward(grad_y, index, input_size, kernel_size, regions, samples, boundaries)
        return grad_x, None, None, None, None, None, None


def fractional_max_pool2d(
    x: torch.Tensor, kernel_size: Sequence[int], output_size: Sequence[int], regions: str,
    samples: Optional[torch.Tensor], boundaries: Optional[torch.Tensor], return_indices: bool,
    sequence: str = "pseudorandom", per_image: bool = False, rng_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, index, state) of the `fractional_max_pool2d` op: the maximum of each region and its position, as
    PyTorch's int64 flat index (return_indices) or a uint8 offset row * span_w + column inside the region, and
    the RNG state the draws came from (zeros for explicit draws). With neither samples nor boundaries the draws
    come from rng_state, else from torch's generator (philox.draw_state, as the compiled ops take it)."""
    n, c = x.shape[0], x.shape[1]
    samples, boundaries, state = fmp_resolve_draws(n, c, tuple(x.shape[2:]), tuple(output_size), samples, boundaries,
                                                   sequence, per_image, rng_state, x.dtype, x.device, True)
    y, index = _FractionalMaxPool2d.apply(x, kernel_size, output_size, regions, samples, boundaries, return_indices)
    return y, index, state
