"""``study create``: the cases of a reader study, both presentations precomputed.

CASES.csv has the columns ``path`` (image file, relative to the CSV or absolute),
``target`` (the finding) and ``truth`` (``positive`` or ``negative``). Every case is
predicted first; its outcome at the classifier's threshold is TP, FP, TN or FN.
``balance=N`` keeps N true and N false positives (seeded); ``positives=N`` keeps N
predicted positives, false ones first up to N/2 (when the classifier makes too few FPs for a balance). Each kept case is then explained
once, and both conditions show files of that one run: ``maps`` the Grad-CAM and Integrated
Gradients overlays, ``latent_shift`` the GIF with its prediction bar; both state the same
prediction. The folder gets ``study.json`` (the manifest) and ``study.sqlite`` (WAL).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..options import ExplainOptions
from ..pipeline import Pipeline
from ..settings import Settings
from .schedule import CONDITIONS
from .store import DATABASE_NAME, Store, StudyError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "study.json"
FORMAT_VERSION = 1
DEFAULT_THRESHOLD = 0.5
#: Which explanation files each condition shows, in order.
CONDITION_FILES = {"maps": ("gradcam", "integrated_gradients"), "latent_shift": ("gif",)}
TRUTHS = ("positive", "negative")


@dataclass
class Case:
    """One row of CASES.csv with its prediction."""

    source: Path
    target: str
    truth: str
    prediction: float = float("nan")
    threshold: float = DEFAULT_THRESHOLD
    outcome: str = ""


def read_cases(csv_path: str | Path) -> list[Case]:
    """The rows of CASES.csv; raises StudyError naming the first bad row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise StudyError(f"no cases file at {csv_path}")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"path", "target", "truth"} - set(rows[0] if rows else {})
    if missing:
        raise StudyError(f"{csv_path} needs the columns path, target, truth (missing: {', '.join(sorted(missing))})")
    cases = []
    for number, row in enumerate(rows, start=2):
        truth = row["truth"].strip().lower()
        source = Path(row["path"].strip())
        source = source if source.is_absolute() else csv_path.parent / source
        if truth not in TRUTHS:
            raise StudyError(f"{csv_path} line {number}: truth must be positive or negative, not {row['truth']!r}")
        if not source.is_file():
            raise StudyError(f"{csv_path} line {number}: no image at {source}")
        cases.append(Case(source, row["target"].strip(), truth))
    if not cases:
        raise StudyError(f"{csv_path} lists no cases")
    return cases


def outcome_of(prediction: float, threshold: float, truth: str) -> str:
    """TP, FP, TN or FN of one prediction at the threshold (positive when prediction ≥ threshold)."""
    predicted = prediction >= threshold
    return {(True, "positive"): "TP", (True, "negative"): "FP",
            (False, "negative"): "TN", (False, "positive"): "FN"}[(predicted, truth)]


def predict_cases(pipeline: Pipeline, cases: list[Case]) -> None:
    """Fill each case's prediction, threshold and outcome."""
    for case in cases:
        predictions = pipeline.predict(pipeline.load_image(case.source))
        target, _ = pipeline.target_index(case.target, predictions)
        case.target = target
        threshold = pipeline.thresholds.get(target)
        case.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        case.prediction = float(predictions[target])
        case.outcome = outcome_of(case.prediction, case.threshold, case.truth)


def select_cases(cases: list[Case], balance: int | None, seed: int, positives: int | None = None) -> list[Case]:
    """All cases; or N true and N false positives (``balance``); or N predicted positives with
    as many false positives as there are up to N/2 (``positives``); drawn with the seed, kept in CSV order."""
    if positives is not None:
        return _predicted_positives(cases, positives, seed)
    if balance is None:
        return list(cases)
    chosen = []
    rng = random.Random(seed)
    for outcome in ("TP", "FP"):
        pool = [i for i, case in enumerate(cases) if case.outcome == outcome]
        if len(pool) < balance:
            counts = {o: sum(c.outcome == o for c in cases) for o in ("TP", "FP", "TN", "FN")}
            raise StudyError(f"--balance {balance} needs {balance} {outcome}s but the cases have "
                             f"{len(pool)} (outcomes: {counts}); add cases or lower --balance")
        chosen += rng.sample(pool, balance)
    return [cases[i] for i in sorted(chosen)]


