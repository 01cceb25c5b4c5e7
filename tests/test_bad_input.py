"""Bad input gets a clear error naming the argument, on every backend, before anything is computed or drawn.

The table covers every public function and module of the ops x each class of bad input that applies (rank,
dtype, device mix with meta tensors, shapes, parameter types, ranges and names, noise tensors of the wrong
shape, dtype or device); each row also checks that torch's global generator did not move. Checkpointing and
the model zoo: tests/test_bad_input_models.py; NaN and infinities: tests/test_bad_input_nan.py."""

from __future__ import annotations

import re

import pytest
import torch

import cifarops
import cifarops.functional as F

H = (4, 6, 3, 3)

# The table's tensors come from a generator of its own, so that every row can assert that the failing call
# left torch's global generator where it was (a call must not draw before it rejects its arguments).
_GENERATOR = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float32, device="cpu"):
    if torch.device(device).type == "meta":
        return torch.empty(*shape, dtype=dtype, device=device)
    return torch.randn(*shape, dtype=dtype, generator=_GENERATOR)


def rand(*shape, dtype=torch.float32, device="cpu"):
    if torch.device(device).type == "meta":
        return torch.empty(*shape, dtype=dtype, device=device)
    return torch.rand(*shape, dtype=dtype, generator=_GENERATOR)


def h(**kw):
    return randn(*H, **kw)


# (description, call, exception type, message fragment)
CASES = [
    ("p_drop above 1", lambda: F.shake_drop(h(), p_drop=1.5), ValueError, "p_drop must be a number in [0, 1]"),
    ("p_drop below 0", lambda: F.shake_drop(h(), p_drop=-0.1), ValueError, "p_drop must be a number in [0, 1]"),
    ("p_drop not a number", lambda: F.shake_drop(h(), p_drop="half"), ValueError, "p_drop"),
    ("reversed alpha_range", lambda: F.shake_drop(h(), alpha_range=(1.0, -1.0)), ValueError, "alpha_range must satisfy low <= high"),
    ("reversed beta_range", lambda: F.shake_drop(h(), beta_range=(1.0, 0.0)), ValueError, "beta_range must satisfy low <= high"),
    ("alpha_range of three", lambda: F.shake_drop(h(), alpha_range=(0, 1, 2)), ValueError, "alpha_range must be a pair"),
    ("unknown level", lambda: F.shake_drop(h(), level="image"), ValueError, "level must be one of"),
    ("unknown gate_level", lambda: F.shake_drop(h(), gate_level="channel"), ValueError, "gate_level must be one of"),
    ("integer h", lambda: F.shake_drop(torch.ones(*H, dtype=torch.int64)), TypeError, "h must be float32, float64, float16 or bfloat16"),
    ("h not a tensor", lambda: F.shake_drop([1.0, 2.0]), TypeError, "h must be a torch.Tensor"),
    ("1-D h", lambda: F.shake_drop(torch.ones(5)), ValueError, "h must have at least 2 dimensions"),
    ("integer shortcut", lambda: F.shake_drop(h(), torch.ones(*H, dtype=torch.int32)), TypeError, "shortcut must be float32"),
    ("shortcut dtype", lambda: F.shake_drop(h(), h(dtype=torch.float64)), TypeError, "shortcut must have h's dtype"),
    ("shortcut batch", lambda: F.shake_drop(h(), randn(3, 6, 3, 3)), ValueError, "shortcut must match h in batch and spatial sizes"),
    ("shortcut spatial", lambda: F.shake_drop(h(), randn(4, 6, 3, 2)), ValueError, "shortcut must match h in batch and spatial sizes"),
    ("shortcut wider", lambda: F.shake_drop(h(), randn(4, 7, 3, 3)), ValueError, "shortcut has 7 channels, more than h's 6"),
    ("shortcut on meta", lambda: F.shake_drop(h(), randn(*H, device="meta")), ValueError, "shortcut is on meta"),
    ("gate shape", lambda: F.shake_drop(h(), gate=torch.ones(3)), ValueError, "gate must have shape (1,) or (N,)"),
    ("integer gate", lambda: F.shake_drop(h(), gate=torch.ones(4, dtype=torch.int64)), TypeError, "gate must be a floating-point tensor"),
    ("alpha shape", lambda: F.shake_drop(h(), alpha=torch.ones(4, 5)), ValueError, "alpha must have shape (1,), (N,)"),
    ("beta shape", lambda: F.shake_drop(h(), beta=torch.ones(4, 6, 3)), ValueError, "beta must have shape (1,), (N,)"),
    ("alpha on meta", lambda: F.shake_drop(h(), alpha=torch.ones(4, device="meta")), ValueError, "alpha is on meta"),
    ("noise in evaluation", lambda: F.shake_drop(h(), training=False, gate=torch.ones(1)), ValueError, "training noise"),
    ("module p_drop", lambda: cifarops.ShakeDrop(2.0), ValueError, "p_drop must be a number in [0, 1]"),
    ("module level", lambda: cifarops.ShakeDrop(level="pixels"), ValueError, "level must be one of"),
    ("module range", lambda: cifarops.ShakeDrop(0.5, (1, 0)), ValueError, "alpha_range must satisfy"),
    ("schedule", lambda: cifarops.shake_drop_schedule(-1), ValueError, "num_blocks must be a non-negative int"),
    # Shake-Shake
    ("h2 shape", lambda: F.shake_shake(h(), randn(4, 6, 3, 2)), ValueError, "h2 must have h1's shape"),
    ("h2 dtype", lambda: F.shake_shake(h(), h(dtype=torch.float64)), TypeError, "h2 must have h1's dtype"),
    ("h2 device", lambda: F.shake_shake(h(), h(device="meta")), ValueError, "h2 is on meta but h1 is on cpu"),
    ("h2 integer", lambda: F.shake_shake(h(), torch.ones(*H, dtype=torch.int64)), TypeError, "h2 must be float32"),
    ("h1 integer", lambda: F.shake_shake(torch.ones(*H, dtype=torch.int64), h()), TypeError, "h1 must be float32"),
    ("shake shortcut shape", lambda: F.shake_shake(h(), h(), randn(4, 5, 3, 3)), ValueError, "shortcut must have h1's shape"),
    ("shake shortcut dtype", lambda: F.shake_shake(h(), h(), h(dtype=torch.float16)), TypeError, "shortcut must have h1's dtype"),
    ("forward_mode", lambda: F.shake_shake(h(), h(), forward_mode="keep"), ValueError, "forward_mode must be one of"),
    ("backward_mode", lambda: F.shake_shake(h(), h(), backward_mode="random"), ValueError, "backward_mode must be one of"),
    ("shake level", lambda: F.shake_shake(h(), h(), level="pixel"), ValueError, "level must be one of ('batch', 'sample')"),
    ("shake alpha shape", lambda: F.shake_shake(h(), h(), alpha=rand(4, 6)), ValueError, "alpha must have shape (1,) or (N,)"),
    ("shake beta shape", lambda: F.shake_shake(h(), h(), beta=rand(3)), ValueError, "beta must have shape (1,) or (N,)"),
    ("shake alpha integer", lambda: F.shake_shake(h(), h(), alpha=torch.ones(4, dtype=torch.int32)), TypeError, "alpha must be a floating-point tensor"),
    ("shake noise in evaluation", lambda: F.shake_shake(h(), h(), training=False, alpha=torch.ones(1)), ValueError, "training noise"),
    ("shake module mode", lambda: cifarops.ShakeShake(backward_mode="flip"), ValueError, "backward_mode must be one of"),
    # Maxout and probabilistic maxout
    ("maxout indivisible", lambda: F.maxout(h(), 4), ValueError, "x.shape[1] = 6 channels are not divisible by pieces = 4"),
    ("maxout pieces 0", lambda: F.maxout(h(), 0), ValueError, "pieces must be in [1, 255]"),
    ("maxout pieces 256", lambda: F.maxout(randn(2, 256), 256), ValueError, "pieces must be in [1, 255]"),
    ("maxout pieces float", lambda: F.maxout(h(), 2.0), TypeError, "pieces must be an int"),
    ("maxout dim", lambda: F.maxout(h(), 2, dim=4), IndexError, "dim 4 is out of range for a 4-dimensional x"),
    ("maxout negative dim", lambda: F.maxout(h(), 2, dim=-5), IndexError, "dim -5 is out of range"),
    ("maxout integer", lambda: F.maxout(torch.ones(*H, dtype=torch.int32), 2), TypeError, "x must be float32"),
    ("maxout 0-d", lambda: F.maxout(torch.tensor(1.0), 1, dim=0), ValueError, "x must have at least one dimension"),
    ("maxout grouping", lambda: F.maxout(h(), 2, grouping="interleaved"), ValueError, "grouping must be one of"),
    ("prob temperature 0", lambda: F.probabilistic_maxout(h(), 2, temperature=0.0), ValueError, "temperature must be a positive number"),
    ("prob temperature str", lambda: F.probabilistic_maxout(h(), 2, temperature="hot"), ValueError, "temperature must be a positive number"),
    ("prob indivisible", lambda: F.probabilistic_maxout(h(), 4, training=False), ValueError, "not divisible by pieces = 4"),
    ("Maxout module pieces", lambda: cifarops.Maxout(0), ValueError, "pieces must be in [1, 255]"),
    ("Maxout module grouping", lambda: cifarops.Maxout(2, grouping="x"), ValueError, "grouping must be one of"),
    ("ProbabilisticMaxout temperature", lambda: cifarops.ProbabilisticMaxout(2, temperature=-1), ValueError, "temperature must be a positive"),
]


