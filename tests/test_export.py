"""torch.export (issues 7 and 10): zoo models with cifarops layers export with the fused ops kept as single
custom-op nodes (their fake kernels give the shapes), run from the exported program with bitwise the
outputs of eager mode, and round-trip through torch.export.save / torch.export.load. Evaluation for every
model; training mode (the noise drawn inside the graph from torch's generator, BatchNorm updating its
buffers) too, with gradients through the exported module equal to eager's.

torch.export.load needs the ops registered: the compiled library is loaded by `import cifarops`, the
Triton ops (`cifarops_triton::*`) by the same import.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as TF

import cifarops
import cifarops.models as models
from conftest import KERNEL_BACKENDS, ids

# name -> (overrides of a small variant, image size, the cifarops op its graph must contain); the brief's three
# networks in evaluation, and in training also a checkpointed basic PyramidNet with pixel-level noise.
EXPORTED = {
    "pyramidnet272-a200-shakedrop": (dict(depth=11, alpha=12), 8, "shake_drop"),
    "pyramidnet110-a270-shakedrop": (dict(depth=8, alpha=12, level="pixel", checkpoint="full"), 8, "shake_drop"),
    "fmp-graham-cifar10": (dict(filters=2, layers=4, input_size=12), 12, "fractional_max_pool2d"),
    "maxout-goodfellow-cifar10": (dict(channels=(4, 4, 4), fc_units=4, image_size=16), 16, "maxout"),
    "stochastic-pool-zeiler-cifar10": (dict(filters=4, image_size=16), 16, "stochastic_pool2d"),
}
# Where evaluation runs another op than training (stochastic pooling's probability-weighted average).
EVAL_OPS = {"stochastic-pool-zeiler-cifar10": "stochastic_pool2d_expectation"}


# Whole models on the compiled backends (and Triton on a GPU); the interpreted Triton backend exports each layer
# alone (test_export_of_each_layer_alone), which covers its ops at a fraction of the interpreter's time.
MODEL_BACKENDS = [(d, b) for d, b in KERNEL_BACKENDS if not (d == "cpu" and b == "triton")]


def build(name, device):
    overrides, size, _ = EXPORTED[name]
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, **overrides).to(device)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    return model, x


def fused_ops(program, backend):
    """The cifarops custom ops that are nodes of the exported graph."""
    namespace = "cifarops_triton" if backend == "triton" else "cifarops"
    return {
        node.target.name().split("::")[1]
        for node in program.graph.nodes
        if isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == namespace
    }


def run(module, x, seed=5):
    """module(x) (or module(*x) for a tuple of inputs) from a fixed seed."""
    torch.manual_seed(seed)
    return module(*x) if isinstance(x, tuple) else module(x)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def round_trip(program, tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    return torch.export.load(path)


@pytest.mark.parametrize("name", [n for n in EXPORTED if n != "pyramidnet110-a270-shakedrop"])
@pytest.mark.parametrize("device, backend", MODEL_BACKENDS, ids=ids(MODEL_BACKENDS))
def test_export_eval_runs_and_round_trips(device, backend, name, tmp_path):
    model, x = build(name, device)
    model.eval()
    with torch.no_grad(), cifarops.use_backend(backend):
        program = torch.export.export(model, (x,))
        assert EVAL_OPS.get(name, EXPORTED[name][2]) in fused_ops(program, backend)
        eager = run(model, x)  # FMP draws its regions in evaluation too: seeded alike
        assert torch.equal(run(program.module(), x), eager)
        assert torch.equal(run(round_trip(program, tmp_path).module(), x), eager)


@pytest.mark.parametrize("name", [n for n in EXPORTED if n != "pyramidnet272-a200-shakedrop"])
@pytest.mark.parametrize("device, backend", MODEL_BACKENDS, ids=ids(MODEL_BACKENDS))
def test_export_training_matches_eager_step(device, backend, name, tmp_path):
    """A training-mode export: same noise from the same seed, same BatchNorm updates, and gradients through
    the exported module (the ops' registered autograd formulas) equal to eager's."""
    model, x = build(name, device)
    model.train()
    # Exported from a copy: an exported program shares its parameters and buffers with the model it came from.
    with cifarops.use_backend(backend):
        program = torch.export.export(copy.deepcopy(model), (x,))
    assert EXPORTED[name][2] in fused_ops(program, backend)
    target = torch.tensor([0, 2], device=device)
    steps = {}
    for label, module in (("eager", model), ("exported", program.module()),
                          ("loaded", round_trip(program, tmp_path).module())):
        with cifarops.use_backend(backend):
            loss = TF.cross_entropy(run(module, x), target)
            loss.backward()
        steps[label] = {
            "loss": loss.detach(),
            **{f"grad {n}": p.grad.clone() for n, p in module.named_parameters()},
            **{f"buffer {n}": b.clone() for n, b in module.named_buffers()},
        }
    assert torch.isfinite(steps["eager"]["loss"])
    for label in ("exported", "loaded"):
        assert steps[label].keys() == steps["eager"].keys(), label
        for key, value in steps["eager"].items():
            assert value is not None and torch.equal(steps[label][key], value), f"{label}: {key}"


def test_exported_noise_follows_the_seed(tmp_path):
    """The exported training graph draws its noise at run time (it is not a constant baked in at export)."""
    model, x = build("pyramidnet110-a270-shakedrop", "cpu")
    module = round_trip(torch.export.export(model.train(), (x,)), tmp_path).module()
    assert not torch.equal(run(module, x, seed=1), run(module, x, seed=2))
    assert torch.equal(run(module, x, seed=1), run(model, x, seed=1))


@pytest.mark.parametrize("device, backend", KERNEL_BACKENDS, ids=ids(KERNEL_BACKENDS))
def test_export_of_each_layer_alone(device, backend, tmp_path):
    """Every cifarops layer (including probabilistic maxout, in training and evaluation) as its own exported
    program, round-tripped, equal to eager."""
    layers = [
        (cifarops.ShakeDrop(0.5, level="pixel"), [(2, 4, 3, 3), (2, 2, 3, 3)]),
        (cifarops.ShakeShake(), [(2, 4, 3, 3)] * 3),
        (cifarops.Maxout(2), [(2, 6, 3, 3)]),
        (cifarops.ProbabilisticMaxout(2, temperature=0.5), [(2, 6, 3, 3)]),
        (cifarops.FractionalMaxPool2d(2, output_size=3, return_indices=True), [(2, 3, 7, 7)]),
        (cifarops.FractionalMaxPool2d(output_size=5, regions="disjoint", sequence="random"), [(2, 3, 7, 7)]),
    ]
    g = torch.Generator().manual_seed(3)
    for layer, shapes in layers:
        inputs = tuple(torch.randn(s, generator=g).to(device) for s in shapes)
        with cifarops.use_backend(backend):
            for training in (True, False):
                layer.train(training)
                program = torch.export.export(layer, inputs)
                loaded = round_trip(program, tmp_path).module()
                want = as_tuple(run(layer, inputs))
                for module in (program.module(), loaded):
                    got = as_tuple(run(module, inputs))
                    assert len(got) == len(want)
                    for a, b in zip(got, want):
                        assert torch.equal(a, b), f"{type(layer).__name__} training={training}"
