"""Connect's two codecs for unary calls: proto3 canonical JSON through protobuf's own json_format
(so names, int64 and enums match), and the binary wire form."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from .errors import Code, ConnectError

M = TypeVar("M", bound=Message)


def encode_json(message: Message) -> bytes:
    return json_format.MessageToJson(
        message, indent=None, preserving_proto_field_name=False, ensure_ascii=False
    ).encode()


def decode_json(data: bytes, message_type: type[M]) -> M:
    message = message_type()
    if not data.strip():
        return message
    try:
        json_format.Parse(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid request body: {exc}") from exc
    return message


def decode_proto(data: bytes, message_type: type[M]) -> M:
    """Connect's binary codec: the message's protobuf wire form."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid protobuf: {exc}") from None
    return message
