"""Automation for trio_hub: `nox` runs the tests, the linter and the type checker.

Modelled on urllib3's noxfile: one shared install helper, separate sessions.
"""

from __future__ import annotations

import nox

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


def install_groups(session: nox.Session, *groups: str, editable: bool = True) -> None:
    """Install the project and the named dependency groups from pyproject.toml."""
    requirements: list[str] = []
    for group in groups:
        requirements.extend(nox.project.dependency_groups(PYPROJECT, group))
    project = ["-e", "."] if editable else ["."]
    session.install(*project, *requirements)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass extra pytest arguments after --)."""
    install_groups(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff's linter and format check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Run mypy in strict mode over the package and the tests."""
    install_groups(session, "typecheck", "test")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the fan-out, scale-out and presence benchmarks; `-- --quick` is CI's smoke test."""
    install_groups(session, "bench", editable=False)
    session.install(".[redis]")  # bench/scaleout.py runs nodes on Redis (needs redis-server)
    args = session.posargs or ["--quick"]
    session.run("python", "bench/run.py", *args)
    # The other arguments are run.py's; run `python bench/scaleout.py --help` for its own.
    session.run("python", "bench/scaleout.py", *(["--quick"] if "--quick" in args else []))
    # Presence: CPU per join/leave with many subscribers, one node and over Redis.
    session.run("python", "bench/presence.py", *(["--quick"] if "--quick" in args else []))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs; every warning is an error, and every reference must resolve."""
    install_groups(session, "docs")
    session.run("sphinx-build", "-W", "-n", "-b", "html", "docs", "docs/_build/html")


@nox.session
def reliability(session: nox.Session) -> None:
    """Run tests/reliability: short mode; `-- --reliability-mode=long` for releases."""
    install_groups(session, "test")
    session.run("pytest", "tests/reliability", *session.posargs)
