"""Item batching: ``LatentShift.attribute`` of a batch against one call per image, and
``latentshift batch --item-batch K`` against ``--item-batch 1`` (tiny models, CPU only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentshift import LatentShift
from latentshift.core import ShiftOptions
from latentshift.batch import BatchConfig, run_batch
from latentshift.cli import main
from latentshift.errors import OptionsError
from latentshift.options import ExplainOptions
from test_batch import noise_png
from tiny_models import LinearAutoencoder, LinearClassifier, SineClassifier, write_tiny_manifest

SIDE = 8
SETUP = "tiny_models:register_tiny_architectures"


def images(count: int, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 1, SIDE, SIDE, generator=generator) * 2 - 1) * 1024


def explainer(classifier=None, **kwargs) -> LatentShift:
    """A classifier strong enough that the images' searches stop for different reasons."""
    return LatentShift(classifier or LinearClassifier(SIDE, outputs=3, scale=2000.0), LinearAutoencoder(SIDE),
                       **kwargs)


#: Search limits under which the 4 test images stop at floor, ceiling, pred_diff and the budget.
LIMITS = dict(step_size=2.0, pixel_budget=0.5, pred_diff=0.3)


def assert_same(single, batched):
    # bisect places its probes where the rules' lines cross, so its λs carry the predictions'
    # float rounding (batches of other shapes round differently; up to 7e-5 relative measured on
    # the sine classifier's short exaggerate side, far inside bisect's 2 %); the ladder's λs are exact
    np.testing.assert_allclose(single.lambda_range, batched.lambda_range, rtol=1e-4)
    assert single.stop_reasons == batched.stop_reasons
    assert single.evaluations == batched.evaluations
    assert single.target == batched.target
    np.testing.assert_allclose(single.lambdas, batched.lambdas, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(single.preds, batched.preds, atol=1e-5)
    np.testing.assert_allclose(single.all_preds, batched.all_preds, atol=1e-5)
    np.testing.assert_allclose(single.pixel_change, batched.pixel_change, rtol=1e-5, atol=1e-5)
    assert abs(single.initial_pred - batched.initial_pred) < 1e-5
    assert single.frames_from == batched.frames_from
    assert (single.reconstruction_pred is None) == (batched.reconstruction_pred is None)
    assert abs(single.zero_pred - batched.zero_pred) < 1e-5
    torch.testing.assert_close(single.frames, batched.frames, rtol=1e-4, atol=1e-3)  # float32 rounding of other batch shapes
    np.testing.assert_allclose(single.heatmap, batched.heatmap, rtol=1e-4, atol=1e-3)
    assert set(single.timings) == set(batched.timings) and all(v >= 0 for v in batched.timings.values())


@pytest.mark.parametrize("options", [
    dict(search="bisect"),
    dict(search="ladder"),
    dict(search="ladder", search_batch=3),
    dict(search="bisect", direction="curtail"),
    dict(lambda_range=(-120.0, 80.0)),
    dict(search="bisect", frames_from="reconstruction"),
    dict(lambda_range=(-120.0, 80.0), frames_from="reconstruction"),
], ids=["bisect", "ladder", "ladder-batch3", "bisect-curtail", "fixed-range", "bisect-paper", "fixed-range-paper"])
def test_a_batch_gives_the_answers_of_one_call_per_image(options):
    shift = explainer(batch_size=3)
    xs, targets = images(4), [0, 2, 1, 0]
    options = ShiftOptions(**LIMITS, frames=9, **options)
    batched = shift.attribute(xs, targets, options)
    singles = [result for i, t in enumerate(targets) for result in shift.attribute(xs[i:i + 1], t, options)]
    assert len(batched) == 4
    for single, result in zip(singles, batched):
        assert_same(single, result)
    if options.lambda_range is None:
        assert len({r.lambda_range for r in batched}) > 1, "the images' searches end apart"
        assert len({tuple(r.stop_reasons.values()) for r in batched}) > 1, "and for different reasons"
        assert len({r.evaluations for r in batched}) > 1


def test_a_batch_with_a_non_monotone_classifier_and_given_initial_preds():
    shift = LatentShift(SineClassifier(period=30.0), LinearAutoencoder(SIDE), batch_size=2)
    xs, options = images(3, seed=5), ShiftOptions(search="bisect", frames=5)
    batched = shift.attribute(xs, [0, 0, 0], options, initial_preds=[0.1, 0.2, 0.3])
    for i, result in enumerate(batched):
        [single] = shift.attribute(xs[i:i + 1], 0, options, initial_preds=[0.1 * (i + 1)])
        assert_same(single, result)
        assert result.initial_pred == pytest.approx(0.1 * (i + 1))


def test_one_target_index_applies_to_every_image():
    shift, xs, options = explainer(), images(3), ShiftOptions(lambda_range=(-1.0, 1.0), frames=3)
    shared, listed = shift.attribute(xs, 2, options), shift.attribute(xs, [2, 2, 2], options)
    assert [r.target for r in shared] == [2, 2, 2]
    for a, b in zip(shared, listed):
        assert torch.equal(a.frames, b.frames) and np.array_equal(a.preds, b.preds)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.attribute(images(2)[0], [0]), r"shape \(B, 1, H, W\)"),
    (lambda s: s.attribute(images(2)[:0], []), r"B ≥ 1"),
    (lambda s: s.attribute(images(2), [0]), "one target, or one per image: 2 images, 1 targets"),
    (lambda s: s.attribute(images(2), [0, -1]), "image 1: target must be"),
    (lambda s: s.attribute(images(1), -1), "^target must be a non-negative output index"),
    (lambda s: s.attribute(images(2), [0, 1], initial_preds=[0.5]), "one initial prediction per image"),
    (lambda s: s.attribute(images(2), [0, 1], ShiftOptions(frames=1)), "frames must be at least 2"),
])
def test_bad_batch_input_raises_clear_errors(call, message):
    with pytest.raises(OptionsError, match=message):
        call(explainer())


