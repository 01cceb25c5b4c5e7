"""The model zoo: parameter counts against the papers, every model's training step at full size, the loss
falling on real data (scikit-learn's 8x8 digits, upsampled), checkpointed models identical to plain ones,
the reference-layer models equal to the cifarops ones, torch.compile, and bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cifarops
import cifarops.models as models
from cifarops.models.fmp_net import fmp_sizes

# Small variants of every architecture (cifarops.models.SMALL): the same code paths at a fraction of the cost.
SMALL = models.SMALL


def test_every_model_has_a_small_variant_here():
    assert sorted(SMALL) == sorted(models.names())


@pytest.mark.parametrize("name", [n for n, (_, _, paper) in models.MODELS.items() if paper is not None])
def test_parameter_count_matches_the_paper(name):
    count = sum(p.numel() for p in models.create(name).parameters())
    paper = models.MODELS[name][2]
    assert abs(count - paper) / paper < 0.01, (count, paper)


def test_resnet110_stochastic_depth_parameters_worked_by_hand_and_its_schedule():
    """He et al.'s CIFAR ResNet-110, 1.7M parameters (their Table 6, rounded): a 3x3 stem, 18 basic blocks a stage
    at 16, 32, 64 channels (two 3x3 convolutions and two BatchNorms each, no shortcut weights), a linear layer;
    block l of 54 dropped with p = l / 54 * 0.5 in Huang's unscaled form."""
    model = models.create("resnet110-stochastic-depth")
    conv = lambda i, o: 9 * i * o  # noqa: E731
    stage = lambda i, o: conv(i, o) + conv(o, o) + 4 * o + 17 * (2 * conv(o, o) + 4 * o)  # noqa: E731
    expected = conv(3, 16) + 2 * 16 + stage(16, 16) + stage(16, 32) + stage(32, 64) + 64 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected == 1_727_962
    assert abs(expected - 1.7e6) < 0.05e6
    layers = [b.stochastic_depth for b in model.blocks]
    assert len(layers) == 54 and layers[0].p == 0.5 / 54 and layers[-1].p == 0.5
    assert all(layer.mode == "row" and not layer.scale_by_keep for layer in layers)


def test_fmp_net_parameters_and_sizes_worked_by_hand():
    # (160nC2)12: 2x2 convolutions from 160(n-1) (3 for n = 1) to 160n channels, C2 to 2080, C1 to 2240,
    # a BatchNorm (weight and bias) per convolution, and the linear layer.
    convs = [(3, 160, 4)] + [(160 * (n - 1), 160 * n, 4) for n in range(2, 13)] + [(1920, 2080, 4), (2080, 2240, 1)]
    expected = sum(i * o * k + 2 * o for i, o, k in convs) + 2240 * 10 + 10
    assert sum(p.numel() for p in models.create("fmp-graham-cifar10").parameters()) == expected
    # 94 -> 2 in twelve poolings by 2^(1/3), each after a valid 2x2 convolution
    assert fmp_sizes(94, 12, 2 ** (1 / 3)) == [74, 58, 45, 35, 27, 21, 16, 12, 9, 6, 4, 2]


def test_maxout_net_parameters_worked_by_hand():
    # pylearn2's cifar10.yaml: 8x8 conv 3 -> 96x2, 8x8 96 -> 192x2, 5x5 192 -> 192x2 (pooled sizes 16, 7, 5),
    # a 500x5 maxout layer on 192 * 5 * 5 inputs and a 10-way softmax; one bias per output channel.
    expected = (3 * 64 * 192 + 192) + (96 * 64 * 384 + 384) + (192 * 25 * 384 + 384) + (4800 * 2500 + 2500) + 5010
    assert sum(p.numel() for p in models.create("maxout-goodfellow-cifar10").parameters()) == expected


