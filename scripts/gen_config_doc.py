"""Regenerate docs/configuration.md from the Config dataclass (field comments are the descriptions).

Usage: .venv/bin/python scripts/gen_config_doc.py   (tests/test_config.py checks the doc is current)
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """# Configuration

One flat set of keys. The same hyphenated name is used in YAML config files (`configs/*.yaml`), on the command
line (`omnifuse train --set local-epochs=2`) and in Flower's run config (`[tool.flwr.app.config]`,
`flwr run . --run-config 'local-epochs=2'`). Site settings that belong to a hospital — its data path, state
directory, privacy cap (`max-epsilon`) and device — are Flower *node* config, not run config (docs/deployment.md).
Values are scalars; lists are comma-separated strings. Unknown keys in a YAML file are an error.
Shipped configs: `smoke` (seconds; tests/CI), `smoke-dp` (smoke with DP-SGD), `demo` (the demo federation).
This page is generated from `omnifuse_core/config.py` by `scripts/gen_config_doc.py`.
"""


def render() -> str:
    src = (ROOT / "omnifuse_core" / "config.py").read_text()
    body = src.split("class Config:")[1].split("@property")[0]
    out = [HEADER]
    for line in body.splitlines():
        m = re.match(r"\s*# --- (.*?) -+", line)
        if m:
            out += ["", f"## {m.group(1)[0].upper() + m.group(1)[1:]}", "", "| key | default | meaning |", "|---|---|---|"]
            continue
        m = re.match(r"\s+(\w+): (\w+(?: \| \w+)*) = (.*?)(?:\s+#\s*(.*))?$", line)
        if m:
            name, _typ, default, comment = m.groups()
            comment = (comment or "").replace("|", "/")
            out.append(f"| `{name.replace('_', '-')}` | `{default}` | {comment} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys
    target = ROOT / "docs" / "configuration.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else "docs/configuration.md is stale: run scripts/gen_config_doc.py")
    target.write_text(render())
