"""Grad-CAM, Integrated Gradients and the map metrics on models whose right answer is known."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from latentshift_research import cli as research_cli
from latentshift.core.attribution import DEFAULT_IG_STEPS, GradCAM, IntegratedGradientsMap, find_gradcam_layer
from latentshift.core.maps import normalize_map
from latentshift.errors import OptionsError
from latentshift_research.evaluation.maps import (build_methods, evaluate, format_table, iou_at_mask_area,
                                    match_target, pointing_game_hit, select_boxed_images, summarize,
                                    top_k_selection)

SIDE = 32  # input side of the region classifiers; their feature map is 16 x 16
QUADRANT_A = (slice(0, 16), slice(0, 16))   # top-left quarter of the input
QUADRANT_B = (slice(16, 32), slice(16, 32))  # bottom-right quarter
# Feature cells each output sees. A 3x3 stride-2 conv cell i covers input rows 2i-1..2i+1,
# so cells 0..6 only see input rows 0..13 and cells 9..15 rows 17..31: each output depends
# on its quadrant only, with a margin for Grad-CAM's bilinear upsampling.
FEATURE_CELLS_A = (slice(0, 7), slice(0, 7))
FEATURE_CELLS_B = (slice(9, 16), slice(9, 16))


class ChannelRegionMask(nn.Module):
    """Fixed mask: channel c is kept inside its own region only. (N, C, h, w) -> same."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.register_buffer("masks", masks)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return activations * self.masks


class RegionClassifier(nn.Module):
    """Output k is the mean activation of channels 2k, 2k+1 inside feature region k.

    conv 3x3 stride 2 (positive weights) -> ReLU -> region mask -> global average
    pooling -> fixed linear head. Shapes: (N, 1, 32, 32) in [-1024, 1024] -> (N, K) logits.
    """

    def __init__(self, feature_regions=(FEATURE_CELLS_A,), seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        channels = 2 * len(feature_regions)
        masks = torch.zeros(channels, SIDE // 2, SIDE // 2)
        head = torch.zeros(len(feature_regions), channels)
        for k, (rows, cols) in enumerate(feature_regions):
            masks[2 * k:2 * k + 2, rows, cols] = 1.0
            head[k, 2 * k:2 * k + 2] = 50.0
        conv = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.rand(conv.weight.shape, generator=generator))
            conv.bias.fill_(0.2)
        self.features = nn.Sequential(conv, nn.ReLU(), ChannelRegionMask(masks))
        self.head = nn.Linear(channels, len(feature_regions))
        with torch.no_grad():
            self.head.weight.copy_(head)
            self.head.bias.zero_()
        self.pathologies = [f"region{k}" for k in range(len(feature_regions))]
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x / 1024).mean(dim=(2, 3)))


def make_image(seed: int = 0) -> torch.Tensor:
    """(1, 1, 32, 32) image in [-1024, 1024]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, SIDE, SIDE, generator=generator) * 2048 - 1024


def mass_fraction(saliency: np.ndarray, region) -> float:
    """Share of the map's absolute mass inside ``region``."""
    magnitude = np.abs(saliency)
    return float(magnitude[region].sum() / magnitude.sum())


@pytest.fixture(scope="module")
def two_region_model() -> RegionClassifier:
    return RegionClassifier((FEATURE_CELLS_A, FEATURE_CELLS_B))


# -- known answers ---------------------------------------------------------------------

def test_gradcam_concentrates_in_the_region_the_output_depends_on():
    model = RegionClassifier()
    saliency = GradCAM(model).attribute(make_image(), target=0).map
    assert saliency.shape == (SIDE, SIDE) and saliency.dtype == np.float32
    assert saliency.min() >= 0 and saliency.sum() > 0
    assert mass_fraction(saliency, QUADRANT_A) > 0.99


