"""The search-ends tool (bisect against the reference ladder) runs end to end on one real test image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentshift_research.tools import search_ends

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"


@pytest.mark.skipif(not (DATA / "labels.csv").is_file(), reason="the shared chest X-ray data is not here")
def test_one_image_gives_both_searches_and_a_summary(tmp_path):
    out = tmp_path / "ends.json"
    assert search_ends.main(["--data", str(DATA), "--limit", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["summary"]["images"] == 1
    row = record["rows"][0]
    assert row["bisect"]["evaluations"] > 0 and row["ladder"]["evaluations"] > 0
