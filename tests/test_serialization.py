"""Serialization (issue 10): every cifarops module and every zoo model (small variants) survives state_dict
into a freshly built copy, torch.save / torch.load of the whole module and of its state dict (the latter
with weights_only=True), pickle and copy.deepcopy. The copy gives bitwise the same outputs as the original
(evaluation, and training from the same seed, backward included for checkpointed blocks), and its settings
(p_drop, levels, backend pin, checkpoint mode, FMP draws, ...) are the original's."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import cifarops
import cifarops.models as models


class ResidualBlock(nn.Module):
    """A user's block with BatchNorm, dropout and ShakeDrop, for the Checkpoint wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.dropout = nn.Dropout(0.2)
        self.shake_drop = cifarops.ShakeDrop(0.3, level="pixel", gate_level="sample")

    def forward(self, x):
        return self.shake_drop(self.dropout(self.conv(torch.relu(self.bn(x)))), x)


# name -> (factory, input shapes); non-default settings everywhere, so that a setting lost on the way shows.
MODULES = {
    "shake_drop": (lambda: cifarops.ShakeDrop(0.25, (-0.5, 1.5), (0.25, 0.75), gate_level="sample", level="channel",
                                              backend="reference"), [(2, 4, 3, 3), (2, 2, 3, 3)]),
    "stochastic_depth": (lambda: cifarops.StochasticDepth(0.3, "batch", scale_by_keep=False), [(2, 4, 3, 3), (2, 2, 3, 3)]),
    "drop_activation": (lambda: cifarops.DropActivation(0.8), [(2, 4, 3, 3)]),
    "shake_shake": (lambda: cifarops.ShakeShake(forward_mode="shake", backward_mode="keep", level="batch"),
                    [(2, 4, 3, 3)] * 3),
    "maxout": (lambda: cifarops.Maxout(3, dim=-1, grouping="strided"), [(2, 4, 6)]),
    "probabilistic_maxout": (lambda: cifarops.ProbabilisticMaxout(2, grouping="strided", temperature=0.5),
                             [(2, 6, 3, 3)]),
    "fmp_window": (lambda: cifarops.FractionalMaxPool2d(2, output_ratio=(0.6, 0.7), return_indices=True),
                   [(2, 3, 10, 9)]),
    "fmp_fixed_draws": (lambda: cifarops.FractionalMaxPool2d(
        3, output_size=4, _random_samples=torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(5))),
        [(2, 3, 8, 8)]),
    "fmp_graham": (lambda: cifarops.FractionalMaxPool2d(output_ratio=0.75, regions="overlapping", sequence="random",
                                                        per_image=True, backend="reference"), [(2, 3, 8, 8)]),
    "stochastic_pool2d": (lambda: cifarops.StochasticPool2d((3, 2), stride=2, padding=1, ceil_mode=True),
                          [(2, 3, 9, 8)]),
    "checkpoint": (lambda: cifarops.Checkpoint(ResidualBlock(), mode="selective", preserve_rng_state=True),
                   [(2, 4, 5, 5)]),
}

# Small variants of every zoo model (cifarops.models.SMALL, shrunk further), some checkpointed, some pinned
# to the reference backend, so that those settings must survive too.
MODELS = {
    "pyramidnet272-a200-shakedrop": (dict(depth=11, alpha=12, checkpoint="cheap"), 8),
    "pyramidnet110-a270-shakedrop": (dict(depth=8, alpha=12, level="pixel", reference=True), 8),
    "resnet110-stochastic-depth": (dict(depth=8, checkpoint="selective", reference=True), 8),
    "shake-shake26-2x96d": (dict(depth=8, width=4, checkpoint="full", backward_mode="even"), 8),
    "wrn28-10": (dict(depth=10, widen=1, dropout=0.3), 8),
    "fmp-graham-cifar10": (dict(filters=2, layers=4, input_size=12, checkpoint="selective"), 12),
    "maxout-goodfellow-cifar10": (dict(channels=(4, 4, 4), fc_units=4, image_size=16), 16),
    "stochastic-pool-zeiler-cifar10": (dict(filters=4, image_size=16, checkpoint="full", reference=True), 16),
}


def build(kind, name):
    """(module, input tensors) built from seed 0, with its BatchNorm buffers moved off their defaults."""
    torch.manual_seed(0)
    if kind == "module":
        factory, shapes = MODULES[name]
        module = factory()
    else:
        overrides, size = MODELS[name]
        module = models.create(name, num_classes=3, **overrides)
        shapes = [(2, 3, size, size)]
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(s, generator=g) for s in shapes]
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return module, inputs


