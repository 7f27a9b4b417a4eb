"""Tests for the message codecs: JSON and pickle behind one interface.

No sockets: a codec turns a message into payload bytes and back. Encoding a
message the codec cannot carry is the caller's mistake (``SerializationError``,
a ``TypeError``); a payload that does not decode is the peer's
(``ProtocolError``).
"""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geventfork._serialization import JSON, PICKLE, Codec, by_id, by_name
from geventfork.errors import GeventforkError, ProtocolError, SerializationError

CODECS = [pytest.param(JSON, id="json"), pytest.param(PICKLE, id="pickle")]


@dataclasses.dataclass
class Point:
    """A module-level class, so pickle can find it again by name."""

    x: int
    y: int


def _recursive_list() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> list:
    message: list = []
    for _ in range(depth):
        message = [message]
    return message


def _local_instance() -> object:
    class Local:
        pass

    return Local()


#: Messages that survive both codecs unchanged.
COMMON = [
    None,
    True,
    False,
    0,
    -7,
    2**70,
    1.5,
    -0.25,
    "",
    "h\u00e9llo \u2603 \U0001f600",
    [],
    {},
    [1, [2, [3, "four"]]],
    {"a": {"b": [None, 1.0, "x"]}, "": 0},
    "x" * 100_000,
]

#: Messages only pickle carries (JSON has no tuples, sets, bytes or classes).
PICKLE_ONLY = [(1, 2), {1, 2}, frozenset({"a"}), b"\x00\xff", bytearray(b"ab"), Point(1, 2), 3 + 4j]


def _round_trip_cases():
    for codec, name in ((JSON, "json"), (PICKLE, "pickle")):
        for i, message in enumerate(COMMON):
            yield pytest.param(codec, message, id=f"{name}-common{i}")
    for i, message in enumerate(PICKLE_ONLY):
        yield pytest.param(PICKLE, message, id=f"pickle-only{i}")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec, message", list(_round_trip_cases()))
def test_round_trip(codec: Codec, message: object) -> None:
    payload = codec.dumps(message)
    assert isinstance(payload, bytes)
    decoded = codec.loads(payload)
    assert decoded == message
    assert type(decoded) is type(message)


def test_json_payload_is_compact_utf8() -> None:
    # The wire carries UTF-8 JSON with no padding, as Node's JSON lines do.
    assert JSON.dumps({"a": [1, 2], "b": "\u00e9"}) == b'{"a":[1,2],"b":"\\u00e9"}'
    assert JSON.loads('{"b":"\u00e9"}'.encode()) == {"b": "\u00e9"}


def test_json_turns_tuples_into_lists() -> None:
    # As Node's JSON serialization does with anything array-like.
    assert JSON.loads(JSON.dumps({"t": (1, (2, 3))})) == {"t": [1, [2, 3]]}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_json_round_trips_any_json_value(message: object) -> None:
    assert JSON.loads(JSON.dumps(message)) == message


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.binary() | st.text() | st.floats(allow_nan=False),
        lambda children: (
            st.lists(children, max_size=5).map(tuple)
            | st.frozensets(st.integers() | st.text(max_size=4), max_size=5)
            | st.dictionaries(st.integers() | st.text(max_size=4), children, max_size=5)
        ),
        max_leaves=30,
    )
)
def test_pickle_round_trips_any_picklable_value(message: object) -> None:
    assert PICKLE.loads(PICKLE.dumps(message)) == message


# ---------------------------------------------------------------- lookups


@pytest.mark.parametrize("codec", CODECS)
def test_lookup_by_name_and_by_id(codec: Codec) -> None:
    assert by_name(codec.name) is codec
    assert by_id(codec.ident) is codec


def test_codecs_have_distinct_names_and_wire_numbers() -> None:
    assert {JSON.name, PICKLE.name} == {"json", "pickle"}
    assert len({JSON.ident, PICKLE.ident}) == 2
    assert 0 not in (JSON.ident, PICKLE.ident)  # 0: no codec, on the wire


