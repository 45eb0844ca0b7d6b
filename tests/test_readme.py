"""The README's example runs, and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_example_runs() -> None:
    (example,) = python_blocks()
    result = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        'alice got {"type":"hello","payload":"everyone"}',
        'bob got {"type":"hello","payload":"everyone"}',
        'bob got {"type":"headline","payload":"trio_hub ships"}',
    ]


def test_ci_runs_the_readmes_test_command_as_written() -> None:
    # A new user runs the README's commands and nothing else, so CI does too.
    commands = re.findall(r"^    (python3 -m .*)$", README.read_text(), flags=re.MULTILINE)
    assert len(commands) == 2, commands  # set up and serve; set up and test
    (test_command,) = [command for command in commands if "nox" in command]
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