def _predicted_positives(cases: list[Case], count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    fps = [i for i, case in enumerate(cases) if case.outcome == "FP"]
    tps = [i for i, case in enumerate(cases) if case.outcome == "TP"]
    chosen = rng.sample(fps, min(len(fps), count // 2))
    if len(chosen) + len(tps) < count:
        raise StudyError(f"--positives {count}: the cases have only {len(fps) + len(tps)} predicted positives "
                         f"({len(tps)} TPs, {len(fps)} FPs)")
    false_count = len(chosen)
    chosen += rng.sample(tps, count - false_count)
    if false_count < count // 2:
        logger.warning("only %d false positives among the cases: the study has %d TPs and %d FPs",
                       len(fps), count - false_count, false_count)
    return [cases[i] for i in sorted(chosen)]


def explain_case(pipeline: Pipeline, case: Case, case_id: str, options: ExplainOptions, out: Path) -> dict:
    """Explain one case into ``out/cases/<id>/`` and return its manifest record."""
    folder = out / "cases" / case_id
    explanation = pipeline.explain(pipeline.load_image(case.source), options.replace(target=case.target),
                                   folder / "run")
    media = {}
    for condition in CONDITIONS:
        (folder / condition).mkdir(parents=True, exist_ok=True)
        media[condition] = []
        for key in CONDITION_FILES[condition]:
            produced = Path(explanation.files[key])
            shutil.copyfile(produced, folder / condition / produced.name)
            media[condition].append(f"cases/{case_id}/{condition}/{produced.name}")
    shutil.rmtree(folder / "run")  # only the files readers are shown stay in the study folder
    return {"id": case_id, "source": str(case.source), "target": explanation.target, "truth": case.truth,
            "prediction": round(explanation.predictions[explanation.target], 6), "threshold": case.threshold,
            "outcome": case.outcome, "media": media}


def create_study(cases_csv: str | Path, out: str | Path, *, classifier: str | None = None,
                 autoencoder: str | None = None, balance: int | None = None, seed: int = 0, positives: int | None = None,
                 options: ExplainOptions | None = None, manifest_path: str | None = None,
                 settings: Settings | None = None) -> dict:
    """Write the study folder (study.json, study.sqlite, cases/); return the manifest. ``settings``:
    as for :meth:`~latentshift.pipeline.Pipeline.store`."""
    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        raise StudyError(f"{out} already holds a study; choose another --out folder")
    if balance is not None and positives is not None:
        raise StudyError("choose --balance or --positives, not both")
    if (balance is not None and balance < 1) or (positives is not None and positives < 2):
        raise StudyError("--balance must be at least 1 and --positives at least 2")
    cases = read_cases(cases_csv)
    pipeline = Pipeline.get(classifier, autoencoder, manifest_path=manifest_path, settings=settings)
    predict_cases(pipeline, cases)
    chosen = select_cases(cases, balance, seed, positives)
    options = (options or ExplainOptions()).validate()
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for number, case in enumerate(chosen, start=1):
        logger.info("explaining case %d of %d: %s", number, len(chosen), case.source.name)
        records.append(explain_case(pipeline, case, f"c{number:03d}", options, out))
    manifest = {"format_version": FORMAT_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seed": int(seed), "balance": balance, "positives": positives, "conditions": list(CONDITIONS),
                "condition_files": {k: list(v) for k, v in CONDITION_FILES.items()},
                "models": {"classifier": pipeline.classifier_id, "autoencoder": pipeline.autoencoder_id},
                "options": options.to_dict(), "cases": records}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    open_store(out, manifest).initialise()
    return manifest


def load_study(study_dir: str | Path) -> dict:
    """study.json of a study folder (raises StudyError if there is none)."""
    path = Path(study_dir) / MANIFEST_NAME
    if not path.is_file():
        raise StudyError(f"{study_dir} is not a study folder (no {MANIFEST_NAME}); make one with "
                         "`latentshift study create`")
    return json.loads(path.read_text(encoding="utf-8"))


def open_store(study_dir: str | Path, manifest: dict | None = None) -> Store:
    """The study's database, its tables created if missing."""
    manifest = manifest or load_study(study_dir)
    store = Store(Path(study_dir) / DATABASE_NAME, [c["id"] for c in manifest["cases"]], manifest["seed"])
    store.initialise()
    return store
