"""JSON encoding and decoding, in one place so that the codec is swappable.

The codec was chosen by measurement (``bench/bench_codec.py``): orjson encodes and
decodes several times faster than the standard library. Where orjson is lossy or
laxer than JSON allows, this module restores strictness:

* orjson writes NaN and infinities as ``null``; we reject them instead.
* orjson rejects integers outside 64 bits on encode; the standard library
  encodes them exactly, so we fall back to it for those payloads.
* orjson decodes integers outside 64 bits as floats, losing digits; we decode
  such documents with the standard library, which keeps them exact.
"""

from __future__ import annotations

import json
import math
from typing import Final

import orjson

from ._errors import InvalidJSONError, MessageEncodeError

__all__ = ["decode", "encode"]

_BIG_INT_ERROR: Final = "Integer exceeds 64-bit range"
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


def encode(value: object) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON, or raise :class:`MessageEncodeError`."""
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        if str(exc) != _BIG_INT_ERROR:
            raise MessageEncodeError(f"payload is not JSON-serializable: {exc}") from exc
        data = _encode_stdlib(value)
    if b"null" in data:
        # orjson writes non-finite floats as null. Only pay for the check when the
        # output could hold such a null.
        _reject_non_finite(value)
    return data


def _encode_stdlib(value: object) -> bytes:
    _reject_non_str_keys(value)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MessageEncodeError(f"payload is not JSON-serializable: {exc}") from exc


def _reject_non_finite(value: object) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MessageEncodeError(f"payload holds {value!r}, which JSON cannot represent")
    elif isinstance(value, dict):
        for item in value.values():
            _reject_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_non_finite(item)


def _reject_non_str_keys(value: object) -> None:
    # The standard library would silently turn int keys into strings.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MessageEncodeError(f"payload has a non-str dict key {key!r}")
            _reject_non_str_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_non_str_keys(item)


def decode(data: bytes | bytearray | memoryview | str) -> object:
    """Decode JSON bytes or text, or raise :class:`InvalidJSONError`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(f"invalid JSON: {exc}") from exc
    if _has_lossy_float(value):
        return _decode_stdlib(data)
    return value


def _has_lossy_float(value: object) -> bool:
    # orjson turns integer literals beyond 64 bits into floats. Any float that is
    # an integer of that size might be such a literal; re-decode exactly then.
    if isinstance(value, float):
        return value.is_integer() and not (_INT64_MIN <= value <= _UINT64_MAX)
    if isinstance(value, dict):
        return any(_has_lossy_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_lossy_float(item) for item in value)
    return False


def _decode_stdlib(data: bytes | bytearray | memoryview | str) -> object:
    text = bytes(data).decode("utf-8") if not isinstance(data, str) else data
    return json.loads(text)
