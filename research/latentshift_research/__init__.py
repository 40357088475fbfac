"""Research code beside the ``latentshift`` runtime: training recipes of the demo models
(:mod:`.training`), evaluation of models, maps and counterfactuals (:mod:`.evaluation`), the
benchmark, the load test and the small studies (:mod:`.tools`).

It imports ``latentshift``; ``latentshift`` never imports it, and it is not in the runtime's wheel.
Command line: ``python -m latentshift_research COMMAND`` (or the console script
``latentshift-research`` of ``research/pyproject.toml``), see :mod:`.cli`.
"""
