"""nn.Module wrappers of the functional API: drop-in layers for existing models."""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import nn

from cifarops import backends
from cifarops import functional as F
from cifarops.ops import maxout as _maxout_ops
from cifarops.ops import stochastic_pool2d as _stochastic_pool_ops


class _Layer(nn.Module):
    """A cifarops layer. ``backend`` pins the implementation for this layer alone (``"reference"`` builds the
    pure-PyTorch network that ``cifarops.models.create(..., reference=True)`` compares against); None follows
    the process-wide choice of :mod:`cifarops.backends`."""

    def __init__(self, backend: Optional[str] = None) -> None:
        super().__init__()
        self.backend = backends.check_name(backend) if backend is not None else None

    def _pinned(self):
        return backends.pinned(self.backend) if self.backend is not None else contextlib.nullcontext()


class ShakeDrop(_Layer):
    """ShakeDrop regularisation (Yamada et al., arXiv 1802.02375), optionally fused with the shortcut add.

    ``ShakeDrop(p_drop)(h)`` scales a residual branch; ``ShakeDrop(p_drop)(h, shortcut)`` returns the whole
    block output ``shortcut + scale * h`` in one pass, also when the shortcut has fewer channels (PyramidNet).
    See :func:`cifarops.functional.shake_drop` for the levels and the evaluation rule, and
    :func:`cifarops.shake_drop_schedule` for the paper's depth schedule of ``p_drop``.
    """

    def __init__(
        self,
        p_drop: float = 0.5,
        alpha_range: Sequence[float] = (-1.0, 1.0),
        beta_range: Sequence[float] = (0.0, 1.0),
        *,
        gate_level: str = "batch",
        level: str = "sample",
        backend: Optional[str] = None,
    ) -> None:
        super().__init__(backend)
        self.alpha_range, self.beta_range = F.check_shake_drop_params(p_drop, alpha_range, beta_range, gate_level, level)
        self.p_drop = float(p_drop)
        self.gate_level = gate_level
        self.level = level

    def forward(self, h: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Hyper-parameters were validated in __init__ (the op checks their values again, in C++).
        if self.backend is None:
            return F._shake_drop(h, shortcut, self.p_drop, self.alpha_range, self.beta_range, self.gate_level,
                                 self.level, self.training)
        with self._pinned():
            return F._shake_drop(h, shortcut, self.p_drop, self.alpha_range, self.beta_range, self.gate_level,
                                 self.level, self.training)

    def extra_repr(self) -> str:
        return (
            f"p_drop={self.p_drop}, alpha_range={self.alpha_range}, beta_range={self.beta_range}, "
            f"gate_level={self.gate_level!r}, level={self.level!r}"
        )


class StochasticDepth(_Layer):
    """Stochastic depth (Huang et al., arXiv 1603.09382), optionally fused with the shortcut add.

    ``StochasticDepth(p)(h)`` is timm's ``DropPath(p)`` and torchvision's ``StochasticDepth(p, "row")``: the branch
    dropped per sample with probability ``p`` and scaled by 1 / (1 - p); ``StochasticDepth(p)(h, shortcut)``
    returns the block output ``shortcut + b * s * h`` in one pass. ``mode="batch"`` drops the whole batch's
    branch at once; ``scale_by_keep=False`` is Huang's unscaled form, whose evaluation scales by 1 - p. See
    :func:`cifarops.functional.stochastic_depth` and :func:`cifarops.stochastic_depth_schedule`.
    """

    def __init__(self, p: float = 0.5, mode: str = "row", scale_by_keep: bool = True, *,
                 backend: Optional[str] = None) -> None:
        super().__init__(backend)
        self.p = F.check_stochastic_depth_params(p, mode, scale_by_keep)
        self.mode = mode
        self.scale_by_keep = scale_by_keep

    def forward(self, h: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.backend is None:
            return F._stochastic_depth(h, shortcut, self.p, self.mode, self.scale_by_keep, self.training)
        with self._pinned():
            return F._stochastic_depth(h, shortcut, self.p, self.mode, self.scale_by_keep, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}, scale_by_keep={self.scale_by_keep}"


class DropActivation(_Layer):
    """Drop-Activation (Liang, Khoo & Yang, arXiv 1811.05850), a drop-in for ``nn.ReLU``: each ReLU kept with
    probability ``keep`` (the paper's 0.95) and the identity otherwise, in evaluation the leaky ReLU of slope
    1 - keep. One kernel each way; only the output and the (2,) RNG state are saved for backward. ``inplace``
    writes the output into the input, as ``nn.ReLU(inplace=True)``. See :func:`cifarops.functional.drop_activation`."""

    def __init__(self, keep: float = 0.95, inplace: bool = False, *, backend: Optional[str] = None) -> None:
        super().__init__(backend)
        self.keep = F.check_drop_activation_keep(keep)
        if not isinstance(inplace, bool):
            raise TypeError(f"cifarops.DropActivation: inplace must be a bool, got {type(inplace).__name__}")
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            return F._drop_activation(x, self.keep, self.training, None, self.inplace)
        with self._pinned():
            return F._drop_activation(x, self.keep, self.training, None, self.inplace)

    def extra_repr(self) -> str:
        return f"keep={self.keep}" + (", inplace=True" if self.inplace else "")


class StochasticPool2d(_Layer):
    """Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557), max_pool2d's arguments: in training each output is
    an element of its region drawn with probability proportional to its activation, in evaluation the
    probability-weighted average. See :func:`cifarops.functional.stochastic_pool2d`."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, *,
                 backend: Optional[str] = None) -> None:
        super().__init__(backend)
        op = "cifarops.StochasticPool2d"
        self.kernel_size, self.stride, self.padding, self.ceil_mode = F.parse_stochastic_pool2d(
            kernel_size, stride, padding, ceil_mode, op)
        # The values too, before any input is seen (on a plane large enough for any kernel).
        _stochastic_pool_ops.check_pool_args(2**20, 2**20, self.kernel_size, self.stride, self.padding, ceil_mode,
                                             "x", op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            return F._stochastic_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.training)
        with self._pinned():
            return F._stochastic_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.training)

    def extra_repr(self) -> str:
        return (f"kernel_size={tuple(self.kernel_size)}, stride={tuple(self.stride)}, padding={tuple(self.padding)}, "
                f"ceil_mode={self.ceil_mode}")


class ShakeShake(_Layer):
    """Shake-Shake regularisation (Gastaldi, arXiv 1705.07485) of a two-branch residual block.

    ``ShakeShake()(h1, h2, shortcut)`` returns ``shortcut + alpha * h1 + (1 - alpha) * h2`` in one pass, with
    the gradients ``beta * dy`` and ``(1 - beta) * dy`` to the branches; without ``shortcut`` it returns the
    mix. Defaults are the paper's best CIFAR-10 setting, Shake-Shake-Image: forward and backward "shake" with
    one draw per sample. See :func:`cifarops.functional.shake_shake`.
    """

    def __init__(self, *, forward_mode: str = "shake", backward_mode: str = "shake", level: str = "sample",
                 backend: Optional[str] = None) -> None:
        super().__init__(backend)
        F.check_shake_shake_params(forward_mode, backward_mode, level)
        self.forward_mode = forward_mode
        self.backward_mode = backward_mode
        self.level = level

    def forward(self, h1: torch.Tensor, h2: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.backend is None:  # the usual case: no context manager per call
            return F.shake_shake(h1, h2, shortcut, forward_mode=self.forward_mode, backward_mode=self.backward_mode,
                                 level=self.level, training=self.training)
        with self._pinned():
            return F.shake_shake(h1, h2, shortcut, forward_mode=self.forward_mode, backward_mode=self.backward_mode,
                                 level=self.level, training=self.training)

    def extra_repr(self) -> str:
        return f"forward_mode={self.forward_mode!r}, backward_mode={self.backward_mode!r}, level={self.level!r}"


class Maxout(_Layer):
    """Maxout over groups of ``pieces`` channels along ``dim`` (Goodfellow et al., arXiv 1302.4389).

    ``grouping="contiguous"`` follows pylearn2 (Goodfellow's code), ``"strided"`` follows Lua's nn.Maxout.
    See :func:`cifarops.functional.maxout`.
    """

    def __init__(self, pieces: int, dim: int = 1, grouping: str = "contiguous", *, backend: Optional[str] = None) -> None:
        super().__init__(backend)
        _check_maxout_settings(pieces, dim, grouping)
        self.pieces, self.dim, self.grouping = pieces, dim, grouping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:  # the usual case: no context manager per call
            return F.maxout(x, self.pieces, self.dim, self.grouping)
        with self._pinned():
            return F.maxout(x, self.pieces, self.dim, self.grouping)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}, dim={self.dim}, grouping={self.grouping!r}"


class ProbabilisticMaxout(_Layer):
    """Probabilistic maxout (Springenberg & Riedmiller, arXiv 1312.6116, section 3): in training, each output
    is a piece drawn from softmax(z / temperature); in evaluation, the expectation. ``temperature`` is the
    inverse of the paper's lambda. See :func:`cifarops.functional.probabilistic_maxout`.
    """

    def __init__(self, pieces: int, dim: int = 1, grouping: str = "contiguous", temperature: float = 1.0,
                 *, backend: Optional[str] = None) -> None:
        super().__init__(backend)
        _check_maxout_settings(pieces, dim, grouping, temperature)
        self.pieces, self.dim, self.grouping, self.temperature = pieces, dim, grouping, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:  # the usual case: no context manager per call
            return F.probabilistic_maxout(
                x, self.pieces, self.dim, self.grouping, temperature=self.temperature, training=self.training
            )
        with self._pinned():
            return F.probabilistic_maxout(
                x, self.pieces, self.dim, self.grouping, temperature=self.temperature, training=self.training
            )

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}, dim={self.dim}, grouping={self.grouping!r}, temperature={self.temperature}"


def _check_maxout_settings(pieces, dim, grouping, temperature=None) -> None:
    """The settings a module can check before it sees a tensor (a one-element probe with enough dims)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"cifarops.Maxout: dim must be an int, got {type(dim).__name__}")
    probe = torch.empty((1,) * (abs(dim) + 1))
    _maxout_ops.check_args(probe, pieces, dim, grouping, "cifarops.Maxout", temperature, grouped_input=False)


class FractionalMaxPool2d(_Layer):
    """Fractional max-pooling (Graham, arXiv 1412.6071): a drop-in for ``torch.nn.FractionalMaxPool2d`` with
    the same signature (equal outputs, indices and gradients for the same ``_random_samples``), plus Graham's
    modes: ``regions`` ``"disjoint"`` / ``"overlapping"``, ``sequence`` ``"pseudorandom"`` / ``"random"`` and
    ``per_image`` sharing. New regions are drawn at every call, as PyTorch's; see
    :func:`cifarops.functional.fractional_max_pool2d` and, for test-time averaging over draws,
    :func:`cifarops.fmp_model_average`.
    """

    def __init__(
        self,
        kernel_size=None,
        output_size=None,
        output_ratio=None,
        return_indices: bool = False,
        _random_samples: Optional[torch.Tensor] = None,
        *,
        regions: str = "window",
        sequence: str = "pseudorandom",
        per_image: bool = False,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__(backend)
        op = "cifarops.FractionalMaxPool2d"
        if (output_size is None) == (output_ratio is None):
            raise ValueError(f"{op}: pass exactly one of output_size and output_ratio")
        if output_ratio is not None:
            F._fmp_output_size((2, 2), None, output_ratio, op)  # validates the ratios
        F.check_choice(regions, "regions", F._fmp_ops.REGIONS, op)
        F.check_choice(sequence, "sequence", F.FMP_SEQUENCES, op)
        if (regions == "window") != (kernel_size is not None):
            raise ValueError(f"{op}: kernel_size is required for regions='window' and not taken by Graham's regions")
        self.kernel_size, self.output_size, self.output_ratio = kernel_size, output_size, output_ratio
        self.return_indices = return_indices
        self.regions, self.sequence, self.per_image = regions, sequence, per_image
        self.register_buffer("_random_samples", _random_samples)
        self._parsed = None  # (kernel list, output size list or None): parsed once, at the first call

    def forward(self, input: torch.Tensor):
        # Under torch.compile always the functional (the trace costs nothing at run time) and never a read of
        # _parsed: Dynamo would guard on it and compile again once an eager call has set it.
        compiling = torch.compiler.is_compiling()
        if compiling or self.backend is not None or self._parsed is None or not isinstance(input, torch.Tensor) or input.dim() != 4:
            with self._pinned():
                y = F.fractional_max_pool2d(
                    input, self.kernel_size, self.output_size, self.output_ratio, self.return_indices,
                    self._random_samples, regions=self.regions, sequence=self.sequence, per_image=self.per_image,
                )
            if not compiling and self._parsed is None:  # the call checked the hyper-parameters: keep them parsed
                kernel = F._fmp_kernel(self.kernel_size, self.regions, F.FMP_OP)
                size = None if self.output_size is None else list(F._fmp_ops._pair_of_ints(self.output_size, "output_size", F.FMP_OP))
                self._parsed = (kernel, size)
            return y
        # The usual call: a 4-D input, hyper-parameters parsed at the first call.
        F.check_nc_input(input, "input", F.FMP_OP)
        kernel, size = self._parsed
        if size is None:
            size = list(F._fmp_output_size(input.shape[2:], None, self.output_ratio, F.FMP_OP))
        return F._fmp_call(input, kernel, size, self.return_indices, self._random_samples, None, self.regions,
                           self.sequence, self.per_image, False)

    def extra_repr(self) -> str:
        size = f"output_size={self.output_size}" if self.output_size is not None else f"output_ratio={self.output_ratio}"
        kernel = f"kernel_size={self.kernel_size}, " if self.kernel_size is not None else ""
        return f"{kernel}{size}, regions={self.regions!r}, sequence={self.sequence!r}, per_image={self.per_image}"
