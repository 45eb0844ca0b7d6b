"""Shared fixtures: a hub on in-memory connections, and a log capture helper."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from .redis_server import RedisServer

# CI runs more examples than a quick local run; both are deterministic per seed.
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The reliability suite (tests/reliability) runs for tens of seconds to minutes:
# it has its own session, `nox -s reliability`, and stays out of a plain
# `pytest`. Naming it, as in `pytest tests/reliability`, still runs it.
collect_ignore = ["reliability"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port for one test, killed afterwards."""
    with RedisServer() as server:
        yield server
