"""Message codecs: JSON (the default, as in Node) and pickle, one interface."""
from __future__ import annotations

import json
import pickle
from typing import Any

from .errors import ProtocolError, SerializationError

__all__ = ["Codec", "JSON", "PICKLE", "by_name", "by_id"]


class Codec:
    """Turns a message into payload bytes and back.

    ``ident`` is the number the wire carries in each frame's ``codec`` byte,
    so a receiver decodes every frame with the codec that encoded it.
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


class _Json(Codec):
    name = "json"
    ident = 1
    _encode = json.JSONEncoder(separators=(",", ":")).encode
    _decode = json.JSONDecoder().decode

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
        raise ValueError(
            f"serialization must be one of {sorted(_BY_NAME)}, not {name!r}"
        ) from None


def by_id(ident: int) -> Codec:
    """The codec a frame's ``codec`` byte names.

    Raises:
        ProtocolError: unknown codec number.
    """
    try:
        return _BY_ID[ident]
    except KeyError:
        raise ProtocolError(f"unknown codec {ident}") from None