def test_integrated_gradients_concentrate_in_the_region_the_output_depends_on():
    model = RegionClassifier()
    result = IntegratedGradientsMap(model, n_steps=16).attribute(make_image(), target=0)
    assert result.map.shape == (SIDE, SIDE) and result.map.dtype == np.float32
    assert result.n_steps == 16
    assert mass_fraction(result.map, QUADRANT_A) > 0.99
    positive = np.clip(result.map, 0, None)
    assert positive[QUADRANT_A].sum() / positive.sum() > 0.99


@pytest.mark.parametrize("target, inside, outside", [(0, QUADRANT_A, QUADRANT_B), (1, QUADRANT_B, QUADRANT_A)])
def test_target_index_selects_the_output_explained(two_region_model, target, inside, outside):
    x = make_image(1)
    gradcam = GradCAM(two_region_model).attribute(x, target).map
    integrated = IntegratedGradientsMap(two_region_model, n_steps=8).attribute(x, target).map
    for saliency in (gradcam, integrated):
        assert mass_fraction(saliency, inside) > 0.99
        assert mass_fraction(saliency, outside) < 0.01


@pytest.mark.parametrize("baseline", ["zeros", "black", 300.0])
def test_integrated_gradients_completeness(two_region_model, baseline):
    x = make_image(2)
    method = IntegratedGradientsMap(two_region_model, baseline=baseline, n_steps=64, internal_batch_size=16)
    result = method.attribute(x, target=1)
    with torch.no_grad():
        difference = float(two_region_model(x)[0, 1] - two_region_model(method.baseline_for(x))[0, 1])
    assert abs(difference) > 0.1  # the test means something
    total = float(result.map.astype(np.float64).sum())
    assert abs(total - difference) <= abs(result.convergence_delta) + 1e-4 * max(1.0, abs(difference))
    assert abs(result.convergence_delta) < 0.02 * abs(difference)