def test_stochastic_pool_net_parameters_and_sizes_worked_by_hand():
    # Zeiler & Fergus: three 5x5 convolutions of 64 filters ("same" size), each pooled 3/2 in ceil mode
    # (32 -> 16 -> 8 -> 4), then a linear layer on 64 * 4 * 4 features; one bias per output.
    expected = (3 * 64 * 25 + 64) + 2 * (64 * 64 * 25 + 64) + (64 * 16 * 10 + 10)
    model = models.create("stochastic-pool-zeiler-cifar10")
    assert sum(p.numel() for p in model.parameters()) == expected == 220_042
    assert model.classifier[1].in_features == 64 * 4 * 4
    assert [block.pool.ceil_mode for block in model.features] == [True] * 3
    sizes, h = [], torch.randn(1, 3, 32, 32)
    for block in model.features:
        h = block(h)
        sizes.append(h.shape[-1])
    assert sizes == [16, 8, 4]
    small = models.create("stochastic-pool-zeiler-cifar10", filters=8, image_size=16)  # 16 -> 8 -> 4 -> 2
    assert small.classifier[1].in_features == 8 * 2 * 2


def _step(model, x, y, optimizer=None, seed=1, autocast=False):
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    return out.detach(), loss.detach()


@pytest.mark.parametrize("name", models.names())
def test_full_size_model_trains_and_checkpointing_changes_nothing(name):
    """The paper's network itself: output shape, a finite loss, and one SGD step with full checkpointing
    leaving exactly the same weights and running statistics as without."""
    torch.manual_seed(0)
    plain = models.create(name, num_classes=7)
    checkpointed = models.create(name, num_classes=7, checkpoint="full")
    checkpointed.load_state_dict(plain.state_dict())
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 6])
    results = []
    for model in (plain, checkpointed):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        out, loss = _step(model, x, y, optimizer)
        assert out.shape == (2, 7) and torch.isfinite(loss)
        results.append((loss, model.state_dict()))
    assert torch.equal(results[0][0], results[1][0])
    for key, value in results[0][1].items():
        assert torch.equal(value, results[1][1][key]), key


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast_bf16"])
@pytest.mark.parametrize("mode", ["full", "selective", "cheap"])
@pytest.mark.parametrize("name", models.names())
def test_checkpointed_model_two_steps_identical(name, mode, autocast):
    torch.manual_seed(0)
    plain = models.create(name, **SMALL[name])
    checkpointed = models.create(name, checkpoint=mode, **SMALL[name])
    checkpointed.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    runs = []
    for model in (plain, checkpointed):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = [_step(model, x, y, optimizer, seed=s, autocast=autocast)[1] for s in (1, 2)]
        model.eval()
        eval_out, eval_loss = _step(model, x, y, seed=3, autocast=autocast)  # eval mode, gradients on
        runs.append((losses, eval_loss, [p.grad for p in model.parameters()], model.state_dict()))
    (losses_a, eval_a, grads_a, state_a), (losses_b, eval_b, grads_b, state_b) = runs
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b)) and torch.equal(eval_a, eval_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


@pytest.mark.parametrize("name", models.names())
def test_reference_layers_build_the_same_network(name):
    """reference=True runs the pure-PyTorch layers: with the same weights and seed, the same step to rounding."""
    torch.manual_seed(0)
    ours = models.create(name, **SMALL[name])
    reference = models.create(name, reference=True, **SMALL[name])
    reference.load_state_dict(ours.state_dict())
    backends = {m.backend for m in reference.modules() if hasattr(m, "backend")}
    assert backends <= {"reference"} and (backends or name == "wrn28-10")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    out_a, loss_a = _step(ours, x, y)
    out_b, loss_b = _step(reference, x, y)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def digits(n: int = 512):
    """scikit-learn's bundled 8x8 digits (no download), upsampled to 32x32 RGB and standardised."""
    from sklearn.datasets import load_digits  # a test dependency (scripts/setup_env.sh, pyproject's "test")

    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    return (x - x.mean()) / x.std(), torch.tensor(data.target[:n])


def assert_trains_alike(peer, ours, x, y, steps: int = 30):
    """Both networks (the same weights) take `steps` SGD steps on (x, y) from one seed: the same start, the loss
    (five-step means) falls by more than 0.2 for both and ends within a quarter of the start of the peer's. For a
    layer that draws other masks than the one it replaced: alike, not equal."""
    curves = []
    for network in (peer, ours):
        torch.manual_seed(1)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(network(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        curves.append((sum(losses[:5]) / 5, sum(losses[-5:]) / 5))
    (peer_first, peer_last), (first, last) = curves
    assert abs(first - peer_first) < 0.1  # the same weights: the same start, to the noise
    assert peer_last < peer_first - 0.2 and last < first - 0.2, curves
    assert abs(last - peer_last) < 0.25 * peer_first, curves


@pytest.mark.parametrize("name", models.names())
def test_loss_falls_on_real_digits(name):
    """20 Adam steps (checkpointed, in training mode, noise and all) on 64 real digits: the loss falls."""
    x, y = digits(64)
    torch.manual_seed(0)
    model = models.create(name, checkpoint="full", **SMALL[name])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = [_step(model, x, y, optimizer, seed=step)[1].item() for step in range(20)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, losses


def test_compiled_small_model():
    """torch.compile of a checkpointed PyramidNet: eval output as eager; a training step as the compiled
    model without checkpointing, to rounding (the compiled graph recomputes), with BatchNorm updated once."""
    torch.manual_seed(0)
    plain = models.create("pyramidnet272-a200-shakedrop", depth=11, alpha=12)
    checkpointed = models.create("pyramidnet272-a200-shakedrop", depth=11, alpha=12, checkpoint="full")
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = plain.eval()(x)
    compiled_plain, compiled = torch.compile(plain), torch.compile(checkpointed)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), expected, rtol=1e-5, atol=1e-5)
    results = []
    for model, compiled_model in ((plain, compiled_plain), (checkpointed, compiled)):
        model.train()
        torch.manual_seed(1)
        compiled_model(x).square().sum().backward()
        results.append(([p.grad for p in model.parameters()], dict(model.named_buffers())))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for key, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][key], rtol=1e-5, atol=1e-6)
        if key.endswith("num_batches_tracked"):
            assert int(results[1][1][key]) == 1


