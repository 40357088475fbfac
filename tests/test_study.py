"""The reader study end to end: create with tiny models, simulated readers through /study_next
and /study_rate, refusals, the analysis against scipy, a SIGKILL and resume, two readers at once,
and the reading page in Chromium (keys 1-5)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from appserver import free_port
from tiny_models import write_tiny_manifest

from latentshift.study import analyze as study_analyze
from latentshift.study.create import create_study, load_study, open_store
from latentshift.study.schedule import reader_schedule
from latentshift.study.store import Store, StudyError

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
FAST = dict(frames=4, ig_steps=4, lambda_range=(-40.0, 25.0))


def _images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        y, x = np.mgrid[0:96, 0:96]
        pixels = (120 + 60 * np.sin(x / (8 + i)) + 30 * np.cos(y / 11) + rng.normal(0, 8, (96, 96))).clip(0, 255)
        path = folder / f"xray{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 4-case study (2 TPs, 2 FPs, --balance 2) made with tiny models: every prediction is positive."""
    from latentshift.options import ExplainOptions

    root = tmp_path_factory.mktemp("study")
    manifest = json.loads(write_tiny_manifest(root).read_text())
    manifest["models"][0]["thresholds"] = [1e-6, None]  # every case predicted positive: truth decides TP/FP
    (root / "manifest.json").write_text(json.dumps(manifest))
    rows = ["path,target,truth"] + [f"{p.name},Pneumonia,{'positive' if i % 2 else 'negative'}"
                                    for i, p in enumerate(_images(root, 6))]
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    create_study(root / "cases.csv", root / "study", balance=2, seed=3, options=ExplainOptions(**FAST),
                 manifest_path=str(root / "manifest.json"))
    shutil.copytree(root / "study", root / "pristine")  # a copy no reader has touched, for the kill test
    return root


@pytest.fixture(scope="module")
def served(study):
    from latentshift.study.app import build_app, launch_options

    demo, service = build_app(study / "study")
    demo.launch(**launch_options(service, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                                 prevent_thread_lock=True))
    try:
        yield demo.local_url, service
    finally:
        demo.close(verbose=False)


def client(url: str, folder: Path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(folder))


def read_through(api, reader: str, rating_of, limit: int = 100) -> list[dict]:
    """Rate every case a reader is given; returns the infos seen."""
    seen = []
    for _ in range(limit):
        info, files = api.predict(reader, api_name="/study_next")
        if info["done"]:
            return seen
        seen.append({**info, "files": files})
        api.predict(reader, info["case_id"], info["condition"], rating_of(reader, info), api_name="/study_rate")
    raise AssertionError("the study never said done")


def rating_rule(reader: str, info: dict) -> int:
    number = int(info["case_id"][1:]) + len(reader)
    maps = 1 + number % 4
    return maps if info["condition"] == "maps" else min(5, max(1, maps + (number * 7) % 3 - 1 + number % 2))


