"""torch.compile of whole networks (issue 17): every zoo model traces without a graph break, training and
evaluation; a compiled training step of each zoo family equals the eager one for the same explicit noise;
ShakeDrop and Shake-Shake reach the compiled graph as pointwise ATen ops (which Inductor fuses with their
neighbours), maxout and FMP as their kernels; and the noise drawn in the compiled graph follows the seed and
has the layers' distributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F

import cifarops
import cifarops.functional as F
import cifarops.models as models
from cifarops import backends

# Every zoo network at its smallest (one block a stage: the same code paths; tracing and Inductor's code
# generation take most of a test's time here).
TINY = {
    "pyramidnet272-a200-shakedrop": dict(depth=11, alpha=8),
    "pyramidnet110-a270-shakedrop": dict(depth=8, alpha=8),
    "resnet110-stochastic-depth": dict(depth=8),
    "shake-shake26-2x96d": dict(depth=8, width=8),
    "wrn28-10": dict(depth=10, widen=1),
    "fmp-graham-cifar10": dict(filters=4),
    "maxout-goodfellow-cifar10": dict(channels=(8, 8, 8), fc_units=16),
    "stochastic-pool-zeiler-cifar10": dict(filters=4),
}


def _graphs(fn, *args):
    """The FX graphs Dynamo hands its backend for fn(*args) (fullgraph: one per call site), run as traced."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return graphs


