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

The names below are imported on first use, so ``import latentshift`` (and the command
line's ``--help``) does not load torch.
"""

import importlib

__version__ = "0.2.0"

#: Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "LatentShift": ".core", "ShiftOptions": ".core", "ShiftResult": ".core", "GradCAM": ".core",
    "IntegratedGradientsMap": ".core", "ExplainOptions": ".options", "Pipeline": ".pipeline",
    "LatentShiftError": ".errors", "ImageInputError": ".errors", "WeightsError": ".errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentshift' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
