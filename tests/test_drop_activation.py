"""Drop-Activation: hand-worked answers from SPEC.md (and the official layer's rule), every backend against the
reference, the mask from the generator's Philox state, gradients from the output alone, layouts, dtypes, NaN,
torch.library, torch.compile, torch.export and the checkpoint tape, bad input, and the mask's statistics."""

from __future__ import annotations

import re

import pytest
import torch

import cifarops
import cifarops.functional as F
from conftest import (COMPILE_BACKENDS, DTYPES, assert_close, assert_compiled_step_equals_eager, ids,
                      matches_reference, namespace_for)
from layouts import LAYOUTS, in_layout


def run(x, grad=None, **kwargs):
    """Forward and backward; returns (y, dx)."""
    x = x.detach().requires_grad_()
    y = F.drop_activation(x, **kwargs)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, x.grad


def run_inplace(x, grad=None, **kwargs):
    """The in-place form on a non-leaf copy of x: returns (y, dx), after checking that y is that copy, written."""
    x = x.detach().requires_grad_()
    h = x.clone()
    version = h._version
    y = F.drop_activation(h, inplace=True, **kwargs)
    assert y is h and h._version > version
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, x.grad


# ------------------------------------------------------------------------------------- hand-worked answers


def test_known_answer_training(any_backend):
    """Where the mask is 1 the ReLU: y = max(x, 0), gradient 1 for x > 0 (0 at x = 0); where it is 0 the identity."""
    device, _ = any_backend
    x = torch.tensor([[-2.0, -0.5, 0.0, 1.5], [-1.0, 0.0, 3.0, -4.0]], device=device)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.bool, device=device)
    grad = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], device=device)
    y, dx = run(x, grad, mask=mask)
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.0, 0.0, 1.5], [-1.0, 0.0, 3.0, 0.0]], device=device))
    torch.testing.assert_close(dx, torch.tensor([[0.0, 0.0, 0.0, 4.0], [5.0, 6.0, 7.0, 0.0]], device=device))


def test_known_answer_evaluation(any_backend):
    """Evaluation: keep * relu(x) + (1 - keep) * x, the leaky ReLU of slope 1 - keep; its gradient 1 - keep at 0."""
    device, _ = any_backend
    x = torch.tensor([[-2.0, 0.0, 4.0]], device=device)
    y, dx = run(x, keep=0.75, training=False)
    torch.testing.assert_close(y, torch.tensor([[-0.5, 0.0, 4.0]], device=device))
    torch.testing.assert_close(dx, torch.tensor([[0.25, 0.25, 1.0]], device=device))


def test_known_answer_mask_from_philox(any_backend):
    """The mask is u(NCHW index, stream 0) < keep from the call's RNG state, in channels_last too."""
    device, _ = any_backend
    x = -torch.rand(2, 3, 4, 5, device=device) - 0.5  # negative: kept elements become 0
    state = torch.tensor([0x0123456789ABCDEF, 12], device=device)
    op = cifarops.backends.op("drop_activation", torch.device(device))
    index = torch.arange(x.numel(), device=device).reshape(x.shape)
    kept = cifarops.philox.philox_uniform(state, index, stream=0) < 0.5
    for layout in LAYOUTS:
        y, used = op(in_layout(x, layout), 0.5, True, None, state)
        assert torch.equal(used, state)
        torch.testing.assert_close(y, torch.where(kept, 0.0, x), rtol=0, atol=0)


def test_keep_one_is_relu_and_keep_zero_the_identity(any_backend):
    device, _ = any_backend
    x = torch.randn(4, 3, 5, 5, device=device)
    y, dx = run(x, keep=1.0)
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0)
    torch.testing.assert_close(dx, (x > 0).float(), rtol=0, atol=0)
    y, dx = run(x, keep=0.0)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    torch.testing.assert_close(dx, torch.ones_like(x), rtol=0, atol=0)


