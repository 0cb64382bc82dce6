from __future__ import annotations

import pytest

from emberbox._connect.envelope import (
    FLAG_END_STREAM,
    EnvelopeDecoder,
    EnvelopeError,
    encode_envelope,
)
from emberbox._connect.errors import Code, ConnectError


def test_decoder_reassembles_envelopes_split_anywhere() -> None:
    stream = encode_envelope(b'{"a":1}') + encode_envelope(b"", FLAG_END_STREAM)
    for cut in range(len(stream) + 1):
        decoder = EnvelopeDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == [(0, b'{"a":1}'), (FLAG_END_STREAM, b"")]
        assert decoder.pending == 0


def test_decoder_refuses_oversized_length_prefix() -> None:
    with pytest.raises(EnvelopeError):
        EnvelopeDecoder(max_size=10).feed(encode_envelope(b"x" * 11))


def test_error_decoding_prefers_connect_body_then_http_status() -> None:
    err = ConnectError.from_http(404, b'{"code":"not_found","message":"gone"}')
    assert (err.code, err.message) == (Code.NOT_FOUND, "gone")
    proxy = ConnectError.from_http(502, b'{"code":502,"message":"The sandbox was not found"}')
    assert (proxy.code, proxy.message) == (Code.UNAVAILABLE, "The sandbox was not found")
    assert ConnectError.from_http(418, b"teapot").code == Code.UNKNOWN
    assert ConnectError.from_end_stream({}) is None
    end = ConnectError.from_end_stream({"error": {"code": "deadline_exceeded", "message": "late"}})
    assert end is not None and end.code == Code.DEADLINE_EXCEEDED
