"""Two Python threads running cifarops ops at once on the CPU get bitwise the results of the same calls made
one after the other in one thread: forward and backward of every op, with explicit noise or a Philox seed
given as a tensor (torch's global generator is shared by threads, so drawn noise would depend on their
interleaving), and checkpointed blocks, whose noise tape is thread-local.

Threads start together at a barrier and loop, so that their calls overlap. The backend is chosen once in the
main thread (the override is process-wide). Triton is left out: under TRITON_INTERPRET=1 its interpreter
patches triton.language globally while a kernel runs, so two interpreted launches cannot overlap (on a GPU
the kernels launch on streams and the interpreter is not involved).
"""

from __future__ import annotations

import contextlib
import copy
import threading

import pytest
import torch

import cifarops
import cifarops.functional as F
from cifarops import backends, noise
from cifarops.backends import op as _op
from cifarops.models import PyramidBasicBlock

BACKENDS = [b for b in cifarops.available_backends("cpu") if b != "triton"]
THREADS = 2
ITERATIONS = 30


def run_together(tasks, iterations=ITERATIONS):
    """Runs tasks[k] `iterations` times in thread k, all starting at one barrier; returns each thread's
    results and re-raises the first error of any thread."""
    barrier = threading.Barrier(len(tasks))
    results = [[] for _ in tasks]
    errors = []

    def worker(k):
        try:
            barrier.wait()
            for _ in range(iterations):
                results[k].append(tasks[k]())
        except BaseException as error:  # noqa: BLE001  (handed to the main thread)
            barrier.abort()
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def assert_bitwise(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def tensors(seed, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def forward_backward(inputs, forward):
    """forward(*leaves) and the gradients of a fixed weighting of its outputs, as one tuple of tensors."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outputs = forward(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    floats = [o for o in outputs if o.is_floating_point()]
    weights = [torch.linspace(-1, 1, o.numel()).reshape(o.shape).to(o.dtype) for o in floats]
    grads = torch.autograd.grad(floats, leaves, weights, allow_unused=True)
    return tuple(o.detach() for o in outputs) + tuple(g for g in grads if g is not None)


SEED = torch.tensor([20240601], dtype=torch.int64)
MAXOUT_STATE = torch.tensor([20240601, 8], dtype=torch.int64)  # probabilistic maxout's {seed, offset}
N, C, HW = 8, 16, 12


def shake_drop_explicit():
    h, shortcut = tensors(1, (N, C, HW, HW), (N, C // 2, HW, HW))
    gate = (torch.arange(N) % 2).float()
    alpha, beta = torch.linspace(-1, 1, N * C).reshape(N, C), torch.linspace(0, 1, N * C).reshape(N, C)
    return forward_backward([h, shortcut], lambda h, s: F.shake_drop(h, s, gate=gate, alpha=alpha, beta=beta))


def shake_drop_pixel():
    h, shortcut = tensors(2, (N, C, HW, HW), (N, C, HW, HW))
    gate = torch.zeros(N)
    state = torch.tensor([20240601, 4], dtype=torch.int64)
    return forward_backward([h, shortcut], lambda h, s: backends.op("shake_drop", h.device)(
        h, s, 0.5, [-1.0, 1.0], [0.0, 1.0], "batch", "pixel", True, gate, None, None, state)[0])


def shake_shake():
    h1, h2, shortcut = tensors(3, *[(N, C, HW, HW)] * 3)
    alpha, beta = torch.linspace(0, 1, N), torch.linspace(1, 0, N)
    return forward_backward([h1, h2, shortcut], lambda a, b, s: F.shake_shake(a, b, s, alpha=alpha, beta=beta))


def maxout(grouping):
    (x,) = tensors(4, (N, C * 2, HW, HW))
    return forward_backward([x], lambda x: F.maxout(x, 4, 1, grouping))


def probabilistic_maxout_training():
    (x,) = tensors(5, (N, C * 2, HW, HW))
    return forward_backward([x], lambda x: _op("probabilistic_maxout", x.device)(x, 2, 1, "strided", 0.5, MAXOUT_STATE))


def probabilistic_maxout_expectation():
    (x,) = tensors(6, (N, C * 2, HW, HW))
    return forward_backward([x], lambda x: F.probabilistic_maxout(x, 2, temperature=0.5, training=False))


def fractional_max_pool_window():
    (x,) = tensors(7, (N, C, 2 * HW, 2 * HW))
    samples = torch.rand(N, C, 2, generator=torch.Generator().manual_seed(8))
    return forward_backward([x], lambda x: F.fractional_max_pool2d(x, 3, output_ratio=0.6, return_indices=True,
                                                                   _random_samples=samples))


def fractional_max_pool_graham():
    (x,) = tensors(9, (N, C, 2 * HW, 2 * HW))
    steps = torch.tensor([2, 1] * (HW - 4)).roll(3)  # 2 HW - 8 increments of 1 and 2 that add up to 2 HW
    boundaries = torch.cat([torch.zeros(1, dtype=torch.int64), steps.cumsum(0)]).expand(N, 1, 2, -1)
    return forward_backward([x], lambda x: F.fractional_max_pool2d(x, output_size=2 * HW - 8, regions="overlapping",
                                                                   boundaries=boundaries))


OPS = {
    "shake_drop explicit": shake_drop_explicit,
    "shake_drop pixel": shake_drop_pixel,
    "shake_shake": shake_shake,
    "maxout contiguous": lambda: maxout("contiguous"),
    "maxout strided": lambda: maxout("strided"),
    "probabilistic_maxout training": probabilistic_maxout_training,
    "probabilistic_maxout expectation": probabilistic_maxout_expectation,
    "fractional_max_pool2d window": fractional_max_pool_window,
    "fractional_max_pool2d graham": fractional_max_pool_graham,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_two_threads_match_one(backend, op):
    with cifarops.use_backend(backend):
        want = OPS[op]()
        results = run_together([OPS[op]] * THREADS)
    for thread in results:
        for got in thread:
            assert_bitwise(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_running_different_ops_match_one(backend):
    """Each thread cycles through every op, starting at a different one, so that unlike ops overlap."""
    calls = list(OPS.values())
    with cifarops.use_backend(backend):
        want = [call() for call in calls]

        def cycle(offset):
            order = calls[offset:] + calls[:offset]
            return lambda: [call() for call in order]

        results = run_together([cycle(k * len(calls) // THREADS) for k in range(THREADS)], iterations=4)
    for k, thread in enumerate(results):
        offset = k * len(calls) // THREADS
        for cycle_results in thread:
            for got, expected in zip(cycle_results, want[offset:] + want[:offset]):
                assert_bitwise(got, expected)


def checkpointed_steps(block, x, steps):
    """`steps` training steps of a checkpointed block, each recorded on a tape of our own (tapes nest, so it
    receives the block's draws): the tapes, outputs, input gradients and parameter gradients."""
    records = []
    for _ in range(steps):
        tape = noise.Tape()
        leaf = x.detach().requires_grad_()
        with noise.record(tape):
            y = block(leaf)
        grads = torch.autograd.grad(y, [leaf, *block.parameters()], torch.ones_like(y))
        records.append((tape, (y.detach(), *grads)))
    return records


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpointed_blocks_in_two_threads_match_one(backend):
    """Two threads train their own checkpointed PyramidNet block (ShakeDrop noise drawn from the shared
    generator, BatchNorm in training mode) at the same time. Replaying each thread's recorded noise through
    an uncheckpointed copy, one step after another in the main thread, gives bitwise the same outputs,
    gradients and running statistics: neither recomputation replayed the other thread's draws."""
    torch.manual_seed(0)
    plain = [PyramidBasicBlock(8, 8, 1, 0.5, checkpoint="none").train() for _ in range(THREADS)]
    blocks = [copy.deepcopy(b) for b in plain]
    for b in blocks:
        b.checkpoint = "full"
    inputs = tensors(10, (4, 8, 6, 6), (5, 8, 6, 6))  # different batches: foreign draws would not even fit
    steps = 10
    with cifarops.use_backend(backend):
        results = run_together([lambda k=k: checkpointed_steps(blocks[k], inputs[k], steps) for k in range(THREADS)],
                               iterations=1)
        for k in range(THREADS):
            for tape, got in results[k][0]:
                assert len(tape.draws) == 1  # the RNG state of the block's ShakeDrop
                leaf = inputs[k].detach().requires_grad_()
                with noise.replay(tape):
                    y = plain[k](leaf)
                grads = torch.autograd.grad(y, [leaf, *plain[k].parameters()], torch.ones_like(y))
                assert_bitwise(got, (y.detach(), *grads))
            for (name, a), b in zip(plain[k].state_dict().items(), blocks[k].state_dict().values()):
                assert torch.equal(a, b), name


def test_a_tape_records_only_its_own_threads_draws():
    """Thread A records a tape while thread B draws from the same generator without one, and then while B
    records a tape of its own: each tape holds exactly its thread's draws (one RNG state per call), which
    replayed in the main thread give that thread's outputs bitwise."""
    h_a, h_b = tensors(11, (3, 4, 2, 2), (5, 4, 2, 2))
    tapes = [noise.Tape(), noise.Tape()]
    outputs = [[], []]
    calls = 40

    def draw(k, record):
        def task():
            h = (h_a, h_b)[k]
            with noise.record(tapes[k]) if record else contextlib.nullcontext():
                for _ in range(calls):
                    outputs[k].append(F.shake_drop(h, level="pixel", gate_level="sample"))
        return task

    def replayed(k):
        with noise.replay(tapes[k]):
            return [F.shake_drop((h_a, h_b)[k], level="pixel", gate_level="sample") for _ in range(calls)]

    run_together([draw(0, True), draw(1, False)], iterations=1)
    assert len(tapes[0].draws) == calls  # one RNG state per call
    assert all(torch.equal(a, b) for a, b in zip(replayed(0), outputs[0]))
    assert tapes[1].draws == []

    tapes[0] = noise.Tape()
    outputs = [[], []]
    run_together([draw(0, True), draw(1, True)], iterations=1)
    for k in (0, 1):
        assert len(tapes[k].draws) == calls
        assert all(torch.equal(a, b) for a, b in zip(replayed(k), outputs[k]))
    assert noise._active_tapes == 0


def test_layer_pins_are_per_thread():
    """Two threads running layers pinned to different backends: each runs on its own layer's backend, and no
    pin outlives its call (with one process-wide override, the threads' save-and-restore pairs interleave:
    ops ran on the other thread's backend and the last restore could leave a pin set for good)."""
    from cifarops import backends

    x = torch.randn(4, 6, 5)
    layers = [cifarops.Maxout(2, backend="reference"), cifarops.Maxout(2, backend="cpu")]
    chosen = [[] for _ in layers]

    def task(k):
        def run():
            with layers[k]._pinned():
                chosen[k].append(backends.select_backend("cpu"))
                return layers[k](x)
        return run

    got = run_together([task(k) for k in range(len(layers))], iterations=500)
    assert [set(c) for c in chosen] == [{"reference"}, {"cpu"}]
    assert backends.current_override() is None and backends._active_pins == 0
    want = x.view(4, 3, 2, 5).amax(2)  # pylearn2's contiguous groups of 2 channels
    for results in got:
        for y in results:
            torch.testing.assert_close(y, want, rtol=0, atol=0)
