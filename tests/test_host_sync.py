"""No host sync on any training path (issue 18, item 4): no call reads a device value back. A value read
is aten::_local_scalar_dense (what .item(), bool(t), int(t) and is_nonzero run); a TorchDispatchMode sees
every one the Python side makes, and fails the call that makes it. Checked for every op (training and
evaluation, drawn and explicit noise), every module, and a training step (forward, backward, SGD) of
every zoo model, plain and checkpointed, on the CPU and, where present, on a GPU.

On the CPU a value read is no sync, and the C++ ops still check explicit draws' values there (reading the
tensor's memory, which the mode cannot see and which costs no sync); what this test keeps out is the Python
side reading values, which on a GPU would stall the host every call."""

from __future__ import annotations

import contextlib
import sys
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cifarops
import cifarops.functional as F
import cifarops.models as models

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in cifarops.available_backends("cuda") else [])


class NoValueReads(TorchDispatchMode):
    """Fails at the first host stall a call path may not make (issue 29, item 1):
    - a read of a tensor's value on the host (aten::_local_scalar_dense);
    - a tensor made from host data (aten::lift_fresh: torch.tensor(list), on a GPU a pageable copy and a sync);
    - a generator's get_offset or set_offset (refused while a CUDA graph is captured, and racy between threads:
      the RNG state is reserved in C++ instead), caught by a profile hook on this thread's C calls.
    The reads raise at once; the generator calls are raised when the block ends (a profile hook cannot raise).
    A 0-dim CPU tensor is no host data: it is how t[i] = 0 wraps its scalar (a fill on a GPU). value_reads=False
    leaves out the first rule: the reference backend reads CPU scalars and, on the CPU, checks explicit draws'
    values in Python, by design (on a GPU only under CIFAROPS_CHECK_VALUES=1)."""

    def __init__(self, value_reads: bool = True):
        super().__init__()
        self.value_reads = value_reads

    def __enter__(self):
        self.offset_calls = []
        self.previous_profile = sys.getprofile()
        sys.setprofile(self._profile)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.setprofile(self.previous_profile)
        result = super().__exit__(*exc)
        if self.offset_calls and exc[0] is None:
            raise AssertionError(f"a generator's offset read or set on the call path: {self.offset_calls}")
        return result

    def _profile(self, frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", None) in ("get_offset", "set_offset") \
                and isinstance(getattr(arg, "__self__", None), torch.Generator):
            self.offset_calls.append(f"{arg.__name__} from {frame.f_code.co_filename}:{frame.f_lineno}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and self.value_reads:
            raise AssertionError(f"a host read of a tensor value (aten::_local_scalar_dense) on {args[0].device}")
        if func is torch.ops.aten.lift_fresh.default and (args[0].dim() > 0 or args[0].device.type != "cpu"):
            raise AssertionError(f"a tensor made from host data (aten::lift_fresh, torch.tensor) on {args[0].device}")
        return func(*args, **(kwargs or {}))


def train_call(fn, *inputs, value_reads=True):
    """fn(*inputs) forward and backward under the mode (backward on this thread: the profile hook sees only its
    own thread, and autograd runs a GPU's backward on worker threads)."""
    with torch.autograd.set_multithreading_enabled(False), NoValueReads(value_reads):
        y = fn(*inputs)
        torch.autograd.grad(y, [t for t in inputs if t.requires_grad], torch.ones_like(y))


def x(device, *shape):
    return torch.randn(*shape, device=device, requires_grad=True)


OPS = {
    "shake_drop batch": lambda d: (lambda h: F.shake_drop(h, h.detach() * 2, p_drop=0.5), x(d, 4, 8, 5, 5)),
    "shake_drop channel": lambda d: (lambda h: F.shake_drop(h, None, p_drop=0.5, level="channel"), x(d, 4, 8, 5, 5)),
    "shake_drop pixel": lambda d: (lambda h: F.shake_drop(h, None, p_drop=0.5, level="pixel"), x(d, 4, 8, 5, 5)),
    "shake_drop eval": lambda d: (lambda h: F.shake_drop(h, h.detach(), p_drop=0.5, training=False), x(d, 4, 8, 5, 5)),
    "shake_drop explicit": lambda d: (lambda h: F.shake_drop(h, None, p_drop=0.5, gate=torch.ones(4, device=d),
                                                             alpha=torch.zeros(4, device=d),
                                                             beta=torch.full((4,), 0.5, device=d)), x(d, 4, 8, 5, 5)),
    "stochastic_depth": lambda d: (lambda h: F.stochastic_depth(h, h.detach()[:, :4], p=0.3), x(d, 4, 8, 5, 5)),
    "stochastic_depth batch eval": lambda d: (lambda h: F.stochastic_depth(h, None, p=0.3, mode="batch",
                                                                           training=False), x(d, 4, 8, 5, 5)),
    "drop_activation": lambda d: (lambda h: F.drop_activation(h, 0.9), x(d, 4, 8, 5, 5)),
    "drop_activation eval": lambda d: (lambda h: F.drop_activation(h, 0.9, training=False), x(d, 4, 8, 5, 5)),
    "shake_shake": lambda d: (lambda h: F.shake_shake(h, h * 2), x(d, 4, 8, 5, 5)),
    "shake_shake explicit": lambda d: (lambda h: F.shake_shake(h, h * 2, alpha=torch.rand(4, device=d),
                                                               beta=torch.rand(4, device=d)), x(d, 4, 8, 5, 5)),
    "shake_shake eval": lambda d: (lambda h: F.shake_shake(h, h * 2, training=False), x(d, 4, 8, 5, 5)),
    "maxout": lambda d: (lambda h: F.maxout(h, 2), x(d, 4, 8, 5, 5)),
    "maxout strided": lambda d: (lambda h: F.maxout(h, 4, grouping="strided"), x(d, 4, 8, 5, 5)),
    "probabilistic_maxout": lambda d: (lambda h: F.probabilistic_maxout(h, 2), x(d, 4, 8, 5, 5)),
    "probabilistic_maxout eval": lambda d: (lambda h: F.probabilistic_maxout(h, 2, training=False), x(d, 4, 8, 5, 5)),
    "fmp drawn": lambda d: (lambda h: F.fractional_max_pool2d(h, 2, output_size=(6, 6)), x(d, 2, 4, 9, 9)),
    "fmp explicit samples": lambda d: (lambda h: F.fractional_max_pool2d(
        h, 2, output_size=(6, 6), _random_samples=torch.rand(2, 4, 2, device=d)), x(d, 2, 4, 9, 9)),
    "fmp explicit boundaries": lambda d: (lambda h, b=torch.tensor([0, 2, 3, 5, 6, 8, 9], device=d): F.fractional_max_pool2d(
        h, output_size=(6, 6), regions="disjoint", boundaries=b.expand(2, 4, 2, 7)), x(d, 2, 4, 9, 9)),
    "fmp graham random": lambda d: (lambda h: F.fractional_max_pool2d(
        h, output_size=(6, 6), regions="overlapping", sequence="random", per_image=True), x(d, 2, 4, 9, 9)),
    "stochastic_pool2d": lambda d: (lambda h: F.stochastic_pool2d(h, 3, 2, 1), x(d, 2, 4, 9, 9)),
    "stochastic_pool2d eval": lambda d: (lambda h: F.stochastic_pool2d(h, 3, 2, training=False), x(d, 2, 4, 9, 9)),
    "fmp return_indices": lambda d: (lambda h: F.fractional_max_pool2d(
        h, 2, output_ratio=0.7, return_indices=True)[0], x(d, 2, 4, 9, 9)),
}


# Every backend of each device (the reference's draws too), the interpreted Triton excepted (a CPU stand-in).
DEVICE_BACKENDS = [(d, b) for d in DEVICES for b in cifarops.available_backends(d) if (d, b) != ("cpu", "triton")]


@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS, ids=[f"{d}-{b}" for d, b in DEVICE_BACKENDS])
@pytest.mark.parametrize("case", list(OPS))
def test_op_reads_no_value_back(device, backend, case):
    fn, h = OPS[case](device)
    with cifarops.use_backend(backend):
        train_call(fn, h, value_reads=backend != "reference")


MODULES = {
    "ShakeDrop": lambda: cifarops.ShakeDrop(0.5),
    "ShakeShake": lambda: cifarops.ShakeShake(),
    "Maxout": lambda: cifarops.Maxout(2),
    "ProbabilisticMaxout": lambda: cifarops.ProbabilisticMaxout(2),
    "FractionalMaxPool2d": lambda: cifarops.FractionalMaxPool2d(2, output_size=6),
    # a buffer of explicit samples, passed every call
    "FractionalMaxPool2d samples": lambda: cifarops.FractionalMaxPool2d(2, output_size=6,
                                                                        _random_samples=torch.rand(2, 4, 2)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_reads_no_value_back(device, name, training):
    layer = MODULES[name]().to(device).train(training)
    h = x(device, 2, 4, 9, 9)
    if name == "ShakeDrop":
        train_call(lambda t: layer(t, t.detach()), h)
    elif name == "ShakeShake":
        train_call(lambda t: layer(t, t * 2), h)
    else:
        train_call(layer, h)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("checkpoint", [False, "full"], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("name", models.names())
def test_zoo_training_step_reads_no_value_back(device, name, checkpoint):
    torch.manual_seed(0)
    model = models.create(name, checkpoint=checkpoint, **models.SMALL[name]).to(device)
    size = 32 if not name.startswith("fmp") else model.input_size
    images = torch.randn(2, 3, size, size, device=device)
    labels = torch.tensor([1, 7], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    with torch.autograd.set_multithreading_enabled(False), NoValueReads():
        for _ in range(2):  # the second step has the momentum buffers
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(images)


def test_the_mode_catches_host_data_and_generator_offsets():
    """The oracle for the other two stalls: torch.tensor of a list, and a generator's offset read or set."""
    with pytest.raises(AssertionError, match="lift_fresh"):
        with NoValueReads():
            torch.tensor([0, 4])
    with NoValueReads():  # a scalar set into a tensor is no host data
        torch.zeros(3)[1] = 2
    for touch in (lambda g: g.get_offset(), lambda g: g.set_offset(0)):
        generator = torch.Generator()
        with pytest.raises(AssertionError, match="get_offset|set_offset"):
            with NoValueReads():
                with contextlib.suppress(RuntimeError):  # a CPU generator has no offset: the call is what counts
                    touch(generator)


def test_draw_state_is_reserved_atomically_across_threads():
    """Two threads drawing 10,000 states each (the C++ entries release the GIL, so they do interleave) get
    20,000 distinct counters, exactly those one thread draws from the same generator state: nothing is drawn
    twice or lost (CPU here; a GPU run of this file checks the CUDA generator too)."""
    from cifarops.philox import draw_state

    for device in DEVICES:
        if device == "cuda":
            torch.cuda.init()  # so that torch.cuda.manual_seed applies now, not at a later lazy initialisation
        draws = 10_000
        torch.manual_seed(123)
        if device == "cuda":
            torch.cuda.manual_seed(123)
        alone = torch.stack([draw_state(torch.device(device), 3) for _ in range(2 * draws)]).cpu()
        torch.manual_seed(123)
        if device == "cuda":
            torch.cuda.manual_seed(123)
        results = [[], []]
        start = threading.Barrier(2)

        def work(out):
            start.wait()
            out.extend(draw_state(torch.device(device), 3) for _ in range(draws))

        threads = [threading.Thread(target=work, args=(r,)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        together = torch.stack(results[0] + results[1]).cpu()
        key = lambda states: sorted(map(tuple, states.tolist()))  # noqa: E731
        assert len(set(key(together))) == 2 * draws, device
        assert key(together) == key(alone), device


def test_the_mode_catches_a_value_read():
    """The oracle itself: a read of a tensor's value is what the mode fails on."""
    t = torch.ones(3, requires_grad=True)
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        with NoValueReads():
            if (t * 2).sum() > 0:
                pass


@pytest.mark.parametrize("check_values", [False, True], ids=["default", "CIFAROPS_CHECK_VALUES=1"])
def test_explicit_draws_on_a_device_are_read_only_when_asked(monkeypatch, check_values):
    """The GPU path of explicit FMP draws, on the meta device (not the CPU, whose ops read the values in C++):
    by default nothing is read back; CIFAROPS_CHECK_VALUES=1 (F.CHECK_DEVICE_VALUES) checks the values, a read."""
    monkeypatch.setattr(F, "CHECK_DEVICE_VALUES", check_values)
    h = torch.randn(2, 4, 9, 9, device="meta", requires_grad=True)
    samples = torch.rand(2, 4, 2, device="meta")
    boundaries = torch.zeros(2, 4, 2, 7, dtype=torch.int64, device="meta")
    for call in (lambda: F.fractional_max_pool2d(h, 2, output_size=(6, 6), _random_samples=samples),
                 lambda: cifarops.FractionalMaxPool2d(2, output_size=6, _random_samples=samples)(h),
                 lambda: F.fractional_max_pool2d(h, output_size=(6, 6), regions="disjoint", boundaries=boundaries)):
        if check_values:
            with pytest.raises(AssertionError, match="_local_scalar_dense"):
                with NoValueReads():
                    call()
        else:
            with NoValueReads():
                assert call().shape == (2, 4, 6, 6)