def plane(**kw):
    return randn(2, 3, 10, 10, **kw)


def fmp(**kw):
    kw.setdefault("output_size", 7)
    return F.fractional_max_pool2d(kw.pop("x", plane()), kw.pop("kernel_size", 2), **kw)


CASES += [
    ("fmp samples above 1", lambda: fmp(_random_samples=torch.full((2, 3, 2), 1.0)), ValueError, "samples must lie in [0, 1)"),
    ("fmp samples negative", lambda: fmp(_random_samples=torch.full((2, 3, 2), -0.5)), ValueError, "samples must lie in [0, 1)"),
    ("fmp samples NaN", lambda: fmp(_random_samples=torch.full((2, 3, 2), float("nan"))), ValueError, "samples must lie in [0, 1)"),
    ("fmp samples shape", lambda: fmp(_random_samples=rand(2, 3, 3)), ValueError, "_random_samples must have shape (N, C, 2)"),
    ("fmp samples batch", lambda: fmp(_random_samples=rand(3, 3, 2)), ValueError, "_random_samples must have shape"),
    ("fmp samples dtype", lambda: fmp(_random_samples=rand(2, 3, 2, dtype=torch.float64)), TypeError, "samples must have the input's dtype"),
    ("fmp samples device", lambda: fmp(_random_samples=rand(2, 3, 2, device="meta")), ValueError, "samples is on meta"),
    ("fmp samples not a tensor", lambda: fmp(_random_samples=[0.5, 0.5]), TypeError, "_random_samples must be a torch.Tensor"),
    ("fmp output not smaller", lambda: fmp(kernel_size=1, output_size=10), ValueError, "output height 10 must be smaller than the input height 10"),
    ("fmp output larger", lambda: fmp(output_size=(5, 12)), ValueError, "output width 12 must be smaller"),
    ("fmp output zero", lambda: fmp(output_size=0), ValueError, "output_size must be positive"),
    ("fmp ratio 1", lambda: fmp(output_size=None, output_ratio=1.0), ValueError, "output_ratio must be a number or a pair of numbers in (0, 1)"),
    ("fmp ratio 0", lambda: fmp(output_size=None, output_ratio=(0.5, 0.0)), ValueError, "output_ratio must be"),
    ("fmp both sizes", lambda: fmp(output_ratio=0.5), ValueError, "pass exactly one of output_size and output_ratio"),
    ("fmp no size", lambda: fmp(output_size=None), ValueError, "pass exactly one of output_size and output_ratio"),
    ("fmp kernel too large", lambda: fmp(kernel_size=5), ValueError, "kernel_size 5 is too large for output height 7 from input height 10"),
    ("fmp kernel zero", lambda: fmp(kernel_size=(2, 0)), ValueError, "kernel_size must be positive"),
    ("fmp kernel float", lambda: fmp(kernel_size=2.0), ValueError, "kernel_size must be an int or a pair of ints"),
    ("fmp 2-D input", lambda: fmp(x=randn(10, 10)), ValueError, "input must be 3- or 4-dimensional"),
    ("fmp 5-D input", lambda: fmp(x=randn(1, 2, 3, 10, 10)), ValueError, "input must be 3- or 4-dimensional"),
    ("fmp integer input", lambda: fmp(x=torch.ones(2, 3, 10, 10, dtype=torch.int64)), TypeError, "input must be float32"),
    ("fmp regions", lambda: fmp(regions="square"), ValueError, "regions must be one of"),
    ("fmp sequence", lambda: fmp(output_size=6, kernel_size=None, regions="disjoint", sequence="shuffled"), ValueError, "sequence must be one of"),
    ("fmp random windows", lambda: fmp(sequence="random"), ValueError, "sequence='random' is for Graham's"),
    ("fmp Graham kernel", lambda: fmp(regions="disjoint"), ValueError, "kernel_size is for regions='window'"),
    ("fmp window no kernel", lambda: fmp(kernel_size=None), ValueError, "regions='window' needs kernel_size"),
    ("fmp Graham ratio above 2", lambda: fmp(kernel_size=None, output_size=4, regions="overlapping"), ValueError, "can be at most twice the output"),
    ("fmp boundaries for windows", lambda: fmp(boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64)), ValueError, "boundaries are for Graham's"),
    ("fmp boundaries dtype", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int32)), TypeError, "boundaries must be int64"),
    ("fmp boundaries short", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.zeros(2, 3, 2, 7, dtype=torch.int64)), ValueError, "boundaries must have shape (N, C, 2, L)"),
    ("fmp boundaries values", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64)), ValueError, "must start at 0 and reach the input size 10"),
    ("fmp boundaries steps", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.tensor([0, 1, 2, 3, 4, 5, 6, 10]).expand(2, 3, 2, 8)), ValueError, "must increase in steps of 1 or 2"),
    ("fmp samples and boundaries", lambda: fmp(kernel_size=None, regions="disjoint", _random_samples=rand(2, 3, 2), boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64)), ValueError, "not both"),
    ("FractionalMaxPool2d sizes", lambda: cifarops.FractionalMaxPool2d(2, output_size=5, output_ratio=0.5), ValueError, "pass exactly one of output_size and output_ratio"),
    ("FractionalMaxPool2d ratio", lambda: cifarops.FractionalMaxPool2d(2, output_ratio=1.5), ValueError, "output_ratio must be"),
    ("FractionalMaxPool2d kernel", lambda: cifarops.FractionalMaxPool2d(output_ratio=0.5), ValueError, "kernel_size is required for regions='window'"),
    ("fmp_model_average draws", lambda: cifarops.fmp_model_average(torch.nn.Identity(), plane(), 0), ValueError, "draws must be a positive int"),
]


