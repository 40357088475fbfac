"""Short soak: ``latentshift loadtest --soak`` for 1.5 minutes (8 clients, mixed traffic, SIGKILL and
restart halfway) against the app in its own process with the embedded models.

Marked ``soak`` (minutes; excluded from the default run, run by .ci/run after it). Checked: no
unexpected error, every result completed before the kill opens from its link after the restart, no
store entry corrupt, every kind of traffic happened, and the records carry the figures. The RSS and
temporary-file goals need the long soak (the first 5 minutes are warm-up); its figures are in
docs/limits.md.
"""

from __future__ import annotations

import json

import pytest

from latentshift_research.tools.loadtest import main as loadtest_main

pytestmark = pytest.mark.soak


def test_a_short_soak_with_a_sigkill_keeps_every_completed_result(tmp_path, capsys):
    out = tmp_path / "soak.jsonl"
    loadtest_main(["--soak", "1.5", "--every", "15", "--temp-max-age", "30", "--frames", "4",
                          "--ig-steps", "4", "--work", str(tmp_path / "work"), "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    summary = lines[-1]["summary"]
    kill = summary["kill"]
    goals = summary["goals"]
    print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=1))
    assert goals["unexpected_errors"]["pass"], goals["unexpected_errors"]
    assert kill["results_before_kill"] >= 1, kill
    assert kill["link_states_after_restart"] == {"ok": kill["results_before_kill"]}, kill
    assert goals["store_intact"]["pass"] and kill["pages_opened"] >= 1, kill
    endpoints = set(summary["totals"]["latency_s"])
    assert {"bad_upload", "model_switch", "link"} <= endpoints and any(e.startswith("explain") for e in endpoints)
    records = [line for line in lines if "rss_mb" in line]
    assert len(records) >= 3 and all(r["rss_mb"] > 0 and r["open_files"] for r in records)