def outputs(module, inputs, training):
    """Every output of one forward pass from seed 2 (and, in training, the inputs' gradients)."""
    module.train(training)
    inputs = [x.clone().requires_grad_(training) for x in inputs]
    torch.manual_seed(2)
    out = module(*inputs)
    out = list(out) if isinstance(out, tuple) else [out]
    if not training:
        return [o.detach() for o in out]
    out[0].backward(torch.linspace(-1, 1, out[0].numel()).reshape(out[0].shape))
    return [o.detach() for o in out] + [x.grad for x in inputs]


def settings(module):
    """Every plain attribute of every submodule (the layers' settings), the training flag included."""
    found = {}
    for prefix, m in module.named_modules():
        for key, value in vars(m).items():
            if not key.startswith("_") and not isinstance(value, (torch.Tensor, nn.Module)):
                found[f"{prefix}.{key}"] = value
        found[f"{prefix}:type"] = type(m)
    return found


def assert_same_state(original, copied):
    a, b = original.state_dict(), copied.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert a[key].data_ptr() != b[key].data_ptr() or a[key].numel() == 0, f"{key} is shared, not copied"


def via_state_dict(module, kind, name, tmp_path):
    fresh, _ = build(kind, name)
    for p in fresh.parameters():  # a fresh model must get its values from the state dict, not its seed
        p.data.add_(1.0)
    fresh.load_state_dict(copy.deepcopy(module.state_dict()))
    return fresh


def via_saved_state_dict(module, kind, name, tmp_path):
    torch.save(module.state_dict(), tmp_path / "state.pt")
    fresh, _ = build(kind, name)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    return fresh


def via_saved_module(module, kind, name, tmp_path):
    torch.save(module, tmp_path / "module.pt")
    return torch.load(tmp_path / "module.pt", weights_only=False)


def via_pickle(module, kind, name, tmp_path):
    return pickle.loads(pickle.dumps(module))


def via_deepcopy(module, kind, name, tmp_path):
    return copy.deepcopy(module)


ROUTES = {"state_dict": via_state_dict, "torch_save_state_dict": via_saved_state_dict,
          "torch_save_module": via_saved_module, "pickle": via_pickle, "deepcopy": via_deepcopy}
CASES = [("module", n) for n in MODULES] + [("model", n) for n in MODELS]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("kind, name", CASES, ids=[n for _, n in CASES])
def test_round_trip_keeps_outputs_and_settings(kind, name, route, tmp_path):
    original, inputs = build(kind, name)
    copied = ROUTES[route](original, kind, name, tmp_path)
    assert copied is not original
    assert_same_state(original, copied)
    assert settings(copied) == settings(original)
    for training in (False, True):
        want = outputs(original, inputs, training)
        got = outputs(copied, inputs, training)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert torch.equal(g, w), f"training={training}: output {i}"
    # Both ran the same training step: their BatchNorm buffers moved the same way.
    assert_same_state(original, copied)


def test_settings_are_really_compared():
    """The settings comparison sees a changed setting (p_drop, a backend pin, a checkpoint mode)."""
    module, _ = build("model", "pyramidnet272-a200-shakedrop")
    for change in (lambda m: setattr(m.blocks[0].shake_drop, "p_drop", 0.9),
                   lambda m: setattr(m.blocks[0].shake_drop, "backend", "reference"),
                   lambda m: setattr(m.blocks[0], "checkpoint", "full")):
        changed = copy.deepcopy(module)
        change(changed)
        assert settings(changed) != settings(module)


def test_state_dict_holds_fmp_draws_and_loads_into_a_fresh_layer():
    """Fixed FMP draws are a buffer: they travel with the state dict and set the regions of the layer they
    are loaded into, which then pools exactly like PyTorch's layer with the same draws."""
    samples = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(9))
    source = cifarops.FractionalMaxPool2d(2, output_size=3, _random_samples=samples)
    state = source.state_dict()
    assert torch.equal(state["_random_samples"], samples)
    target = cifarops.FractionalMaxPool2d(2, output_size=3, _random_samples=torch.zeros(1, 2, 2))
    target.load_state_dict(state)
    x = torch.randn(1, 2, 7, 7, generator=torch.Generator().manual_seed(4))
    expected = nn.FractionalMaxPool2d(2, output_size=3, _random_samples=samples)(x)
    assert torch.equal(target(x), expected)
