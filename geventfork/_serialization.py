"""Message codecs: JSON (the default, as in Node) and pickle, one interface."""

from __future__ import annotations

import json
import json.scanner
import pickle
from typing import Any, Callable, Iterable, NoReturn, Optional, Tuple

from .errors import ProtocolError, SerializationError

__all__ = ["Codec", "JSON", "PICKLE", "by_name", "by_id", "describe"]


class Codec:
    """Turns a message into payload bytes and back.

    ``ident`` is the number the wire carries in each frame's ``codec`` byte.
    A receiver decodes only frames of its own channel's codec: another codec
    byte is a protocol error (a pickle frame on a JSON channel would run the
    peer's code).
    """

    name = ""
    ident = 0

    def dumps(self, message: Any) -> bytes:
        """Encode ``message``.

        Raises:
            SerializationError: the message cannot be encoded.
        """
        raise NotImplementedError

    def loads(self, payload: bytes) -> Any:
        """Decode a payload the peer sent.

        Raises:
            ProtocolError: the payload is not valid for this codec.
        """
        raise NotImplementedError


def _not_serialisable(obj: object) -> NoReturn:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_encoder() -> Callable[[Any], str]:
    """``json.dumps`` with compact separators, minus its per-call set-up.

    ``json.dumps`` builds a C encoder on every call, which costs three times
    the encoding of a small message. Build one and keep it; its circular
    reference markers are empty after every encoding that succeeds, and a
    failed one replaces it.
    """
    # typeshed does not declare this CPython attribute (None without _json).
    make: Optional[Callable[..., Callable[[Any, int], Iterable[str]]]] = getattr(
        json.encoder, "c_make_encoder", None
    )
    if make is None:
        return json.JSONEncoder(separators=(",", ":")).encode
    encode_string = json.encoder.encode_basestring_ascii

    def new() -> Callable[[Any, int], Iterable[str]]:
        return make({}, _not_serialisable, encode_string, None, ":", ",", False, False, True)

    current = [new()]

    def encode(message: Any) -> str:
        if isinstance(message, str):
            return encode_string(message)
        try:
            return "".join(current[0](message, 0))
        except BaseException:
            current[0] = new()
            raise

    return encode


def _json_decoder() -> Callable[[str], Any]:
    """``json.loads`` minus its wrappers: the scanner, then a check for trailing data."""
    decoder = json.JSONDecoder()
    # typeshed types make_scanner's argument as itself, not the JSONDecoder
    # the standard library passes it (json/decoder.py).
    scan: Callable[[str, int], Tuple[Any, int]] = json.scanner.make_scanner(
        decoder  # type: ignore[arg-type]
    )

    def decode(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            return decoder.decode(text)  # leading or trailing data: its error, or its value
        return value

    return decode


class _Json(Codec):
    name = "json"
    ident = 1

    def __init__(self) -> None:
        self._encode = _json_encoder()
        self._decode = _json_decoder()

    def dumps(self, message: Any) -> bytes:
        try:
            return self._encode(message).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"message is not JSON serialisable: {exc}") from exc

    def loads(self, payload: bytes) -> Any:
        try:
            return self._decode(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"payload is not valid JSON: {exc}", payload) from exc


class _Pickle(Codec):
    name = "pickle"
    ident = 2

    def dumps(self, message: Any) -> bytes:
        try:
            return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # pickle raises many types (PicklingError, TypeError, ...)
            raise SerializationError(f"message cannot be pickled: {exc}") from exc

    def loads(self, payload: bytes) -> Any:
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise ProtocolError(f"payload cannot be unpickled: {exc}", payload) from exc


JSON = _Json()
PICKLE = _Pickle()
_BY_NAME = {c.name: c for c in (JSON, PICKLE)}
_BY_ID = {c.ident: c for c in (JSON, PICKLE)}


def by_name(name: str) -> Codec:
    """The codec called ``name`` (``"json"`` or ``"pickle"``).

    Raises:
        ValueError: no such codec.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"serialization must be one of {sorted(_BY_NAME)}, not {name!r}") from None


def by_id(ident: int) -> Codec:
    """The codec a frame's ``codec`` byte names.

    Raises:
        ProtocolError: unknown codec number.
    """
    try:
        return _BY_ID[ident]
    except KeyError:
        raise ProtocolError(f"unknown codec {ident}") from None


def describe(ident: int) -> str:
    """How an error names the codec a frame's ``codec`` byte says: ``"2 (pickle)"``."""
    codec = _BY_ID.get(ident)
    return f"{ident} ({codec.name})" if codec is not None else f"{ident} (unknown)"
