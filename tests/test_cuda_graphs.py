"""CUDA graphs: a captured training step draws new noise at every replay (the kernels unpack the generator's
Philox state, which a replay advances), and a replay equals the eager step run from the same generator state.

These need a GPU; on a machine without one they are reported as skipped (not run), never as passed.
"""

from __future__ import annotations

import pytest
import torch

import cifarops

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not cifarops.build_info()["cuda"],
    reason="CUDA graph capture needs a GPU and the CUDA build: not run on this machine",
)


def _small_pyramidnet(checkpoint=False):
    torch.manual_seed(0)
    model = cifarops.models.create("pyramidnet110-a270-shakedrop", num_classes=10, depth=8, alpha=12, level="pixel",
                                   checkpoint=checkpoint)
    return model.cuda().train()


def _step(model, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), grads


def _capture_step(model, x, y):
    """(graph, loss, grads): one training step captured, after a warm-up on a side stream (as torch.cuda.graphs'
    documentation asks)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            _step(model, x, y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_grads = _step(model, x, y)
    return graph, static_loss, static_grads


def test_captured_training_step_draws_new_noise_and_equals_eager():
    model = _small_pyramidnet()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    graph, static_loss, static_grads = _capture_step(model, x, y)

    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    losses, offsets = [], []
    for _ in range(2):
        offsets.append(generator.get_offset())
        graph.replay()
        torch.cuda.synchronize()
        losses.append((static_loss.clone(), [g.clone() for g in static_grads]))
    assert not torch.equal(losses[0][0], losses[1][0])  # each replay drew new noise
    # The eager step from the generator state the second replay started from gives the same numbers (BatchNorm's
    # running statistics moved in both, but training mode normalises by the batch's own statistics).
    generator.set_offset(offsets[1])
    eager_loss, eager_grads = _step(model, x, y)
    torch.testing.assert_close(eager_loss, losses[1][0])
    for got, want in zip(losses[1][1], eager_grads):
        torch.testing.assert_close(got, want)


def test_reduce_overhead_compile_runs_every_op():
    """torch.compile(mode="reduce-overhead") (CUDA graphs) with every cifarops op in training mode: finite
    values and gradients, new noise at every call."""
    torch._dynamo.reset()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.shake_drop = cifarops.ShakeDrop(0.5, level="pixel")
            self.drop_path = cifarops.StochasticDepth(0.5)
            self.drop_activation = cifarops.DropActivation(0.9)
            self.shake_shake = cifarops.ShakeShake()
            self.maxout = cifarops.Maxout(2)
            self.pmaxout = cifarops.ProbabilisticMaxout(2)
            self.pool = cifarops.FractionalMaxPool2d(2, output_size=6)
            self.stochastic_pool = cifarops.StochasticPool2d(3, 1, padding=1)

        def forward(self, x):
            h = self.drop_activation(self.conv(x))
            h = self.shake_shake(h, h * 2, self.shake_drop(h, self.drop_path(h, h)))
            return self.stochastic_pool(self.pool(torch.cat([self.maxout(h), self.pmaxout(h)], 1)).relu()).sum()

    net = Net().cuda()
    compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(4, 3, 8, 8, device="cuda", requires_grad=True)
    values = []
    for _ in range(3):
        x.grad = None
        out = compiled(x)
        out.backward()
        values.append(out.item())
        assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(torch.tensor(values)))
    # ShakeDrop, stochastic depth and Shake-Shake are decomposed (noise from the graph's RNG), the others draw in
    # their kernels:
    # every replay must draw anew
    assert len(set(values)) == len(values), values


def test_training_step_makes_no_host_sync():
    """A training step (plain and checkpointed: the tape draws its states through cifarops.philox.draw_state) under
    torch.cuda.set_sync_debug_mode("error"): any synchronising call (a host read, a pageable copy of host data)
    raises. Issue 29, item 1."""
    for model in (_small_pyramidnet(), _small_pyramidnet(checkpoint="full")):
        x = torch.randn(8, 3, 32, 32, device="cuda")
        y = torch.randint(0, 10, (8,), device="cuda")
        _step(model, x, y)  # first call: lazy initialisations may sync once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _step(model, x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_captured_checkpointed_block_draws_new_noise_each_replay():
    """A checkpointed zoo network (its tape reserves each op's state in C++, a one-thread kernel unpacking the
    generator's Philox state) captured in a CUDA graph: capture succeeds (no get_offset / set_offset, no copy of
    host data while capturing), and each replay draws new noise, its backward replaying the forward's."""
    model = _small_pyramidnet(checkpoint="full")
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    graph, static_loss, static_grads = _capture_step(model, x, y)
    results = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        results.append((static_loss.clone(), [g.clone() for g in static_grads]))
    assert not torch.equal(results[0][0], results[1][0])
    assert all(torch.isfinite(g).all() for g in results[1][1])
