"""The command line of ``python -m cifarops.train``: arguments, every check of the input (before anything is
written to the output directory), the model, then :func:`cifarops.train.engine.fit`.

Under ``torchrun`` (``WORLD_SIZE`` set) it trains data parallel. Every rank runs every check before joining
the process group; then the ranks agree collectively (one all-reduce of a failure count), so that a check
that fails on one rank only (a file another node cannot see) stops every rank with an error instead of
leaving the others waiting in their first collective."""

from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Optional, Sequence

from typing import NamedTuple

import torch
import torch.distributed as dist

import cifarops
from cifarops import distributed as D
from cifarops.train.data import DATASETS, Cifar, DataError, load_cifar
from cifarops.train.engine import AMP_DTYPES, CHECKPOINT_FILE, LOG_FILE, Options, check_resume, fit, has_fmp
from cifarops.train.monitor import Progress, check_tensorboard

CHECKPOINT_MODES = ("none", "full", "selective", "cheap")
GRAHAM_DRAWS = 12  # Graham's test-time averaging of the FMP network (arXiv 1412.6071)


class UsageError(ValueError):
    """Bad input to the training command: reported as one line, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cifarops.train",
        description="Train a cifarops zoo model on CIFAR-10/100 from the official python-format archive.")
    add = parser.add_argument
    add("--data", help="cifar-10-python.tar.gz / cifar-100-python.tar.gz, or the extracted folder")
    add("--dataset", choices=sorted(DATASETS), help="default: cifar10, or cifar100 when the --data name says so")
    add("--model", help=f"one of {cifarops.models.names()}")
    add("--model-arg", action="append", default=[], metavar="KEY=VALUE",
        help="override a hyper-parameter of the model (repeatable), e.g. depth=20")
    add("--num-classes", type=int, help="checked against the dataset (10 or 100)")
    add("--checkpoint", default="none", choices=CHECKPOINT_MODES, help="activation checkpointing of the blocks")
    add("--epochs", type=int, default=300)
    add("--batch-size", type=int, default=128,
        help="the global batch: under torchrun each of the N ranks trains on batch-size / N images a step "
             "(N must divide it), so the same value gives the same run length and schedule on any N")
    add("--eval-batch-size", type=int, default=500)
    add("--lr", type=float, default=0.1, help="base learning rate")
    add("--momentum", type=float, default=0.9, help="Nesterov momentum")
    add("--weight-decay", type=float, default=1e-4)
    add("--schedule", default="cosine", choices=("cosine", "step"))
    add("--milestones", type=int, nargs="*", default=None,
        help="step schedule: epochs at which the rate is multiplied by --gamma (default: 50%% and 75%% of --epochs)")
    add("--gamma", type=float, default=0.1)
    add("--warmup-epochs", type=int, default=0, help="linear warm-up epochs before the schedule")
    add("--amp", default="none", choices=tuple(AMP_DTYPES), help="autocast dtype (fp16 adds a GradScaler)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    add("--compile", action=argparse.BooleanOptionalAction, default=False,
        help="torch.compile the model for training and evaluation (the first steps compile: minutes on a CPU)")
    add("--tensorboard", action=argparse.BooleanOptionalAction, default=False,
        help="also write each epoch's loss, accuracy, learning rate, images/s and peak memory to OUT/tensorboard "
             "(needs the tensorboard package; view with: tensorboard --logdir OUT)")
    add("--padding", type=int, default=4, help="random-crop zero padding (0: no crop)")
    add("--no-flip", dest="flip", action="store_false", help="no random horizontal flip")
    add("--cutout", type=int, default=0, help="Cutout square size (0: off; 16 is DeVries and Taylor's CIFAR-10)")
    add("--fmp-draws", type=int, default=None,
        help=f"final evaluation: average over this many FMP draws (models with FMP layers; default {GRAHAM_DRAWS})")
    add("--device", default=None,
        help="default: cuda when available, else cpu; under torchrun cpu or cuda (rank r uses cuda:LOCAL_RANK)")
    add("--seed", type=int, default=0,
        help="weights, data order and noise; under torchrun each rank's noise and augmentation derive from "
             "(seed, epoch, rank)")
    add("--out", default="runs/train", help="output directory: checkpoint.pt and log.json (plot it: python -m "
                                            "cifarops.train.plot OUT)")
    add("--resume", default=None, metavar="PATH", help="continue from a checkpoint.pt (its arguments are the defaults)")
    add("--stop-after", type=int, default=None, metavar="EPOCHS", help="stop after this many epochs (resume later)")
    add("--overwrite", action="store_true", help="start afresh in an --out that already holds a run")
    return parser


def parse_model_args(pairs: Sequence[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-arg must be KEY=VALUE with KEY a Python name, got {pair!r}")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text  # a bare word, e.g. level=sample
    return overrides


def _load_resume(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"--resume: {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: any unpickling failure
        raise UsageError(f"--resume: {path!r} is not a readable checkpoint "
                         f"({type(error).__name__}: {error})") from error


def parse(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, Optional[dict]]:
    """The arguments, and the checkpoint to resume from. With --resume, the checkpoint's stored arguments
    are the defaults and the command line overrides them."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume is not None:
        checkpoint = _load_resume(args.resume)
        stored = checkpoint.get("arguments") if isinstance(checkpoint, dict) else None
        if not isinstance(stored, dict):
            raise UsageError(f"--resume: {args.resume!r} is not a cifarops.train checkpoint")
        # argparse fills in defaults only for names the namespace lacks: the stored ones win over defaults
        stored = {k: v for k, v in stored.items() if k not in ("resume", "stop_after", "overwrite")}
        args = parser.parse_args(argv, namespace=argparse.Namespace(**stored))
    return args, checkpoint


