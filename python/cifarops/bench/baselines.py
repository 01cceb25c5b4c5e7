"""What users run today, reproduced for side-by-side timing.

`hysts_shake_shake` follows hysts/pytorch_shake_shake (also the shape of pytorchcv's): see its docstring.

`owruby_shake_drop` follows owruby/shake-drop_pytorch (copied into fast-autoaugment): a batch-level gate read
back to the host with `.item()` in forward and again in backward, three eager kernels, and the shortcut added
by the caller (zero-padded with torch.cat when it is narrower). Made device-agnostic so it runs on the CPU;
otherwise unchanged, including its float32 coefficients.

`softmax_multinomial_maxout` is the 30-line probabilistic maxout one writes in plain PyTorch (no popular
implementation exists to copy).

`timm_drop_path` is timm's `drop_path` (timm/layers/drop.py, 1.0.31, verbatim) plus the residual add its blocks
write; torchvision's `stochastic_depth` runs the same kernels (an empty tensor, bernoulli_, div_, mul) and adds
only argument checks. Neither package imports on this project's CPU machines, hence the copy.

`unfold_multinomial_pool` is the stochastic pooling the PyTorch versions on GitHub write (pylearn2's is Theano):
F.unfold of every region (k^2 copies of the input), torch.multinomial over the rectified activations, the drawn
element gathered (its gradient reaches the drawn element).

`official_drop_relu` is the official Drop-Activation layer (LeungSamWai/Drop-Activation, `dropRelu`) op for op:
a float mask filled and drawn with bernoulli_, two copies of x, then mul_, mul_(-1), add_, clamp_, mul_, add_;
written for the device of x instead of `.cuda()`, otherwise unchanged.
"""

from __future__ import annotations

import torch


class _OwrubyShakeDrop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, training=True, p_drop=0.5, alpha_range=(-1.0, 1.0)):
        if training:
            gate = torch.empty(1, device=x.device).bernoulli_(1 - p_drop)
            ctx.save_for_backward(gate)
            if gate.item() == 0:  # host sync
                alpha = torch.empty(x.size(0), device=x.device).uniform_(*alpha_range)
                alpha = alpha.view(alpha.size(0), 1, 1, 1).expand_as(x)
                return alpha * x
            return x
        return (1 - p_drop) * x

    @staticmethod
    def backward(ctx, grad_output):
        (gate,) = ctx.saved_tensors
        if gate.item() == 0:  # host sync
            beta = torch.empty(grad_output.size(0), device=grad_output.device).uniform_(0, 1)
            beta = beta.view(beta.size(0), 1, 1, 1).expand_as(grad_output)
            return beta * grad_output, None, None, None
        return grad_output, None, None, None


def owruby_shake_drop(h: torch.Tensor, shortcut: torch.Tensor | None, p_drop: float = 0.5) -> torch.Tensor:
    out = _OwrubyShakeDrop.apply(h, True, p_drop, (-1.0, 1.0))
    if shortcut is None:
        return out
    if shortcut.shape[1] != h.shape[1]:  # PyramidNet's zero-padded shortcut, materialised
        pad = torch.zeros(h.shape[0], h.shape[1] - shortcut.shape[1], *h.shape[2:], dtype=h.dtype, device=h.device)
        shortcut = torch.cat([shortcut, pad], dim=1)
    return out + shortcut


class _HystsShakeFunction(torch.autograd.Function):
    """hysts/pytorch_shake_shake's ShakeFunction: saves both branches although backward never reads them."""

    @staticmethod
    def forward(ctx, x1, x2, alpha, beta):
        ctx.save_for_backward(x1, x2, alpha, beta)
        return x1 * alpha + x2 * (1 - alpha)

    @staticmethod
    def backward(ctx, grad_output):
        x1, x2, alpha, beta = ctx.saved_tensors
        return grad_output * beta, grad_output * (1 - beta), None, None


