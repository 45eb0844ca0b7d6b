"""Backends that carry broadcasts and publications between hub processes.

The default, :class:`MemoryBackend`, keeps everything in the process (and does
nothing at all). :mod:`trio_hub.backends.redis` shares them over Redis pub/sub,
so that several hub processes behind a load balancer act as one.
"""

from .._presence import PresenceSink as PresenceSink
from .._presence import PresenceStore as PresenceStore
from ._base import Backend as Backend
from ._base import BackendSink as BackendSink
from ._base import BackendStatistics as BackendStatistics
from ._base import BackendUnavailableError as BackendUnavailableError
from ._base import MemoryBackend as MemoryBackend

__all__ = [
    "Backend",
    "BackendSink",
    "BackendStatistics",
    "BackendUnavailableError",
    "MemoryBackend",
    "PresenceSink",
    "PresenceStore",
]