def _check_options(args: argparse.Namespace) -> None:
    positive = ("epochs", "batch_size", "eval_batch_size")
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("lr", "weight_decay", "warmup_epochs", "padding", "cutout"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0 < args.momentum < 1:
        raise UsageError(f"--momentum must be in (0, 1) for Nesterov, got {args.momentum}")
    if args.warmup_epochs >= args.epochs:
        raise UsageError(f"--warmup-epochs ({args.warmup_epochs}) must be less than --epochs ({args.epochs})")
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError(f"--stop-after must be at least 1, got {args.stop_after}")
    if args.fmp_draws is not None and args.fmp_draws < 1:
        raise UsageError(f"--fmp-draws must be at least 1, got {args.fmp_draws}")
    if args.milestones is not None and any(not 0 < m < args.epochs for m in args.milestones):
        raise UsageError(f"--milestones must lie between 0 and --epochs ({args.epochs}), got {args.milestones}")


def _world_size() -> Optional[int]:
    """torchrun's WORLD_SIZE, or None outside torchrun."""
    text = os.environ.get("WORLD_SIZE")
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"the WORLD_SIZE environment variable must be a positive int, got {text!r}")
    return int(text)


def _device(name: Optional[str], world_size: Optional[int] = None) -> torch.device:
    if world_size is not None and name is not None and name not in ("cpu", "cuda"):
        raise UsageError(f"--device under torchrun must be cpu or cuda (rank r uses cuda:LOCAL_RANK), got {name!r}")
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {name!r}")
    return device


class Run(NamedTuple):
    """Everything :func:`fit` needs, built and checked."""
    model: torch.nn.Module
    data: Cifar
    options: Options
    out: str
    run_info: dict
    device: torch.device
    checkpoint: Optional[dict]