def test_autocast_fused_add_promotes_like_the_unfused_add():
    """Under autocast a low-precision branch meets a float32 shortcut: the fused op gives shortcut + s * h."""
    import cifarops

    h, shortcut = torch.randn(2, 4, 3, 3).bfloat16(), torch.randn(2, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cifarops.ShakeDrop(0.5).eval()(h, shortcut)
        mixed = cifarops.ShakeShake().eval()(h, h, shortcut)
    assert y.dtype == mixed.dtype == torch.float32
    torch.testing.assert_close(y, shortcut + 0.5 * h.float())
    torch.testing.assert_close(mixed, shortcut + h.float())
    with pytest.raises(TypeError, match="shortcut must have h's dtype"):
        cifarops.ShakeDrop(0.5)(h, shortcut)  # outside autocast a mismatch is an error


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.create("resnet50"), "unknown model 'resnet50'"),
        (lambda: models.create("wrn28-10", num_classes=0), "num_classes must be a positive int"),
        (lambda: models.create("wrn28-10", depth=27), "depth must be 6 n \\+ 4"),
        (lambda: models.create("pyramidnet272-a200-shakedrop", depth=100), "depth must be 9 n \\+ 2"),
        (lambda: models.create("shake-shake26-2x96d", depth=25), "depth must be 6 n \\+ 2"),
        (lambda: models.create("fmp-graham-cifar10", input_size=60), "the last must be 2"),
        (lambda: models.create("pyramidnet110-a270-shakedrop", checkpoint="some"), "checkpoint must be"),
        (lambda: models.create("stochastic-pool-zeiler-cifar10", image_size=4), "image_size 4 is too small"),
    ],
)
def test_bad_model_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fmp_net_rejects_too_large_images():
    model = models.create("fmp-graham-cifar10", **SMALL["fmp-graham-cifar10"])
    with pytest.raises(ValueError, match="at most 94x94"):
        model(torch.randn(1, 3, 96, 96))