# ---------------------------------------------------------------- the pipeline and the batch

#: results.csv columns that must agree between --item-batch 1 and K (exactly: strings).
EXACT = ("name", "classifier", "target", "lambda_min", "lambda_max", "lambdas", "stop_curtail", "stop_exaggerate",
         "curtail_crossed", "exaggerate_crossed", "predicted_positive", "error")
#: ... and as numbers (rounded to 6 digits in the CSV; batched passes may move the last one).
CLOSE = ("initial_pred", "pred_curtail", "pred_exaggerate", "preds", "predictions", "pixel_change_curtail")


@pytest.fixture()
def folder(tmp_path):
    """(5 images, one in a sub-folder, plus a broken file; the tiny manifest)."""
    manifest = write_tiny_manifest(tmp_path)
    root = tmp_path / "in"
    for i, name in enumerate(("a.png", "b.png", "sub/c.png", "d.png", "e.png")):
        noise_png(root / name, i)
    (root / "broken.png").write_bytes(b"this is not an image")
    return root, manifest


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _numbers(cell: str) -> list[float]:
    if cell == "":
        return []
    value = json.loads(cell)
    return [float(v) for v in (value.values() if isinstance(value, dict) else
                               value if isinstance(value, list) else [value])]


def assert_same_results(one: list[dict], many: list[dict]):
    assert [tuple(r[k] for k in EXACT) for r in many] == [tuple(r[k] for k in EXACT) for r in one]
    for a, b in zip(one, many):
        for key in CLOSE:
            np.testing.assert_allclose(_numbers(b[key]), _numbers(a[key]), atol=2e-6, err_msg=key)


def _batch(folder, manifest, out, *extra):
    return main(["batch", str(folder), "--out", str(out), "--manifest", str(manifest), "--setup", SETUP,
                 "--frames", "5", "--maps", "gradcam", "--no-progress", *extra])


