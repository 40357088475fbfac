"""Soak: the app served for MINUTES to 8 clients with mixed traffic, a record every 30 s, a SIGKILL halfway.

    python -m latentshift_research loadtest --soak 30 --images /path/to/xrays --out soak.jsonl

The tool starts the app itself (``python -m latentshift app`` on a free loopback port, its temporary
files and result store in a work folder) so that it can kill it. Each client loops over weighted
actions: explain a valid X-ray through the page's own streamed event (``/explain_page``; a pool of
images, so repeats come from the result store), a bad upload (``/predict`` with a text file: a
clear refusal is expected), a model switch (``/predict`` with another classifier), a comparison
(``/compare``) and opening a share link (``/result`` with an id an earlier explanation returned).

Every ``--every`` seconds a record: p50/p95 latency per endpoint, errors by kind, the server's RSS
and open files, the bytes of its temporary files and of the store. Halfway the server gets SIGKILL
and is restarted on the same store; every result completed before the kill must still open from
its link, and ``ResultStore.check`` must find no corrupt entry. Goals: 0 unexpected errors, RSS
growth under 10 % from the record at 5 minutes (or a third of the run, if shorter) to the kill
and from 5 minutes after the restart to the end, and temporary files bounded (the second half's
largest no more than 1.5 × the first half's, the app's ``--temp-max-age`` being short).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .loadtest import folder_bytes, open_fds

CLIENTS = 8
#: Action -> weight (of 100).
MIX = {"explain": 45, "bad_upload": 10, "model_switch": 15, "compare": 10, "link": 20}
RESULT_LINK = re.compile(r"\?result=([0-9a-f]{64})")
DOWN_WORDS = ("connect", "refused", "reset", "closed", "eof", "timed out", "remote end", "502", "503")


@dataclass
class Tally:
    """Latencies and errors of one window (a record) and of the whole soak."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, endpoint: str, seconds: float | None, error: str | None = None) -> None:
        if seconds is not None:
            self.latencies.setdefault(endpoint, []).append(seconds)
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))], 3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Server:
    """The app in a child process, on one port and one store across restarts."""

    def __init__(self, work: Path, port: int, temp_max_age: float, extra_args: list[str]):
        self.work, self.port, self.process, self.starts = work, port, None, 0
        self.results = work / "results"
        self.args = [sys.executable, "-m", "latentshift", "app", "--host", "127.0.0.1", "--port", str(port),
                     "--offline", "--results-dir", str(self.results), "--temp-max-age", str(temp_max_age),
                     *extra_args]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 300) -> None:
        """Start the app on the same temporary folders as before, as a restarted host would (a killed
        server's leftovers there are removed at the next start: the app's run folders and Gradio's cache)."""
        self.starts += 1
        self.tmp = self.work / "tmp"
        self.cache = self.work / "gradio-cache"
        for folder in (self.tmp, self.cache):
            folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TMPDIR=str(self.tmp), GRADIO_TEMP_DIR=str(self.cache), NO_PROXY="127.0.0.1",
                   GRADIO_ANALYTICS_ENABLED="False")
        log = open(self.work / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(self.args, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with {self.process.returncode}; see {self.work / 'server.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the app did not listen within {timeout_s:g} s")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def population(path: Path) -> str:
    """Adult for NIH / adult example files, pediatric otherwise (Kermany)."""
    text = str(path).lower()
    return "adult" if ("nih" in text or "adult" in text) else "pediatric"


def classifiers_by_population() -> dict[str, list[str]]:
    """The available classifiers here, by the population they were trained on."""
    from latentshift.pipeline import Pipeline, list_models

    manifest = Pipeline.store().manifest
    found: dict[str, list[str]] = {}
    for choice in list_models("classifier", manifest):
        if choice.available:
            found.setdefault(manifest.get(choice.id).info.get("population") or "pediatric", []).append(choice.id)
    return found


def default_autoencoder() -> str:
    """The page's autoencoder dropdown wants an id: the manifest's default autoencoder."""
    from latentshift.pipeline import Pipeline

    return Pipeline.store().manifest.default("autoencoder").id


class Traffic:
    """The clients' actions and what they measured."""

    def __init__(self, url: str, images: list[Path], work: Path, settings: dict, seed: int = 0):
        self.url, self.images, self.settings = url, images, settings
        self.models = classifiers_by_population()
        self.all_models = sorted({m for ids in self.models.values() for m in ids})
        self.autoencoder = default_autoencoder()
        self.compare_target = settings.get("compare_target", "")
        self.bad = work / "not-an-xray.png"
        self.bad.write_text("this is not an image\n")
        self.downloads = work / "downloads"
        self.lock = threading.Lock()
        self.window, self.total = Tally(), Tally()
        self.completed: dict[str, float] = {}
        self.stop, self.down = threading.Event(), threading.Event()
        self.seed = seed

    def record(self, endpoint: str, seconds: float | None, error: str | None = None) -> None:
        with self.lock:
            self.window.add(endpoint, seconds, error)
            self.total.add(endpoint, seconds, error)

    def take_window(self) -> Tally:
        with self.lock:
            window, self.window = self.window, Tally()
        return window

    def client_loop(self, number: int) -> None:
        from gradio_client import Client

        rng, client = random.Random(self.seed * 100 + number), None
        while not self.stop.is_set():
            if client is None:
                try:
                    client = Client(self.url, verbose=False, download_files=str(self.downloads / str(number)))
                except Exception:  # noqa: BLE001 - the server is (re)starting
                    time.sleep(1)
                    continue
            action = rng.choices(list(MIX), weights=list(MIX.values()))[0]
            started = time.perf_counter()
            try:
                endpoint, expected = getattr(self, f"_{action}")(client, rng)
                self.record(endpoint, time.perf_counter() - started, expected)
            except Exception as error:  # noqa: BLE001 - every failure is counted by kind
                kind = self.classify(action, error)
                self.record(action, None, kind)
                if kind.startswith("server down"):
                    client = None
                    time.sleep(1)

    def classify(self, action: str, error: Exception) -> str:
        text = f"{type(error).__name__}: {error}"
        if any(word in text.lower() for word in DOWN_WORDS) or self.down.is_set():
            return "server down (restart)" if self.down.is_set() else f"unexpected: {action}: server down: {text[:80]}"
        return f"unexpected: {action}: {text[:120]}"

    def _image(self, rng: random.Random) -> tuple[Path, str]:
        image = rng.choice(self.images)
        ids = self.models.get(population(image)) or self.all_models
        return image, ids[0]

    def _explain(self, client, rng) -> tuple[str, str | None]:
        from gradio_client import handle_file

        from latentshift.io.render import gif_frame_count

        image, classifier = self._image(rng)
        s = self.settings
        outputs = client.predict(handle_file(str(image)), None, classifier, self.autoencoder, "", "both", s["frames"],
                                 s["step_size"], "Automatic search", None, None, s["frame_duration_ms"],
                                 s["ig_steps"], api_name="/explain_page")
        texts = [value for value in outputs if isinstance(value, str)]
        status = next((t for t in texts if "Done in" in t or "Busy:" in t or "Not explained" in t), "")
        if "Busy:" in status:
            return "explain", "busy"
        link = next((m.group(1) for t in texts if (m := RESULT_LINK.search(t))), None)
        gif = next((t for t in texts if t.endswith(".gif")), None)
        if link is None or gif is None or gif_frame_count(gif) <= 1:
            raise RuntimeError(f"explanation incomplete: {status[:120]!r}")
        with self.lock:
            self.completed[link] = time.time()
        if "explained before" in status:
            return "explain (store hit)", None
        return ("explain (stored while waiting)" if "while this one waited" in status else "explain"), None

    def _bad_upload(self, client, rng) -> tuple[str, str | None]:
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        try:
            client.predict(handle_file(str(self.bad)), "", api_name="/predict")
        except AppError as refusal:
            if "image" in str(refusal).lower():
                return "bad_upload", "refused bad upload (expected)"
            raise
        raise RuntimeError("a text file was accepted as an X-ray")

    def _model_switch(self, client, rng) -> tuple[str, str | None]:
        from gradio_client import handle_file

        image, _ = self._image(rng)
        answer = client.predict(handle_file(str(image)), rng.choice(self.all_models), api_name="/predict")
        if not isinstance(answer, dict) or not answer:
            raise RuntimeError(f"no probabilities: {answer!r:.80}")
        return "model_switch", None

    def _compare(self, client, rng) -> tuple[str, str | None]:
        from gradio_client import handle_file

        image, _ = self._image(rng)
        gifs, plot, summary, lines = client.predict(handle_file(str(image)), self.compare_target, "", "",
                                                    self.settings["frames"], self.settings["step_size"],
                                                    api_name="/compare")
        if not gifs or not Path(summary).is_file():
            raise RuntimeError(f"comparison incomplete: {lines!r:.80}")
        return "compare", None

    def _link(self, client, rng) -> tuple[str, str | None]:
        with self.lock:
            ids = list(self.completed)
        if not ids:
            return self._model_switch(client, rng)
        state, summary, gif = client.predict(rng.choice(ids), api_name="/result")
        if state != "ok" or not summary or not Path(summary).is_file():
            raise RuntimeError(f"a completed result's link answers {state!r}")
        return "link", None


def snapshot(server: Server, window: Tally, started: float) -> dict:
    """One record: latencies per endpoint, errors by kind, and the server's resources now."""
    from latentshift.app.serving import orphaned_roots

    pid = server.process.pid
    live = folder_bytes(server.tmp) + folder_bytes(server.cache)
    orphaned = sum(folder_bytes(root) for root in orphaned_roots(server.tmp))
    return {
        "t_s": round(time.monotonic() - started, 1), "pid": pid,
        "latency_s": {name: {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}
                      for name, values in sorted(window.latencies.items())},
        "errors": dict(sorted(window.errors.items())),
        "rss_mb": round((rss_bytes(pid) or 0) / 2**20, 1), "open_files": open_fds(pid),
        "temp_mb": round(live / 2**20, 2),
        "killed_servers_temp_mb": round(orphaned / 2**20, 2),
        "store_mb": round(folder_bytes(server.results) / 2**20, 2),
    }


def kill_and_restart(server: Server, traffic: Traffic, retention_days: float) -> dict:
    """SIGKILL the server, restart it on the same store, and check every result completed before."""
    from gradio_client import Client

    from latentshift.results.store import ResultStore

    with traffic.lock:
        before = dict(traffic.completed)
    traffic.down.set()
    server.kill()
    killed_at = time.monotonic()
    left_mb = [round(folder_bytes(server.tmp) / 2**20, 2)]  # the run folders left by the kill ...
    server.start()
    restart_s = round(time.monotonic() - killed_at, 1)
    left_mb.append(round(folder_bytes(server.tmp) / 2**20, 2))  # ... and once the new server started
    client = Client(server.url, verbose=False, download_files=str(server.work / "downloads" / "check"))
    states: dict[str, int] = {}
    for result_id in before:
        state = client.predict(result_id, api_name="/result")[0]
        states[state] = states.get(state, 0) + 1
    problems = ResultStore(server.results, retention_days).check()
    pages = sum(_page_answers(server.url, result_id) for result_id in list(before)[:20])
    time.sleep(3)
    traffic.down.clear()
    return {"results_before_kill": len(before), "link_states_after_restart": states, "restart_s": restart_s,
            "store_check": problems, "pages_opened": pages, "run_folders_mb_after_kill_and_restart": left_mb}


def _page_answers(url: str, result_id: str) -> int:
    """1 when the page of a share link answers (its HTML; the result itself comes from /result)."""
    from urllib.request import urlopen

    with urlopen(f"{url}?result={result_id}", timeout=30) as response:  # noqa: S310 - loopback only
        return int(response.status == 200)


def goals(records: list[dict], kill: dict, total: Tally, kill_t: float, minutes: float) -> dict:
    """The soak's goals, each with its figures and whether it passed."""
    warm = min(300.0, minutes * 60 / 3)
    unexpected = {kind: n for kind, n in total.errors.items() if kind.startswith("unexpected")}
    growth = []
    for first, last in ((warm, kill_t), (kill_t + warm, float("inf"))):
        span = [r for r in records if first <= r["t_s"] <= last and r["rss_mb"]]
        if len(span) >= 2:
            growth.append(round(100 * (span[-1]["rss_mb"] / span[0]["rss_mb"] - 1), 1))
    half = minutes * 30
    temp_first = max((r["temp_mb"] for r in records if r["t_s"] <= half), default=0)
    temp_second = max((r["temp_mb"] for r in records if r["t_s"] > half), default=0)
    links_ok = kill["link_states_after_restart"].get("ok", 0) == kill["results_before_kill"]
    corrupt = sum(len(v) for k, v in kill["store_check"].items() if k != "unindexed")
    return {
        "unexpected_errors": {"value": sum(unexpected.values()), "kinds": unexpected, "pass": not unexpected},
        "rss_growth_pct": {"value": growth, "pass": bool(growth) and all(g < 10 for g in growth)},
        "temp_bounded": {"value": [temp_first, temp_second], "pass": temp_second <= 1.5 * max(temp_first, 1.0)},
        "links_after_kill": {"value": kill["link_states_after_restart"], "pass": links_ok},
        "store_intact": {"value": kill["store_check"], "pass": corrupt == 0},
    }


def default_images() -> list[Path]:
    """The app's own examples (pediatric and adult), the data files of the installed runtime."""
    from latentshift.weights.manifest import PACKAGE_ROOT

    examples = PACKAGE_ROOT / "app" / "examples"
    return sorted(examples.glob("*.png")) + sorted((examples / "adult").glob("*.png"))


def pick_images(folder: str | None, count: int, seed: int) -> list[Path]:
    """Up to ``count`` X-rays from ``folder`` (recursive), both populations when the folder has them."""
    if not folder:
        return default_images()
    found = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not found:
        raise FileNotFoundError(f"no PNG or JPEG under {folder}")
    rng = random.Random(seed)
    adult = [p for p in found if population(p) == "adult"]
    pediatric = [p for p in found if population(p) != "adult"]
    half = count // 2
    return rng.sample(adult, min(half, len(adult))) + rng.sample(pediatric, min(count - half, len(pediatric)))


def run_soak(minutes: float, *, images: list[Path], work: Path, settings: dict, every_s: float = 30.0,
             temp_max_age: float = 300.0, out: Path | None = None, clients: int = CLIENTS,
             app_args: list[str] | None = None) -> dict:
    """The soak (see the module's docstring); its records, the kill check and the goals."""
    server = Server(work, free_port(), temp_max_age, list(app_args or []))
    server.start()
    traffic = Traffic(server.url, images, work, settings)
    threads = [threading.Thread(target=traffic.client_loop, args=(n,), daemon=True) for n in range(clients)]
    records, kill, kill_t = [], None, minutes * 30
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < minutes * 60:
            time.sleep(min(every_s, max(0.1, minutes * 60 - elapsed)))
            records.append(snapshot(server, traffic.take_window(), started))
            _write(out, records[-1])
            if kill is None and time.monotonic() - started >= kill_t:
                kill_t = time.monotonic() - started
                kill = kill_and_restart(server, traffic, settings.get("retention_days", 30.0))
                _write(out, {"kill": kill})
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=600)
        records.append(snapshot(server, traffic.take_window(), started))
    finally:
        traffic.stop.set()
        server.stop()
    report = {"minutes": minutes, "clients": clients, "images": len(images), "records": records, "kill": kill,
              "totals": _totals(traffic.total), "goals": goals(records, kill, traffic.total, kill_t, minutes)}
    report["passed"] = all(goal["pass"] for goal in report["goals"].values())
    _write(out, {"summary": {k: v for k, v in report.items() if k != "records"}})
    return report


def _totals(total: Tally) -> dict:
    return {"latency_s": {name: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95)}
                          for name, v in sorted(total.latencies.items())},
            "errors": dict(sorted(total.errors.items()))}


def _write(out: Path | None, line: dict) -> None:
    text = json.dumps(line, default=str)
    print(text, flush=True)
    if out is not None:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


def main_soak(args) -> int:
    """``python -m latentshift_research loadtest --soak MINUTES`` (arguments parsed by the load test's parser)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="latentshift-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = {"frames": args.frames or 8, "ig_steps": args.ig_steps or 8, "step_size": 10.0,
                "frame_duration_ms": 100, "compare_target": args.compare_target, "retention_days": 30.0}
    images = pick_images(args.images_dir, args.pool, seed=0)
    report = run_soak(args.soak, images=images, work=work, settings=settings, every_s=args.every,
                      temp_max_age=args.temp_max_age, out=Path(args.out) if args.out else None,
                      clients=args.clients)
    print(f"soak {'passed' if report['passed'] else 'FAILED'}: " +
          ", ".join(f"{name} {'ok' if goal['pass'] else 'FAILED'}" for name, goal in report["goals"].items()))
    return 0 if report["passed"] else 1
