"""Run the app the way ZeroGPU would (``SPACES_ZERO_GPU=true``, the fake ``spaces`` of
``tests/fake_spaces`` first on the path) and print what happened as JSON; run by test_zerogpu.py
in a fresh process, since ``spaces.GPU`` decorates the handlers when they are imported.

Every model load is recorded with the pid that did it ($MODEL_LOADS_LOG), so the test can tell the
models were loaded in the main process, outside the GPU calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path


def record_model_loads() -> None:
    from latentshift.weights import store

    original = store.load_model_with_warning

    def recorded(entry, *args, **kwargs):
        with open(os.environ["MODEL_LOADS_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"model": entry.id, "pid": os.getpid()}) + "\n")
        return original(entry, *args, **kwargs)

    store.load_model_with_warning = recorded


async def _page_run(runs, example: str, options) -> list[str]:
    """The page's streamed run (latentshift/app/runs.py): the status after each stage."""
    return [values["status"] async for values in runs.explain(example, "", "", options) if "status" in values]


def main(folder: Path) -> dict:
    from appserver import FAST_EXPLAIN, serve_app
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    record_model_loads()
    from latentshift.app import gpu, handlers

    example = str(Path(__file__).resolve().parents[1] / "examples" / "normal-IM-0225-0001.png")
    report = {"pid": os.getpid(), "spaces": getattr(gpu.spaces, "__file__", None), "device": gpu.device()}
    with serve_app(folder) as app:
        client = app.client()
        report["predict"] = client.predict(handle_file(example), api_name="/predict")
        files = client.predict(handle_file(example), **FAST_EXPLAIN, api_name="/explain")
        report["explain_files"] = [Path(f).name for f in files if f]
        gifs, _, _, lines = client.predict(handle_file(example), "Pneumonia", frames=4, api_name="/compare")
        report["compare_lines"] = lines
        try:
            client.predict(handle_file(example), classifier="demo-pneumonia-classifier", target="NoSuchFinding",
                           api_name="/explain")  # a named classifier: the refusal comes from the worker
        except AppError as error:
            report["refusal"] = str(error)
        # other settings than the /explain call above, which the store would answer at once
        options = handlers.explain_options("", "both", 5, 10.0, True, -40.0, 25.0, 50, 4)
        report["stages"] = asyncio.run(_page_run(app.runs, example, options))
        report["page_predict"] = handlers.predict_upload(example, "", "")["status"]
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(tempfile.mkdtemp(prefix="zerogpu-"))), default=str))
    sys.stdout.flush()
