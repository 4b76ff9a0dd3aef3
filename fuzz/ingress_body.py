"""Atheris harness: request bodies through read_body (gzip, deflate, chunks, limits),
parse_json and normalize, without HTTP.

Oracles: read_body refuses only with 400/408/413/415 and never returns more than its limit
(so a gzip bomb costs at most the limit); parse_json refuses only with 400; normalize only with
EventRejectedError, and what it returns is a well-formed event.
"""

from __future__ import annotations

import sys

import _setup  # noqa: F401 - puts the repository on sys.path
import atheris

with atheris.instrument_imports():
    from tests.fuzz.body_oracles import check_body


ENCODINGS = ["", "gzip", "deflate", "identity", "br", "x-gzip"]
LIMITS = [64, 1024, 32 * 1024, 500 * 1024]
ROUTES = [None, "track", "identify", "page", "screen", "group", "alias"]


def test_one_input(data: bytes) -> None:
    """Read ``data`` after its first four bytes as a body, with the encoding, limit, chunking
    and route they pick."""
    if len(data) < 4:
        return
    encoding = ENCODINGS[data[0] % len(ENCODINGS)]
    compress = bool(data[0] & 0x80)
    chunk = 1 + data[1] * 275  # 1 byte to 70 KB
    max_bytes = LIMITS[data[2] % len(LIMITS)]
    route = ROUTES[data[3] % len(ROUTES)]
    check_body(data[4:], encoding, compress, chunk, max_bytes, route)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
