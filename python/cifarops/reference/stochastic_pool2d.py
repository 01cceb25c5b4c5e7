"""Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557) in pure PyTorch, argument for argument as its ops (see
the package's docstring). The regions are read as k_h * k_w strided slices of the zero-padded input (a padded
position weighs 0, so it is never drawn and adds nothing), walked in the window's row-major order, which is the
order every kernel sums in: the same running sums, the same draws."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cifarops.philox import draw_state, philox_uniform_range
from cifarops.reference.common import opmath_dtype

STOCHASTIC_POOL_STREAMS = 1  # stream 0: one uniform per output, at its NCHW index
NO_CHOICE = 255  # the offset of a region whose activations sum to 0: it outputs 0 and passes no gradient


def stochastic_pool2d_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """torch's max_pool2d output size: floor or ceil of (size + 2 padding - kernel) / stride, plus 1; in ceil
    mode the last window must start inside the input or its left padding."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _windows(v, kernel, stride, padding, out_size):
    """The k_h * k_w values of every region, each an output-shaped view, row-major in the window; padded
    positions (zeros) included."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_size
    h, w = v.shape[-2:]
    bottom, right = max(0, (oh - 1) * sh + kh - h - ph), max(0, (ow - 1) * sw + kw - w - pw)
    padded = F.pad(v, (pw, right, ph, bottom))
    return [padded[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] for i in range(kh) for j in range(kw)]


def _out_size(x, kernel, stride, padding, ceil_mode):
    return tuple(stochastic_pool2d_output_size(x.shape[2 + d], kernel[d], stride[d], padding[d], ceil_mode)
                 for d in range(2))


def stochastic_pool2d_sample(x, kernel, stride, padding, ceil_mode, uniforms, rng_state):
    """(y, offset): the drawn element of each region and its offset inside the window (uint8, NO_CHOICE where
    the region sums to 0). With a = max(x, 0) in the compute type and S = sum of a: the first positive a_i whose
    running sum exceeds u * S (or reaches +inf), else the last positive one (u * S may round up to S); a region
    holding a NaN draws its first NaN."""
    acc = opmath_dtype(x.dtype)
    out_size = _out_size(x, kernel, stride, padding, ceil_mode)
    a = [w.clamp_min(0) for w in _windows(x.to(acc), kernel, stride, padding, out_size)]
    shape = (x.shape[0], x.shape[1], *out_size)
    if uniforms is None:
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        uniforms = philox_uniform_range(rng_state, numel, 0, x.device).reshape(shape)
    total = torch.zeros(shape, dtype=acc, device=x.device)
    for ai in a:
        total = total + ai
    target = uniforms.to(acc) * total
    chosen = torch.full(shape, NO_CHOICE, dtype=torch.uint8, device=x.device)
    last = torch.full(shape, NO_CHOICE, dtype=torch.uint8, device=x.device)
    first_nan = torch.full(shape, NO_CHOICE, dtype=torch.uint8, device=x.device)
    running = torch.zeros(shape, dtype=acc, device=x.device)
    for i, ai in enumerate(a):
        running = running + ai
        index = torch.full_like(chosen, i)
        positive = ai > 0
        hit = (chosen == NO_CHOICE) & positive & ((running > target) | torch.isinf(running))
        chosen = torch.where(hit, index, chosen)
        last = torch.where(positive, index, last)
        first_nan = torch.where((first_nan == NO_CHOICE) & torch.isnan(ai), index, first_nan)
    chosen = torch.where(chosen == NO_CHOICE, last, chosen)
    chosen = torch.where(first_nan != NO_CHOICE, first_nan, chosen)
    y = stochastic_pool2d_select(x.to(acc), chosen, kernel, stride, padding)
    return y.to(x.dtype), chosen


def stochastic_pool2d_select(values, offset, kernel, stride, padding):
    """Each output's chosen element of `values` (input-shaped), 0 where it chose none: the forward's gather,
    and the gradient of the backward op (which is linear in grad_y)."""
    out_size = tuple(offset.shape[2:])
    windows = _windows(values, kernel, stride, padding, out_size)
    y = torch.zeros(offset.shape, dtype=values.dtype, device=values.device)
    for i, w in enumerate(windows):
        y = torch.where(offset == i, w, y)
    return y


def stochastic_pool2d_backward(grad_y, offset, input_size, kernel, stride, padding, ceil_mode):
    """grad_x (the `_stochastic_pool2d_backward` op): each input sums grad_y over the outputs that drew it."""
    acc = opmath_dtype(grad_y.dtype)
    return _scatter(lambda i: torch.where(offset == i, grad_y.to(acc), 0.0), grad_y, input_size, kernel, stride,
                    padding).to(grad_y.dtype)


def _scatter(contribution, like, input_size, kernel, stride, padding):
    """The input-shaped sum of contribution(i) (output-shaped, window offset i) over the regions."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = int(input_size[0]), int(input_size[1])
    oh, ow = like.shape[2:]
    bottom, right = max(0, (oh - 1) * sh + kh - h - ph), max(0, (ow - 1) * sw + kw - w - pw)
    acc = opmath_dtype(like.dtype)
    grad = torch.zeros((*like.shape[:2], ph + h + bottom, pw + w + right), dtype=acc, device=like.device)
    for i in range(kh * kw):
        r, c = divmod(i, kw)
        grad[..., r:r + sh * (oh - 1) + 1:sh, c:c + sw * (ow - 1) + 1:sw] += contribution(i)
    return grad[..., ph:ph + h, pw:pw + w]


