"""Evaluation: attribution maps against NIH boxes (``maps``) and the demo models' figures (``demo_models``)."""