def prepare(argv: Optional[Sequence[str]], world_size: Optional[int] = None) -> Run:
    """Parses and checks every argument, reads the data and builds the model; writes nothing. Raises
    :class:`UsageError` (or the data module's DataError, both ValueErrors) for bad input. ``world_size``: the
    number of data-parallel ranks (None outside torchrun)."""
    args, checkpoint = parse(argv)
    if args.model is None or args.data is None:
        raise UsageError("--model and --data are required (or --resume with a checkpoint that names them)")
    if args.model not in cifarops.models.names():
        raise UsageError(f"--model: unknown model {args.model!r}; choose from {cifarops.models.names()}")
    _check_options(args)
    if world_size is not None:
        if args.batch_size % world_size:
            raise UsageError(f"--batch-size {args.batch_size} (the global batch) must be a multiple of the "
                             f"{world_size} ranks")
        if args.seed < 0:
            raise UsageError(f"--seed must not be negative under torchrun (rank seeds derive from it), got {args.seed}")
    if args.tensorboard:
        try:
            check_tensorboard()
        except ModuleNotFoundError as error:
            resumed = " (or resume with --no-tensorboard)" if args.resume is not None else ""
            raise UsageError(f"{error}{resumed}") from error
    device = _device(args.device, world_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (the last incomplete batch is dropped)
    overrides = parse_model_args(args.model_arg)
    if args.dataset is None:
        args.dataset = "cifar100" if "cifar-100" in os.path.basename(os.path.normpath(args.data)) else "cifar10"
    data = load_cifar(args.data, args.dataset)
    if args.num_classes is not None and args.num_classes != data.num_classes:
        raise UsageError(f"--num-classes {args.num_classes} does not match {args.dataset}'s {data.num_classes} classes")
    model_args = {"num_classes": data.num_classes, "overrides": overrides}
    torch.manual_seed(args.seed)  # the model's initial weights
    try:
        model = cifarops.models.create(args.model, num_classes=data.num_classes, checkpoint=args.checkpoint,
                                       **overrides)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--model-arg {overrides} for {args.model}: {error}") from error
    fmp = has_fmp(model)
    if args.fmp_draws is not None and args.fmp_draws > 1 and not fmp:
        raise UsageError(f"--fmp-draws {args.fmp_draws}: {args.model} has no fractional max-pooling layer to average")
    if checkpoint is not None:
        try:
            check_resume(checkpoint, model, args.model, model_args)
        except ValueError as error:
            raise UsageError(str(error)) from error
        if checkpoint["epoch"] >= args.epochs:
            raise UsageError(f"--resume: the checkpoint has finished all {args.epochs} epochs "
                             "(raise --epochs to go on)")
    elif not args.overwrite and any(os.path.exists(os.path.join(args.out, f)) for f in (CHECKPOINT_FILE, LOG_FILE)):
        raise UsageError(f"--out {args.out!r} already holds a run: --resume {os.path.join(args.out, CHECKPOINT_FILE)} "
                         "to continue it, or --overwrite to start afresh")

    milestones = args.milestones if args.milestones is not None else [args.epochs // 2, args.epochs * 3 // 4]
    options = Options(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, milestones=list(milestones), gamma=args.gamma,
        warmup_epochs=args.warmup_epochs, amp=args.amp, channels_last=args.channels_last, padding=args.padding,
        flip=args.flip, cutout=args.cutout, compile=args.compile, tensorboard=args.tensorboard,
        fmp_draws=(args.fmp_draws or GRAHAM_DRAWS) if fmp else 1, eval_batch_size=args.eval_batch_size, stop_after=args.stop_after, seed=args.seed)
    arguments = {k: v for k, v in vars(args).items()}
    run_info = {"arguments": arguments, "model": args.model, "model_args": model_args, "dataset": args.dataset,
                "classes": data.class_names}
    return Run(model, data, options, args.out, run_info, device, checkpoint)


def main(argv: Optional[Sequence[str]] = None, progress: Optional[Progress] = None) -> dict:
    """Runs a training from command-line arguments; returns the log. Raises :class:`UsageError` (or the
    data module's DataError, both ValueErrors) for bad input, before the output directory is touched.
    Under torchrun it joins the process group (unless already joined, which it then leaves joined) and
    trains data parallel; bad input on any rank is an error on every rank."""
    world_size = _world_size()
    if world_size is None:
        run = prepare(argv)
        return fit(run.model.to(run.device), run.data, run.options, run.out, run_info=run.run_info,
                   device=run.device, resume=run.checkpoint, progress=progress)
    run, failure = None, None
    try:
        run = prepare(argv, world_size)
    except ValueError as error:  # UsageError, DataError: every rank must still reach the agreement below
        failure = error
    joined = dist.is_initialized()
    ctx = D.init_distributed(use_cuda=None if run is None else run.device.type == "cuda")
    try:
        failures = torch.tensor([int(failure is not None)], device=ctx.device)
        dist.all_reduce(failures)
        if failure is not None:
            raise failure
        if failures.item():
            raise UsageError(f"bad input on {failures.item()} of the {ctx.world_size} ranks (their errors say "
                             "what); nothing was written")
        return fit(run.model.to(ctx.device), run.data, run.options, run.out, run_info=run.run_info,
                   device=ctx.device, resume=run.checkpoint, progress=progress, ctx=ctx)
    finally:
        if not joined:
            dist.destroy_process_group()


def console(argv: Optional[Sequence[str]] = None) -> int:
    """The entry point: bad input is one line on stderr and exit status 2."""
    try:
        main(argv)
    except (UsageError, DataError) as error:  # the messages name the argument; anything else keeps its traceback
        print(f"python -m cifarops.train: error: {error}", file=sys.stderr)
        return 2
    return 0
