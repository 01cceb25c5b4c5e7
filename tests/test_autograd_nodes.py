"""The compiled ops' autograd (csrc/args/autograd.h and the nodes in csrc/args/<op>.cpp) behaves as torch's
own ops do, and the functional calls them through their direct Python entry (cifarops._C.<op>) only where
torch.ops would add nothing (backends.fast_op).

Oracles: torch's own behaviour for its native ops (the error of a second backward, saved-tensor hooks, a
version-counter error after an in-place change) and the OpOverload path for the same generator state."""

import re

import pytest
import torch

import cifarops
import cifarops.functional as F
from cifarops import backends

COMPILED = [(d, b) for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            for b in cifarops.available_backends(d) if b in ("cpu", "cuda")]
if not COMPILED:
    pytest.skip("no compiled backend in this build", allow_module_level=True)


def calls(device):
    """Each differentiable op as (name, node name, forward(x) -> y, input shape), drawing from the generator."""
    return [
        ("shake_drop", "ShakeDropBackward", lambda x: F.shake_drop(x, x.detach() * 2, level="channel"), (3, 4, 5, 5)),
        ("stochastic_depth", "StochasticDepthBackward", lambda x: F.stochastic_depth(x, x.detach() * 2), (3, 4, 5, 5)),
        ("drop_activation", "DropActivationBackward", lambda x: F.drop_activation(x, 0.5), (3, 4, 5, 5)),
        ("shake_shake", "ShakeShakeBackward", lambda x: F.shake_shake(x, x * 3), (3, 4, 5, 5)),
        ("maxout", "MaxoutBackward", lambda x: F.maxout(x, 2), (3, 4, 5, 5)),
        ("probabilistic_maxout", "MaxoutBackward", lambda x: F.probabilistic_maxout(x, 2), (3, 4, 5, 5)),
        ("probabilistic_maxout_expectation", "ProbabilisticMaxoutExpectationBackward",
         lambda x: F.probabilistic_maxout(x, 2, training=False), (3, 4, 5, 5)),
        ("fractional_max_pool2d", "FractionalMaxPool2dBackward",
         lambda x: F.fractional_max_pool2d(x, 2, output_size=(4, 4)), (3, 4, 7, 7)),
        ("stochastic_pool2d", "StochasticPool2dBackward", lambda x: F.stochastic_pool2d(x, 3, 2), (3, 4, 7, 7)),
        ("stochastic_pool2d_expectation", "StochasticPool2dExpectationBackward",
         lambda x: F.stochastic_pool2d(x, 3, 2, training=False), (3, 4, 7, 7)),
    ]


CASES = [pytest.param(device, i, id=f"{device}-{calls(device)[i][0]}") for device, _ in COMPILED
         for i in range(len(calls(device)))]


@pytest.mark.parametrize("device, i", CASES)
def test_eager_calls_take_the_direct_entry(device, i):
    name, _, forward, shape = calls(device)[i]
    x = torch.randn(shape, device=device)
    assert backends.fast_op(name, x) is getattr(cifarops._C, name)
    first = backends.fast_ops(name, x)[1]  # the entry that returns y alone, for the ops with more outputs
    one_output = ("probabilistic_maxout_expectation", "stochastic_pool2d_expectation")
    assert first is (None if name in one_output else getattr(cifarops._C, name + "_output"))


def op_args(name, device):
    """Positional arguments of each op with more than one output, drawing from the generator."""
    x = torch.randn(3, 4, 7, 7, device=device)
    return {
        "shake_drop": (x, x * 2, 0.5, [-1.0, 1.0], [0.0, 1.0], "batch", "channel", True, None, None, None, None),
        "stochastic_depth": (x, x * 2, 0.5, "row", True, True, None, None),
        "drop_activation": (x, 0.5, True, None, None),
        "shake_shake": (x, x * 3, None, "shake", "shake", "sample", True, None, None, None),
        "maxout": (x, 2, 1, "contiguous"),
        "probabilistic_maxout": (x, 2, 1, "contiguous", 1.0, None),
        "fractional_max_pool2d": (x, [2, 2], [4, 4], "window", None, None, False, "pseudorandom", False, None),
        "stochastic_pool2d": (x, [3, 3], [2, 2], [1, 1], True, None, None),
    }[name]


