"""The documentation is code: every Python block of README.md and docs/*.md runs, in a fresh interpreter (shrunk
where SHRINK says); every command line of their shell blocks is run by a named test in a shrunk form (RUN_BY) or
listed with the reason it is not (NOT_RUN); every link to a file of the repository resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELLS = {"bash", "sh", "shell", "console"}

# Replacements that shrink a block where it would be slow: (page, text) -> [(old, new)]. Every old must occur.
SHRINK: dict[tuple[str, str], list[tuple[str, str]]] = {}

# Each shell command line of the docs -> the test that runs its shrunk form.
RUN_BY = {
    "python -m cifarops.train --data ~/data/cifar-10-python.tar.gz --model pyramidnet272-a200-shakedrop --out runs/pn272":
        "tests/test_train.py::test_command_line_trains_cifar100_and_logs_what_the_weights_score",
    "python -m cifarops.train --resume runs/pn272/checkpoint.pt":
        "tests/test_train.py::test_resume_gives_the_uninterrupted_run_bitwise",
    "bash examples/train_pyramidnet_shakedrop.sh ~/data/cifar-100-python.tar.gz runs/pn272-c100":
        "tests/test_examples.py::test_training_script_runs_two_tiny_epochs",
    "torchrun --nproc-per-node 8 -m cifarops.train --data ~/data/cifar-10-python.tar.gz --model shake-shake26-2x96d --out runs/ss":
        "tests/test_examples.py::test_ddp_training_script_runs_on_two_cpu_processes",
    "python -m cifarops.train.plot runs/pn272 runs/pn272-c100 --out runs/compare.png":
        "tests/test_train_plot.py::test_the_command_writes_one_picture_of_all_runs",
    "bash examples/train_digits.sh runs/digits":
        "tests/test_examples.py::test_digits_training_script_trains_both_runs_and_plots_them",
    "torchrun --nproc-per-node 2 examples/pipeline_gpipe.py":
        "tests/test_examples.py::test_pipeline_example_trains",
    "python -m cifarops.bench.processes --cache-off":
        "tests/test_cpu_cache.py::test_the_five_process_benchmark_reports_each_process",
}
# ... or the reason no test runs it.
NOT_RUN = {
    "bash scripts/bench.sh": "the main job itself, minutes long: CI (.ci/run) runs its --quick form, "
                             "python -m cifarops.bench --quick, and tests/test_bench.py its sections",
    "bash scripts/test.sh": "the test command itself: CI (.ci/run) runs it",
    "pip install --no-build-isolation .": "CI's set-up runs its editable form (scripts/setup_env.sh); "
                                          "tests/test_build.py tests setup.py's switches",
}


def _blocks(languages) -> list[tuple[str, int, str]]:
    """(page relative to the repository, line of the fence, body) of every block in `languages`."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in languages:
                found.append((str(page.relative_to(ROOT)), text[: match.start()].count("\n") + 1, match.group(2)))
    return found


def _command_lines(body: str) -> list[str]:
    """The commands of a shell block: comments dropped, continued lines joined."""
    commands, pending = [], ""
    for line in body.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append(pending + line)
        pending = ""
    return commands


PYTHON_BLOCKS = _blocks({"python"})


def test_the_docs_have_the_blocks_these_tests_read():
    assert len(PYTHON_BLOCKS) >= 5 and any(page == "README.md" for page, _, _ in PYTHON_BLOCKS)
    for (page, text), replacements in SHRINK.items():
        body = next(body for p, _, body in PYTHON_BLOCKS if p == page and text in body)
        assert all(old in body for old, _ in replacements), (page, text)


@pytest.mark.parametrize("page, line, body", PYTHON_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in PYTHON_BLOCKS])
def test_python_block_runs(page, line, body, tmp_path):
    for (where, text), replacements in SHRINK.items():
        if where == page and text in body:
            for old, new in replacements:
                body = body.replace(old, new)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{page}:{line}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def test_every_command_line_is_run_by_a_test_or_says_why_not():
    seen = set()
    for page, line, body in _blocks(SHELLS):
        for command in _command_lines(body):
            seen.add(command)
            assert command in RUN_BY or command in NOT_RUN, f"{page}:{line}: {command!r} is neither run nor listed"
    assert seen == set(RUN_BY) | set(NOT_RUN), f"listed but no longer in the docs: {set(RUN_BY) | set(NOT_RUN) - seen}"
    for command, test in RUN_BY.items():
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{command!r}: no test {test}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_to_a_file_of_the_repository_resolves(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists() and ROOT in path.parents, f"{page.name}: {target} does not resolve inside the repository"


def test_the_readme_is_a_door_not_a_manual():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    first = next(body for page, _, body in _blocks(SHELLS) if page == "README.md")  # the README starts with them
    assert _command_lines(first) == ["bash scripts/bench.sh", "bash scripts/test.sh"]
    usage = next(body for page, _, body in PYTHON_BLOCKS if page == "README.md")
    assert len(usage.splitlines()) <= 30
