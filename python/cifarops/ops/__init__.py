"""torch.library registrations (fake kernels, autograd formulas, Triton ops), one module per op.

Importing this package registers everything; `cifarops` imports it.
"""

from cifarops.ops import maxout, shake_drop, shake_shake  # noqa: F401
