"""``study analyze``: the paper's statistics on the committed ratings.

For each reader and pooled over readers, and for true positives (``tp``) and false
positives (``fp``) separately, the paired difference d = rating(latent_shift) −
rating(maps) of every case rated in both conditions. The JSON (``analyze(...)``) has the keys

- ``pooled``: ``{"tp": STATS, "fp": STATS}``, every reader's pairs together
- ``readers``: ``{reader code: {"tp": STATS, "fp": STATS}}``
- ``findings``: ``{target finding: {"tp": STATS, "fp": STATS}}`` (pooled)
- ``kappa``: ``{"pairs": [{"readers": [a, b], "kappa": κ, "n": n}], "mean": κ̄}``, the
  quadratic-weighted Cohen's κ of two readers over the (case, condition) pairs both rated
- ``n_ratings``, ``n_readers``, ``plot`` (PNG of the rating distributions), ``csv`` (if exported)

STATS = ``{"n", "mean_diff", "sd", "mean_maps", "mean_latent_shift", "p_ttest", "p_wilcoxon"}``:
n pairs, the mean and sample standard deviation (ddof 1) of d, each condition's mean
rating, and the two-sided p-values of ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon``
(None where undefined: n < 2, or every difference zero).
"""

from __future__ import annotations

import csv
import itertools
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from .create import load_study, open_store

OUTCOMES = {"tp": "TP", "fp": "FP"}
CSV_COLUMNS = ("reader", "case_id", "condition", "rating", "seconds", "rated_at", "target", "outcome",
               "prediction", "threshold", "truth")


def paired_stats(maps: list[float], latent_shift: list[float]) -> dict:
    """STATS of paired ratings (same length, same case order)."""
    a, b = np.asarray(maps, float), np.asarray(latent_shift, float)
    d = b - a
    n = int(d.size)
    result = {"n": n, "mean_diff": _number(d.mean()) if n else None, "sd": _number(d.std(ddof=1)) if n > 1 else None,
              "mean_maps": _number(a.mean()) if n else None, "mean_latent_shift": _number(b.mean()) if n else None,
              "p_ttest": None, "p_wilcoxon": None}
    if n > 1 and np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result["p_ttest"] = _number(stats.ttest_rel(b, a).pvalue)
            result["p_wilcoxon"] = _number(stats.wilcoxon(b, a).pvalue)
    return result


def quadratic_kappa(first: list[int], second: list[int], categories=range(1, 6)) -> float | None:
    """Quadratic-weighted Cohen's κ of two raters' ratings of the same items (None if undefined)."""
    labels = list(categories)
    k = len(labels)
    if not first or len(first) != len(second):
        return None
    index = {label: i for i, label in enumerate(labels)}
    observed = np.zeros((k, k))
    for x, y in zip(first, second):
        observed[index[x], index[y]] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
    denominator = (weights * expected).sum()
    return None if denominator == 0 else _number(1 - (weights * observed).sum() / denominator)


def rows_with_cases(ratings: list[dict], manifest: dict) -> list[dict]:
    """Ratings joined with their case's target, outcome, prediction, threshold and truth."""
    cases = {case["id"]: case for case in manifest["cases"]}
    return [{**r, **{k: cases[r["case_id"]][k] for k in ("target", "outcome", "prediction", "threshold", "truth")}}
            for r in ratings]


def pairs(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(reader, case id) -> {"maps": rating, "latent_shift": rating, "outcome", "target"} for complete pairs."""
    found: dict[tuple[str, str], dict] = {}
    for row in rows:
        entry = found.setdefault((row["reader"], row["case_id"]), {"outcome": row["outcome"], "target": row["target"]})
        entry[row["condition"]] = row["rating"]
    return {key: value for key, value in found.items() if "maps" in value and "latent_shift" in value}


def by_outcome(selected: list[dict]) -> dict:
    """{"tp": STATS, "fp": STATS} of some pairs."""
    return {key: paired_stats([p["maps"] for p in selected if p["outcome"] == outcome],
                              [p["latent_shift"] for p in selected if p["outcome"] == outcome])
            for key, outcome in OUTCOMES.items()}


def kappa_pairs(rows: list[dict]) -> dict:
    """Quadratic-weighted κ for every pair of readers over the items both rated."""
    by_reader: dict[str, dict] = {}
    for row in rows:
        by_reader.setdefault(row["reader"], {})[(row["case_id"], row["condition"])] = row["rating"]
    results = []
    for a, b in itertools.combinations(sorted(by_reader), 2):
        shared = sorted(set(by_reader[a]) & set(by_reader[b]))
        value = quadratic_kappa([by_reader[a][i] for i in shared], [by_reader[b][i] for i in shared])
        results.append({"readers": [a, b], "kappa": value, "n": len(shared)})
    values = [r["kappa"] for r in results if r["kappa"] is not None]
    return {"pairs": results, "mean": _number(np.mean(values)) if values else None}


def analyze(study_dir: str | Path, *, csv_path: str | Path | None = None, plot: bool = True) -> dict:
    """The analysis of a study folder as a JSON-ready dict (keys in the module docstring)."""
    manifest = load_study(study_dir)
    rows = rows_with_cases(open_store(study_dir, manifest).ratings(), manifest)
    complete = pairs(rows)
    readers = sorted({row["reader"] for row in rows})
    result = {
        "n_ratings": len(rows), "n_readers": len(readers),
        "pooled": by_outcome(list(complete.values())),
        "readers": {r: by_outcome([p for (reader, _), p in complete.items() if reader == r]) for r in readers},
        "findings": {t: by_outcome([p for p in complete.values() if p["target"] == t])
                     for t in sorted({p["target"] for p in complete.values()})},
        "kappa": kappa_pairs(rows), "plot": None, "csv": None}
    if plot:
        result["plot"] = str(plot_distributions(rows, Path(study_dir) / "analysis" / "ratings.png"))
    if csv_path is not None:
        result["csv"] = str(export_csv(rows, csv_path))
    return result


def export_csv(rows: list[dict], path: str | Path) -> Path:
    """Every rating with its case's target, outcome, prediction, threshold and truth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_distributions(rows: list[dict], path: Path) -> Path:
    """Bar charts of the ratings 1-5 per condition, one panel for TPs and one for FPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for axis, (key, outcome) in zip(axes, OUTCOMES.items()):
        for shift, condition in ((-0.2, "maps"), (0.2, "latent_shift")):
            counts = [sum(r["rating"] == v and r["outcome"] == outcome and r["condition"] == condition for r in rows)
                      for v in range(1, 6)]
            axis.bar(np.arange(1, 6) + shift, counts, width=0.4, label=condition.replace("_", " "))
        axis.set_title(f"{'True' if key == 'tp' else 'False'} positives")
        axis.set_xlabel("rating (1 = surely wrong … 5 = surely right)")
        axis.set_xticks(range(1, 6))
    axes[0].set_ylabel("ratings")
    axes[0].legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
