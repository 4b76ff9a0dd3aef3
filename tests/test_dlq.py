"""Tests for gateway/dlq.py and `eventgate dlq`: dead letters across shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import dlq
from gateway.cli import main
from gateway.dlq import DeadLetterFilter
from gateway.log import DeadLetter, SqliteEventLog
from gateway.testing import make_event


@pytest.fixture(name="data_dir")
async def _data_dir(tmp_path: Path) -> Path:
    """Two shards holding three dead letters for two destinations."""
    for shard, letters in (
        (0, [("hook", 1, "HTTP 400 from example.com", 100.0), ("files", 2, "disk", 200.0)]),
        (1, [("hook", 3, "HTTP 410 Gone", 300.0)]),
    ):
        event_log = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30, shard=shard)
        await event_log.open()
        await event_log.dead_letter(
            [
                DeadLetter(name, make_event(seq), reason, 3, at - 10, at, "POST /", "400 nope")
                for name, seq, reason, at in letters
            ]
        )
        await event_log.close()
    return tmp_path


def test_list_filters_and_orders_newest_first(data_dir: Path) -> None:
    """Listing spans shards, newest first, and filters by destination, time and reason."""
    every = dlq.list_letters(data_dir, DeadLetterFilter())
    assert [r.message_id for r in every] == ["web-00000003", "web-00000002", "web-00000001"]
    assert [r.key for r in every] == ["1:1", "0:2", "0:1"]
    hook = dlq.list_letters(data_dir, DeadLetterFilter(destination="hook"))
    assert [r.key for r in hook] == ["1:1", "0:1"]
    assert [r.key for r in dlq.list_letters(data_dir, DeadLetterFilter(since=150))] == [
        "1:1",
        "0:2",
    ]
    assert [r.key for r in dlq.list_letters(data_dir, DeadLetterFilter(until=150))] == ["0:1"]
    assert [r.key for r in dlq.list_letters(data_dir, DeadLetterFilter(reason="410"))] == ["1:1"]


def test_show_returns_the_letter_with_its_exchange(data_dir: Path) -> None:
    """show gives the reason, attempts, the last request and response, and the event."""
    letter = dlq.show(data_dir, "0:1")
    assert letter is not None
    assert (letter.reason, letter.attempts, letter.request, letter.response) == (
        "HTTP 400 from example.com",
        3,
        "POST /",
        "400 nope",
    )
    assert json.loads(letter.body)["messageId"] == "web-00000001"
    assert dlq.show(data_dir, "9:1") is None
    assert dlq.show(data_dir, "nonsense") is None


async def test_replay_moves_letters_to_their_destinations_retries(data_dir: Path) -> None:
    """Replay re-enqueues the matching letters, due now, for their own destination only."""
    assert dlq.replay(data_dir, DeadLetterFilter(destination="hook")) == 2
    assert [r.key for r in dlq.list_letters(data_dir, DeadLetterFilter())] == ["0:2"]
    for shard, expected in ((0, ["web-00000001"]), (1, ["web-00000003"])):
        event_log = SqliteEventLog(data_dir, disk_quota_bytes=1 << 30, shard=shard)
        await event_log.open()
        due = await event_log.due_retries("hook", now=10**10, limit=10)
        assert [r.event.message_id for r in due] == expected
        assert [(r.attempts, r.reason) for r in due] == [(0, "replayed")]
        assert await event_log.due_retries("files", now=10**10, limit=10) == []
        await event_log.close()


def test_purge_deletes_matching_letters(data_dir: Path) -> None:
    """Purge deletes only what matches."""
    assert dlq.purge(data_dir, DeadLetterFilter(reason="disk")) == 1
    assert len(dlq.list_letters(data_dir, DeadLetterFilter())) == 2


def test_cli_list_show_replay_purge(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eventgate dlq` lists (text and JSON), shows, and refuses an unfiltered replay."""
    base = ["--data-dir", str(data_dir)]
    assert main(["dlq", "list", *base]) == 0
    out = capsys.readouterr().out
    assert "web-00000003" in out
    assert "HTTP 410 Gone" in out
    assert main(["dlq", "list", "--json", "--destination", "files", *base]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["reason"] == "disk"
    assert main(["dlq", "show", "1:1", *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["event"]["messageId"] == "web-00000003"
    assert shown["response"] == "400 nope"
    assert main(["dlq", "replay", *base]) == 2
    assert "needs a filter, or --all" in capsys.readouterr().err
    assert main(["dlq", "purge", "--all", *base]) == 0
    assert "3 dead letter(s) purged" in capsys.readouterr().out