def _cifarops_targets(graphs) -> set:
    return {str(n.target) for g in graphs for n in g.graph.nodes if "cifarops" in str(n.target)}


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_zoo_model_compiles_without_a_graph_break(name, training):
    """fullgraph=True raises at the first graph break; aot_eager traces forward and backward as Inductor would
    (without its code generation, the slow part on this CPU). The second call must not compile again (a cache
    that the trace itself fills, and Dynamo then guards on, once made every model compile twice)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = models.create(name, **TINY[name]).train(training)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    for call in range(2):
        with torch._dynamo.config.patch(error_on_recompile=call > 0):
            if training:
                torch_F.cross_entropy(compiled(x), torch.tensor([1, 2])).backward()
                assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
            else:
                with torch.no_grad():
                    torch.manual_seed(1)  # FMP draws its regions in evaluation too (Graham's test-time averaging)
                    got = compiled(x)
                    torch.manual_seed(1)
                    torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_shake_ops_are_decomposed_under_compile_and_kept_under_export():
    """Under torch.compile ShakeDrop and Shake-Shake are pointwise ATen ops (no opaque node for Inductor to
    stop at); maxout and FMP stay their kernels (they measured faster, python -m cifarops.bench.models
    --compile); torch.export keeps every op as one node."""
    h, s = torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 3)

    def shake_drop(h, s):
        return F.shake_drop(h, s, level="channel")

    def shake_shake(h, s):
        return F.shake_shake(h, h * 2, h)

    def maxout_and_pool(h, s):
        return F.fractional_max_pool2d(F.maxout(h, 2), 2, output_size=2)

    assert _cifarops_targets(_graphs(shake_drop, h, s)) == set()
    assert _cifarops_targets(_graphs(shake_shake, h, s)) == set()
    assert _cifarops_targets(_graphs(maxout_and_pool, h, s)) == {"cifarops.maxout.default",
                                                                  "cifarops.fractional_max_pool2d.default"}

    class Block(torch.nn.Module):
        def forward(self, h, s):
            return shake_drop(h, s) + shake_shake(h, s)

    exported = torch.export.export(Block(), (h, s))
    targets = [str(n.target) for n in exported.graph.nodes if "cifarops" in str(n.target)]
    assert sorted(targets) == ["cifarops.shake_drop.default", "cifarops.shake_shake.default"]


def _explicit_noise(monkeypatch, model, batch: int, dtype=torch.float32):
    """Gives every ShakeDrop, StochasticDepth and ShakeShake layer of `model` fixed noise, the same in eager and compiled calls:
    the layer calls the functional with explicit gate, alpha and beta (per sample) drawn here once."""
    generator = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, cifarops.ShakeDrop):
            m.noise = dict(gate=torch.bernoulli(torch.full((batch,), 0.5, dtype=dtype), generator=generator),
                           alpha=torch.rand(batch, dtype=dtype, generator=generator) * 2 - 1,
                           beta=torch.rand(batch, dtype=dtype, generator=generator))
        elif isinstance(m, cifarops.ShakeShake):
            m.noise = dict(alpha=torch.rand(batch, dtype=dtype, generator=generator),
                           beta=torch.rand(batch, dtype=dtype, generator=generator))
        elif isinstance(m, cifarops.StochasticDepth):
            m.noise = dict(gate=torch.bernoulli(torch.full((batch,), 0.5, dtype=dtype), generator=generator))

    def shake_drop(self, h, shortcut=None):
        return F.shake_drop(h, shortcut, p_drop=self.p_drop, alpha_range=self.alpha_range,
                            beta_range=self.beta_range, gate_level="sample", level="sample", training=self.training,
                            **self.noise)

    def shake_shake(self, h1, h2, shortcut=None):
        return F.shake_shake(h1, h2, shortcut, forward_mode=self.forward_mode, backward_mode=self.backward_mode,
                             level="sample", training=self.training, **self.noise)

    def stochastic_depth(self, h, shortcut=None):
        return F.stochastic_depth(h, shortcut, p=self.p, mode=self.mode, scale_by_keep=self.scale_by_keep,
                                  training=self.training, **self.noise)

    monkeypatch.setattr(cifarops.ShakeDrop, "forward", shake_drop)
    monkeypatch.setattr(cifarops.StochasticDepth, "forward", stochastic_depth)
    monkeypatch.setattr(cifarops.ShakeShake, "forward", shake_shake)


@pytest.mark.parametrize("name", sorted(set(TINY) - {"pyramidnet272-a200-shakedrop"}))  # one per family
def test_compiled_training_step_equals_eager_for_the_same_noise(monkeypatch, name):
    """Inductor's step (forward, loss, backward) against eager's, to rounding: the decomposed ShakeDrop and
    Shake-Shake against their kernels with the same explicit noise; FMP draws in its kernel from the generator
    in both, so the same seed gives the same regions. Dropout is taken out (nn.Identity): compiled, it draws
    from Inductor's RNG, other numbers than eager's, and moves the generator the FMP kernels draw from. In
    float64: Inductor reorders the arithmetic, and in float32 a near tie in a max-pooling region may then
    route a gradient to another element."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    batch = 4
    model = models.create(name, **TINY[name]).double().train()
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, torch.nn.Dropout):
                setattr(parent, child_name, torch.nn.Identity())
    _explicit_noise(monkeypatch, model, batch, torch.float64)
    x, y = torch.randn(batch, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 5, 9])

    def step(forward):
        torch.manual_seed(3)
        out = forward(x)
        grads = torch.autograd.grad(torch_F.cross_entropy(out, y), list(model.parameters()))
        return [out.detach(), *grads]

    compiled = step(torch.compile(model, fullgraph=True))
    eager = step(model)
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_noise_drawn_in_the_compiled_graph_follows_the_seed_and_the_distribution():
    """The decomposition draws its key in the graph (torch's generator through Inductor's RNG): the same seed
    repeats a step, another seed changes it, and the gate keeps 1 - p_drop of the samples, alpha and the
    Shake-Shake coefficient are uniform on their ranges."""
    torch._dynamo.reset()
    n = 4000
    h = torch.ones(n, 1, 1, 1)

    def draws(h):
        drop = F.shake_drop(h, p_drop=1.0, alpha_range=(-1.0, 1.0))  # gate 0: the scale is alpha
        gate = F.shake_drop(h, p_drop=0.25, alpha_range=(0.0, 0.0), gate_level="sample")  # the scale is b
        mix = F.shake_shake(h, torch.zeros_like(h))  # alpha
        return drop.flatten(), gate.flatten(), mix.flatten()

    compiled = torch.compile(draws, fullgraph=True)
    torch.manual_seed(1)
    first = compiled(h)
    torch.manual_seed(1)
    again = compiled(h)
    torch.manual_seed(2)
    other = compiled(h)
    for a, b, c in zip(first, again, other):
        assert torch.equal(a, b) and not torch.equal(a, c)
    alpha, gate, mix = first
    sigma = (1 / (12 * n)) ** 0.5  # standard error of a U(0, 1) mean
    assert alpha.min() >= -1 and alpha.max() < 1 and abs(alpha.mean()) < 5 * 2 * sigma
    assert set(gate.unique().tolist()) == {0.0, 1.0} and abs(gate.mean() - 0.75) < 5 * (0.75 * 0.25 / n) ** 0.5
    assert mix.min() >= 0 and mix.max() < 1 and abs(mix.mean() - 0.5) < 5 * sigma
    # per sample: the 4000 values are distinct draws, not one value broadcast
    assert alpha.unique().numel() > n * 0.99 and mix.unique().numel() > n * 0.99


