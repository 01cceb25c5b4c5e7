"""cifarops.swap_layers: a model from another code base (torch.nn.FractionalMaxPool2d, nested modules, a shared
module, hooks) computes exactly what it computed before the swap (bitwise: the same generator calls draw the same
regions, and the fused op equals torch's op for the same draws); a reference zoo model swapped to the fused
kernels computes what the fused zoo model computes from the same seed (to rounding); the report names every
replacement; look-alike layers of other code bases are listed and left alone; bad arguments are named."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cifarops
import cifarops.models as models
from cifarops import philox, reference
from cifarops.swap import SwapReport, swap_layers
from conftest import assert_close


class ForeignShakeDrop(nn.Module):
    """A code base's own ShakeDrop (owruby-style, condensed): swap_layers must leave it alone and list it."""

    def __init__(self, p_drop: float = 0.5) -> None:
        super().__init__()
        self.p_drop = p_drop

    def forward(self, x):
        if not self.training:
            return (1 - self.p_drop) * x
        gate = torch.empty(1).bernoulli_(1 - self.p_drop)
        return x if gate.item() else x * torch.empty(x.shape[0], 1, 1, 1).uniform_(-1, 1)


class FractionalStage(nn.Module):
    """conv - ReLU - FMP, with its FMP a level down, as a user's model nests it."""

    def __init__(self, in_channels: int, out_channels: int, pool: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = pool

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


class ForeignNet(nn.Module):
    """A hand-written network of another code base: torch's FMP by ratio, by size with fixed draws, with
    indices, one FMP module used in two places, and a look-alike ShakeDrop of its own."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.FractionalMaxPool2d(2, output_ratio=0.75)
        fixed = nn.FractionalMaxPool2d((2, 3), output_size=(9, 8), _random_samples=torch.rand(2, 4, 2))
        self.stages = nn.Sequential(FractionalStage(3, 4, nn.FractionalMaxPool2d(3, output_ratio=(0.7, 0.8))),
                                    FractionalStage(4, 4, fixed))
        self.more = nn.ModuleList([shared, nn.Conv2d(4, 4, 1), shared])
        self.indexed = nn.FractionalMaxPool2d(2, output_size=3, return_indices=True)
        self.shake_drop = ForeignShakeDrop(0.0)  # p_drop 0: the identity, drawing its gate from the CPU generator
        self.fc = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        h = self.stages(x)
        for layer in self.more:
            h = layer(h)
        h, index = self.indexed(h)
        return self.fc(self.shake_drop(h).flatten(1)), index


def _run(model, x, seed):
    """Output, indices, input gradient and parameter gradients of one forward and backward pass."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out, index = model(x)
    out.square().sum().backward()
    return out.detach(), index, x.grad, [p.grad for p in model.parameters()]


def _drawing_as_cifarops(model):
    """torch's FractionalMaxPool2d layers of `model` given the samples cifarops' op draws from the same generator
    state (one Philox state per call, reference.fmp_drawn_samples), so that torch's op stays the oracle."""
    for m in model.modules():
        if type(m) is nn.FractionalMaxPool2d:
            def forward(x, m=m):
                samples = m._random_samples
                if samples is None:
                    state = philox.draw_state(x.device, reference.FMP_STREAMS)
                    samples = reference.fmp_drawn_samples(state, x.shape[0], x.shape[1], x.dtype)
                return nn.functional.fractional_max_pool2d(x, m.kernel_size, m.output_size, m.output_ratio,
                                                           m.return_indices, _random_samples=samples)
            m.forward = forward
    return model


def test_foreign_model_computes_exactly_what_torch_computed(kernel_backend):
    device, backend = kernel_backend
    torch.manual_seed(0)
    torch_model = ForeignNet().to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    swapped, report = swap_layers(torch_model, inplace=False)
    _drawing_as_cifarops(torch_model)
    assert swapped is not torch_model
    assert sum(type(m) is nn.FractionalMaxPool2d for m in torch_model.modules()) == 4  # the original is intact
    assert not any(type(m) is nn.FractionalMaxPool2d for m in swapped.modules())
    # Twice, so that the regions drawn anew at the second call are compared too.
    for seed in (1, 2):
        want, got = _run(torch_model, x, seed), _run(swapped, x, seed)
        for a, b in zip(got[:2], want[:2]):
            assert a.dtype == b.dtype and torch.equal(a, b)
        # Gradients: bit for bit on the CPU; on CUDA within a rounding, since torch's FMP backward adds with
        # atomics in any order (and cuDNN's backward convolution is not bitwise reproducible either).
        for a, b in zip([got[2], *got[3]], [want[2], *want[3]]):
            assert a.dtype == b.dtype
            if device == "cpu":
                assert torch.equal(a, b)
            else:
                assert_close(a, b)


def test_report_names_every_replacement_and_the_look_alike():
    model = ForeignNet()
    swapped, report = swap_layers(model)
    assert swapped is model
    assert isinstance(report, SwapReport) and len(report) == 4
    old, new = "torch.nn.FractionalMaxPool2d", "cifarops.FractionalMaxPool2d(backend=auto)"
    assert list(report) == [
        ("stages.0.pool", old, new), ("stages.1.pool", old, new), ("more.0", old, new), ("indexed", old, new),
    ]
    assert report.left_alone == [("shake_drop", f"{__name__}.ForeignShakeDrop")]
    assert isinstance(model.shake_drop, ForeignShakeDrop)
    text = str(report)
    assert text.splitlines()[0] == "cifarops.swap_layers: 4 layer(s) replaced"
    assert "  more.0: torch.nn.FractionalMaxPool2d -> cifarops.FractionalMaxPool2d(backend=auto)" in text
    assert "shake_drop" in text.split("left alone")[1]
    # The shared module became one module, in both of its places.
    assert model.more[0] is model.more[2]
    # Nothing left to swap: a second call reports nothing.
    assert len(swap_layers(model).report) == 0


def test_settings_buffers_training_flag_hooks_and_state_dict_are_kept():
    model = ForeignNet().double().eval()
    fixed = model.stages[1].pool
    samples = fixed._random_samples
    calls = []
    handle = fixed.register_forward_hook(lambda module, args, out: calls.append(type(module).__name__))
    grads = []
    fixed.register_full_backward_hook(lambda module, grad_in, grad_out: grads.append(grad_out[0].shape))
    keys = list(model.state_dict())
    swap_layers(model, backend="cpu")
    new = model.stages[1].pool
    assert isinstance(new, cifarops.FractionalMaxPool2d) and new.backend == "cpu"
    assert (new.kernel_size, new.output_size, new.output_ratio, new.return_indices) == ((2, 3), (9, 8), None, False)
    assert new._random_samples is samples and samples.dtype == torch.float64
    assert model.stages[0].pool.output_ratio == (0.7, 0.8) and model.indexed.return_indices
    assert not any(m.training for m in model.modules())
    assert list(model.state_dict()) == keys
    model(torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True))[0].sum().backward()
    assert calls == ["FractionalMaxPool2d"] and grads == [(2, 4, 9, 8)]
    handle.remove()  # the handle the user holds still removes the hook from the swapped module
    model(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert calls == ["FractionalMaxPool2d"]


def test_a_bare_torch_fmp_is_returned_swapped():
    pool = nn.FractionalMaxPool2d(2, output_size=5)
    swapped, report = swap_layers(pool)
    assert isinstance(swapped, cifarops.FractionalMaxPool2d) and list(report) == [
        ("", "torch.nn.FractionalMaxPool2d", "cifarops.FractionalMaxPool2d(backend=auto)")
    ]
    x = torch.randn(2, 3, 11, 11)
    torch.manual_seed(3)
    want = _drawing_as_cifarops(nn.FractionalMaxPool2d(2, output_size=5))(x)
    torch.manual_seed(3)
    assert torch.equal(swapped(x), want)


# Small variants (all three cifarops layers with a random draw, maxout and stochastic pooling), cheap enough for the
# Triton interpreter.
SWAP_MODELS = {
    "pyramidnet110-a270-shakedrop": dict(depth=8, alpha=6),
    "resnet110-stochastic-depth": dict(depth=8),
    "shake-shake26-2x96d": dict(depth=8, width=4),
    "fmp-graham-cifar10": dict(filters=4, layers=4, input_size=12),
    "maxout-goodfellow-cifar10": dict(channels=(4, 4, 4), fc_units=8),
    "stochastic-pool-zeiler-cifar10": dict(filters=4),
}


@pytest.mark.parametrize("name", SWAP_MODELS)
def test_reference_zoo_model_swapped_equals_the_fused_model(name, kernel_backend):
    device, backend = kernel_backend
    torch.manual_seed(0)
    fused = models.create(name, **SWAP_MODELS[name]).to(device)
    reference = models.create(name, reference=True, **SWAP_MODELS[name]).to(device)
    reference.load_state_dict(fused.state_dict())
    pinned = [n for n, m in reference.named_modules() if getattr(m, "backend", None) == "reference"]
    swapped, report = swap_layers(reference)
    assert [r.name for r in report] == pinned and pinned
    assert all(r.old.endswith("(backend=reference)") and r.new.endswith("(backend=auto)") for r in report)
    assert not any(getattr(m, "backend", None) == "reference" for m in swapped.modules())
    size = 8 if name == "fmp-graham-cifar10" else 32
    x, y = torch.randn(2, 3, size, size, device=device), torch.tensor([1, 7], device=device)
    results = []
    for model in (fused, swapped):
        torch.manual_seed(5)
        out = model(x)
        F.cross_entropy(out, y).backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    (out_f, grads_f), (out_s, grads_s) = results
    torch.testing.assert_close(out_s, out_f, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_s, grads_f):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _OpNames(TorchDispatchMode):
    """Records the name of every op dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_swap_changes_which_implementation_runs():
    """The swap is not cosmetic: the swapped ShakeDrop calls the compiled op, the reference one does not."""
    model = models.create("pyramidnet110-a270-shakedrop", reference=True, depth=8, alpha=6)
    x = torch.randn(2, 3, 8, 8)
    counts = []
    for swap in (False, True):
        if swap:
            swap_layers(model, backend="cpu")
        with _OpNames() as ops:
            model(x)
        counts.append(ops.names.count("cifarops::shake_drop"))
    assert counts == [0, 3]  # one ShakeDrop per block, three blocks


def test_non_reference_pins_and_inplace_copy_are_respected():
    model = nn.Sequential(cifarops.ShakeDrop(backend="reference"), cifarops.Maxout(2, backend="cpu"),
                          cifarops.ShakeShake())
    copy_ = swap_layers(model, inplace=False).model
    assert [m.backend for m in model] == ["reference", "cpu", None]  # untouched
    assert [m.backend for m in copy_] == [None, "cpu", None]  # only the reference pin is swapped
    assert len(swap_layers(copy.deepcopy(model), backend="reference").report) == 0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: swap_layers(torch.randn(3)), TypeError, "model must be a torch.nn.Module, got Tensor"),
        (lambda: swap_layers(nn.Linear(2, 2), backend="cuda13"), ValueError, "backend must be None .* got 'cuda13'"),
        (lambda: swap_layers(nn.Linear(2, 2), inplace=None), TypeError, "inplace must be a bool"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_backend_touches_nothing():
    model = ForeignNet()
    with pytest.raises(ValueError, match="backend"):
        swap_layers(model, backend="fused")
    assert sum(type(m) is nn.FractionalMaxPool2d for m in model.modules()) == 4


# ------------------------------------------------------------------------- timm's and torchvision's drop path


class PeerBlock(nn.Module):
    """A residual block as timm and torchvision write one: x + drop_path(branch(x))."""

    def __init__(self, drop_path: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop_path = drop_path

    def forward(self, x):
        return x + self.drop_path(torch.relu(self.conv(x)))


@pytest.mark.parametrize("peer", ["timm DropPath", "torchvision row", "torchvision batch"])
def test_drop_paths_of_timm_and_torchvision_are_swapped(kernel_backend, monkeypatch, peer):
    """swap_layers replaces exactly timm's DropPath and torchvision's StochasticDepth with cifarops.StochasticDepth
    of their settings: for the mask the peer drew, cifarops computes the peer's output; in evaluation exactly the
    peer's; the generator drives the new draw (the same seed, the same mask)."""
    import drop_path_peers

    device, _ = kernel_backend
    timm_drop_path, torchvision_stochastic_depth = drop_path_peers.install(monkeypatch)
    layer, (p, mode, scale_by_keep) = {
        "timm DropPath": (timm_drop_path(0.3), (0.3, "row", True)),
        "torchvision row": (torchvision_stochastic_depth(0.4, "row"), (0.4, "row", True)),
        "torchvision batch": (torchvision_stochastic_depth(0.4, "batch"), (0.4, "batch", True)),
    }[peer]
    model = PeerBlock(layer).to(device)
    x = torch.randn(16, 4, 5, 5, device=device)
    torch.manual_seed(3)
    peer_y = model(x)
    branch = torch.relu(model.conv(x)).detach()
    mask = ((peer_y - x).abs().flatten(1).amax(1) > 0).float()  # the peer's gate, sample by sample
    assert 0 < mask.sum() < 16 or mode == "batch"
    peer_eval = model.eval()(x)
    model.train()

    swapped, report = swap_layers(model)
    new = swapped.drop_path
    assert isinstance(new, cifarops.StochasticDepth) and (new.p, new.mode, new.scale_by_keep) == (p, mode, scale_by_keep)
    assert [r.name for r in report] == ["drop_path"] and "cifarops.StochasticDepth" in str(report)
    gate = mask[:1] if mode == "batch" else mask
    assert_close(cifarops.functional.stochastic_depth(branch, x, p=p, mode=mode, scale_by_keep=scale_by_keep,
                                                      gate=gate), peer_y.detach())
    torch.testing.assert_close(swapped.eval()(x), peer_eval, rtol=0, atol=0)
    swapped.train()
    torch.manual_seed(9)
    first = swapped(x)
    torch.manual_seed(9)
    torch.testing.assert_close(swapped(x), first, rtol=0, atol=0)


def test_a_drop_path_of_another_code_base_is_left_alone(monkeypatch):
    """A copy in another repository is listed and kept, and so is timm's DropPath(scale_by_keep=False), which is
    the identity in evaluation where Huang's unscaled form multiplies by 1 - p."""
    import drop_path_peers

    timm_drop_path, _ = drop_path_peers.install(monkeypatch)
    unscaled = PeerBlock(timm_drop_path(0.3, scale_by_keep=False))
    swapped, report = swap_layers(unscaled)
    assert swapped.drop_path is unscaled.drop_path and len(report) == 0
    assert report.left_alone == [("drop_path", "timm.layers.drop.DropPath")]

    class DropPath(nn.Module):  # a copy in a model's own repository: its conventions are its own
        def forward(self, x):
            return x

    model = PeerBlock(DropPath())
    swapped, report = swap_layers(model)
    assert swapped.drop_path is model.drop_path and len(report) == 0
    assert report.left_alone == [("drop_path", f"{__name__}.test_a_drop_path_of_another_code_base_is_left_alone"
                                                f".<locals>.DropPath")]


class _DropPathNet(nn.Module):
    """A small residual network written as timm's and torchvision's blocks are, a drop path on each branch: the
    stand-in for their own networks where those packages do not import (this project's CPU machines)."""

    def __init__(self, drop_path, rates):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)) for _ in rates)
        self.drop_paths = nn.ModuleList(drop_path(p) for p in rates)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.stem(x)
        for branch, drop_path in zip(self.branches, self.drop_paths):
            h = torch.relu(h + drop_path(branch(h)))
        return self.fc(h.mean((2, 3)))


