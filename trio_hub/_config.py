"""The hub's settings, validated once in :func:`open_hub`."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from ._policy import SlowClientPolicy

if TYPE_CHECKING:
    from ._client import Client
    from ._history import HistoryPolicyFunction
    from ._message import Message

__all__ = ["HubConfig", "MessageHandler"]

MessageHandler: TypeAlias = "Callable[[Client, Message], Awaitable[None]]"
"""An async callable that receives each inbound message with its client."""


@dataclass(frozen=True, slots=True)
class HubConfig:
    queue_size: int
    max_queue_bytes: int | None
    on_slow_client: SlowClientPolicy
    ping_interval: float | None
    pong_timeout: float
    write_timeout: float
    drain_timeout: float
    close_timeout: float
    on_message: MessageHandler | None
    intake_limit: int | None = None
    # None: no topic has history.
    history: HistoryPolicyFunction | None = None
    max_history_topics: int = 10_000

    def __post_init__(self) -> None:
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {self.queue_size!r}")
        if self.max_queue_bytes is not None and (
            not isinstance(self.max_queue_bytes, int) or self.max_queue_bytes < 1
        ):
            raise ValueError(
                f"max_queue_bytes must be None or an int >= 1, got {self.max_queue_bytes!r}"
            )
        if self.intake_limit is not None and (
            not isinstance(self.intake_limit, int) or self.intake_limit < 1
        ):
            raise ValueError(f"intake_limit must be None or an int >= 1, got {self.intake_limit!r}")
        if not isinstance(self.on_slow_client, SlowClientPolicy):
            raise TypeError(
                f"on_slow_client must be a SlowClientPolicy, got {self.on_slow_client!r}"
            )
        if self.ping_interval is not None:
            _positive("ping_interval", self.ping_interval)
        _positive("pong_timeout", self.pong_timeout)
        _positive("write_timeout", self.write_timeout)
        _non_negative("drain_timeout", self.drain_timeout)
        _non_negative("close_timeout", self.close_timeout)
        if not isinstance(self.max_history_topics, int) or self.max_history_topics < 1:
            raise ValueError(
                f"max_history_topics must be an int >= 1, got {self.max_history_topics!r}"
            )


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