# The rest of the table: each public function and module x each class of bad input that applies to it.
NAN = float("nan")

CASES += [
    # ShakeDrop: parameters, ranks, devices and explicit noise of the wrong kind
    ("p_drop bool", lambda: F.shake_drop(h(), p_drop=True), ValueError, "p_drop must be a number in [0, 1]"),
    ("p_drop NaN", lambda: F.shake_drop(h(), p_drop=NAN), ValueError, "p_drop must be a number in [0, 1]"),
    ("alpha_range None", lambda: F.shake_drop(h(), alpha_range=None), ValueError, "alpha_range must be a pair"),
    ("beta_range of strings", lambda: F.shake_drop(h(), beta_range=("a", "b")), ValueError, "beta_range must be a pair"),
    ("alpha_range NaN", lambda: F.shake_drop(h(), alpha_range=(NAN, 1.0)), ValueError, "alpha_range must satisfy low <= high"),
    ("0-d h", lambda: F.shake_drop(torch.tensor(1.0)), ValueError, "h must have at least 2 dimensions"),
    ("3-D shortcut for 4-D h", lambda: F.shake_drop(h(), randn(4, 6, 3)), ValueError, "shortcut must match h in batch and spatial sizes"),
    ("shortcut not a tensor", lambda: F.shake_drop(h(), [1.0]), TypeError, "shortcut must be a torch.Tensor"),
    ("h on meta, shortcut on cpu", lambda: F.shake_drop(h(device="meta"), h()), ValueError, "shortcut is on cpu but h is on meta"),
    ("gate on meta", lambda: F.shake_drop(h(), gate=randn(4, device="meta")), ValueError, "gate is on meta but h is on cpu"),
    ("beta on meta", lambda: F.shake_drop(h(), beta=randn(4, 6, device="meta")), ValueError, "beta is on meta but h is on cpu"),
    ("gate 2-D", lambda: F.shake_drop(h(), gate=torch.ones(4, 1)), ValueError, "gate must have shape (1,) or (N,)"),
    ("gate not a tensor", lambda: F.shake_drop(h(), gate=1.0), TypeError, "gate must be a torch.Tensor"),
    ("integer alpha", lambda: F.shake_drop(h(), alpha=torch.ones(4, dtype=torch.int64)), TypeError, "alpha must be a floating-point tensor"),
    ("boolean beta", lambda: F.shake_drop(h(), beta=torch.ones(4, dtype=torch.bool)), TypeError, "beta must be a floating-point tensor"),
    ("alpha not a tensor", lambda: F.shake_drop(h(), alpha=0.5), TypeError, "alpha must be a torch.Tensor"),
    ("beta of h's shape transposed", lambda: F.shake_drop(h(), beta=randn(4, 6, 3, 3).transpose(0, 1)), ValueError, "beta must have shape (1,), (N,)"),
    ("bad beta after a drawn gate", lambda: F.shake_drop(h(), beta=torch.ones(3)), ValueError, "beta must have shape (1,), (N,)"),
    ("module gate_level", lambda: cifarops.ShakeDrop(gate_level="pixel"), ValueError, "gate_level must be one of"),
    ("module beta_range", lambda: cifarops.ShakeDrop(0.5, (-1, 1), (1, 0)), ValueError, "beta_range must satisfy"),
    ("module backend", lambda: cifarops.ShakeDrop(backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ("module integer h", lambda: cifarops.ShakeDrop()(torch.ones(*H, dtype=torch.int32)), TypeError, "h must be float32"),
    ("module shortcut batch", lambda: cifarops.ShakeDrop()(h(), randn(3, 6, 3, 3)), ValueError, "shortcut must match h in batch"),
    ("module shortcut wider", lambda: cifarops.ShakeDrop()(h(), randn(4, 8, 3, 3)), ValueError, "shortcut has 8 channels"),
    ("module shortcut on meta", lambda: cifarops.ShakeDrop().eval()(h(), h(device="meta")), ValueError, "shortcut is on meta"),
    ("schedule num_blocks float", lambda: cifarops.shake_drop_schedule(2.5), ValueError, "num_blocks must be a non-negative int"),
    ("schedule num_blocks bool", lambda: cifarops.shake_drop_schedule(True), ValueError, "num_blocks must be a non-negative int"),
    ("schedule p_drop_last", lambda: cifarops.shake_drop_schedule(4, 1.5), ValueError, "p_drop_last must be a number in [0, 1]"),
    ("schedule p_drop_last str", lambda: cifarops.shake_drop_schedule(4, "half"), ValueError, "p_drop_last must be a number"),
    # Shake-Shake
    ("1-D h1", lambda: F.shake_shake(randn(4), randn(4)), ValueError, "h1 must have at least 2 dimensions"),
    ("h1 not a tensor", lambda: F.shake_shake(None, h()), TypeError, "h1 must be a torch.Tensor"),
    ("h2 not a tensor", lambda: F.shake_shake(h(), 1.0), TypeError, "h2 must be a torch.Tensor"),
    ("h2 3-D", lambda: F.shake_shake(h(), randn(4, 6, 3)), ValueError, "h2 must have h1's shape"),
    ("shake shortcut on meta", lambda: F.shake_shake(h(), h(), h(device="meta")), ValueError, "shortcut is on meta but h1 is on cpu"),
    ("shake shortcut integer", lambda: F.shake_shake(h(), h(), torch.ones(*H, dtype=torch.int64)), TypeError, "shortcut must be float32"),
    ("shake alpha on meta", lambda: F.shake_shake(h(), h(), alpha=rand(4, device="meta")), ValueError, "alpha is on meta but h1 is on cpu"),
    ("shake beta on meta", lambda: F.shake_shake(h(), h(), beta=rand(1, device="meta")), ValueError, "beta is on meta but h1 is on cpu"),
    ("shake beta integer", lambda: F.shake_shake(h(), h(), beta=torch.ones(4, dtype=torch.int64)), TypeError, "beta must be a floating-point tensor"),
    ("shake alpha 0-d", lambda: F.shake_shake(h(), h(), alpha=torch.tensor(0.5)), ValueError, "alpha must have shape (1,) or (N,)"),
    ("shake bad beta after a drawn alpha", lambda: F.shake_shake(h(), h(), beta=rand(4, 1)), ValueError, "beta must have shape (1,) or (N,)"),
    ("shake module forward_mode", lambda: cifarops.ShakeShake(forward_mode="random"), ValueError, "forward_mode must be one of"),
    ("shake module level", lambda: cifarops.ShakeShake(level="channel"), ValueError, "level must be one of"),
    ("shake module backend", lambda: cifarops.ShakeShake(backend="CPU"), ValueError, "unknown backend 'CPU'"),
    ("shake module h2 shape", lambda: cifarops.ShakeShake()(h(), randn(4, 6, 3, 2)), ValueError, "h2 must have h1's shape"),
    ("shake module h2 dtype", lambda: cifarops.ShakeShake()(h(), h(dtype=torch.float64), h()), TypeError, "h2 must have h1's dtype"),
    ("shake module shortcut shape", lambda: cifarops.ShakeShake()(h(), h(), randn(4, 6, 3)), ValueError, "shortcut must have h1's shape"),
    # Maxout and probabilistic maxout
    ("maxout x not a tensor", lambda: F.maxout([1.0, 2.0], 2), TypeError, "x must be a torch.Tensor"),
    ("maxout pieces bool", lambda: F.maxout(h(), True), TypeError, "pieces must be an int"),
    ("maxout pieces negative", lambda: F.maxout(h(), -2), ValueError, "pieces must be in [1, 255]"),
    ("maxout dim float", lambda: F.maxout(h(), 2, dim=1.0), TypeError, "dim must be an int"),
    ("maxout dim bool", lambda: F.maxout(h(), 2, dim=True), TypeError, "dim must be an int"),
    ("maxout grouping None", lambda: F.maxout(h(), 2, grouping=None), ValueError, "grouping must be one of"),
    ("maxout float16 indivisible dim 0", lambda: F.maxout(h(dtype=torch.float16), 3, dim=0), ValueError, "x.shape[0] = 4 channels are not divisible by pieces = 3"),
    ("prob x integer", lambda: F.probabilistic_maxout(torch.ones(*H, dtype=torch.int64), 2), TypeError, "x must be float32"),
    ("prob x not a tensor", lambda: F.probabilistic_maxout(None, 2), TypeError, "x must be a torch.Tensor"),
    ("prob pieces 0", lambda: F.probabilistic_maxout(h(), 0), ValueError, "pieces must be in [1, 255]"),
    ("prob dim", lambda: F.probabilistic_maxout(h(), 2, dim=-5), IndexError, "dim -5 is out of range"),
    ("prob grouping", lambda: F.probabilistic_maxout(h(), 2, grouping="random"), ValueError, "grouping must be one of"),
    ("prob temperature bool", lambda: F.probabilistic_maxout(h(), 2, temperature=True), ValueError, "temperature must be a positive number"),
    ("prob temperature NaN", lambda: F.probabilistic_maxout(h(), 2, temperature=NAN), ValueError, "temperature must be a positive number"),
    ("prob temperature -inf", lambda: F.probabilistic_maxout(h(), 2, temperature=-float("inf"), training=False), ValueError, "temperature must be a positive"),
    ("Maxout module dim float", lambda: cifarops.Maxout(2, dim=1.5), TypeError, "dim must be an int"),
    ("Maxout module pieces float", lambda: cifarops.Maxout(2.0), TypeError, "pieces must be an int"),
    ("Maxout module backend", lambda: cifarops.Maxout(2, backend="cuda:0"), ValueError, "unknown backend 'cuda:0'"),
    ("Maxout module indivisible x", lambda: cifarops.Maxout(4)(h()), ValueError, "not divisible by pieces = 4"),
    ("Maxout module integer x", lambda: cifarops.Maxout(2)(torch.ones(*H, dtype=torch.uint8)), TypeError, "x must be float32"),
    ("Maxout module 1-D x", lambda: cifarops.Maxout(2)(randn(4)), IndexError, "dim 1 is out of range for a 1-dimensional x"),
    ("ProbabilisticMaxout temperature str", lambda: cifarops.ProbabilisticMaxout(2, temperature="hot"), ValueError, "temperature must be a positive"),
    ("ProbabilisticMaxout grouping", lambda: cifarops.ProbabilisticMaxout(2, grouping="strides"), ValueError, "grouping must be one of"),
    ("ProbabilisticMaxout integer x", lambda: cifarops.ProbabilisticMaxout(2)(torch.ones(*H, dtype=torch.int8)), TypeError, "x must be float32"),
    ("ProbabilisticMaxout eval indivisible", lambda: cifarops.ProbabilisticMaxout(4).eval()(h()), ValueError, "not divisible by pieces = 4"),
    # Fractional max-pooling
    ("fmp input not a tensor", lambda: F.fractional_max_pool2d([[1.0]], 2, output_size=1), TypeError, "input must be a torch.Tensor"),
    ("fmp 1-D input", lambda: fmp(x=randn(10)), ValueError, "input must have at least 2 dimensions"),
    ("fmp output_size str", lambda: fmp(output_size="ab"), TypeError, "output_size must hold ints"),
    ("fmp output_size triple", lambda: fmp(output_size=(5, 5, 5)), ValueError, "output_size must be an int or a pair of ints"),
    ("fmp output_ratio str", lambda: fmp(output_size=None, output_ratio="half"), ValueError, "output_ratio must be"),
    ("fmp output_ratio bool", lambda: fmp(output_size=None, output_ratio=True), ValueError, "output_ratio must be"),
    ("fmp kernel bool", lambda: fmp(kernel_size=True), ValueError, "kernel_size must be an int or a pair of ints"),
    ("fmp input on meta, samples on cpu", lambda: fmp(x=plane(device="meta"), _random_samples=rand(2, 3, 2)), ValueError, "samples is on cpu but x is on meta"),
    ("fmp samples integer", lambda: fmp(_random_samples=torch.zeros(2, 3, 2, dtype=torch.int64)), TypeError, "samples must have the input's dtype"),
    ("fmp samples 2-D", lambda: fmp(_random_samples=rand(2, 6)), ValueError, "_random_samples must have shape (N, C, 2)"),
    ("fmp samples for random sequences", lambda: fmp(kernel_size=None, regions="disjoint", sequence="random", _random_samples=rand(2, 3, 2)), ValueError, "pass boundaries for explicit ones"),
    ("fmp boundaries on meta", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64, device="meta")), ValueError, "boundaries is on meta but x is on cpu"),
    ("fmp boundaries not a tensor", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=[[0, 2, 4]]), TypeError, "boundaries must be a torch.Tensor"),
    ("fmp boundaries 3-D", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.zeros(2, 3, 8, dtype=torch.int64)), ValueError, "boundaries must have shape (N, C, 2, L)"),
    ("fmp boundaries channels", lambda: fmp(kernel_size=None, regions="disjoint", boundaries=torch.zeros(2, 2, 2, 8, dtype=torch.int64)), ValueError, "boundaries must have shape (N, C, 2, L)"),
    ("FractionalMaxPool2d regions", lambda: cifarops.FractionalMaxPool2d(output_size=5, regions="tiles"), ValueError, "regions must be one of"),
    ("FractionalMaxPool2d sequence", lambda: cifarops.FractionalMaxPool2d(output_size=5, regions="disjoint", sequence="sorted"), ValueError, "sequence must be one of"),
    ("FractionalMaxPool2d Graham kernel", lambda: cifarops.FractionalMaxPool2d(2, output_size=5, regions="disjoint"), ValueError, "kernel_size is required for regions='window' and not taken"),
    ("FractionalMaxPool2d ratio str", lambda: cifarops.FractionalMaxPool2d(2, output_ratio="half"), ValueError, "output_ratio must be"),
    ("FractionalMaxPool2d backend", lambda: cifarops.FractionalMaxPool2d(2, output_size=5, backend="native"), ValueError, "unknown backend 'native'"),
    ("FractionalMaxPool2d 2-D input", lambda: cifarops.FractionalMaxPool2d(2, output_size=7)(randn(10, 10)), ValueError, "input must be 3- or 4-dimensional"),
    ("FractionalMaxPool2d integer input", lambda: cifarops.FractionalMaxPool2d(2, output_size=7)(torch.ones(2, 3, 10, 10, dtype=torch.int32)), TypeError, "input must be float32"),
    ("FractionalMaxPool2d output too large", lambda: cifarops.FractionalMaxPool2d(2, output_size=12)(plane()), ValueError, "output height 12 must be smaller"),
    ("FractionalMaxPool2d samples buffer shape", lambda: cifarops.FractionalMaxPool2d(2, output_size=7, _random_samples=rand(1, 3, 2))(plane()), ValueError, "_random_samples must have shape"),
    ("fmp_model_average draws bool", lambda: cifarops.fmp_model_average(torch.nn.Identity(), plane(), True), ValueError, "draws must be a positive int"),
    ("fmp_model_average draws float", lambda: cifarops.fmp_model_average(torch.nn.Identity(), plane(), 2.5), ValueError, "draws must be a positive int"),
    ("fmp_model_average bad input", lambda: cifarops.fmp_model_average(cifarops.FractionalMaxPool2d(2, output_size=7).eval(), randn(10, 10)), ValueError, "input must be 3- or 4-dimensional"),
    # Backends: unknown names, and a known one that cannot run here
    ("use_backend unknown", lambda: cifarops.use_backend("gpu").__enter__(), ValueError, "unknown backend 'gpu'"),
    ("use_backend not a string", lambda: cifarops.use_backend(1).__enter__(), ValueError, "unknown backend 1"),
]