def _peer_network(peer, monkeypatch):
    """(network, its drop-path count): timm's ResNet-18 (drop_path_rate 0.2) or torchvision's EfficientNet-B0
    (stochastic_depth_prob 0.2) where the package imports, else _DropPathNet of that package's layer."""
    import drop_path_peers

    torch.manual_seed(0)
    try:
        if peer == "timm":
            import timm

            model = timm.create_model("resnet18", drop_path_rate=0.2, num_classes=10)
        else:
            import torchvision

            model = torchvision.models.efficientnet_b0(num_classes=10, stochastic_depth_prob=0.2)
        kind = "DropPath" if peer == "timm" else "StochasticDepth"
        return model, sum(type(m).__name__ == kind for m in model.modules())
    except ImportError:
        timm_drop_path, torchvision_stochastic_depth = drop_path_peers.install(monkeypatch)
        layer = timm_drop_path if peer == "timm" else (lambda p: torchvision_stochastic_depth(p, "row"))
        return _DropPathNet(layer, [0.1, 0.2, 0.3]), 3


@pytest.mark.parametrize("peer", ["timm", "torchvision"])
def test_peer_networks_swapped_train_as_well(monkeypatch, peer):
    """Issue 31: swapped into the peers' own networks, cifarops.StochasticDepth trains there as well as the layer
    it replaced: 30 SGD steps on real digits from the same weights, the loss falls as far (the masks differ: the
    peer draws with bernoulli_, cifarops from Philox, so the runs are alike, not equal)."""
    from test_models import assert_trains_alike, digits

    model, drop_paths = _peer_network(peer, monkeypatch)
    swapped, report = swap_layers(model, inplace=False)
    assert len(report) == drop_paths > 0 and "cifarops.StochasticDepth" in str(report)
    assert sum(isinstance(m, cifarops.StochasticDepth) for m in swapped.modules()) == drop_paths
    x, y = digits(128)
    assert_trains_alike(model, swapped, x, y)