def test_create_records_outcomes_both_conditions_and_wal(study):
    manifest = load_study(study / "study")
    assert [c["outcome"] for c in manifest["cases"]].count("TP") == 2
    assert [c["outcome"] for c in manifest["cases"]].count("FP") == 2
    for case in manifest["cases"]:
        assert [Path(m).name for m in case["media"]["maps"]] == ["gradcam.png", "integrated_gradients.png"]
        with Image.open(study / "study" / case["media"]["latent_shift"][0]) as gif:
            assert gif.is_animated
        assert case["prediction"] >= case["threshold"]
    with sqlite3.connect(study / "study" / "study.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(StudyError, match="already holds a study"):
        create_study(study / "cases.csv", study / "study")


def test_schedule_is_seeded_far_apart_and_counterbalanced():
    cases = [f"c{i:03d}" for i in range(1, 21)]
    first, second = reader_schedule(cases, "R1", 0, 7), reader_schedule(cases, "R2", 1, 7)
    assert first == reader_schedule(cases, "R1", 0, 7) and first != reader_schedule(cases, "R3", 0, 7)
    for order in (first, second):
        assert sorted(order) == sorted((c, k) for c in cases for k in ("maps", "latent_shift"))
        positions = {}
        for i, (case, _) in enumerate(order):
            positions.setdefault(case, []).append(i)
        assert all(a < 20 <= b and b - a > 10 for a, b in positions.values())
        assert sum(k == "maps" for _, k in order[:20]) == 10
    starts = [{c: k for c, k in order[:20]} for order in (first, second)]
    assert all(starts[0][c] != starts[1][c] for c in cases)


def test_two_readers_at_once_then_analysis_equals_scipy(served, study, tmp_path):
    url, service = served
    results = {}

    def reader(code):
        results[code] = read_through(client(url, tmp_path / code), code, rating_rule)

    threads = [threading.Thread(target=reader, args=(code,)) for code in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for code, seen in results.items():
        assert [(s["case_id"], s["condition"]) for s in seen] == service.store.assignments(code)
        assert [s["position"] for s in seen] == list(range(1, 9)) and seen[0]["total"] == 8
        for s in seen:
            assert not {"truth", "outcome", "source"} & set(s) and not {"truth", "outcome"} & set(s["claim"])
            assert len(s["files"]) == (2 if s["condition"] == "maps" else 1)
    result = study_analyze.analyze(study / "study", csv_path=tmp_path / "ratings.csv")
    with open(tmp_path / "ratings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and {r["reader"] for r in rows} == {"alice", "bob"}
    for code in ("alice", "bob"):
        assert {r["case_id"] for r in rows if r["reader"] == code and r["condition"] == "maps"} == \
            {c["id"] for c in load_study(study / "study")["cases"]}
    check_against_scipy(result, rows)
    assert Path(result["plot"]).stat().st_size > 1000


def check_against_scipy(result: dict, rows: list[dict]) -> None:
    """Every pooled and per-reader TP/FP figure equals scipy's on the exported ratings."""
    table = {(r["reader"], r["case_id"], r["condition"]): int(r["rating"]) for r in rows}
    outcome = {r["case_id"]: r["outcome"] for r in rows}
    scopes = [("pooled", result["pooled"], None)] + [(code, g, code) for code, g in result["readers"].items()]
    for _, groups, only in scopes:
        for key, name in (("tp", "TP"), ("fp", "FP")):
            pairs = [(table[(r, c, "maps")], table[(r, c, "latent_shift")]) for (r, c, k) in table
                     if k == "maps" and outcome[c] == name and (only is None or r == only)
                     and (r, c, "latent_shift") in table]
            maps, shift = np.array(pairs, float).T
            got = groups[key]
            assert got["n"] == len(pairs)
            assert got["mean_diff"] == pytest.approx(np.mean(shift - maps), abs=1e-12)
            assert got["sd"] == pytest.approx(np.std(shift - maps, ddof=1), abs=1e-12)
            if np.any(shift != maps):
                assert got["p_ttest"] == pytest.approx(stats.ttest_rel(shift, maps).pvalue, abs=1e-12)
                assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(shift, maps).pvalue, abs=1e-12)


def test_refusals_have_messages(served, tmp_path):
    from gradio_client.exceptions import AppError

    url, _ = served
    api = client(url, tmp_path)
    info, _ = api.predict("carol", api_name="/study_next")
    other = "c999"
    cases = [("carol", info["case_id"], info["condition"], 0, "whole number from 1 to 5"),
             ("carol", info["case_id"], info["condition"], 6, "whole number from 1 to 5"),
             ("carol", info["case_id"], info["condition"], 2.5, "whole number from 1 to 5"),
             ("carol", other, "maps", 3, "has not been shown"),
             ("carol", info["case_id"], "heatmap", 3, "unknown condition"),
             ("not a code!", info["case_id"], info["condition"], 3, "reader code")]
    for reader, case_id, condition, rating, message in cases:
        with pytest.raises(AppError, match=message):
            api.predict(reader, case_id, condition, rating, api_name="/study_rate")
    later = [k for c, k in reader_schedule_of(served, "carol")[1:] if c == info["case_id"]][0]
    with pytest.raises(AppError, match="has not been shown"):
        api.predict("carol", info["case_id"], later, 3, api_name="/study_rate")
    api.predict("carol", info["case_id"], info["condition"], 4, api_name="/study_rate")
    with pytest.raises(AppError, match="already rated"):
        api.predict("carol", info["case_id"], info["condition"], 5, api_name="/study_rate")


def reader_schedule_of(served, code: str) -> list[tuple[str, str]]:
    return served[1].store.assignments(code)


def test_analysis_known_answer(tmp_path):
    """Hand-made ratings whose differences are known: d_tp = (1, 1, 0, 2, 1, -1), d_fp = (0, -1, 1, 0, 0, 2)."""
    ids = [f"c{i:02d}" for i in range(12)]
    cases = [{"id": c, "target": "Pneumonia" if i < 8 else "Effusion", "outcome": "TP" if i % 2 == 0 else "FP",
              "truth": "positive" if i % 2 == 0 else "negative", "prediction": 0.7, "threshold": 0.5,
              "media": {}} for i, c in enumerate(ids)]
    (tmp_path / "study.json").write_text(json.dumps({"seed": 1, "cases": cases}))
    store = open_store(tmp_path)
    d = {"TP": [1, 1, 0, 2, 1, -1], "FP": [0, -1, 1, 0, 0, 2]}
    index = {"TP": 0, "FP": 0}
    wanted = {}
    for case in cases:
        maps = 2 + index[case["outcome"]] % 2
        wanted[case["id"]] = {"maps": maps, "latent_shift": maps + d[case["outcome"]][index[case["outcome"]]]}
        index[case["outcome"]] += 1
    for code in ("r1", "r2"):
        rate_all(store, code, lambda c, k: wanted[c][k])
    result = study_analyze.analyze(tmp_path)
    for key, name in (("tp", "TP"), ("fp", "FP")):
        diffs = np.array(d[name] * 2, float)
        got = result["pooled"][key]
        assert got["n"] == 12 and got["mean_diff"] == pytest.approx(diffs.mean())
        assert got["sd"] == pytest.approx(diffs.std(ddof=1))
        assert got["p_ttest"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
        assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
        assert result["readers"]["r1"][key]["mean_diff"] == pytest.approx(np.mean(d[name]))
    assert result["kappa"]["pairs"][0]["kappa"] == pytest.approx(1.0) and result["kappa"]["pairs"][0]["n"] == 24
    assert set(result["findings"]) == {"Pneumonia", "Effusion"} and result["findings"]["Effusion"]["tp"]["n"] == 4


def rate_all(store: Store, code: str, rating_of) -> None:
    while not (step := store.next_assignment(code))["done"]:
        store.rate(code, step["case_id"], step["condition"], rating_of(step["case_id"], step["condition"]))


def test_quadratic_kappa_matches_its_closed_form():
    """κ_w(quadratic) = 2·cov(a, b) / (var a + var b + (ā − b̄)²), population moments."""
    rng = np.random.default_rng(5)
    a = rng.integers(1, 6, 40)
    b = np.clip(a + rng.integers(-1, 2, 40), 1, 5)
    expected = 2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
    assert study_analyze.quadratic_kappa(list(a), list(b)) == pytest.approx(expected)
    assert study_analyze.quadratic_kappa([3, 3], [3, 3]) is None


def _serve(study_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
           "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "latentshift", "study", "serve", str(study_dir),
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2)
            return process
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.3)
    process.kill()
    raise AssertionError("study serve did not start within 60 s")


def test_sigkill_loses_no_rating_and_the_reader_resumes(study, tmp_path):
    study_dir = study / "pristine"
    port = free_port()
    process = _serve(study_dir, port)
    try:
        api = client(f"http://127.0.0.1:{port}/", tmp_path)
        given = []
        for _ in range(3):
            info, _ = api.predict("dana", api_name="/study_next")
            api.predict("dana", info["case_id"], info["condition"], 4, api_name="/study_rate")
            given.append((info["case_id"], info["condition"]))
        shown, _ = api.predict("dana", api_name="/study_next")  # served, not rated, when the server dies
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    process = _serve(study_dir, port)
    try:
        info, _ = client(f"http://127.0.0.1:{port}/", tmp_path).predict("dana", api_name="/study_next")
        assert info["position"] == 4 and (info["case_id"], info["condition"]) == (shown["case_id"], shown["condition"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    ratings = open_store(study_dir).ratings()
    assert [(r["case_id"], r["condition"], r["rating"]) for r in ratings] == [(c, k, 4) for c, k in given]
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in ratings)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_reading_page_in_chromium_with_keys(served):
    from playwright.sync_api import sync_playwright

    url, service = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#reader-code textarea, #reader-code input").first.fill("erin")
            page.locator("#start").click()
            progress_says(page, "Case 1 of 8")
            first = service.store.assignments("erin")[0]
            page.locator("#media-1 img").first.wait_for(state="visible", timeout=20_000)
            assert page.locator("#media-2 img").count() == (1 if first[1] == "maps" else 0)
            body = page.inner_text("body")
            assert "negative" not in body.replace("predicts Pneumonia: positive", "") and "truth" not in body.lower()
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("3")
            progress_says(page, "Case 2 of 8")
            page.locator("#rate-5").click()
            progress_says(page, "Case 3 of 8")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)
            page.locator("#stop").click()
            progress_says(page, "2 ratings are saved")
            page.locator("#start").click()
            progress_says(page, "Case 3 of 8")
        finally:
            browser.close()
    ratings = [(r["case_id"], r["condition"], r["rating"]) for r in service.store.ratings() if r["reader"] == "erin"]
    order = service.store.assignments("erin")
    assert ratings == [(*order[0], 3), (*order[1], 5)]


def progress_says(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#progress')?.innerText.includes(t)", arg=text,
                           timeout=30_000)
