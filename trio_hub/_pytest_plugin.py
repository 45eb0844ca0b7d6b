"""pytest fixtures for applications that use trio_hub, registered as a pytest plugin.

Installing trio_hub makes these fixtures available in every test session (the
plugin is registered through the ``pytest11`` entry point, as pytest-trio is):

* ``recording_broadcaster``: a fresh :class:`~trio_hub.testing.RecordingBroadcaster`.
* ``hub``: an open :class:`~trio_hub.Hub` (needs pytest-trio; async tests only).
* ``hub_client``: a factory that connects an in-memory
  :class:`~trio_hub.testing.MemoryClient` to ``hub``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import pytest

from ._hub import Hub, open_hub
from .testing import MemoryClient, RecordingBroadcaster, memory_connection

__all__ = ["HubClientFactory"]


class HubClientFactory(Protocol):
    """The type of the ``hub_client`` fixture."""

    def __call__(
        self, *, topics: Iterable[str] = (), identity: object = None, wire_capacity: int = 16
    ) -> MemoryClient:
        """Register a new in-memory client with ``hub`` and return its browser end."""
        ...


@pytest.fixture
def recording_broadcaster() -> RecordingBroadcaster:
    """A :class:`~trio_hub.testing.RecordingBroadcaster` that starts empty."""
    return RecordingBroadcaster()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    """An open hub with default settings, shut down after the test."""
    async with open_hub() as opened:
        yield opened


@pytest.fixture
def hub_client(hub: Hub) -> HubClientFactory:
    """A factory of in-memory clients registered with the ``hub`` fixture."""

    def connect(
        *, topics: Iterable[str] = (), identity: object = None, wire_capacity: int = 16
    ) -> MemoryClient:
        transport, client = memory_connection(wire_capacity=wire_capacity)
        hub.register(transport, topics=topics, identity=identity)
        return client

    return connect