MULTI = [pytest.param(device, name, id=f"{device}-{name}") for device, _ in COMPILED
         for name in ("shake_drop", "stochastic_depth", "drop_activation", "shake_shake", "maxout", "probabilistic_maxout",
                      "fractional_max_pool2d", "stochastic_pool2d")]


@pytest.mark.parametrize("device, name", MULTI)
def test_first_output_entry_equals_the_op_overload(device, name):
    """cifarops._C.<op>_output is the OpOverload's first output for the same generator state, and its
    gradient is the same."""
    args = op_args(name, device)
    x = args[0].requires_grad_()
    torch.manual_seed(5)
    expected = getattr(torch.ops.cifarops, name).default(*args)
    torch.manual_seed(5)
    y = getattr(cifarops._C, name + "_output")(*args)
    assert isinstance(y, torch.Tensor) and torch.equal(y, expected[0])
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(expected[0], x, g)[0])


@pytest.mark.parametrize("entry", ["fractional_max_pool2d", "fractional_max_pool2d_output", "maxout"])
def test_direct_entry_rejects_bad_arguments_by_name(entry):
    """A wrong Python type is a TypeError that names the schema's argument, and a wrong count lists them,
    before the op runs: the generator does not move."""
    fn = getattr(cifarops._C, entry)
    args = list(op_args(entry.removesuffix("_output"), "cpu"))
    state = torch.get_rng_state()
    if entry == "maxout":
        cases = [(0, "x", "argument x must be a Tensor, got str"),
                 (1, 2.0, "argument pieces must be an int (in the int64 range), got float"),
                 (1, True, "argument pieces must be an int (in the int64 range), got bool"),
                 (1, 2**70, "argument pieces must be an int (in the int64 range), got int"),
                 (3, 1, "argument grouping must be a str, got int")]
    else:
        cases = [(0, "x", "argument x must be a Tensor, got str"),
                 (1, [2, 2.0], "argument kernel_size must be a list or tuple of ints, got list"),
                 (6, 1, "argument return_indices must be a bool, got int"),
                 (9, 3, "argument rng_state must be a Tensor or None, got int")]
    for index, bad, expected in cases:
        wrong = list(args)
        wrong[index] = bad
        with pytest.raises(TypeError, match=re.escape(f"cifarops._C.{entry}: {expected}")):
            fn(*wrong)
    with pytest.raises(TypeError, match=rf"cifarops\._C\.{entry} takes {len(args)} positional arguments \(x, "):
        fn(*args[:2])
    assert torch.equal(torch.get_rng_state(), state)  # FMP would draw from it, had a call got through


def test_direct_entry_takes_numpy_scalars_as_torch_ops_does():
    """numpy's integers for an int and numpy's bool for a bool, as torch.ops (and the entry's pybind11
    predecessor) take them; the same results as the Python scalars."""
    numpy = pytest.importorskip("numpy")
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(cifarops._C.maxout(x, numpy.int64(2), numpy.int32(1), "contiguous")[0],
                       cifarops._C.maxout(x, 2, 1, "contiguous")[0])
    assert torch.equal(cifarops._C.probabilistic_maxout_expectation(x, 2, 1, "contiguous", numpy.float32(0.5)),
                       cifarops._C.probabilistic_maxout_expectation(x, 2, 1, "contiguous", 0.5))
    h = torch.randn(4, 3, 2, 2)
    assert torch.equal(F.shake_drop(h, training=numpy.bool_(False)), F.shake_drop(h, training=False))
    with pytest.raises(TypeError, match=re.escape("argument temperature must be a float, got bool")):
        cifarops._C.probabilistic_maxout_expectation(x, 2, 1, "contiguous", True)


