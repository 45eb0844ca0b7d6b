"""Automation for trio_hub: `nox` runs the tests, the linter and the type checker.

Modelled on urllib3's noxfile: one shared install helper, separate sessions.
Sessions that need Debian packages (redis-server, chromium) ask for them with
`require_system_packages()`, which installs what is missing when it can (root
and apt-get) and otherwise stops the session at once, naming what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess

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


# A Debian package counts as installed if dpkg says so, or, where there is no
# dpkg, if the command that the tests run from it is on the PATH.
PACKAGE_COMMANDS: dict[str, str] = {
    "redis-server": "redis-server",  # tests/redis_server.py, bench/scaleout.py
    "chromium": "chromium",  # tests/test_browser.py drives /usr/bin/chromium
    "golang-go": "go",
}
_apt_updated = False


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query"):
        status = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if status.returncode == 0 and status.stdout.endswith(" installed"):
            return True
    command = PACKAGE_COMMANDS.get(package)
    return command is not None and shutil.which(command) is not None


def require_system_packages(session: nox.Session, *packages: str) -> None:
    """Make sure these Debian packages are installed, before the session needs them.

    What is missing is installed with apt-get when we are root and apt-get is
    there (`apt-get update` once per nox run). Otherwise, or if apt-get fails
    (no network), the session stops now with one message naming what to
    install, instead of failing later deep inside a test.
    """
    global _apt_updated
    missing = [package for package in packages if not _installed(package)]
    if not missing:
        return
    command = f"apt-get install -y --no-install-recommends {' '.join(missing)}"
    can_install = shutil.which("apt-get") is not None and os.geteuid() == 0
    if not can_install:
        session.error(
            f"this session needs Debian packages that are not installed: "
            f"{', '.join(missing)}. Install them (as root: {command}), then run nox again"
        )
    session.log(f"installing the Debian packages {', '.join(missing)}")
    environment = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        if not _apt_updated:
            session.run("apt-get", "update", "-qq", external=True, env=environment)
            _apt_updated = True
        session.run(*command.split(), "-qq", external=True, env=environment)
    except nox.command.CommandFailed:
        session.error(
            f"could not install {', '.join(missing)} with apt-get (see its output above; "
            f"no network?); install them yourself ({command}) and run nox again"
        )
    still_missing = [package for package in missing if not _installed(package)]
    if still_missing:
        session.error(f"apt-get ran, but {', '.join(still_missing)} is still missing")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass extra pytest arguments after --)."""
    require_system_packages(session, "redis-server", "chromium")
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
    """Run the fan-out, scale-out and recovery benchmarks; `-- --quick` is CI's smoke test.

    `--quick` runs the closed and the open loop briefly against every peer, the Go
    gorilla Hub/Client included (built from Debian packages, installed here if missing).
    """
    # redis-server: bench/scaleout.py; Go and gorilla: the Go peers (GOPATH mode).
    require_system_packages(
        session, "redis-server", "golang-go", "golang-github-gorilla-websocket-dev"
    )
    """Run the fan-out, scale-out and presence benchmarks; `-- --quick` is CI's smoke test."""
    install_groups(session, "bench", editable=False)
    session.install(".[redis]")  # bench/scaleout.py runs nodes on Redis (needs redis-server)
    args = session.posargs or ["--quick"]
    session.run("python", "bench/run.py", *args)
    # The other arguments are run.py's; run `python bench/scaleout.py --help` for its own.
    session.run("python", "bench/scaleout.py", *(["--quick"] if "--quick" in args else []))
    # History and recovery: bench/recovery.py --help for its own arguments.
    session.run("python", "bench/recovery.py", *(["--quick"] if "--quick" in args else []))
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