def select_under(override, device):
    with cifarops.use_backend(override):
        return cifarops.select_backend(device)


CASES += [
    ("backend not available here", lambda: select_under("cuda", "cpu"), RuntimeError, "backend 'cuda' was requested but is not available for cpu"),
]


# Every backend that runs CPU tensors here: the Triton rows run in the TRITON_INTERPRET=1 process.
@pytest.mark.parametrize("backend", cifarops.available_backends("cpu"))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(backend, case):
    _, call, error, fragment = case
    rng_state, override = torch.get_rng_state(), cifarops.backends.current_override()
    with cifarops.use_backend(backend):
        with pytest.raises(error) as raised:
            call()
    assert fragment in str(raised.value)
    assert torch.equal(torch.get_rng_state(), rng_state), "a failing call drew from torch's generator"
    assert cifarops.backends.current_override() == override


# The compiled ops check their own arguments too (csrc/args/), for callers of torch.ops.cifarops directly.
def op_call(**changes):
    args = dict(
        h=randn(*H), shortcut=None, p_drop=0.5, alpha_range=[-1.0, 1.0], beta_range=[0.0, 1.0], gate_level="batch",
        level="sample", training=True, gate=torch.ones(4), alpha=rand(4, 6), beta=rand(4, 6), rng_state=None,
    )
    args.update(changes)
    return lambda ns: ns.shake_drop(*args.values())