def test_nan_propagates_as_relu_propagates_it(any_backend):
    device, _ = any_backend
    x = torch.tensor([[float("nan"), -1.0, float("inf"), -float("inf")]], device=device)
    y, dx = run(x, keep=1.0)
    torch.testing.assert_close(y, torch.relu(x), rtol=0, atol=0, equal_nan=True)
    xr = x.detach().requires_grad_()
    torch.relu(xr).backward(torch.ones_like(xr))
    torch.testing.assert_close(dx, xr.grad, rtol=0, atol=0)


# ------------------------------------------------------------------------------- against the reference


SHAPES_LAYOUTS = [(shape, layout) for shape in [(4, 8, 5, 6), (3, 16, 4, 8)] for layout in LAYOUTS] + [((5, 7), "contiguous")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, layout", SHAPES_LAYOUTS, ids=[f"{s}-{l}" for s, l in SHAPES_LAYOUTS])
def test_matches_reference_dtypes_layouts(kernel_backend, dtype, shape, layout):
    """Odd sizes (the CUDA kernel's scalar path), whole 16-byte packets, an (N, C) input."""
    device, _ = kernel_backend
    x = in_layout(torch.randn(shape, device=device).to(dtype), layout)
    y, _ = matches_reference(run, x, keep=0.7)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_evaluation_explicit_mask_and_empty_match_reference(kernel_backend):
    device, _ = kernel_backend
    x = torch.randn(3, 4, 3, 3, device=device)
    matches_reference(run, x, keep=0.9, training=False)
    matches_reference(run, x, mask=torch.rand(x.shape, device=device) < 0.5)
    matches_reference(run, torch.randn(0, 3, 2, 2, device=device))


# ---------------------------------------------------------------------------------------------- gradients


def test_gradcheck(kernel_backend):
    """With the mask given and x away from 0, Drop-Activation is piecewise linear: gradcheck and gradgradcheck."""
    device, _ = kernel_backend
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device)
    x = (x + x.sign() * 0.1).requires_grad_()
    mask = torch.rand(x.shape, device=device) < 0.5
    assert torch.autograd.gradcheck(lambda x: F.drop_activation(x, mask=mask), (x,))
    assert torch.autograd.gradgradcheck(lambda x: F.drop_activation(x, mask=mask), (x,))
    assert torch.autograd.gradcheck(lambda x: F.drop_activation(x, 0.8, training=False), (x,))


@pytest.mark.parametrize("inplace", [False, True], ids=["", "inplace"])
def test_only_the_output_and_the_state_are_saved(kernel_backend, inplace):
    device, _ = kernel_backend
    x = torch.randn(8, 16, 8, 8, device=device, requires_grad=True)
    h = x.clone()  # in place: a non-leaf, whose clone saves nothing
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = F.drop_activation(h, inplace=inplace)
    assert sorted(t.numel() for t in saved) == [2, x.numel()]  # the RNG state and the output y: never x or the mask
    if inplace:  # y is h, written: the saved output shares its storage (nothing more kept)
        assert any(t.data_ptr() == h.data_ptr() for t in saved) and y is h


