"""Training the zoo on CIFAR-10/100: ``python -m cifarops.train --data cifar-10-python.tar.gz --model NAME``.

``data`` reads the official python-format archive and augments batches on the device, ``engine`` trains
(:func:`~cifarops.train.engine.fit` takes a built model, single-process or data parallel), ``cli`` is
the command line (``--help``). Under ``torchrun --nproc-per-node N -m cifarops.train ...`` it trains data
parallel (DistributedDataParallel; ``--batch-size`` is the global batch). Examples with the papers'
hyper-parameters: ``examples/``.
"""

from cifarops.train.cli import main
from cifarops.train.data import Cifar, DataError, load_cifar
from cifarops.train.engine import Options, evaluate, fit

__all__ = ["Cifar", "DataError", "Options", "evaluate", "fit", "load_cifar", "main"]