def _expectation_sums(x, kernel, stride, padding, ceil_mode):
    acc = opmath_dtype(x.dtype)
    a = [w.clamp_min(0) for w in _windows(x.to(acc), kernel, stride, padding, _out_size(x, kernel, stride, padding,
                                                                                        ceil_mode))]
    s1 = torch.zeros_like(a[0])
    s2 = torch.zeros_like(a[0])
    for ai in a:
        s1 = s1 + ai
        s2 = s2 + ai * ai
    # Sum a^2 / sum a; 0 for a region of no positive activation; +inf where the sum is infinite (its weights put
    # everything on the infinite elements), where the quotient would be inf / inf.
    f = torch.where(s1 == 0, 0.0, torch.where(torch.isinf(s1), s1, s2 / s1))
    return a, s1, f


def stochastic_pool2d_expectation_values(x, kernel_size, stride, padding, ceil_mode):
    """Evaluation's probabilistic weighting, sum_i p_i a_i = sum a^2 / sum a per region (no autograd)."""
    return _expectation_sums(x, kernel_size, stride, padding, ceil_mode)[2].to(x.dtype)


def stochastic_pool2d_expectation_backward(grad_y, x, kernel_size, stride, padding, ceil_mode):
    """grad_x of the expectation (`_stochastic_pool2d_expectation_backward`): d f / d x_i = (2 a_i - f) / S for
    x_i > 0, 0 elsewhere and for regions whose sum S is 0 or infinite."""
    a, s1, f = _expectation_sums(x, kernel_size, stride, padding, ceil_mode)
    g = grad_y.to(s1.dtype)
    counts = (s1 != 0) & ~torch.isinf(s1)
    return _scatter(lambda i: torch.where((a[i] > 0) & counts, g * (2 * a[i] - f) / s1, 0.0), grad_y, x.shape[2:],
                    kernel_size, stride, padding).to(x.dtype)


class _StochasticPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state):
        y, offset = stochastic_pool2d_sample(x, kernel_size, stride, padding, ceil_mode, uniforms, rng_state)
        state = rng_state.clone()
        ctx.save_for_backward(offset)
        ctx.args = (tuple(x.shape[2:]), kernel_size, stride, padding, ceil_mode)
        ctx.mark_non_differentiable(offset, state)
        ctx.set_materialize_grads(False)
        return y, offset, state

    @staticmethod
    def backward(ctx, grad_y, _grad_offset, _grad_state):
        (offset,) = ctx.saved_tensors
        grad = None if grad_y is None else stochastic_pool2d_backward(grad_y, offset, *ctx.args)
        return grad, None, None, None, None, None, None


class _Expectation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode):
        ctx.save_for_backward(x)
        ctx.args = (kernel_size, stride, padding, ceil_mode)
        return stochastic_pool2d_expectation_values(x, kernel_size, stride, padding, ceil_mode)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return _ExpectationBackward.apply(grad_y, x, *ctx.args), None, None, None, None


class _ExpectationBackward(torch.autograd.Function):
    """Evaluation's backward, whose own derivative is not provided (as the compiled and Triton ops): an error naming
    the op when it is differentiated."""

    @staticmethod
    def forward(ctx, grad_y, x, kernel_size, stride, padding, ceil_mode):
        return stochastic_pool2d_expectation_backward(grad_y, x, kernel_size, stride, padding, ceil_mode)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("cifarops.stochastic_pool2d: the second derivative of evaluation's weighting (double "
                                  "backward through training=False) is not implemented; the training form has one")


def stochastic_pool2d(x, kernel_size, stride, padding, ceil_mode, uniforms=None, rng_state=None):
    """The `stochastic_pool2d` op (training): (y, offset, rng_state). The uniforms are the explicit ones
    (output-shaped float32), else u(NCHW output index, stream 0) under rng_state, else under the state drawn
    from the generator of x's device as the compiled op draws it. The gradient flows to the drawn element."""
    if rng_state is None:
        rng_state = (draw_state(x.device, STOCHASTIC_POOL_STREAMS) if uniforms is None
                     else torch.zeros(2, dtype=torch.int64, device=x.device))
    return _StochasticPool2d.apply(x, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode, uniforms,
                                   rng_state)


def stochastic_pool2d_expectation(x, kernel_size, stride, padding, ceil_mode):
    """The `stochastic_pool2d_expectation` op (evaluation), with its gradient."""
    return _Expectation.apply(x, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode)
