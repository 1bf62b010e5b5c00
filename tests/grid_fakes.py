"""A Flower Grid that delivers messages in-process to virtual nodes (shared by the server-loop tests)."""
from __future__ import annotations

from typing import Iterable, Optional

import pytest

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid


class DirectGrid(Grid):
    """Virtual nodes 100, 101, … with ``partition-id`` = index; subclasses implement ``send_and_receive``.

    Args:
        n: number of virtual nodes.
        node_config: extra node config for every node.
        per_node: extra node config by partition index.
    """

    def __init__(self, n: int, *, node_config: Optional[dict] = None,
                 per_node: Optional[dict[int, dict]] = None) -> None:
        self.nodes = {100 + i: Context(run_id=1, node_id=100 + i,
                                       node_config={"partition-id": i, "num-partitions": n, **(node_config or {}),
                                                    **(per_node or {}).get(i, {})},
                                       state=RecordDict(), run_config={}) for i in range(n)}

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


@pytest.fixture(autouse=True)
def task_identity():
    """Messages created outside a Flower runtime need a task identity (as Flower's own run_simulation sets).

    Import this fixture into a test module (``from grid_fakes import task_identity``) to apply it there.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