def test_item_batch_gives_the_results_of_one_item_at_a_time(folder, tmp_path, capsys, monkeypatch, caplog):
    from latentshift.pipeline import Pipeline

    root, manifest = folder
    assert _batch(root, manifest, tmp_path / "one", "--item-batch", "1") == 0
    sizes, explain_many = [], Pipeline.explain_many
    monkeypatch.setattr(Pipeline, "explain_many", lambda self, images, *a: sizes.append(len(images))
                        or explain_many(self, images, *a))
    assert _batch(root, manifest, tmp_path / "three", "--item-batch", "3") == 0
    assert sizes == [2, 3], "chunks a, b, broken and d, e, sub/c: the broken file read on its own"
    assert "one by one" not in caplog.text
    assert "6 rows: 6 explained, 0 already done, 1 with an error" in capsys.readouterr().out
    one, three = _rows(tmp_path / "one"), _rows(tmp_path / "three")
    assert [row["name"] for row in three] == ["a", "b", "broken", "d", "e", "sub__c"]
    assert "not an image" in three[2]["error"] and sum(bool(row["error"]) for row in three) == 1
    assert_same_results(one, three)
    for row in three:
        if not row["error"]:
            assert (tmp_path / "three" / row["gif"]).is_file() and float(row["seconds"]) > 0
    again = run_batch(root, BatchConfig(out_dir=str(tmp_path / "three"), manifest=str(manifest), setup=SETUP,
                                        item_batch=3, options=ExplainOptions(frames=5, maps=("gradcam",))),
                      progress=False)
    assert (again.computed, again.skipped) == (0, 6), "a rerun skips what a batched run finished"


def test_a_chunk_that_fails_together_is_redone_item_by_item(folder, tmp_path, caplog):
    """A target the classifier lacks fails the batched run of its chunk; each item then gets its own row."""
    root, manifest = folder
    table = tmp_path / "list.csv"
    table.write_text("path,target\nin/a.png,Pneumonia\nin/b.png,Nope\nin/d.png,Effusion\nin/broken.png,\n",
                     encoding="utf-8")
    rows = {}
    for size in (1, 4):
        config = BatchConfig(out_dir=str(tmp_path / f"out{size}"), manifest=str(manifest), setup=SETUP,
                             item_batch=size, options=ExplainOptions(frames=5, maps=()))
        rows[size] = run_batch(table, config, progress=False).rows
    assert "explaining them one by one" in caplog.text
    a, b, d, broken = rows[4]
    assert not a["error"] and not d["error"] and a["target"] == "Pneumonia" and d["target"] == "Effusion"
    assert "no output 'Nope'" in b["error"] and "not an image" in broken["error"]
    assert_same_results([{k: "" if v is None else str(v) for k, v in r.items()} for r in rows[1]],
                        [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows[4]])


def test_item_batch_default_follows_the_device():
    assert BatchConfig(out_dir="o").items_per_chunk == 1
    assert BatchConfig(out_dir="o", device="cuda").items_per_chunk == 8
    assert BatchConfig(out_dir="o", device="cuda:1", item_batch=2).items_per_chunk == 2


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_item_batch_is_a_one_line_error(folder, tmp_path, capsys, value):
    root, manifest = folder
    assert _batch(root, manifest, tmp_path / "o", "--item-batch", value) == 2
    assert f"--item-batch must be a whole number of at least 1, not {value}" in capsys.readouterr().err
    with pytest.raises(OptionsError, match="--item-batch"):
        BatchConfig(out_dir="o", item_batch=int(value))


def test_explain_many_gives_the_explanations_of_explain(folder, tmp_path):
    from latentshift.pipeline import Pipeline

    root, manifest = folder
    pipeline = Pipeline.get(manifest_path=str(manifest))
    paths = [root / "a.png", root / "b.png", root / "sub" / "c.png"]
    options = [ExplainOptions(frames=6, maps=("gradcam",), target=t) for t in ("Pneumonia", "Effusion", None)]
    many = pipeline.explain_many([pipeline.load_image(p) for p in paths], options,
                                 [tmp_path / "many" / str(i) for i in range(3)])
    for i, (path, explanation) in enumerate(zip(paths, many)):
        single = pipeline.explain(pipeline.load_image(path), options[i], tmp_path / "one" / str(i))
        assert explanation.stage == "done" and explanation.target == single.target
        assert set(explanation.files) == set(single.files) and set(explanation.timings) == set(single.timings)
        assert all(p.is_file() for p in explanation.files.values())
        assert_same(single.shift, explanation.shift)
        assert explanation.warnings == single.warnings
        for name, value in single.predictions.items():
            assert abs(explanation.predictions[name] - value) < 1e-6
    with pytest.raises(OptionsError, match="differ only in the target"):
        pipeline.explain_many([many[0].image] * 2, [ExplainOptions(frames=5), ExplainOptions(frames=6)],
                              [tmp_path / "x", tmp_path / "y"])
    with pytest.raises(OptionsError, match="one output folder per image"):
        pipeline.explain_many([many[0].image] * 2, None, [tmp_path / "x"])