OP_CASES = [
    ("integer h", op_call(h=torch.ones(*H, dtype=torch.int32)), "h must be float32"),
    ("gate dtype", op_call(gate=torch.ones(4, dtype=torch.int64)), "gate must be a floating-point tensor"),
    ("gate shape", op_call(gate=torch.ones(3)), "gate must have shape (1,) or (N,)"),
    ("alpha shape", op_call(alpha=torch.ones(4, 5)), "alpha must have shape (1,), (N,)"),
    ("beta dtype", op_call(beta=torch.ones(4, 6, dtype=torch.int16)), "beta must be a floating-point tensor"),
    ("rng_state dtype", op_call(alpha=None, rng_state=torch.ones(2)), "rng_state must be an int64 tensor"),
    ("rng_state size", op_call(alpha=None, rng_state=torch.ones(1, dtype=torch.int64)), "rng_state must have two elements"),
    ("range size", op_call(alpha_range=[1.0]), "alpha_range must be a pair"),
    ("p_drop", op_call(p_drop=2.0), "p_drop must be a number in [0, 1]"),
    ("level", op_call(level="image"), "level must be one of"),
    ("noise in evaluation", op_call(training=False), "training noise"),
    ("shortcut wider", op_call(shortcut=randn(4, 8, 3, 3)), "shortcut has 8 channels"),
    ("shortcut spatial", op_call(shortcut=randn(4, 6, 2, 3)), "shortcut must match h"),
]


def shake_shake_call(**changes):
    args = dict(h1=randn(*H), h2=randn(*H), shortcut=None, forward_mode="shake", backward_mode="shake", level="sample",
                training=True, alpha=rand(4), beta=rand(4), rng_state=None)
    args.update(changes)
    return lambda ns: ns.shake_shake(*args.values())


