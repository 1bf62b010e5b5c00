"""server.exchange: push, then pull every poll-interval until every reply is in or the timeout passes (Flower's own
HttpGrid pulls every 3 s); grids without push/pull fall back to their send_and_receive."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from grid_fakes import DirectGrid, task_identity  # noqa: F401 (autouse fixture: messages outside a runtime)
from omnifuse_core.config import Config, ConfigError
from server.exchange import send_and_receive


class DelayedGrid(DirectGrid):
    """Replies to node ``100 + i`` become pullable ``delays[i]`` seconds after the push; counts pulls."""

    def __init__(self, delays):
        super().__init__(len(delays))
        self.delays, self.pulls, self.pending = delays, 0, {}

    def push_messages(self, messages):
        ids = []
        for k, m in enumerate(messages):
            mid = f"m{k}"
            reply = SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid))  # all exchange reads
            self.pending[mid] = (time.monotonic() + self.delays[m.metadata.dst_node_id - 100], reply)
            ids.append(mid)
        return ids

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("exchange must push and pull itself")

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic()
        ready = [mid for mid in message_ids if mid in self.pending and self.pending[mid][0] <= now]
        return [self.pending.pop(mid)[1] for mid in ready]


def _msgs(n):
    return [Message(RecordDict({"c": ConfigRecord({})}), dst_node_id=100 + i, message_type="query") for i in range(n)]


def test_replies_are_collected_within_a_poll_of_the_last_one():
    grid = DelayedGrid([0.0, 0.3])
    start = time.monotonic()
    replies = send_and_receive(grid, _msgs(2), timeout=5, poll=0.05)
    took = time.monotonic() - start
    assert len(replies) == 2 and 0.3 <= took < 1.0  # Flower's 3 s pull interval would end at >= 3 s
    assert grid.pulls >= 3


def test_unanswered_messages_are_missing_after_the_timeout():
    grid = DelayedGrid([0.0, 60.0])
    start = time.monotonic()
    replies = send_and_receive(grid, _msgs(2), timeout=0.4, poll=0.1)
    assert len(replies) == 1 and time.monotonic() - start < 1.5


def test_grids_without_push_fall_back_to_their_own_send_and_receive():
    class Plain(DirectGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return ["reply"] * len(list(messages))

    assert send_and_receive(Plain(2), _msgs(2), timeout=1, poll=0.1) == ["reply", "reply"]
    assert send_and_receive(Plain(2), [], timeout=1, poll=0.1) == []
    with pytest.raises(ConfigError, match="poll-interval"):
        Config().replace(poll_interval=0)
