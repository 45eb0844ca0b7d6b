"""pytest fixtures for applications that use trio_hub, registered as a pytest plugin.

Installing trio_hub makes these fixtures available in every test session (the
plugin is registered through the ``pytest11`` entry point, as pytest-trio is):

* ``recording_broadcaster``: a fresh :class:`~trio_hub.testing.RecordingBroadcaster`.
* ``hub``: an open :class:`~trio_hub.Hub`, shut down after the test. It needs
  pytest-trio, so only async (Trio) tests can use it.
* ``hub_client``: a factory that connects an in-memory
  :class:`~trio_hub.testing.MemoryClient` to ``hub``; see
  :meth:`~trio_hub.testing.TestHub.connect` for its arguments, and annotate it
  with :class:`~trio_hub.testing.HubClientFactory`.
* ``hub_settings``: the :func:`~trio_hub.open_hub` settings of ``hub``, empty
  (the defaults) unless you override this fixture in your ``conftest.py`` or
  test module.

Run ``pytest -p no:trio_hub`` to switch the plugin off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._hub import Hub
from .testing import (
    HubClientFactory,
    HubSettings,
    RecordingBroadcaster,
    TestHub,
    open_test_hub,
)

# Fixtures only: pytest finds them by name, nothing here is imported.
__all__: list[str] = []


@pytest.fixture
def recording_broadcaster() -> RecordingBroadcaster:
    """A :class:`~trio_hub.testing.RecordingBroadcaster` that starts empty."""
    return RecordingBroadcaster()


@pytest.fixture
def hub_settings() -> HubSettings:
    """The settings that the ``hub`` fixture passes to :func:`~trio_hub.open_hub`.

    Override it to configure ``hub``, for example::

        @pytest.fixture
        def hub_settings() -> HubSettings:
            return {"on_message": my_app.on_message, "queue_size": 8}
    """
    return {}


@pytest.fixture
async def hub(hub_settings: HubSettings) -> AsyncIterator[Hub]:
    """An open hub with ``hub_settings``, shut down (with 1001 to each client) after the test."""
    async with open_test_hub(**hub_settings) as test_hub:
        yield test_hub.hub


@pytest.fixture
def hub_client(hub: Hub) -> HubClientFactory:
    """A factory of in-memory clients registered with the ``hub`` fixture.

    Call it as ``hub_client(topics=..., identity=..., info=..., on_message=...,
    wire_capacity=...)``; see :meth:`trio_hub.testing.TestHub.connect`.
    """
    return TestHub(hub).connect