OP_CASES += [
    ("shake h2 shape", shake_shake_call(h2=randn(4, 6, 3, 2)), "h2 must have h1's shape"),
    ("shake shortcut dtype", shake_shake_call(shortcut=randn(*H, dtype=torch.float64)), "shortcut must have h1's dtype"),
    ("shake alpha shape", shake_shake_call(alpha=rand(4, 1)), "alpha must have shape (1,) or (N,)"),
    ("shake beta dtype", shake_shake_call(beta=torch.ones(4, dtype=torch.int64)), "beta must be a floating-point tensor"),
    ("shake 1-D h1", shake_shake_call(h1=randn(4), h2=randn(4)), "h1 must have at least 2 dimensions"),
    ("shake level", shake_shake_call(level="pixel"), "level must be one of ('batch', 'sample')"),
    ("shake forward_mode", shake_shake_call(forward_mode="keep"), "forward_mode must be one of ('shake', 'even')"),
    ("shake noise in evaluation", shake_shake_call(training=False), "alpha and beta are training noise"),
    ("shake rng_state dtype", shake_shake_call(alpha=None, rng_state=torch.zeros(2)), "rng_state must be an int64 tensor"),
    ("shake rng_state size", shake_shake_call(alpha=None, rng_state=torch.zeros(3, dtype=torch.int64)), "rng_state must have two elements"),
    ("shake backward mode", lambda ns: ns._shake_shake_backward(randn(*H), torch.zeros(2, dtype=torch.int64), None, "flip", "sample"), "backward_mode must be one of"),
    ("shake backward beta shape", lambda ns: ns._shake_shake_backward(randn(*H), torch.zeros(2, dtype=torch.int64), rand(3), "shake", "sample"), "beta must have shape (1,) or (N,)"),
]


OP_CASES += [
    ("maxout indivisible", lambda ns: ns.maxout(randn(*H), 4, 1, "contiguous"), "not divisible by pieces = 4"),
    ("maxout pieces", lambda ns: ns.maxout(randn(*H), 300, 1, "contiguous"), "pieces must be in [1, 255]"),
    ("maxout dim", lambda ns: ns.maxout(randn(*H), 2, 7, "contiguous"), "out of range"),
    ("maxout grouping", lambda ns: ns.maxout(randn(*H), 2, 1, "other"), "grouping must be"),
    ("maxout index dtype", lambda ns: ns._maxout_backward(randn(4, 3), torch.zeros(4, 3), 2, 1, "contiguous"), "index must be uint8"),
    ("maxout index shape", lambda ns: ns._maxout_backward(randn(4, 3), torch.zeros(4, 2, dtype=torch.uint8), 2, 1, "contiguous"), "index must have grad_y's shape"),
    ("prob rng_state size", lambda ns: ns.probabilistic_maxout(randn(*H), 2, 1, "contiguous", 1.0, torch.ones(3, dtype=torch.int64)), "rng_state must have two elements"),
    ("prob rng_state dtype", lambda ns: ns.probabilistic_maxout(randn(*H), 2, 1, "contiguous", 1.0, torch.ones(2, dtype=torch.int32)), "rng_state must be an int64 tensor"),
    ("prob temperature", lambda ns: ns.probabilistic_maxout_expectation(randn(*H), 2, 1, "contiguous", -1.0), "temperature must be a positive number"),
]


def fmp_call(op="fractional_max_pool2d", **changes):
    if op == "fractional_max_pool2d":
        args = dict(x=plane(), kernel_size=[2, 2], output_size=[7, 7], regions="window", samples=rand(2, 3, 2),
                    boundaries=None, return_indices=False, sequence="pseudorandom", per_image=False, rng_state=None)
    else:
        args = dict(grad_y=randn(2, 3, 7, 7), index=torch.zeros(2, 3, 7, 7, dtype=torch.uint8), input_size=[10, 10],
                    kernel_size=[2, 2], regions="window", samples=rand(2, 3, 2), boundaries=None,
                    sequence="pseudorandom", per_image=False, rng_state=None)
    args.update(changes)
    return lambda ns: getattr(ns, op)(*args.values())


# Fractional max-pooling's ops check in C++ with Python's exception types (ValueError, TypeError), before
# drawing: the rows without draws would draw from the generator if they passed their checks.
FMP_OP_CASES = [
    ("fmp samples range", fmp_call(samples=torch.full((2, 3, 2), 2.0)), "samples must lie in [0, 1)"),
    ("fmp samples shape", fmp_call(samples=rand(2, 1, 2)), "samples must have shape (N, C, 2) = (2, 3, 2)"),
    ("fmp samples dtype", fmp_call(samples=rand(2, 3, 2, dtype=torch.float16)), "samples must have the input's dtype"),
    ("fmp both draws", fmp_call(regions="disjoint", kernel_size=[], boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64)), "pass at most one of samples and boundaries"),
    ("fmp 3-D x", fmp_call(x=randn(3, 10, 10)), "x must be 4-dimensional"),
    ("fmp integer x", fmp_call(x=torch.ones(2, 3, 10, 10, dtype=torch.int32), samples=None), "x must be float32"),
    ("fmp regions", fmp_call(regions="tiles", samples=None), "regions must be one of"),
    ("fmp sequence", fmp_call(regions="disjoint", kernel_size=[], samples=None, sequence="sorted"), "sequence must be one of"),
    ("fmp random windows", fmp_call(samples=None, sequence="random"), "sequence='random' is for Graham's"),
    ("fmp samples for random", fmp_call(regions="disjoint", kernel_size=[], sequence="random"), "pass boundaries for explicit ones"),
    ("fmp output size", fmp_call(output_size=[7], samples=None), "a pair of ints (height, width)"),
    ("fmp output not smaller", fmp_call(output_size=[10, 7], kernel_size=[1, 2], samples=None), "output height 10 must be smaller"),
    ("fmp kernel too large", fmp_call(kernel_size=[2, 5], samples=None), "kernel_size 5 is too large for output width 7"),
    ("fmp Graham kernel", fmp_call(regions="disjoint", samples=None), "kernel_size is for regions='window'"),
    ("fmp Graham ratio", fmp_call(regions="disjoint", kernel_size=[], output_size=[4, 7], samples=None, sequence="random"), "at most twice the output height 4"),
    ("fmp window boundaries", fmp_call(samples=None, boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64)), "regions='window' takes samples"),
    ("fmp boundaries values", fmp_call(regions="disjoint", kernel_size=[], samples=None, boundaries=torch.zeros(2, 3, 2, 8, dtype=torch.int64)), "must start at 0"),
    ("fmp rng_state dtype", fmp_call(samples=None, rng_state=torch.zeros(2)), "rng_state must be an int64 tensor"),
    ("fmp rng_state size", fmp_call(samples=None, rng_state=torch.zeros(3, dtype=torch.int64)), "rng_state must have two elements"),
    ("fmp backward index dtype", fmp_call("_fractional_max_pool2d_backward", index=torch.zeros(2, 3, 7, 7, dtype=torch.int32)), "index must be int64 or uint8"),
    ("fmp backward index shape", fmp_call("_fractional_max_pool2d_backward", index=torch.zeros(2, 3, 7, 6, dtype=torch.uint8)), "index must have grad_y's shape"),
    ("fmp backward input size", fmp_call("_fractional_max_pool2d_backward", input_size=[7, 10]), "output height 7 must be smaller than the input height 7"),
    ("fmp backward no state", fmp_call("_fractional_max_pool2d_backward", samples=None), "rng_state (the forward's) is required"),
]


