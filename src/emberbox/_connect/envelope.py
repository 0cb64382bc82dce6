"""Connect streaming envelopes: 1 flag byte, 4-byte big-endian length, payload."""

from __future__ import annotations

import struct

FLAG_MESSAGE = 0x00
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02

_HEADER = struct.Struct(">BI")


class EnvelopeError(ValueError):
    """The byte stream is not a sequence of well-formed envelopes."""


def encode_envelope(payload: bytes, flags: int = FLAG_MESSAGE) -> bytes:
    return _HEADER.pack(flags, len(payload)) + payload


class EnvelopeDecoder:
    """Incremental decoder: feed arbitrary chunks, get whole envelopes back.

    ``max_size`` bounds one envelope so a hostile length prefix cannot make us buffer forever.
    """

    def __init__(self, max_size: int = 4 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_size

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buf += chunk
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= _HEADER.size:
            flags, size = _HEADER.unpack_from(self._buf)
            if size > self._max:
                raise EnvelopeError(f"message of {size} bytes exceeds the {self._max} byte limit")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            out.append((flags, bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete envelope still waiting for more input."""
        return len(self._buf)