@pytest.mark.parametrize("name", ["advanced", "JSON", "", "marshal"])
def test_by_name_unknown_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="json.*pickle") as info:
        by_name(name)
    assert not isinstance(info.value, GeventforkError)  # a bad option, not an IPC error


@pytest.mark.parametrize("ident", [0, 3, 255])
def test_by_id_unknown_is_a_protocol_error(ident: int) -> None:
    # A frame's codec byte comes from the peer: its fault, so ProtocolError.
    with pytest.raises(ProtocolError, match=f"unknown codec {ident}") as info:
        by_id(ident)
    assert info.value.code == "ERR_IPC_PROTOCOL"


def test_the_base_codec_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Codec().dumps(1)
    with pytest.raises(NotImplementedError):
        Codec().loads(b"1")


# ---------------------------------------------------------------- encoding errors


@pytest.mark.parametrize(
    "codec, make_message",
    [
        pytest.param(JSON, object, id="json-object"),
        pytest.param(JSON, lambda: {1, 2}, id="json-set"),
        pytest.param(JSON, lambda: b"bytes", id="json-bytes"),
        pytest.param(JSON, lambda: {(1, 2): "tuple key"}, id="json-tuple-key"),
        pytest.param(JSON, _recursive_list, id="json-circular"),
        pytest.param(JSON, lambda: _nested(100_000), id="json-too-deep"),
        pytest.param(PICKLE, lambda: lambda: None, id="pickle-lambda"),
        pytest.param(PICKLE, lambda: (i for i in ()), id="pickle-generator"),
        pytest.param(PICKLE, _local_instance, id="pickle-local-class"),
        pytest.param(PICKLE, lambda: _nested(100_000), id="pickle-too-deep"),
    ],
)
def test_unserialisable_message_raises_serialization_error(codec: Codec, make_message) -> None:
    with pytest.raises(SerializationError) as info:
        codec.dumps(make_message())
    err = info.value
    assert isinstance(err, TypeError)  # the caller's mistake, as in Node
    assert isinstance(err, GeventforkError)
    assert err.code == "ERR_IPC_SERIALIZATION"
    assert err.__cause__ is not None  # the codec's own error is kept


# ---------------------------------------------------------------- decoding errors


@pytest.mark.parametrize(
    "codec, payload",
    [
        pytest.param(JSON, b"", id="json-empty"),
        pytest.param(JSON, b"{", id="json-truncated"),
        pytest.param(JSON, b"[1,]", id="json-trailing-comma"),
        pytest.param(JSON, b'{"a":1} x', id="json-trailing-junk"),
        pytest.param(JSON, b"\xff\xfe", id="json-not-utf8"),
        pytest.param(JSON, b'"\xed\xa0\x80"', id="json-utf8-surrogate"),
        pytest.param(JSON, b"[" * 100_000 + b"]" * 100_000, id="json-too-deep"),
        pytest.param(PICKLE, b"", id="pickle-empty"),
        pytest.param(PICKLE, b"garbage", id="pickle-garbage"),
        pytest.param(PICKLE, pickle.dumps(list(range(100)))[:-5], id="pickle-truncated"),
        pytest.param(PICKLE, b"cno_such_module_here\nX\n.", id="pickle-unknown-module"),
        pytest.param(PICKLE, b"cgeventfork.errors\nNoSuchName\n.", id="pickle-unknown-name"),
    ],
)
def test_undecodable_payload_raises_protocol_error(codec: Codec, payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.loads(payload)
    err = info.value
    assert err.code == "ERR_IPC_PROTOCOL"
    assert not isinstance(err, TypeError)  # the peer's fault, not the caller's
    assert err.data == payload[:64]  # the evidence, truncated


def test_json_decoding_error_chains_the_cause() -> None:
    with pytest.raises(ProtocolError) as info:
        JSON.loads(b"{")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
