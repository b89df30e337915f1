"""The container log format (CRI records): what the supervisor writes reads back as the two streams, in order."""

from __future__ import annotations

import re

import pytest

from virtkit.client.client import _frames
from virtkit.container.logfile import LogDecoder, encode, parse, timestamp
from virtkit.core.logs import STDERR, STDOUT, LineTail, SingleStreamDecoder


def _decode_all(data: bytes, step: int) -> list[tuple[int, bytes]]:
    dec = LogDecoder()
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(data), step):
        out += dec.feed(data[i:i + step])
    return out + dec.flush()


def _by_stream(records: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out = {STDOUT: b"", STDERR: b""}
    for stream, data in records:
        out[stream] += data
    return out


def test_records_look_like_cri():
    data = encode(STDOUT, b"hello\nhalf", now_ns=1_700_000_000_123_456_789) + encode(STDERR, b"oops\n", 0)
    assert data == (b"2023-11-14T22:13:20.123456789Z stdout F hello\n"
                    b"2023-11-14T22:13:20.123456789Z stdout P half\n"
                    b"1970-01-01T00:00:00.000000000Z stderr F oops\n")
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", timestamp())


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_streams_read_back_byte_for_byte_in_order(step):
    writes = [(STDOUT, b"line one\nline t"), (STDOUT, b"wo\n"), (STDERR, b"err \x00\xff binary\n"),
              (STDOUT, b"\n\n"), (STDERR, b"no newline at the end")]
    data = b"".join(encode(stream, chunk) for stream, chunk in writes)
    records = _decode_all(data, step)
    assert _by_stream(records) == {STDOUT: b"line one\nline two\n\n\n",
                                   STDERR: b"err \x00\xff binary\nno newline at the end"}
    order = [s for i, (s, _) in enumerate(records) if i == 0 or records[i - 1][0] != s]
    assert order == [STDOUT, STDERR, STDOUT, STDERR]
    if step == 4096:        # one read: the pieces of one stream in a row come joined
        assert len(records) == 4


def test_a_line_that_is_no_record_reads_as_stdout():
    assert parse(b"plain output from an older log") == (STDOUT, b"plain output from an older log", True)
    assert parse(b"2024-01-01T00:00:00Z stdin F x")[0] == STDOUT     # not one of the two streams
    assert parse(b"2024-01-01T00:00:00Z stderr F") == (STDERR, b"", True)   # an empty line


def test_line_tail_keeps_the_last_lines_across_streams():
    tail = LineTail(3)
    tail.add([(STDOUT, b"1\n2\n"), (STDERR, b"e1\n"), (STDOUT, b"3\nparti"), (STDOUT, b"al")])
    assert tail.result() == [(STDERR, b"e1\n"), (STDOUT, b"3\npartial")]
    assert LineTail(0).result() == []
    one = LineTail(1)
    one.add([(STDOUT, b"a\nb\n")])
    assert one.result() == [(STDOUT, b"b\n")]


def test_single_stream_decoder_is_all_stdout_through_the_filter():
    class Upper:
        def feed(self, data: bytes) -> bytes:
            return data.upper()

        def flush(self) -> bytes:
            return b"!"

    assert SingleStreamDecoder().feed(b"x") == [(STDOUT, b"x")] and SingleStreamDecoder().flush() == []
    dec = SingleStreamDecoder(Upper())
    assert dec.feed(b"vm") == [(STDOUT, b"VM")] and dec.flush() == [(STDOUT, b"!")]


def test_client_reads_frames_cut_anywhere():
    stream = b"".join(bytes([kind]) + len(d).to_bytes(4, "big") + d
                      for kind, d in [(1, b"out"), (2, b""), (2, b"err\n"), (3, b'{"exit_code": 0}')])
    chunks = [stream[i:i + 3] for i in range(0, len(stream), 3)]
    assert list(_frames(iter(chunks))) == [(1, b"out"), (2, b""), (2, b"err\n"), (3, b'{"exit_code": 0}')]