@pytest.mark.parametrize("case", FMP_OP_CASES, ids=[c[0] for c in FMP_OP_CASES])
@pytest.mark.parametrize("namespace", ["triton"] + (["cpu"] if "cpu" in cifarops.available_backends("cpu") else []))
def test_fmp_op_checks(namespace, case):
    """The op's own checks (C++ for cifarops::, Python for the Triton op, before importing or launching
    anything): Python's exception types, the same messages, and nothing drawn."""
    _, call, fragment = case
    rng_state = torch.get_rng_state()
    with pytest.raises((TypeError, ValueError)) as raised:
        call(torch.ops.cifarops_triton if namespace == "triton" else torch.ops.cifarops)
    assert fragment in str(raised.value)
    assert torch.equal(torch.get_rng_state(), rng_state), "a failing call drew from torch's generator"


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_compiled_op_checks(case):
    """The C++ checks raise what their Python twin (the Triton op's) raises: the same type, naming the argument."""
    _, call, fragment = case
    with pytest.raises((TypeError, ValueError, IndexError), match=None) as raised:
        call(torch.ops.cifarops)
    assert fragment in str(raised.value)
    with pytest.raises((TypeError, ValueError, IndexError)) as twin:
        call(torch.ops.cifarops_triton)
    assert type(raised.value) is type(twin.value), (raised.value, twin.value)


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_triton_op_checks_before_launching(case):
    """The Triton op checks in Python, before importing or launching anything (no GPU needed)."""
    _, call, fragment = case
    with pytest.raises((TypeError, ValueError, IndexError)) as raised:
        call(torch.ops.cifarops_triton)
    assert fragment in str(raised.value)


def meta(t):
    return torch.empty_like(t, device="meta")


# A tensor on another device sends the call to the fake (Meta) kernel, which must reject it rather than
# return meta outputs for CPU inputs.
DEVICE_CASES = [
    ("shake_drop gate", op_call(gate=meta(torch.ones(4))), "gate is on meta but h is on cpu"),
    ("shake_drop rng_state", op_call(alpha=None, rng_state=meta(torch.ones(2, dtype=torch.int64))), "rng_state is on meta but the input is on cpu"),
    ("shake_drop backward gate", lambda ns: ns._shake_drop_backward(randn(*H), torch.ones(2, dtype=torch.int64), 0.5, [-1.0, 1.0], [0.0, 1.0], "batch", "sample", True, meta(torch.ones(4)), None), "gate is on meta"),
    ("shake_shake beta", shake_shake_call(beta=meta(torch.ones(4))), "beta is on meta but h1 is on cpu"),
    ("shake_shake rng_state", shake_shake_call(alpha=None, rng_state=meta(torch.zeros(2, dtype=torch.int64))), "rng_state is on meta but the input is on cpu"),
    ("shake_shake backward beta", lambda ns: ns._shake_shake_backward(randn(*H), torch.zeros(2, dtype=torch.int64), meta(torch.ones(4)), "shake", "sample"), "beta is on meta but grad_y is on cpu"),
    ("maxout backward index", lambda ns: ns._maxout_backward(randn(4, 3), meta(torch.zeros(4, 3, dtype=torch.uint8)), 2, 1, "contiguous"), "index is on meta but grad_y is on cpu"),
    ("probabilistic_maxout rng_state", lambda ns: ns.probabilistic_maxout(randn(*H), 2, 1, "contiguous", 1.0, meta(torch.ones(2, dtype=torch.int64))), "rng_state is on meta but the input is on cpu"),
    ("expectation backward grad_y", lambda ns: ns._probabilistic_maxout_expectation_backward(meta(randn(4, 3, 3, 3)), randn(*H), 2, 1, "contiguous", 1.0), "grad_y is on meta but x is on cpu"),
    ("fmp samples", fmp_call(samples=meta(rand(2, 3, 2))), "samples is on meta but x is on cpu"),
    ("fmp boundaries", fmp_call(regions="disjoint", kernel_size=[], samples=None, boundaries=meta(torch.zeros(2, 3, 2, 8, dtype=torch.int64))), "boundaries is on meta but x is on cpu"),
    ("fmp backward index", fmp_call("_fractional_max_pool2d_backward", index=meta(torch.zeros(2, 3, 7, 7, dtype=torch.uint8))), "index is on meta but grad_y is on cpu"),
]
NAMESPACES = ["triton"] + (["cpu"] if "cpu" in cifarops.available_backends("cpu") else [])


@pytest.mark.parametrize("backend", NAMESPACES)
@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_op_device_mix(backend, case):
    _, call, fragment = case
    namespace = torch.ops.cifarops_triton if backend == "triton" else torch.ops.cifarops
    with pytest.raises(ValueError) as raised:
        call(namespace)
    assert fragment in str(raised.value)


def test_errors_leave_module_state_alone():
    layer = cifarops.ShakeDrop(0.3)
    before = dict(vars(layer))
    with pytest.raises(ValueError):
        layer(h(), randn(3, 6, 3, 3))
    assert vars(layer) == before


TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.skipif(not TWO_GPUS, reason="needs two GPUs: not run on this machine (no GPU, or one)")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_two_real_devices(backend):
    """Tensors on cuda:1 while cuda:0 is current: a mix of the two devices is a ValueError naming the argument
    and both devices, and a call whose tensors all live on cuda:1 runs there (the launch's device guard) and
    equals the CPU op."""
    if backend not in cifarops.available_backends("cuda"):
        pytest.fail(f"backend {backend} is missing on a machine with two GPUs")
    first, second = torch.device("cuda:0"), torch.device("cuda:1")
    h = torch.randn(4, 6, 5, 5)
    mixes = [
        (lambda: F.shake_drop(h.to(second), h.to(first)), "shortcut is on cuda:0 but h is on cuda:1"),
        (lambda: F.shake_shake(h.to(second), h.to(first)), "is on cuda:"),
        (lambda: F.shake_drop(h.to(second), gate=torch.ones(4, device=first)), "gate is on cuda:0"),
        (lambda: F.fractional_max_pool2d(h.to(second), 2, output_size=3, _random_samples=torch.rand(4, 6, 2, device=first)),
         "_random_samples is on cuda:0 but"),
    ]
    with torch.cuda.device(first), cifarops.use_backend(backend):
        for call, message in mixes:
            with pytest.raises(ValueError, match=re.escape(message)):
                call()
        on_second = F.maxout(h.to(second), 2)
        assert on_second.device == second
        torch.testing.assert_close(on_second.cpu(), h.view(4, 3, 2, 5, 5).amax(2))


