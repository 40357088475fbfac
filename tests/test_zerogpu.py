"""ZeroGPU: the app's GPU-bound calls run under ``spaces.GPU``; outside ZeroGPU it is a no-op.

The no-op path uses the real ``spaces`` package (requirements.txt). The ZeroGPU path runs the app in a
fresh process with ``SPACES_ZERO_GPU=true`` and a fake ``spaces`` whose ``GPU`` forks a worker per call
and pickles arguments and results across, as ZeroGPU does (tests/fake_spaces): every GPU-bound call must
be wrapped, with its duration, and the models must be loaded in the main process, not in a worker.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentshift.app import gpu, handlers

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: Every GPU-bound function of the app and the duration it asks for.
GPU_CALLS = {"_predict_upload": gpu.PREDICT_SECONDS, "_checked_probabilities": gpu.PREDICT_SECONDS,
             "_explanation_stages": gpu.EXPLAIN_SECONDS, "_explained": gpu.EXPLAIN_SECONDS,
             "_comparison": gpu.COMPARE_SECONDS}


def test_outside_zerogpu_the_decorator_returns_the_function_itself():
    import spaces  # the real package

    def work(x):
        return x + 1

    assert not gpu.ON_ZERO_GPU and gpu.device() == "cpu"
    assert spaces.GPU(duration=5)(work) is work and spaces.GPU(work) is work
    assert gpu.task(gpu.EXPLAIN_SECONDS)(work) is work
    for name in GPU_CALLS:
        function = getattr(handlers, name)
        assert function.__module__ == handlers.__name__ and not hasattr(function, "__wrapped__"), name
    assert inspect.isgeneratorfunction(handlers._explanation_stages), "stages stream as before"


@pytest.fixture(scope="module")
def zerogpu_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zerogpu")
    env = dict(os.environ, SPACES_ZERO_GPU="true", FAKE_SPACES_LOG=str(folder / "gpu-calls.jsonl"),
               MODEL_LOADS_LOG=str(folder / "model-loads.jsonl"),
               PYTHONPATH=os.pathsep.join([str(TESTS / "fake_spaces"), str(TESTS), str(REPO)]))
    completed = subprocess.run([sys.executable, str(TESTS / "zerogpu_check.py")], env=env, cwd=folder,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    calls = [json.loads(line) for line in (folder / "gpu-calls.jsonl").read_text().splitlines()]
    loads = [json.loads(line) for line in (folder / "model-loads.jsonl").read_text().splitlines()]
    return report, calls, loads


def test_on_zerogpu_every_gpu_bound_call_runs_wrapped_in_a_worker(zerogpu_run):
    report, calls, _ = zerogpu_run
    assert report["spaces"].startswith(str(TESTS / "fake_spaces")) and report["device"] == "cpu"
    assert {call["function"] for call in calls} == set(GPU_CALLS)
    assert all(call["duration"] == GPU_CALLS[call["function"]] for call in calls)
    assert all(call["pid"] != report["pid"] for call in calls), "each call ran in a forked worker"


def test_on_zerogpu_the_results_cross_back_intact(zerogpu_run):
    report, _, _ = zerogpu_run
    assert set(report["predict"]) == {"Pneumonia", "Effusion"}
    assert report["explain_files"] == ["latentshift.gif", "heatmap.png", "gradcam.png",
                                       "integrated_gradients.png", "prediction.png", "counterfactual.png",
                                       "summary.json"]
    assert report["compare_lines"].startswith("tiny-classifier — Pneumonia:")
    assert "has no output 'NoSuchFinding'" in report["refusal"], "a refusal in the worker reaches the client"
    assert report["stages"][-1].startswith("Explaining") and "Done in" in report["stages"][-1]
    assert report["page_predict"].startswith("Top prediction")


def test_on_zerogpu_models_are_loaded_in_the_main_process(zerogpu_run):
    report, _, loads = zerogpu_run
    assert {load["model"] for load in loads} >= {"tiny-classifier", "tiny-autoencoder"}
    assert all(load["pid"] == report["pid"] for load in loads), loads
