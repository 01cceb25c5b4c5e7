"""The torch range pyproject.toml claims, and the device check that reads it (scripts/check_versions.py, run by
scripts/gpu_check.sh before it builds anything)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("check_versions_under_test", ROOT / "scripts" / "check_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_claimed_range_is_the_one_check_torch_versions_proves():
    versions = _module()
    text = (ROOT / "pyproject.toml").read_text()
    assert versions.claimed("torch", text) == [(">=", (2, 11)), ("<", (2, 15))]
    script = (ROOT / "scripts" / "check_torch_versions.sh").read_text()
    assert "VERSIONS=(2.11.0 2.12.0 2.13.0 2.14.1)" in script  # one per minor release of the range


@pytest.mark.parametrize("version, inside", [
    ("2.11.0+cu130", True), ("2.12.0", True), ("2.13.0+cpu", True), ("2.14.1", True),
    ("2.10.2", False), ("2.15.0", False), ("3.0.0", False),
])
def test_torch_versions_inside_and_outside(version, inside):
    versions = _module()
    assert versions.satisfies(versions.release(version), [(">=", (2, 11)), ("<", (2, 15))]) is inside


def _fake_distribution(tmp_path, name, version):
    info = tmp_path / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_this_environment_is_inside_the_range():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_versions.py")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "within pyproject.toml's range" in result.stdout


def test_gpu_check_stops_before_the_build_on_an_unproven_torch(tmp_path):
    """An old torch on the device: one line naming it, exit 2, and nothing built or run."""
    site = tmp_path / "site"
    _fake_distribution(site, "torch", "2.10.0")
    env = {**os.environ, "PYTHONPATH": str(site), "OUT": str(tmp_path / "out")}
    bin_dir = pathlib.Path(sys.executable).parent  # `python` there is this interpreter
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "build"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "torch 2.10.0 is outside the proven range torch>=2.11,<2.15" in result.stdout
    assert "build with CUDA" not in result.stdout and not (tmp_path / "out" / "build.log").exists()
    assert result.stdout.strip().splitlines()[-1].startswith("==== gpu_check build stopped")
