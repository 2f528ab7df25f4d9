"""The live view's table: one header per column the script fills (a column added to the script
alone shifted every header after it)."""

from __future__ import annotations

import re
from pathlib import Path

VIEW = Path(__file__).resolve().parents[2] / "thunderagent_sglang" / "view"


def test_every_column_of_the_script_has_its_header():
    script = (VIEW / "view.js").read_text()
    columns = re.search(r"const COLUMNS = \[(.*?)\];", script, re.S).group(1)
    names = re.findall(r'"([a-z_]+)"', columns)
    headers = re.findall(r"<th>([^<]*)</th>", (VIEW / "index.html").read_text())
    assert len(names) == len(headers), (names, headers)
    assert names[-3:] == ["tool_kv", "environments", "commands"]
    assert headers[-3:] == ["kv at tool", "environments", "running commands"]
