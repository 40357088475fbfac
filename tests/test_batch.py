"""latentshift batch: folder and CSV input, error rows, resume, results.csv, the gallery, --workers and Ray
(tiny models from tiny_models.py; the Ray test starts a 2-CPU local cluster on loopback)."""

from __future__ import annotations

import csv
import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from latentshift.batch import BatchConfig, run_batch
from latentshift.batch import resume
from latentshift.batch.results import COLUMNS
from latentshift.cli import main
from latentshift.options import ExplainOptions
from tiny_models import write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]
SETUP = "tiny_models:register_tiny_architectures"
#: What must agree between two runs of the same batch (everything but the seconds).
SAME = ("name", "classifier", "target", "initial_pred", "pred_curtail", "pred_exaggerate", "lambda_min",
        "lambda_max", "lambdas", "preds", "stop_curtail", "stop_exaggerate", "curtail_crossed", "error")


def noise_png(path: Path, seed: int, side: int = 40) -> Path:
    """A grey noise PNG (side × side, seeded) at ``path``; its folders are created."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((128 + 40 * rng.standard_normal((side, side))).clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def batch_input(tmp_path):
    """(input folder with 3 images, one in a sub-folder, and a broken file; tiny manifest)."""
    manifest = write_tiny_manifest(tmp_path)
    folder = tmp_path / "in"
    for i, name in enumerate(("a.png", "sub/b.png", "c.png")):
        noise_png(folder / name, i)
    (folder / "broken.png").write_bytes(b"this is not an image")
    (folder / "notes.txt").write_text("not an input")
    return folder, manifest


def _config(out: Path, manifest: Path, **changes) -> BatchConfig:
    options = changes.pop("options", ExplainOptions(frames=5, maps=("gradcam",), target="Pneumonia"))
    return BatchConfig(out_dir=str(out), options=options, manifest=str(manifest), setup=SETUP, **changes)


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _same(rows: list[dict]) -> list[tuple]:
    return [tuple(row[k] for k in SAME) for row in rows]


def test_folder_batch_through_the_cli_writes_a_row_per_file_and_one_error_row(batch_input, tmp_path, capsys):
    folder, manifest = batch_input
    out = tmp_path / "out"
    code = main(["batch", str(folder), "--out", str(out), "--manifest", str(manifest), "--setup", SETUP,
                 "--frames", "5", "--maps", "gradcam", "--target", "Pneumonia", "--no-progress"])
    assert code == 0
    assert "4 rows: 4 explained, 0 already done, 1 with an error" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == list(COLUMNS)
    assert [row["name"] for row in rows] == ["a", "broken", "c", "sub__b"], "notes.txt is no input"
    broken = rows[1]
    assert "broken.png" in broken["error"] and "not an image" in broken["error"] and not broken["lambdas"]
    for row in (rows[0], rows[2], rows[3]):
        assert row["error"] == "" and row["target"] == "Pneumonia" and row["threshold"] == "0.5"
        assert len(json.loads(row["lambdas"])) == 5 and len(json.loads(row["preds"])) == 5
        assert float(row["lambda_min"]) <= 0 <= float(row["lambda_max"])
        assert row["curtail_crossed"] in ("true", "false") and row["stop_curtail"]
        assert (out / row["gif"]).is_file() and (out / row["folder"] / "summary.json").is_file()
        assert float(row["seconds"]) > 0
    assert (out / "index.html").is_file()


def test_csv_input_with_target_label_and_classifier(batch_input, tmp_path):
    folder, manifest = batch_input
    table = tmp_path / "list.csv"
    table.write_text("path,target,label,classifier\n"
                     "in/a.png,Pneumonia,pneumonia,\n"
                     "in/c.png,Effusion,normal,tiny-classifier\n"
                     "in/missing.png,,,\n", encoding="utf-8")
    report = run_batch(table, _config(tmp_path / "out", manifest), progress=False)
    a, c, missing = report.rows
    assert (a["name"], a["target"], a["truth"], c["target"], c["truth"]) == (
        "in__a", "Pneumonia", "positive", "Effusion", "negative")
    assert a["result"] in ("true positive", "false negative") and c["threshold"] is None and c["result"] == ""
    assert "missing.png" in missing["error"]
    with pytest.raises(Exception, match="needs a 'path' column"):
        (tmp_path / "bad.csv").write_text("file\nin/a.png\n")
        run_batch(tmp_path / "bad.csv", _config(tmp_path / "out2", manifest), progress=False)


def test_rerun_skips_finished_items_and_redoes_an_interrupted_one(batch_input, tmp_path):
    folder, manifest = batch_input
    out = tmp_path / "out"
    first = run_batch(folder, _config(out, manifest), progress=False)
    assert (first.computed, first.skipped) == (4, 0)
    again = run_batch(folder, _config(out, manifest), progress=False)
    assert (again.computed, again.skipped) == (0, 4), "complete items (and the known-bad file) are skipped"
    assert _same(again.rows) == _same(first.rows)

    # an item interrupted after its GIF but before its marker, with a stray temporary marker
    interrupted = out / "c" / "tiny-classifier"
    (interrupted / resume.MARKER_NAME).unlink()
    (interrupted / ".done-x.tmp").write_text("{half")
    # an item whose marker is there but one of its files is gone
    (out / "a" / "tiny-classifier" / "heatmap.png").unlink()
    third = run_batch(folder, _config(out, manifest), progress=False)
    assert (third.computed, third.skipped) == (2, 2)
    assert (interrupted / resume.MARKER_NAME).is_file() and (out / "a/tiny-classifier/heatmap.png").is_file()

    noise_png(folder / "c.png", 99)  # new content under the same name
    fourth = run_batch(folder, _config(out, manifest), progress=False)
    assert fourth.computed == 1
    fifth = run_batch(folder, _config(out, manifest, options=ExplainOptions(frames=6, maps=("gradcam",))),
                      progress=False)
    assert fifth.computed == 4, "other options: every item again"


def test_a_marker_is_never_half_written(tmp_path, monkeypatch):
    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resume.write_marker(tmp_path, {"k": 1}, {"name": "x"}, [])
    assert list(tmp_path.iterdir()) == [], "neither done.json nor its temporary file is left"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.tags, self.cards = [], set(), [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.ids.add(attrs.get("id"))
        self.cards += "card" in (attrs.get("class") or "").split()
        for key, value in attrs.items():
            if key in ("src", "href", "data-gif", "data-folder", "action", "srcset") and value is not None:
                self.links.append(value)


def test_gallery_has_only_relative_links_and_its_filters(batch_input, tmp_path):
    folder, manifest = batch_input
    out = tmp_path / "out"
    report = run_batch(folder, _config(out, manifest), progress=False)
    page = (out / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert parser.links, "the gallery links its pictures"
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        if link != "#":
            assert (out / link).exists(), f"{link} does not exist"
    assert "http:" not in page and "https:" not in page and "@import" not in page and "url(" not in page
    assert "link" not in parser.tags and page.count("<script") == 1 and "<script src" not in page
    assert {"filter-finding", "filter-label", "filter-outcome", "viewer"} <= parser.ids
    assert parser.cards == len(report.rows) == 4
    assert page.count('data-outcome="error"') == 1


def test_two_workers_give_the_same_results_as_one(batch_input, tmp_path):
    folder, manifest = batch_input
    run_batch(folder, _config(tmp_path / "one", manifest), progress=False)
    report = run_batch(folder, _config(tmp_path / "two", manifest), workers=2, progress=False)
    assert report.computed == 4
    assert _same(_rows(tmp_path / "two")) == _same(_rows(tmp_path / "one"))


def test_parquet_beside_the_csv_when_pyarrow_is_there(batch_input, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    folder, manifest = batch_input
    run_batch(folder, _config(tmp_path / "out", manifest), progress=False)
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [tuple(row[k] for k in SAME) for row in table] == _same(_rows(tmp_path / "out"))


def test_ray_missing_or_bad_options_are_one_line_errors(batch_input, tmp_path, monkeypatch, capsys):
    folder, manifest = batch_input
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    base = ["batch", str(folder), "--out", str(tmp_path / "o"), "--manifest", str(manifest), "--no-progress"]
    assert main(base + ["--ray", "auto"]) == 2
    assert "latentshift[distributed]" in capsys.readouterr().err
    assert main(base + ["--classifiers", "nope"]) == 2
    assert "unknown classifier(s) nope" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ray_cluster_of_two_workers_gives_the_local_results(batch_input, tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'latentshift[distributed]')")
    folder, manifest = batch_input
    run_batch(folder, _config(tmp_path / "local", manifest), progress=False)
    # Ray's workers must import this checkout and tiny_models (for the setup hook)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    try:
        code = main(["batch", str(folder), "--out", str(tmp_path / "ray"), "--manifest", str(manifest),
                     "--setup", SETUP, "--frames", "5", "--maps", "gradcam", "--target", "Pneumonia",
                     "--ray", "auto", "--no-progress"])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err
    assert _same(_rows(tmp_path / "ray")) == _same(_rows(tmp_path / "local"))


def test_classifiers_are_checked_against_the_manifest_the_pipelines_load(tmp_path):
    from latentshift.batch.driver import resolve_classifiers
    from latentshift.errors import OptionsError

    manifest = str(write_tiny_manifest(tmp_path))  # merged over the package's, as --manifest says
    assert resolve_classifiers([], [], manifest) == ["tiny-classifier"]
    assert resolve_classifiers(["demo-pneumonia-classifier"], [], manifest) == ["demo-pneumonia-classifier"]
    with pytest.raises(OptionsError, match="nope"):
        resolve_classifiers(["nope"], [], manifest)
