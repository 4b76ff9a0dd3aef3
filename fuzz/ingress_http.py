"""Atheris harness: both ingress APIs over HTTP, in process (an aiohttp test server).

``data`` picks the path, method, Authorization, Content-Encoding and chunking, and is the body.
Oracles (tests/fuzz/harness.py ``check_answer``): never a 5xx; always JSON; every refusal
``{"success": false, "code", "message"}``; a success stored exactly the events it accepted.
"""

from __future__ import annotations

import gzip
import logging
import sys

import _setup  # noqa: F401 - puts the repository on sys.path
import atheris

with atheris.instrument_imports():
    import structlog

    from tests.fuzz.harness import API_KEY, Gateway, basic, check_answer

# One log line per refused request would be most of the run's time and output.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

PATHS = [
    "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch",
    "/v1/import", "/api/ingestion/track/", "/api/ingestion/track/batch/", "/v1/unknown",
]  # fmt: skip
AUTHORIZATIONS = [
    basic(),
    f"Bearer {API_KEY}",
    None,
    basic("wrong"),
    "Basic",
    "Basic !!",
    "Bearer ",
    "Basic é",
]
ENCODINGS = [None, "gzip", "gzip", "deflate", "br", "identity"]
GATEWAY = Gateway()


def test_one_input(data: bytes) -> None:
    """Send ``data`` after its first four bytes as a body, with the request shape they pick."""
    if len(data) < 4:
        return
    path = PATHS[data[0] % len(PATHS)]
    authorization = AUTHORIZATIONS[data[1] % len(AUTHORIZATIONS)]
    encoding = ENCODINGS[data[2] % len(ENCODINGS)]
    compress, chunked = bool(data[3] & 1), bool(data[3] & 2)
    body = data[4:]
    headers = {} if authorization is None else {"Authorization": authorization}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if compress and encoding == "gzip":
            body = gzip.compress(body)
    answer = GATEWAY.request("POST", path, body, headers, chunked=chunked)
    payload = check_answer(path, answer)
    if answer.status < 300 and "accepted" in payload:
        assert payload["accepted"] == len(answer.stored), (payload, len(answer.stored))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