class ExponentialPath(nn.Module):
    """logit = 10·exp(4·mean(x)/1024): along IG's path from the zero baseline to a uniform
    1024 image the integrand is 40·exp(4α), so Gauss-Legendre with 1 node is 45 % off,
    with 2 nodes 3.8 % and with 4 nodes under 0.1 %. (N, 1, H, W) -> (N, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.exp(4.0 * x.mean(dim=(1, 2, 3)) / 1024.0).unsqueeze(1)


@pytest.mark.parametrize("tolerance, steps", [(0.0, 1), (0.5, 1), (0.02, 4), (1e-9, 4)])
def test_integrated_gradients_double_their_steps_until_the_delta_is_within_tolerance(tolerance, steps):
    x = torch.full((1, 1, SIDE, SIDE), 1024.0)
    logit_change = 10.0 * (np.exp(4.0) - 1.0)
    result = IntegratedGradientsMap(ExponentialPath(), n_steps=1, tolerance=tolerance).attribute(x, 0)
    assert result.n_steps == steps  # 1e-9 is never met: at most two doublings
    assert result.convergence_delta == pytest.approx(float(result.map.astype(np.float64).sum()) - logit_change,
                                                     rel=1e-3, abs=1e-3)
    if steps == 4:
        assert abs(result.convergence_delta) < 0.02 * logit_change
    else:
        assert abs(result.convergence_delta) > 0.4 * logit_change


def test_integrated_gradients_tolerance_is_checked():
    with pytest.raises(OptionsError, match="tolerance"):
        IntegratedGradientsMap(ExponentialPath(), tolerance=-0.1)


def test_integrated_gradients_baselines():
    model = RegionClassifier()
    x = make_image()
    assert torch.equal(IntegratedGradientsMap(model).baseline_for(x), torch.zeros_like(x))
    assert torch.equal(IntegratedGradientsMap(model, baseline="black").baseline_for(x), torch.full_like(x, -1024.0))
    assert torch.equal(IntegratedGradientsMap(model, baseline=torch.tensor(5.0)).baseline_for(x),
                       torch.full_like(x, 5.0))
    with pytest.raises(OptionsError, match="unknown baseline"):
        IntegratedGradientsMap(model, baseline="white")
    with pytest.raises(OptionsError, match="does not broadcast"):
        IntegratedGradientsMap(model, baseline=torch.zeros(3, 3)).attribute(x, 0)
    with pytest.raises(OptionsError, match="n_steps"):
        IntegratedGradientsMap(model, n_steps=0)
    assert DEFAULT_IG_STEPS >= 8


def test_bad_targets_and_inputs_are_refused(two_region_model):
    x = make_image()
    for method in (GradCAM(two_region_model), IntegratedGradientsMap(two_region_model, n_steps=2)):
        with pytest.raises(OptionsError, match="out of range"):
            method.attribute(x, 2)
        with pytest.raises(OptionsError, match="integer"):
            method.attribute(x, "region0")
        with pytest.raises(ValueError, match=r"\(1, 1, H, W\)"):
            method.attribute(x[0], 0)
    unused = RegionClassifier((FEATURE_CELLS_A, FEATURE_CELLS_B))
    unused.pathologies = ["region0", ""]
    with pytest.raises(OptionsError, match="unused"):
        GradCAM(unused).attribute(x, 1)


def test_works_without_parameter_gradients_inside_inference_mode(two_region_model):
    x = make_image()
    expected = GradCAM(two_region_model).attribute(x, 0).map
    with torch.inference_mode():
        inference_x = x.clone()
        gradcam = GradCAM(two_region_model).attribute(inference_x, 0).map
        integrated = IntegratedGradientsMap(two_region_model, n_steps=4).attribute(inference_x, 0)
    np.testing.assert_allclose(gradcam, expected, rtol=1e-6)
    assert np.isfinite(integrated.map).all()
    assert not x.requires_grad and x.grad is None
    assert all(p.grad is None and not p.requires_grad for p in two_region_model.parameters())
    assert torch.is_grad_enabled()


def test_gradcam_from_concurrent_threads_matches_sequential(two_region_model):
    x = make_image(3)
    expected = {t: GradCAM(two_region_model).attribute(x, t).map for t in (0, 1)}
    mismatches = []

    def work(target):
        for _ in range(10):
            if not np.allclose(GradCAM(two_region_model).attribute(x, target).map, expected[target]):
                mismatches.append(target)

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches


# -- layer choice ----------------------------------------------------------------------

def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


def head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 2)]


def test_find_gradcam_layer_takes_the_last_conv_block():
    flat = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), *head(8))
    assert find_gradcam_layer(flat) is flat[2]
    blocks = nn.Sequential(conv_block(1, 4), conv_block(4, 8), *head(8))
    assert find_gradcam_layer(blocks) is blocks[1]
    nested = nn.Sequential(nn.Sequential(conv_block(1, 4), conv_block(4, 8)), *head(8))
    assert find_gradcam_layer(nested) is nested[0][1]
    pooling_block = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), *head(4)))
    assert find_gradcam_layer(pooling_block) is pooling_block[0][0]
    region = RegionClassifier()
    assert find_gradcam_layer(region) is region.features
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        find_gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_gradcam_layer_attribute_and_argument_are_honoured():
    model = RegionClassifier()
    model.gradcam_layer = model.features[0]
    assert find_gradcam_layer(model) is model.features[0]
    assert GradCAM(model).layer is model.features[0]
    assert GradCAM(model, layer=model.features[1]).layer is model.features[1]
    # The conv output ignores the region mask, so the chosen layer really is used.
    unmasked = GradCAM(model).attribute(make_image(), 0).map
    assert mass_fraction(unmasked, QUADRANT_A) < 0.5


def test_gradcam_on_a_flattening_layer_says_why_it_fails():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * SIDE * SIDE, 2))
    with pytest.raises(ValueError, match="(N, C, h, w)"):
        GradCAM(model, layer=model[1]).attribute(make_image(), 0)


# -- torchxrayvision DenseNet121, untrained -----------------------------------------------

XRV_PATHOLOGIES = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
                   "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
                   "Mass", "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]


@pytest.fixture(scope="module")
def densenet():
    from latentshift.models import XRVDenseNetClassifier

    torch.manual_seed(0)
    model = XRVDenseNetClassifier(pathologies=XRV_PATHOLOGIES).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def densenet_image() -> torch.Tensor:
    """(1, 1, 224, 224) smooth image in [-1024, 1024]."""
    coarse = make_image(4)
    return nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)


def test_gradcam_on_untrained_densenet(densenet):
    assert find_gradcam_layer(densenet) is densenet.net.features.denseblock4
    x = densenet_image()
    positive = GradCAM(densenet).attribute(x, 0).map
    assert positive.shape == (224, 224) and positive.dtype == np.float32
    assert np.isfinite(positive).all() and positive.min() >= 0
    # Untrained heads can give an all-negative map (zero after the ReLU): compare signed maps.
    signed = [GradCAM(densenet, relu_attributions=False).attribute(x, t).map for t in (0, 7)]
    for saliency in signed:
        assert saliency.shape == (224, 224) and np.isfinite(saliency).all()
    assert not np.allclose(signed[0], signed[1])


def test_integrated_gradients_on_untrained_densenet(densenet):
    x = densenet_image()
    # One integration step keeps this at a few DenseNet passes; completeness is tested above.
    results = [IntegratedGradientsMap(densenet, n_steps=1, internal_batch_size=1).attribute(x, t)
               for t in (0, 7)]
    for result in results:
        assert result.map.shape == (224, 224) and result.map.dtype == np.float32
        assert np.isfinite(result.map).all() and np.isfinite(result.convergence_delta)
    assert not np.allclose(results[0].map, results[1].map)


# -- display normalisation ---------------------------------------------------------------

def test_normalize_map():
    signed = np.array([[0.0, 1.0], [2.0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(normalize_map(signed, percentile=100), [[0, 0.5], [1, 0]])
    np.testing.assert_allclose(normalize_map(signed, absolute=True, percentile=100), [[0, 0.5], [1, 0.5]])
    assert normalize_map(-np.ones((3, 3))).max() == 0
    spiky = np.ones((10, 10), dtype=np.float32)
    spiky[0, 0] = 1000
    normalized = normalize_map(spiky, percentile=95)
    assert normalized.dtype == np.float64 and normalized.min() == 1.0  # the spike does not flatten the rest
    sparse = np.zeros((20, 20))
    sparse[3, 4] = 5.0  # the 99.5th percentile over all pixels is 0: the maximum scales it
    np.testing.assert_array_equal(normalize_map(sparse), sparse / 5.0)
    half = np.zeros((2, 4))
    half[0] = [1.0, 2.0, 3.0, 4.0]  # the percentile is over every pixel, zeros included
    np.testing.assert_allclose(normalize_map(half, percentile=50), np.clip(half / 0.5, 0, 1))
    with pytest.raises(ValueError, match="NaN"):
        normalize_map(np.full((2, 2), np.nan))


# -- metrics -------------------------------------------------------------------------------

def test_iou_at_mask_area_known_answers():
    ramp = np.arange(16, dtype=np.float32).reshape(4, 4)  # the top-4 pixels are the last row
    last_row = np.zeros((4, 4), bool)
    last_row[3] = True
    assert iou_at_mask_area(ramp, last_row) == 1.0
    corner = np.zeros((4, 4), bool)
    corner[2:, 2:] = True  # values 10, 11, 14, 15: two of them in the top-4
    assert iou_at_mask_area(ramp, corner) == pytest.approx(2 / 6)
    assert iou_at_mask_area(-ramp, last_row) == 0.0
    assert iou_at_mask_area(corner.astype(np.float32), corner) == 1.0
    assert iou_at_mask_area(np.zeros((4, 4)), corner) == 0.0  # a flat map selects nothing
    ties = np.array([[3, 2, 2, 2]] * 1, dtype=np.float32)
    assert top_k_selection(ties, 2).tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError, match="empty"):
        iou_at_mask_area(ramp, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="same shape"):
        iou_at_mask_area(ramp, np.ones((3, 3), bool))


def test_pointing_game_known_answers():
    ramp = np.arange(16, dtype=np.float32).reshape(4, 4)  # maximum at (3, 3)
    corner = np.zeros((4, 4), bool)
    corner[2:, 2:] = True
    assert pointing_game_hit(ramp, corner)
    assert not pointing_game_hit(ramp[::-1, ::-1], corner)
    assert not pointing_game_hit(np.ones((4, 4)), corner)


# -- evaluation command ----------------------------------------------------------------------

def write_dataset(root: Path) -> None:
    """Two boxed test images (Pneumonia in quadrant A, Mass elsewhere) and one train image."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = ((make_image(5)[0, 0].numpy() + 1024) / 2048 * 255).astype(np.uint8)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[QUADRANT_A] = 255
    rows = []
    for name, split, label in [("a", "test", "pneumonia"), ("b", "test", "Mass"), ("c", "train", "Pneumonia")]:
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        rows.append({"file": f"images/{name}.png", "source": "nih", "split": split,
                     "mask": f"masks/{name}.png", "mask_label": label})
    rows.append({"file": "images/a.png", "source": "kermany", "split": "test", "mask": "", "mask_label": ""})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_select_boxed_images_matches_names_case_insensitively(tmp_path):
    write_dataset(tmp_path)
    assert match_target("EFFUSION", ["", "Effusion"]) == 1 and match_target("Mass", ["", "Effusion"]) is None
    images, skipped = select_boxed_images(tmp_path, "test", ["Pneumonia"])
    assert [(i.image.name, i.target_index, i.target_name) for i in images] == [("a.png", 0, "Pneumonia")]
    assert skipped == {"Mass": 1}


