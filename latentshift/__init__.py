"""latentshift: Latent Shift explanations of chest X-ray classifiers.

Cohen et al., "Gifsplanation via Latent Shift", MIDL 2021. Research and teaching demo,
not for clinical use.

Rooms, imported one way (a room imports only those listed after it)::

    app/ cli/        faces: the Gradio app, the command line
    pipeline.py      image -> Explanation (orchestration only)
    training/ evaluation/ tools/   recipes, figures, benchmark and load test
    core/            LatentShift, GradCAM, IntegratedGradientsMap (attribute(x, target, ...))
    io/              imaging (read, validate, normalise) and render (GIF, overlays, plots)
    weights/         manifest, integrity, sources (file, Hub, URL), loading, model store
    models/          conventions (pixel range, resolution), architectures, registry
    options.py errors.py   the shared vocabulary: explanation options, exception types
"""

from .core import GradCAM, IntegratedGradientsMap, LatentShift, ShiftOptions, ShiftResult
from .errors import ImageInputError, LatentShiftError, WeightsError
from .options import ExplainOptions

__all__ = ["LatentShift", "ShiftOptions", "ShiftResult", "GradCAM", "IntegratedGradientsMap", "ExplainOptions", "Pipeline",
           "LatentShiftError", "ImageInputError", "WeightsError"]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "Pipeline":  # imported on use: it brings the renderers and the weights layer
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'latentshift' has no attribute {name!r}")
