"""Fuzzing read_body (gzip, deflate, chunking, limits) then parse_json and normalize, without
HTTP; and the gzip bomb, whose cost must stay bounded by the limit, not by what it inflates to."""

from __future__ import annotations

import tracemalloc
import zlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import RequestRejectedError
from tests.fuzz.body_oracles import check_body, read
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.strategies import event_bytes, json_text

ENCODINGS = st.sampled_from(["", "gzip", "x-gzip", "deflate", "identity", "br", "GZIP"])
ROUTES = st.sampled_from([None, "track", "identify", "page", "screen", "group", "alias"])


@fuzz_settings(ci_examples=300)
@given(
    data=event_bytes | json_text | st.binary(),
    encoding=ENCODINGS,
    compress=st.booleans(),
    chunk=st.integers(1, 70_000),
    max_bytes=st.sampled_from([16, 1024, 32 * 1024, 500 * 1024]),
    route=ROUTES,
)
def test_any_body_reads_parses_and_normalizes_or_is_refused(
    data: bytes, encoding: str, compress: bool, chunk: int, max_bytes: int, route: str | None
) -> None:
    """Any body in any encoding is read within its limit or refused with 400/413/415, then
    parsed or refused with 400, then normalized or rejected with a reason."""
    check_body(data, encoding, compress, chunk, max_bytes, route)


def bomb(inflated_bytes: int) -> bytes:
    """A gzip stream of ``inflated_bytes`` zeros (about a thousandth of that compressed)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated_bytes >> 20)]
    return b"".join([*parts, compressor.flush()])


def test_gzip_bomb_is_refused_within_the_limit() -> None:
    """A 64 MB gzip bomb (64 KB on the wire, under the 500 KB limit) is refused with 413 while
    allocating about the limit, never the 64 MB it would inflate to."""
    packed = bomb(64 << 20)
    assert len(packed) < 500 * 1024
    tracemalloc.start()
    try:
        answer = read(packed, "gzip", 64 * 1024, 500 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(answer, RequestRejectedError)
    assert (answer.status, answer.code) == (413, "payload_too_large")
    assert peak < 4 * 500 * 1024, peak