def test_evaluate_and_table_on_the_region_classifier(tmp_path):
    write_dataset(tmp_path)
    model = RegionClassifier()
    model.pathologies = ["Pneumonia"]
    images, _ = select_boxed_images(tmp_path, "test", model.pathologies)
    methods = build_methods(model, None, ["grad-cam", "integrated-gradients"], ig_steps=8)
    rows = evaluate(images, model, methods, load_image=lambda path: make_image(5))
    assert [r["method"] for r in rows] == ["grad-cam", "integrated-gradients"]
    for row in rows:
        assert row["pointing_hit"] == 1 and row["iou"] > 0.3 and row["seconds"] >= 0
    assert rows[1]["ig_convergence_delta"] != "" and rows[0]["ig_convergence_delta"] == ""
    table = format_table(summarize(rows))
    assert "grad-cam" in table and "1.00 (1/1)" in table and "latent-shift" not in table


def fake_models(monkeypatch, pathologies):
    """Make the manifest hand out a 32-pixel region classifier."""
    import latentshift.weights as weights

    model = RegionClassifier()
    model.pathologies = list(pathologies)
    entry = SimpleNamespace(id="region-test", resolution=SIDE)
    manifest = SimpleNamespace(default=lambda kind: entry, get=lambda model_id, kind=None: entry)
    monkeypatch.setattr(weights.Manifest, "load", classmethod(lambda cls, path=None: manifest))
    monkeypatch.setattr(weights, "load_model", lambda entry, device="cpu": model)


def test_evaluate_maps_command_writes_table_and_csv(tmp_path, monkeypatch, capsys):
    write_dataset(tmp_path / "data")
    fake_models(monkeypatch, ["Pneumonia"])
    out = tmp_path / "rows.csv"
    code = research_cli.main(["evaluate-maps", "--data", str(tmp_path / "data"), "--split", "test", "--csv", str(out),
                     "--methods", "grad-cam,integrated-gradients", "--ig-steps", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "IoU mean ± std" in printed and "integrated-gradients" in printed
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {r["method"] for r in rows} == {"grad-cam", "integrated-gradients"}


def test_evaluate_maps_command_without_any_target_says_why(tmp_path, monkeypatch, capsys):
    write_dataset(tmp_path / "data")
    fake_models(monkeypatch, ["Cardiomegaly"])
    code = research_cli.main(["evaluate-maps", "--data", str(tmp_path / "data"), "--methods", "grad-cam"])
    assert code == 2
    message = capsys.readouterr().err
    assert "no image of split 'test'" in message and "Cardiomegaly" in message and "Mass" in message
