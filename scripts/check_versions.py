"""Whether this Python's torch and triton lie in the range pyproject.toml claims (the one that
scripts/check_torch_versions.sh proves). Prints one line and exits 0 if so, 1 if not: scripts/gpu_check.sh runs
it before it spends device time on a build. Reads only the standard library and the two packages' versions.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import sys

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.11.0+cu130' -> (2, 11, 0), '3.6.0rc1' -> (3, 6, 0)."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    if numbers is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(n) for n in numbers.group(0).split("."))


def claimed(package: str, text: str) -> list[tuple[str, tuple[int, ...]]]:
    """The (operator, version) bounds of the first requirement on `package` in pyproject.toml's text."""
    found = re.search(rf'"{package}((?:\s*[<>=!]=?\s*[\d.]+\s*,?)+)"', text)
    if found is None:
        raise ValueError(f"pyproject.toml states no version range for {package}")
    return [(op, release(v)) for op, v in re.findall(r"([<>=!]=?)\s*([\d.]+)", found.group(1))]


def satisfies(version: tuple[int, ...], bounds) -> bool:
    def pad(v):
        return v + (0,) * (3 - len(v))

    v = pad(version)
    checks = {">=": lambda b: v >= b, ">": lambda b: v > b, "<": lambda b: v < b, "<=": lambda b: v <= b,
              "==": lambda b: v == b, "!=": lambda b: v != b}
    return all(checks[op](pad(bound)) for op, bound in bounds)


def main() -> int:
    text = PYPROJECT.read_text()
    problems, found = [], []
    for package in ("torch", "triton"):
        bounds = claimed(package, text)
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{package} is not installed")
            continue
        spec = ",".join(f"{op}{'.'.join(map(str, b))}" for op, b in bounds)
        found.append(f"{package} {version}")
        if not satisfies(release(version), bounds):
            problems.append(f"{package} {version} is outside the proven range {package}{spec}")
    if problems:
        print(f"versions: {'; '.join(problems)} (pyproject.toml; scripts/check_torch_versions.sh proves the range)")
        return 1
    print(f"versions: {', '.join(found)}: within pyproject.toml's range")
    return 0


if __name__ == "__main__":
    sys.exit(main())
