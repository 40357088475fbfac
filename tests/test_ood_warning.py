"""The "probably not a chest X-ray" warning of the shipped demo autoencoder."""

from pathlib import Path

import numpy as np
from PIL import Image

from latentshift.pipeline import ExplainOptions, Pipeline

REPO = Path(__file__).resolve().parents[1]
QUICK = ExplainOptions(frames=3, maps=(), lambda_range=(-10.0, 10.0))


def test_noise_is_flagged_and_a_real_example_is_not(tmp_path):
    pipeline = Pipeline.get()
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)).save(noise)
    flagged = pipeline.explain(pipeline.load_image(noise), QUICK.replace(allow_non_xray=True), tmp_path / "noise")
    assert flagged.likely_not_cxr and any(w["code"] == "not_a_chest_xray" and "not a frontal chest X-ray" in w["message"] for w in flagged.warnings)

    example = sorted((REPO / "examples").glob("pneumonia-*.png"))[0]
    real = pipeline.explain(pipeline.load_image(example), QUICK, tmp_path / "real")
    assert not real.likely_not_cxr and real.reconstruction_error < pipeline.ood_threshold
