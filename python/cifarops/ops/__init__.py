"""torch.library registrations (fake kernels, autograd formulas, Triton ops), one module per op.

Importing this package registers everything; `cifarops` imports it.
"""

from cifarops.ops import fractional_max_pool2d, maxout, shake_drop, shake_shake, stochastic_depth  # noqa: F401
from cifarops.ops import drop_activation, stochastic_pool2d  # noqa: F401