def hysts_shake_shake(h1: torch.Tensor, h2: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
    """hysts/pytorch_shake_shake's block tail: alpha and beta drawn on the CPU and copied to the device every
    call (Shake-Shake-Image: one per sample), the mix, then the shortcut added as a separate kernel."""
    n = h1.size(0)
    alpha = torch.rand(n).view(n, 1, 1, 1).to(h1.device)
    beta = torch.rand(n).view(n, 1, 1, 1).to(h1.device)
    y = _HystsShakeFunction.apply(h1, h2, alpha, beta)
    return y if shortcut is None else shortcut + y


def softmax_multinomial_maxout(x: torch.Tensor, pieces: int, temperature: float = 1.0) -> torch.Tensor:
    """Probabilistic maxout in training (Springenberg & Riedmiller, arXiv 1312.6116, section 3), contiguous
    groups along dim 1: softmax(z / temperature) over each group's pieces, one piece drawn per output with
    torch.multinomial, gathered (so the gradient reaches the drawn piece)."""
    z = x.unflatten(1, (x.shape[1] // pieces, pieces)).movedim(2, -1)  # (N, C/k, ..., k)
    p = torch.softmax(z.detach() / temperature, -1)
    choice = torch.multinomial(p.reshape(-1, pieces), 1).view(*z.shape[:-1], 1)
    return z.gather(-1, choice).squeeze(-1)


def unfold_multinomial_pool(x: torch.Tensor, kernel_size: int = 3, stride: int = 2) -> torch.Tensor:
    """Stochastic pooling in training (Zeiler & Fergus, arXiv 1301.3557), no padding: every region unfolded,
    p = relu(a) / sum relu(a) (a tiny floor keeps torch.multinomial's all-zero rows valid: such a region draws
    uniformly, where the paper's outputs 0), one element drawn per output with torch.multinomial, gathered."""
    n, c, h, w = x.shape
    out_h, out_w = (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1
    regions = torch.nn.functional.unfold(x, kernel_size, stride=stride)  # (N, C k^2, L)
    regions = regions.view(n, c, kernel_size * kernel_size, -1).transpose(2, 3).reshape(-1, kernel_size * kernel_size)
    weights = regions.detach().relu() + 1e-12
    choice = torch.multinomial(weights, 1)
    return regions.relu().gather(1, choice).view(n, c, out_h, out_w)


# timm's drop_path, verbatim from timm 1.0.31 (timm/layers/drop.py, Apache License 2.0); tests/drop_path_peers.py
# builds timm's DropPath on it where timm does not import.
def _timm_drop_path(x, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # work with diff dim tensors, not just 2D ConvNets
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def timm_drop_path(h: torch.Tensor, shortcut: torch.Tensor | None, p: float = 0.5) -> torch.Tensor:
    """timm's block tail: shortcut + drop_path(h), in training."""
    out = _timm_drop_path(h, p, True)
    return out if shortcut is None else shortcut + out


def official_drop_relu(x: torch.Tensor, keep_prob: float = 0.95, training: bool = True) -> torch.Tensor:
    """The official dropRelu's forward: output = x - m x + m relu(x) (m the mask, or keep_prob in evaluation)."""
    mask = torch.empty(x.size(), device=x.device).fill_(1).bernoulli_(keep_prob) if training else keep_prob
    temp = torch.empty(0, device=x.device).resize_as_(x).copy_(x)
    output = torch.empty(0, device=x.device).resize_as_(x).copy_(x)
    output.mul_(mask)
    output.mul_(-1)
    output.add_(temp)
    temp.clamp_(min=0)
    temp.mul_(mask)
    output.add_(temp)
    return output


class OfficialDropRelu(torch.nn.Module):
    """The official dropRelu as a layer (its keep_prob, its training flag), for networks built as the official's."""

    def __init__(self, keep_prob: float = 0.95) -> None:
        super().__init__()
        self.keep_prob = keep_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return official_drop_relu(x, self.keep_prob, self.training)
