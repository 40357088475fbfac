"""The Space rehearsal (tests/space_rehearsal.py), marked ``rehearsal``: not in the default run; CI runs
it after (``pytest -m rehearsal``). It builds the Space's environment from requirements.txt only (cached
in .rehearsal/ by the file's hash), so the first run takes minutes. The report, with the figures, is
written to test-artifacts/space-rehearsal.json."""

from __future__ import annotations

import json

import pytest

from space_rehearsal import CHROMIUM, EMBEDDED_PAIR, PAPER_PAIR, REPO, rehearse

pytestmark = pytest.mark.rehearsal


def test_the_space_answers_with_the_papers_pair_and_without_a_hub_with_the_embedded_one():
    report = rehearse(REPO / ".rehearsal")
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    (REPO / "test-artifacts" / "space-rehearsal.json").write_text(json.dumps(report, indent=2))
    paper, offline = report["runs"]

    assert paper["serving_line_in_log"].startswith("Answering with the Latent Shift paper's pair "
                                                   "(`densenet121-res224-all` + `resnetae-101-elastic`)")
    assert paper["explained_with"] == list(PAPER_PAIR), paper["log_tail"]
    assert "unverified_weights" not in paper["warnings"] and "model_fallback" not in paper["warnings"]
    assert offline["explained_with"] == list(EMBEDDED_PAIR), offline["log_tail"]
    assert "because the Latent Shift paper's pair" in offline["serving_line_in_log"]
    assert "unavailable here" in offline["serving_line_in_log"] and "unreachable" in offline["serving_line_in_log"]
    if CHROMIUM.exists():
        assert paper["page_line"].startswith("Answering with the Latent Shift paper's pair")
        assert offline["page_line"].startswith("Answering with the embedded demo pair") and \
            "unavailable here" in offline["page_line"]
    for run in (paper, offline):
        assert run["first_page_s"] > 0 and run["first_explanation_s"] > run["first_page_s"]
        assert run["peak_rss_mib"] and run["peak_rss_mib"] > 100
