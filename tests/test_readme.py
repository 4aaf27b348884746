"""README promises: the CI runs the README's test command, and the Python examples of the README
and of every page in docs/ run, each as its own program."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "export" / "README.md"]


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_gives_two_fresh_machine_commands_and_ci_runs_the_test_one():
    fresh = [b.strip() for b in _blocks("bash") if b.strip().startswith("python3 -m venv")]
    assert len(fresh) == 2, fresh
    demo_cmd, test_cmd = fresh
    assert demo_cmd.endswith("hashindex demo")
    assert "pytest" in test_cmd
    assert "-c constraints.txt" in demo_cmd and "-c constraints.txt" in test_cmd
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_readme_python_examples_run(tmp_path):
    # ```python blocks are complete programs and must run; ```py marks fragments that need
    # files the reader brings (a face model, images). The LFW example reads LFW_DEV.
    lfw = ROOT.parent / "shared" / "data" / "lfw" / "lfw_mfn128_dev.npz"
    assert lfw.exists(), f"{lfw} missing: clone the repository beside ../shared"
    env = {**os.environ, "LFW_DEV": str(lfw)}
    for code in _blocks("python"):
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
        )
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_docs_python_examples_run(page, tmp_path):
    # the same rule as the README: ```python blocks are complete programs (run in order, in one
    # working directory), ```py fragments; LFW_DIR points the export examples at ../shared
    blocks = _blocks("python", page.read_text())
    assert blocks or "```py\n" in page.read_text(), f"{page}: no examples to run"
    lfw = ROOT.parent / "shared" / "data" / "lfw"
    env = {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning", "LFW_DIR": str(lfw)}
    for i, code in enumerate(blocks):
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
        )
        assert proc.returncode == 0, f"{page.relative_to(ROOT)} example {i + 1}:\n{proc.stderr}"