def test_decomposition_can_be_turned_off_per_op(monkeypatch):
    """COMPILE_DECOMPOSED is the per-op choice: without shake_drop in it, the compiled graph calls the kernel;
    so it does for a layer pinned to a kernel backend."""
    h = torch.randn(2, 4, 3, 3)
    pinned = cifarops.ShakeDrop(backend="cpu")  # a backend asked for is compiled as its op
    assert _cifarops_targets(_graphs(pinned, h)) == {"cifarops.shake_drop.default"}
    monkeypatch.setattr(backends, "COMPILE_DECOMPOSED", set())
    assert _cifarops_targets(_graphs(lambda h: F.shake_drop(h), h)) == {"cifarops.shake_drop.default"}


def test_the_functionals_compile_once_whatever_eager_calls_do_in_between():
    """The functionals' caches (validated hyper-parameters, parsed FMP sizes) are neither read nor written
    while Dynamo traces: an eager call that fills them between two compiled calls must not make the second
    compile again."""
    def layers(h):
        y = F.shake_drop(h, p_drop=0.3) + F.shake_shake(h, h)
        y = y + F.maxout(h, 2).repeat_interleave(2, 1) + F.probabilistic_maxout(h, 2).repeat_interleave(2, 1)
        return F.fractional_max_pool2d(y, 2, output_size=2)

    torch._dynamo.reset()
    compiled = torch.compile(layers, fullgraph=True, backend="aot_eager")
    h = torch.randn(2, 4, 5, 5)
    compiled(h)
    layers(h)  # fills the caches
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert compiled(h).shape == (2, 4, 2, 2)


@pytest.mark.parametrize("name", ["pyramidnet110-a270-shakedrop", "shake-shake26-2x96d"])
def test_compiled_cifarops_model_is_the_compiled_reference_model(name):
    """With ShakeDrop and Shake-Shake decomposed, torch.compile sees the same graph in a cifarops network as in
    the same network built from the reference layers (models.create(..., reference=True)): the compiled
    steps are then equally fast and take equally long to compile, which bench.models --compile measures."""
    def graph(reference: bool) -> list:
        torch.manual_seed(0)
        model = models.create(name, reference=reference, **TINY[name]).train()
        return [(n.op, str(n.target)) for g in _graphs(model, torch.randn(2, 3, 32, 32)) for n in g.graph.nodes]

    ours, reference = graph(False), graph(True)
    assert ours == reference
    # each ShakeDrop or Shake-Shake layer: the reference's autograd.Function, traced into the graph
    layers = sum(isinstance(m, (cifarops.ShakeDrop, cifarops.ShakeShake)) for m in models.create(name, **TINY[name]).modules())
    assert layers > 0 and sum(target == "autograd_function_apply" for _, target in ours) == layers


@pytest.mark.parametrize("checkpoint", ["none", "full"])
def test_backward_of_the_compiled_graph_uses_the_forward_noise(checkpoint):
    """The decomposition regenerates its noise in backward from the key its forward drew, also when the compiled
    graph recomputes a checkpointed block: with alpha = beta = 0, y = b h and grad_h = b, the same gate b; and
    Shake-Shake's backward_mode="keep" scales the gradient by the forward's alpha (y = alpha for h1 = 1, h2 = 0)."""
    from cifarops.checkpoint import checkpoint as cifarops_checkpoint

    def layers(h1):
        a = F.shake_drop(h1, p_drop=0.5, alpha_range=(0.0, 0.0), beta_range=(0.0, 0.0), gate_level="sample")
        b = F.shake_shake(h1, torch.zeros_like(h1), backward_mode="keep")
        return a, b

    def block(h1):
        return cifarops_checkpoint(layers, h1, mode=checkpoint)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    torch.manual_seed(4)
    h1 = torch.ones(64, 2, 3, 3, requires_grad=True)
    a, b = compiled(h1)
    grad_a, = torch.autograd.grad(a.sum(), h1, retain_graph=True)
    grad_b, = torch.autograd.grad(b.sum(), h1)
    assert torch.equal(grad_a, a.detach()) and 0 < a.detach().mean() < 1  # some gates open, some shut
    assert torch.equal(grad_b, b.detach()) and b.detach().unique().numel() > 32