@pytest.mark.parametrize("device, i", CASES)
def test_direct_entry_equals_the_op_overload(device, i):
    """Same generator state, same outputs and gradients as the torch.ops path (a torch-function mode, which
    makes fast_op give the OpOverload)."""
    name, _, forward, shape = calls(device)[i]
    x = torch.randn(shape, device=device, requires_grad=True)
    torch.manual_seed(3)
    y = forward(x)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))

    class Mode(torch.overrides.TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Mode.seen.append(func)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(3)
    with Mode():
        assert backends.fast_op(name, x) is getattr(torch.ops.cifarops, name).default
        y2 = forward(x)
    assert getattr(torch.ops.cifarops, name).default in Mode.seen  # the mode saw the op itself
    (grad2,) = torch.autograd.grad(y2, x, torch.ones_like(y2))
    assert torch.equal(y, y2) and torch.equal(grad, grad2)


def test_subclass_and_override_get_the_op_overload():
    class Sub(torch.Tensor):
        pass

    x = torch.randn(2, 4, 3, 3).as_subclass(Sub)
    assert backends.fast_op("maxout", x) is torch.ops.cifarops.maxout.default
    with cifarops.use_backend("reference"):
        assert backends.fast_op("maxout", torch.randn(2, 4, 3, 3)) is not cifarops._C.maxout


@pytest.mark.parametrize("device, i", CASES)
def test_node_is_named_and_saves_through_the_hooks(device, i):
    """One node, named for the op; what it saves goes through saved-tensor hooks (checkpointing and offloading
    see it), and never a tensor of the input's size, except the expectation, whose gradient needs its input, and
    Drop-Activation's output."""
    name, node, forward, shape = calls(device)[i]
    x = torch.randn(shape, device=device, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = forward(x)
    assert y.grad_fn.name() == node
    assert packed, "the node saved nothing through the hooks"
    kept = {t.dtype for t in packed}
    if name in ("probabilistic_maxout_expectation", "stochastic_pool2d_expectation"):
        assert [t.shape for t in packed] == [x.shape]
    elif name == "stochastic_pool2d":  # one byte per output, the drawn offset
        assert [(t.dtype, t.shape) for t in packed] == [(torch.uint8, y.shape)]
    elif name == "drop_activation":  # the output (its backward reads y, never x) and the RNG state
        assert sorted(t.numel() for t in packed) == [2, y.numel()] and not any(t is x for t in packed)
    elif name in ("maxout", "probabilistic_maxout", "fractional_max_pool2d"):
        assert torch.uint8 in kept and all(t.numel() <= y.numel() or t.numel() == 2 for t in packed)
    else:
        assert [t.numel() for t in packed] == [2]  # the RNG state {seed, offset}


@pytest.mark.parametrize("device, i", CASES)
def test_second_backward_gets_torchs_error(device, i):
    _, _, forward, shape = calls(device)[i]
    x = torch.randn(shape, device=device, requires_grad=True)
    y = forward(x)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


@pytest.mark.parametrize("device, i", CASES)
def test_retain_graph_gives_the_same_gradient_twice(device, i):
    _, _, forward, shape = calls(device)[i]
    x = torch.randn(shape, device=device, requires_grad=True)
    y = forward(x)
    (first,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    (second,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(first, second)


@pytest.mark.parametrize("device, i", CASES)
def test_forward_mode_ad_is_an_error_naming_the_op(device, i):
    name, _, forward, shape = calls(device)[i]
    import torch.autograd.forward_ad as fwAD

    # the public name the user called (the expectation is the evaluation of its op)
    op = "probabilistic_maxout" if name.startswith("probabilistic") else name.removesuffix("_expectation")
    with fwAD.dual_level():
        x = fwAD.make_dual(torch.randn(shape, device=device), torch.randn(shape, device=device))
        with pytest.raises(NotImplementedError, match=f"cifarops.{op}: forward-mode AD"):
            forward(x)


def test_in_place_change_of_explicit_noise_is_an_error():
    """An explicit beta changed after the forward would silently change the gradient: torch's version check."""
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    beta = torch.rand(2)
    y = F.shake_drop(h, gate=torch.zeros(2), alpha=torch.rand(2), beta=beta)
    beta.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_no_node_when_nothing_requires_grad():
    y = F.shake_drop(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    assert y.grad_fn is None and not y.requires_grad
    z = F.maxout(torch.randn(2, 4, 3, 3, requires_grad=True).detach(), 2)
    assert z.grad_fn is None
