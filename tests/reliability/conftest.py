"""The reliability suite's two modes: ``short`` (CI, the default) and ``long`` (releases).

Choose with ``pytest tests/reliability --reliability-mode=long`` or with the
environment variable ``TRIO_HUB_RELIABILITY=long`` (the option wins). Each
scenario reads its sizes from the ``mode`` fixture, so the two modes run the
same code with different numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

MODES = ("short", "long")
ENVIRONMENT_VARIABLE = "TRIO_HUB_RELIABILITY"
HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-mode",
        choices=MODES,
        default=None,
        help=f"short (CI) or long (release checks); default ${ENVIRONMENT_VARIABLE} or short",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Mode:
    """How hard each scenario pushes."""

    name: str
    churn_cycles: int
    churn_warmup: int
    churn_workers: int
    slow_messages: int
    fault_rounds: int
    fuzz_examples: int
    fuzz_connections: int
    time_limit: float  # seconds, for any one test


SHORT = Mode(
    name="short",
    churn_cycles=1_000,
    churn_warmup=200,
    churn_workers=16,
    slow_messages=1_500,
    fault_rounds=60,
    fuzz_examples=150,
    fuzz_connections=6,
    time_limit=60.0,
)
LONG = Mode(
    name="long",
    churn_cycles=10_000,
    churn_warmup=1_000,
    churn_workers=16,
    slow_messages=8_000,
    fault_rounds=1_000,
    fuzz_examples=2_000,
    fuzz_connections=12,
    time_limit=900.0,
)


def mode_of(config: pytest.Config) -> Mode:
    chosen = config.getoption("--reliability-mode", default=None)
    name = chosen or os.environ.get(ENVIRONMENT_VARIABLE, "short")
    if name not in MODES:
        raise pytest.UsageError(f"{ENVIRONMENT_VARIABLE} must be one of {MODES}, got {name!r}")
    return LONG if name == "long" else SHORT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-timeout's global limit is a backstop for hangs; the long mode runs
    # for minutes on purpose. Each test's own trio.fail_after stays the real limit.
    limit = mode_of(config).time_limit + 60
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.timeout(limit))


_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report one scenario's figures: printed, and repeated in the terminal summary."""
    lines = request.config.stash.setdefault(_FIGURES, [])

    def report(line: str) -> None:
        print(line)
        lines.append(line)

    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section(f"reliability figures ({mode_of(config).name} mode)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def mode(request: pytest.FixtureRequest) -> Mode:
    """The sizes for this run: short unless asked for long."""
    return mode_of(request.config)
