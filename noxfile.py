"""Automation for trio_hub: `nox` runs the tests, the linter and the type checker.

Modelled on urllib3's noxfile: one shared install helper, separate sessions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


# Debian packages the bench's Go peers build from (GOPATH mode, nothing downloaded),
# each with a path that is there once it is installed.
BENCH_SYSTEM_PACKAGES = {
    "golang-go": Path("/usr/bin/go"),
    "golang-github-gorilla-websocket-dev": Path(
        "/usr/share/gocode/src/github.com/gorilla/websocket"
    ),
}


def install_system_packages(session: nox.Session, packages: dict[str, Path]) -> None:
    """apt-get install the Debian packages whose marker path is missing.

    A minimal version, for the bench session; as root it runs apt-get directly,
    otherwise through `sudo -n`, and it fails the session if neither can.
    """
    missing = [name for name, marker in packages.items() if not marker.exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        session.error(f"apt-get not found; install these Debian packages: {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run(*sudo, "apt-get", "update", "-qq", external=True, env=env)
    session.run(
        *sudo,
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        *missing,
        external=True,
        env=env,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run the fan-out and scale-out benchmarks; `nox -s bench -- --quick` is CI's smoke test.

    `--quick` runs the closed and the open loop briefly against every peer, the Go
    gorilla Hub/Client included (built from Debian packages, installed here if missing).
    """
    install_system_packages(session, BENCH_SYSTEM_PACKAGES)
    install_groups(session, "bench", editable=False)
    session.install(".[redis]")  # bench/scaleout.py runs nodes on Redis (needs redis-server)
    args = session.posargs or ["--quick"]
    session.run("python", "bench/run.py", *args)
    # The other arguments are run.py's; run `python bench/scaleout.py --help` for its own.
    session.run("python", "bench/scaleout.py", *(["--quick"] if "--quick" in args else []))


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
