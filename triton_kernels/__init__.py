"""Triton kernels of cifarops, installed as `cifarops.triton_kernels` (never a top-level package:
that name is taken on PyPI). One file per op: `_<op>_kernel` (@triton.jit) and its launcher."""
