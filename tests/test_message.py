"""The {"type", "payload"} envelope: round trips, decode errors, encode errors."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_hub import (
    InvalidEnvelopeError,
    InvalidJSONError,
    JSONValue,
    Message,
    MessageDecodeError,
    MessageEncodeError,
)

json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(type_=st.text(min_size=1), payload=json_values)
def test_round_trip_bytes_and_str(type_: str, payload: JSONValue) -> None:
    message = Message(type_, payload)
    assert Message.decode(message.encode()) == message
    assert Message.decode(message.text) == message
    # The wire form is plain JSON that any decoder reads back the same.
    assert json.loads(message.encode()) == {"type": type_, "payload": payload}


def test_encoding_is_compact_and_cached() -> None:
    message = Message("chat", {"text": "héllo", "n": [1, 2]})
    data = message.encode()
    assert data == '{"type":"chat","payload":{"text":"héllo","n":[1,2]}}'.encode()
    assert message.encode() is data  # encoded once, however many clients
    assert message.text == data.decode()


def test_payload_defaults_to_null() -> None:
    assert Message("ping").encode() == b'{"type":"ping","payload":null}'
    assert Message.decode('{"type":"ping"}') == Message("ping", None)


def test_integers_beyond_64_bits_survive_both_ways() -> None:
    big = 2**64 + 1
    message = Message("n", [big, -big])
    assert message.encode() == f'{{"type":"n","payload":[{big},{-big}]}}'.encode()
    decoded = Message.decode(message.encode())
    assert decoded.payload == [big, -big]
    assert isinstance(decoded.payload, list)
    assert all(type(value) is int for value in decoded.payload)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (math.nan, "nan"),
        (math.inf, "inf"),
        ({"deep": [1.0, -math.inf]}, "-inf"),
        ({1: "a"}, "key"),
        ({"big-int-path": 2**70, 2: "b"}, "key"),
        ({1, 2}, "set"),
        (object(), "object"),
        (b"bytes", "bytes"),
    ],
)
def test_unserializable_payloads_raise_and_never_become_null(payload: object, words: str) -> None:
    with pytest.raises(MessageEncodeError, match=words):
        Message("t", payload)  # type: ignore[arg-type]


def test_lone_surrogate_is_rejected() -> None:
    with pytest.raises(MessageEncodeError):
        Message("t", "\ud800")


@pytest.mark.parametrize("bad_type", ["", None, 3, ["a"]])
def test_type_must_be_a_non_empty_string(bad_type: object) -> None:
    with pytest.raises(MessageEncodeError, match="non-empty str"):
        Message(bad_type, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"{not json", InvalidJSONError, "invalid JSON"),
        (b"", InvalidJSONError, "invalid JSON"),
        (b'{"type":"a"}\xff', InvalidJSONError, "invalid JSON"),
        ("\udcff", InvalidJSONError, "invalid JSON"),
        (b"NaN", InvalidJSONError, "invalid JSON"),
        (b"[" * 5000, InvalidJSONError, "invalid JSON"),
        (b"[1, 2]", InvalidEnvelopeError, "must be a JSON object, got an array"),
        (b'"hi"', InvalidEnvelopeError, "got a string"),
        (b"null", InvalidEnvelopeError, "got null"),
        (b'{"payload": 1}', InvalidEnvelopeError, "needs a 'type'"),
        (b'{"type": 7}', InvalidEnvelopeError, "must be a string, got a number"),
        (b'{"type": ""}', InvalidEnvelopeError, "must not be empty"),
        (
            b'{"type": "a", "paylod": 1}',
            InvalidEnvelopeError,
            r"unknown envelope field\(s\) \['paylod'\]",
        ),
    ],
)
def test_decode_errors_say_what_was_wrong(
    data: bytes | str, error: type[MessageDecodeError], words: str
) -> None:
    with pytest.raises(error, match=words):
        Message.decode(data)


def test_decode_error_codes() -> None:
    assert InvalidJSONError.code == "invalid_json"
    assert InvalidEnvelopeError.code == "invalid_envelope"
    assert issubclass(MessageDecodeError, ValueError)


def test_decode_accepts_whitespace_and_re_encodes_compactly() -> None:
    message = Message.decode(' { "type" : "a" , "payload" : [ 1 ] } ')
    assert message.encode() == b'{"type":"a","payload":[1]}'


def test_equality_and_repr() -> None:
    assert Message("a", [1]) == Message("a", [1])
    assert Message("a", [1]) != Message("a", [2])
    assert Message("a", 1) != "a"
    assert repr(Message("a", {"k": 1})) == "Message('a', {'k': 1})"
    with pytest.raises(TypeError):
        hash(Message("a", 1))


def test_message_is_read_only() -> None:
    message = Message("a", 1)
    with pytest.raises(AttributeError):
        message.type = "b"  # type: ignore[misc]