def test_model_benchmark_pieces():
    """The model benchmark's arithmetic worked by hand, and its side-by-side timing on a tiny model."""
    from cifarops.bench.models import max_batch, time_worker

    # peaks 600 MiB at batch 8 and 400 MiB at batch 4: 50 MiB per image on top of 200 MiB; 1 GiB fits 16
    mib = 2**20
    assert max_batch(1024 * mib, 8, 600 * mib, 400 * mib) == 16
    assert max_batch(100 * mib, 8, 600 * mib, 400 * mib) == 0
    config = {"model": "wrn28-10", "device": "cpu", "batch": 2, "warmup": 1, "steps": 2, "autocast": False,
              "channels_last": True, "overrides": SMALL["wrn28-10"]}
    times = time_worker([{**config, "layers": "cifarops", "checkpoint": "none"},
                         {**config, "layers": "reference", "checkpoint": "selective"}])
    assert len(times) == 2 and all(t > 0 for t in times)


def test_model_benchmark_compile_rows(monkeypatch):
    """--compile adds a torch.compile row per layer set, without checkpointing, with its compile time from a
    worker of its own, compared with the compiled reference; the workers are stand-ins here (worked by hand),
    and the compile worker itself runs once on a tiny model."""
    from cifarops.bench import models as bench

    args = bench.parse_args(["--models", "wrn28-10", "--small", "--model-arg", "depth=10", "--modes", "none",
                             "--compile", "--compile-kernels", "--batch", "4"])
    assert args.overrides == {"depth": 10}
    step_ms = {(False, "cifarops"): 10.0, (False, "reference"): 15.0, (True, "cifarops"): 6.0, (True, "reference"): 9.0,
               ("kernels", "cifarops"): 12.0}
    seen = []

    def worker(kind, payload):
        seen.append((kind, payload if kind != "time" else None))
        if kind == "time":
            assert all(c["overrides"] == {"depth": 10, "widen": 2} for c in payload)
            return [step_ms[(c["compile"], c["layers"])] for c in payload]
        return {"memory": 2**20 * payload["batch"], "compile": 40.0}[kind]

    monkeypatch.setattr(bench, "_in_new_process", worker)
    rows = {(r["layers"], r["compiled"]): r for r in bench.benchmark(args)}
    assert sorted(rows) == [("cifarops", "compile"), ("cifarops", "compile, kernels"), ("cifarops", "eager"),
                            ("reference", "compile"), ("reference", "eager")]
    assert rows["cifarops", "compile"]["vs_reference"] == pytest.approx(1.5)  # 9 ms / 6 ms, both compiled
    assert rows["cifarops", "compile, kernels"]["vs_reference"] == pytest.approx(0.75)  # 9 ms / 12 ms
    assert rows["cifarops", "eager"]["vs_reference"] == pytest.approx(1.5)  # 15 ms / 10 ms
    assert rows["cifarops", "compile"]["compile_s"] == 40.0 and rows["cifarops", "eager"]["compile_s"] is None
    assert rows["cifarops", "compile"]["peak_mb"] is None and rows["cifarops", "eager"]["peak_mb"] == 4.0
    assert [kind for kind, _ in seen].count("compile") == 3 and [kind for kind, _ in seen].count("memory") == 4
    assert "| compile |" in bench.markdown(list(rows.values()), {"device": "cpu"}, args)
    config = {"model": "wrn28-10", "device": "cpu", "batch": 2, "autocast": False, "channels_last": False,
              "layers": "cifarops", "checkpoint": "none", "compile": True, "overrides": {"depth": 10, "widen": 1}}
    assert bench.compile_worker(config) > 0
    # the kernels' row traces with nothing decomposed, and leaves the choice as it was
    graphs = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: torch._dynamo.optimize(
        lambda gm, inputs: graphs.append(gm) or gm.forward)(model))
    torch._dynamo.reset()
    before = set(cifarops.backends.COMPILE_DECOMPOSED)
    bench.training_step({**config, "model": "shake-shake26-2x96d", "compile": "kernels",
                         "overrides": {"depth": 8, "width": 8}}, torch.device("cpu"))[1]()
    assert cifarops.backends.COMPILE_DECOMPOSED == before
    assert any("cifarops.shake_shake" in str(n.target) for g in graphs for n in g.graph.nodes)
