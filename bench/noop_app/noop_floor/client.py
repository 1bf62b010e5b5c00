"""ClientApp that only imports torch and echoes the arrays it receives (what every OmniFuse message pays anyway)."""
from __future__ import annotations

import os
from pathlib import Path

import torch  # noqa: F401  - the floor includes the torch import every fresh ClientApp process pays
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; -1 elsewhere), as OmniFuse's ``time.startup``."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return float(Path("/proc/uptime").read_text().split()[0]) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


@app.train()
def train(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 1, "startup": _process_age()})
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)