def test_checkpointed_block_has_the_same_gradients(kernel_backend):
    device, _ = kernel_backend
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    act = cifarops.DropActivation(0.5)

    def block(x):
        return act(conv(x)) + x

    def step(checkpointed):
        x = torch.randn(3, 4, 5, 5, device=device, generator=torch.Generator(device).manual_seed(2)).requires_grad_()
        torch.manual_seed(5)
        y = cifarops.checkpoint.checkpoint(block, x) if checkpointed else block(x)
        return [y, *torch.autograd.grad(y.square().sum(), [x, conv.weight])]

    for a, b in zip(step(True), step(False), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- the in-place form


@pytest.mark.parametrize("layout", LAYOUTS + ["strided"], ids=str)
@pytest.mark.parametrize("kwargs", [{"keep": 0.7}, {"keep": 0.6, "training": False}], ids=["train", "eval"])
def test_inplace_equals_the_out_of_place_form(any_backend, layout, kwargs):
    """The same output, gradient and mask draw as the out-of-place form, written into x: dense x in place, a
    strided view (a slice) through a dense copy written back, its neighbours untouched."""
    device, _ = any_backend
    base = torch.randn(4, 12, 5, 6, device=device)
    x = base[:, ::2] if layout == "strided" else in_layout(base, layout)
    grad = torch.randn(x.shape, device=device)
    torch.manual_seed(4)
    want_y, want_dx = run(x, grad, **kwargs)
    torch.manual_seed(4)
    y, dx = run_inplace(x, grad, **kwargs)
    torch.testing.assert_close(y, want_y, rtol=0, atol=0)
    torch.testing.assert_close(dx, want_dx, rtol=0, atol=0)
    if layout == "strided":  # through the view: the base's other channels keep their values, x's are y
        whole = base.clone()
        F.drop_activation(whole[:, ::2], inplace=True, **kwargs)
        torch.testing.assert_close(whole[:, 1::2], base[:, 1::2], rtol=0, atol=0)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_inplace_follows_torch_in_place_rules(any_backend):
    """As relu_: a leaf that requires grad is refused before it is written; a view's base gets the gradient
    through the view; a later in-place change of the output makes backward fail (the saved y is stale)."""
    device, backend = any_backend
    leaf = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        F.drop_activation(leaf, inplace=True)
    assert torch.equal(leaf.detach(), before)
    with torch.no_grad():  # no graph: allowed, as for relu_
        F.drop_activation(leaf, 0.0, inplace=True)
    base = torch.randn(2, 6, 3, 3, device=device, requires_grad=True)
    h = base * 1.0
    F.drop_activation(h[:, :4], keep=1.0, inplace=True)  # keep=1: the ReLU on channels 0-3
    h.sum().backward()
    want = torch.cat([(base[:, :4] > 0).float(), torch.ones_like(base[:, 4:])], dim=1)
    torch.testing.assert_close(base.grad, want, rtol=0, atol=0)
    if backend == "reference":  # it computes y apart and copies it into x: the y it saves is its own
        return
    y = F.drop_activation(leaf.detach().clone().requires_grad_() * 1.0, inplace=True)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_inplace_module_checkpoint_and_gradcheck(any_backend):
    device, _ = any_backend
    layer = cifarops.DropActivation(0.5, inplace=True)
    assert repr(layer) == "DropActivation(keep=0.5, inplace=True)"
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device)
    x = (x + x.sign() * 0.1).requires_grad_()
    mask = torch.rand(x.shape, device=device) < 0.5
    assert torch.autograd.gradcheck(lambda x: F.drop_activation(x * 1.0, mask=mask, inplace=True), (x,))
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)

    def step(checkpointed):
        x = torch.randn(3, 4, 5, 5, device=device, generator=torch.Generator(device).manual_seed(2)).requires_grad_()
        torch.manual_seed(5)
        block = lambda x: layer(conv(x)) + x  # noqa: E731
        y = cifarops.checkpoint.checkpoint(block, x) if checkpointed else block(x)
        return [y, *torch.autograd.grad(y.square().sum(), [x, conv.weight])]

    for a, b in zip(step(True), step(False), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_inplace_refuses_an_expanded_tensor_and_bad_input_first(any_backend):
    device, _ = any_backend
    x = torch.randn(1, 4, 3, 3, device=device).expand(2, 4, 3, 3)
    with pytest.raises(ValueError, match=re.escape("cifarops.drop_activation_: x has elements that share memory")):
        F.drop_activation(x, inplace=True)
    x = torch.randn(2, 4, 3, 3, device=device)
    before = x.clone()
    with pytest.raises(ValueError, match=re.escape("cifarops.drop_activation_: keep must be a number in [0, 1]")):
        cifarops.backends.op("drop_activation_", x.device)(x, 1.5, True, None, None)
    with pytest.raises(TypeError, match="cifarops.drop_activation: inplace must be a bool, got str"):
        F.drop_activation(x, inplace="yes")
    with pytest.raises(TypeError, match="cifarops.DropActivation: inplace must be a bool, got int"):
        cifarops.DropActivation(0.9, 1)
    assert torch.equal(x, before)


# ------------------------------------------------------------------------------- library and compiler


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = namespace_for(backend)
    x = torch.randn(3, 4, 5, 5, device=device, requires_grad=True)
    state = torch.tensor([42, 4], device=device)
    mask = torch.rand(x.shape, device=device) < 0.5
    for args in [(x, 0.95, True, None, state), (x, 0.5, True, mask, state), (x, 0.9, False, None, state),
                 (in_layout(x.detach(), "channels_last").requires_grad_(), 0.5, True, None, state)]:
        torch.library.opcheck(ns.drop_activation, args)
        y = ns.drop_activation(*args)[0].detach()
        torch.library.opcheck(ns._drop_activation_backward, (torch.randn_like(y), y, state, *args[1:4]))
        torch.library.opcheck(ns.drop_activation_, (args[0].detach().clone(), *args[1:]))


@pytest.mark.parametrize("device, backend", COMPILE_BACKENDS, ids=ids(COMPILE_BACKENDS))
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    block = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1), cifarops.DropActivation(0.5),
                                torch.nn.Conv2d(6, 6, 1), cifarops.DropActivation(0.5, inplace=True)).to(device)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    with cifarops.use_backend(backend):
        assert_compiled_step_equals_eager(compiled, block, x, seed=11, backend=backend)
        block.eval()
        assert_close(compiled(x), block(x))