# Explicit FMP draws in device memory are checked on the device, with no host read (issue 29, item 2): the CUDA
# kernels check the draws each thread uses (FmpParams::check_draws; its host run in cpp_tests/kernel_grid_fmp.cpp
# stops on each of these), the Triton and reference ops with torch._assert_async. Planes (2, 3, 13, 11) -> (8, 7).
def _good_boundaries():
    cols = [0, 2, 4, 6, 8, 9, 10, 11, 11]       # in 11, out 7 (padded with the input size)
    rows = [0, 2, 4, 6, 8, 10, 11, 12, 13]      # in 13, out 8
    return torch.tensor([cols, rows]).expand(2, 3, 2, 9).clone()


def _spoiled(plane, axis, i, value):
    b = _good_boundaries()
    b.view(6, 2, 9)[plane, axis, i] = value
    return b


def _spoiled_samples(value):
    s = torch.full((2, 3, 2), 0.25)
    s[1, 2, 1] = value
    return s


BAD_DRAWS = [
    ("a step of 3", None, _spoiled(1, 1, 3, 9), "boundaries must start at 0, increase in steps of 1 or 2"),
    ("a decrease", None, _spoiled(4, 0, 2, 1), "boundaries must start at 0, increase in steps of 1 or 2"),
    ("a_0 = 1", None, _spoiled(0, 1, 0, 1), "boundaries must start at 0"),
    ("a_out short", None, _spoiled(5, 1, 8, 12), "reach the input size at index out"),
    ("sample 1", _spoiled_samples(1.0), None, "samples must lie in [0, 1)"),
    ("sample negative", _spoiled_samples(-0.25), None, "samples must lie in [0, 1)"),
    ("sample NaN", _spoiled_samples(float("nan")), None, "samples must lie in [0, 1)"),
]


ONE_OF_EACH_KIND = [BAD_DRAWS[0], BAD_DRAWS[4]]  # boundaries, samples


@pytest.mark.parametrize("case", BAD_DRAWS, ids=[c[0] for c in BAD_DRAWS])
def test_device_draw_check_raises_each_bad_draw(case):
    """The device-side check (assert_draw_values_async, run here on CPU tensors, where torch._assert_async raises
    at once) rejects every bad draw with the argument's name, and is what check_draws runs for device tensors
    (values=False, device_values=True); the good draws pass."""
    from cifarops.ops import fractional_max_pool2d as ops
    _, samples, boundaries, fragment = case
    with pytest.raises(RuntimeError, match=re.escape(fragment)):
        ops.assert_draw_values_async(samples, boundaries, (13, 11), (8, 7), "op")
    x = torch.randn(2, 3, 13, 11)
    with pytest.raises(RuntimeError, match=re.escape(fragment)):
        ops.check_draws(x, (13, 11), (8, 7), "disjoint", samples, boundaries, "op", values=False, device_values=True)
    ops.check_draws(x, (13, 11), (8, 7), "disjoint", samples, boundaries, "op", values=False)  # shapes only
    ops.assert_draw_values_async(None, _good_boundaries(), (13, 11), (8, 7), "op")
    ops.assert_draw_values_async(_spoiled_samples(0.5), None, (13, 11), (8, 7), "op")


def _draw_script(case, backend, device, good):
    """A fresh interpreter's FMP forward and backward with the case's draws (or, `good`, valid ones of the same
    kind) on `device`, printing "ran" at the end."""
    _, samples, boundaries, _ = case
    if good:
        samples = None if samples is None else _spoiled_samples(0.5)
        boundaries = None if boundaries is None else _good_boundaries()
    if samples is not None:
        draws = f"kernel_size=2, _random_samples=torch.tensor({samples.tolist()}, device={device!r})"
    else:
        draws = f"kernel_size=None, regions='disjoint', boundaries=torch.tensor({boundaries.tolist()}, device={device!r})"
    return (
        "import torch, cifarops, cifarops.functional as F\n"
        "nan = float('nan')\n"
        f"x = torch.randn(2, 3, 13, 11, device={device!r}, requires_grad=True)\n"
        f"with cifarops.use_backend({backend!r}):\n"
        f"    F.fractional_max_pool2d(x, output_size=(8, 7), {draws}).sum().backward()\n"
        + ("torch.cuda.synchronize()\n" if device == "cuda" else "")
        + "print('ran')\n")


def _run(script):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "reference") if b in cifarops.available_backends("cpu")])
def test_bad_draw_scripts_raise_on_the_cpu(backend):
    """The GPU test's scripts on the CPU: each bad draw a ValueError naming it, each good one runs (so the
    scripts themselves are right before a GPU runs them)."""
    for case in BAD_DRAWS:
        bad = _run(_draw_script(case, backend, "cpu", good=False))
        argument = "samples" if case[1] is not None else "boundaries"
        assert bad.returncode != 0, case[0]
        assert f"ValueError: cifarops.fractional_max_pool2d: {argument}" in bad.stderr, (case[0], bad.stderr[-1500:])
    for case in ONE_OF_EACH_KIND:
        good = _run(_draw_script(case, backend, "cpu", good=True))
        assert good.returncode == 0 and "ran" in good.stdout, (case[0], good.stderr[-1500:])


CUDA_BACKENDS = cifarops.available_backends("cuda") if torch.cuda.is_available() else []


@pytest.mark.skipif(not CUDA_BACKENDS, reason="needs a GPU: the host run of the CUDA kernels' check is in "
                                              "cpp_tests/kernel_grid_fmp.cpp, the Triton and reference check above")
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_bad_device_draws_stop_the_device(backend):
    """On a GPU every backend stops at each bad explicit draw (a device-side assert: the process's CUDA context
    is lost, so each call runs in its own interpreter) where the CPU op raises ValueError, with no host read on
    the call path; the same script with good draws runs."""
    if backend not in CUDA_BACKENDS:
        pytest.fail(f"backend {backend} is missing on a GPU machine")
    # Every bad draw for the CUDA kernels' own checks; one of each kind for the Triton and reference ops, whose
    # check is the one Python function the CPU test above runs on every case (17 interpreters in all).
    for case in BAD_DRAWS if backend == "cuda" else ONE_OF_EACH_KIND:
        bad = _run(_draw_script(case, backend, "cuda", good=False))
        assert bad.returncode != 0 and "ran" not in bad.stdout, (case[0], bad.stdout, bad.stderr[-1500:])
        assert "device-side assert" in bad.stderr or "Assertion" in bad.stderr, (case[0], bad.stderr[-1500:])
    for case in ONE_OF_EACH_KIND:
        good = _run(_draw_script(case, backend, "cuda", good=True))
        assert good.returncode == 0 and "ran" in good.stdout, (case[0], good.stderr[-1500:])
