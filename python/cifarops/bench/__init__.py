"""The benchmark report (python -m cifarops.bench)."""
