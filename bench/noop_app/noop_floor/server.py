"""ServerApp: R rounds of one train message per node, pushed and pulled by OmniFuse's own exchange
(``server.exchange.send_and_receive``, from the installed omnifuse-fl), the wall time of each round written to
``<out>/rounds.json``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from server.exchange import send_and_receive

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds, need, poll = int(rc["rounds"]), int(rc["min-nodes"]), float(rc["poll-interval"])
    out = Path(str(rc["out"]))
    out.mkdir(parents=True, exist_ok=True)
    while len(nodes := sorted(grid.get_node_ids())) < need:
        time.sleep(0.5)
    payload = ArrayRecord({"w": Array(np.zeros(int(rc["payload-floats"]), dtype=np.float32))})
    seconds, startup = [], []
    for rnd in range(1, rounds + 1):
        t0 = time.monotonic()
        msgs = [Message(RecordDict({"arrays": payload}), dst_node_id=n, message_type="train", group_id=str(rnd))
                for n in nodes]
        replies = send_and_receive(grid, msgs, timeout=float(rc["round-timeout"]), poll=poll)
        ok = sum(1 for r in replies if r.has_content())
        seconds.append(round(time.monotonic() - t0, 3))
        ages = [float(r.content["metrics"]["startup"]) for r in replies if r.has_content()]
        startup.append(round(sum(ages) / len(ages), 3) if ages else None)
        flwr_log(logging.INFO, "no-op round %d: %d/%d replies in %.2f s", rnd, ok, len(nodes), seconds[-1])
        (out / "rounds.json").write_text(json.dumps({"nodes": len(nodes), "replies_last": ok,
                                                     "round_seconds": seconds, "startup_seconds": startup}))
