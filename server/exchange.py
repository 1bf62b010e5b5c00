"""Send messages to SuperNodes and collect their replies with a short poll (config key ``poll-interval``).

Flower 1.41/1.42's ``Grid.send_and_receive`` on a real SuperLink (``HttpGrid``) sleeps a fixed 3 s between pulls, so
every exchange ends on a multiple of 3 s after the last reply arrives (issue 16). This module does the same
push-then-pull with the ServerApp's own interval (default 0.1 s: a pull is one small gRPC call to a SuperLink on the
same machine or LAN). Semantics are ``send_and_receive``'s: replies that arrive within ``timeout`` are returned,
the others are missing (the caller names them). Grids without push/pull (in-process test grids) fall back to their
own ``send_and_receive``.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float, poll: float) -> list[Message]:
    """Push ``messages``, then pull replies every ``poll`` seconds until all arrived or ``timeout`` passed."""
    messages = list(messages)
    if not messages:
        return []
    try:
        ids = set(grid.push_messages(messages))
    except NotImplementedError:
        return list(grid.send_and_receive(messages, timeout=timeout))
    replies: list[Message] = []
    end = time.monotonic() + timeout
    while ids:
        got = list(grid.pull_messages(ids))
        replies.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        if not ids or time.monotonic() >= end:
            break
        time.sleep(min(poll, max(0.0, end - time.monotonic())))
    if ids:
        log.debug("%d of %d messages unanswered after %.0f s", len(ids), len(messages), timeout)
    return replies