@pytest.mark.parametrize("inplace", [False, True], ids=["", "inplace"])
def test_torch_export_keeps_one_node(inplace):
    """The in-place form exports as the op and a copy (on a convolution's output: no input is mutated)."""
    layer = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), cifarops.DropActivation(0.8, inplace)).eval()
    x = torch.randn(2, 4, 3, 3)
    with cifarops.use_backend("cpu"):
        exported = torch.export.export(layer, (x,))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.cifarops.drop_activation.default) == 1
    torch.testing.assert_close(exported.module()(x), torch.nn.functional.leaky_relu(layer[0](x), 0.2))


# ---------------------------------------------------------------------------------------------- noise


def test_same_seed_same_mask_and_its_rate(kernel_backend):
    device, _ = kernel_backend
    x = -torch.ones(64, 8, 8, 8, device=device)
    torch.manual_seed(7)
    first, second = F.drop_activation(x, 0.9), F.drop_activation(x, 0.9)
    torch.manual_seed(7)
    torch.testing.assert_close(F.drop_activation(x, 0.9), first, rtol=0, atol=0)
    assert not torch.equal(first, second)
    kept = (first == 0).double().mean().item()
    assert abs(kept - 0.9) < 5 * (0.9 * 0.1 / x.numel()) ** 0.5


def test_module(any_backend):
    device, _ = any_backend
    layer = cifarops.DropActivation(0.9)
    assert repr(layer) == "DropActivation(keep=0.9)"
    x = torch.randn(2, 3, 2, 2, device=device)
    assert_close(layer.eval()(x), torch.nn.functional.leaky_relu(x, 1 - 0.9))
    assert layer.train()(x).shape == x.shape


# ---------------------------------------------------------------------------------------------- bad input

BAD_INPUT = [
    ({"keep": 1.5}, ValueError, "keep must be a number in [0, 1]"),
    ({"mask": "ones"}, TypeError, "mask must be a torch.Tensor"),
    ({"mask": torch.ones(2, 4, 3, dtype=torch.bool)}, ValueError, "mask must have x's shape"),
    ({"mask": torch.ones(2, 4, 3, 3)}, TypeError, "mask must be a bool tensor (True keeps the ReLU)"),
    ({"mask": torch.ones(2, 4, 3, 3, dtype=torch.bool), "training": False}, ValueError, "mask is training noise"),
    ({"x": torch.ones(4)}, ValueError, "x must have at least 2 dimensions"),
    ({"x": torch.ones(2, 4, dtype=torch.int32)}, TypeError, "x must be float32, float64, float16 or bfloat16"),
]


@pytest.mark.parametrize("inplace", [False, True], ids=["", "inplace"])
@pytest.mark.parametrize("kwargs, error, message", BAD_INPUT, ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_is_named_before_anything_is_drawn(any_backend, kwargs, error, message, inplace):
    device, _ = any_backend
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    x = kwargs.pop("x", torch.ones(2, 4, 3, 3, device=device))
    before, x_before = torch.get_rng_state(), x.clone()
    op = "cifarops.drop_activation_: " if inplace else "cifarops.drop_activation: "
    with pytest.raises(error, match=re.escape(op + message)):
        F.drop_activation(x, inplace=inplace, **kwargs)
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(x, x_before)


def test_wide_resnet_with_drop_activation_trains_and_equals_its_reference():
    """wrn28-10's drop_activation option: every ReLU a DropActivation layer (both of each block's and the final
    one, as the official network), the fused network computes what the reference-pinned one computes from the same
    seed, outputs and gradients, with no parameter added."""
    import cifarops.models as models

    kwargs = dict(depth=10, widen=1, drop_activation=0.9)
    torch.manual_seed(0)
    fused = models.create("wrn28-10", **kwargs)
    torch.manual_seed(0)
    reference = models.create("wrn28-10", reference=True, **kwargs)
    layers = [m for m in fused.modules() if isinstance(m, cifarops.DropActivation)]
    assert len(layers) == 2 * len(fused.blocks) + 1 and all(m.keep == 0.9 for m in layers)
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in models.create("wrn28-10", depth=10, widen=1).parameters())
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for model in (fused, reference):
        torch.manual_seed(3)
        out = model(x)
        out.square().mean().backward()
        outputs.append([out, *[p.grad for p in model.parameters()]])
    for a, b in zip(*outputs, strict=True):
        assert_close(a, b)


def test_the_references_quad_draw_is_philox_uniform():
    """philox_uniform_range (the reference's mask: one Philox call per four indices) is philox_uniform of an
    arange, the tested oracle, for every length modulo 4 and a large offset."""
    state = torch.tensor([-0x0123456789ABCDEF, 2**62 + 12])
    for numel in (0, 1, 2, 3, 4, 5, 1001):
        torch.testing.assert_close(cifarops.philox.philox_uniform_range(state, numel, 2, "cpu"),
                                   cifarops.philox.philox_uniform(state, torch.arange(numel), 2), rtol=0, atol=0)


def test_official_wrn_trains_as_well_with_cifarops_drop_activation():
    """Issue 31: the official Drop-Activation WRN (LeungSamWai/Drop-Activation's da_wrn: a dropRelu for every ReLU,
    the final one too, which is wrn28-10's drop_activation option) trains with cifarops.DropActivation as well as
    with the official layer: 30 SGD steps on real digits from the same weights, the loss falls as far (different
    masks: the official layer draws with bernoulli_, cifarops from Philox). Here: 2.31 to 1.83 with the official
    layer, 2.31 to 1.89 with cifarops'."""
    import copy

    import cifarops.models as models
    from cifarops.bench.baselines import OfficialDropRelu
    from test_models import assert_trains_alike, digits

    torch.manual_seed(0)
    ours = models.create("wrn28-10", depth=10, widen=1, drop_activation=0.95)
    official = copy.deepcopy(ours)
    layers = [(parent, name) for parent in official.modules() for name, child in parent.named_children()
              if isinstance(child, cifarops.DropActivation)]
    for parent, name in layers:
        setattr(parent, name, OfficialDropRelu(0.95))
    assert len(layers) == 2 * len(ours.blocks) + 1
    x, y = digits(64)
    assert_trains_alike(official, ours, x, y)
