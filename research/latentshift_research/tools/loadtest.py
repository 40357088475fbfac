"""Load test of a running app: N concurrent gradio_client clients × M ``/explain`` requests.

    python -m latentshift_research loadtest --url http://127.0.0.1:7860 --clients 8 --requests 5

Each client sends its requests one after the other; the clients run at the same time, so
at most N requests are in flight. Every answer is checked to be complete: the GIF exists
and has more than one frame, and summary.json parses and names the same frame count.
Printed: p50/p95/max latency, failed and incomplete requests, and queue-full answers
(Gradio's "Queue is full" is counted separately: it is the configured refusal, not a crash).

Bounded: at most ``clients × requests`` requests (capped at 1000), each waited for at most
``--request-timeout`` seconds, and no new request starts after ``--time-limit`` seconds.
Loopback addresses only (127.0.0.1, ::1, localhost): this is not a tool for loading
someone else's server. With ``--server-pid`` the server's open file descriptors are
counted before and after, and with ``--watch DIR`` (repeatable) the bytes under each
folder, e.g. the app's Gradio cache, so leftovers can be compared with the baseline once
the cache expiry has passed (``--settle S`` waits S seconds before the last measurement).

Exit code 0 when every request succeeded with a complete answer, 1 otherwise, 2 on a
usage error (non-loopback URL, missing image).

``--soak MINUTES`` runs the soak of :mod:`latentshift_research.tools.soak` instead (it starts its own app).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from latentshift.results.store import folder_bytes

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
MAX_TOTAL_REQUESTS = 1000


@dataclass
class RequestRecord:
    client: int
    index: int
    seconds: float
    outcome: str                  # "ok", "incomplete", "busy", "queue_full", "error", "timeout", "not_started"
    detail: str = ""


@dataclass
class LoadResult:
    """What happened, plus the figures that are printed."""

    records: list[RequestRecord] = field(default_factory=list)
    wall_seconds: float = 0.0
    fds_before: int | None = None
    fds_after: int | None = None
    watched_before: dict[str, int] = field(default_factory=dict)
    watched_after: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(record.outcome == outcome for record in self.records)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def failed(self) -> int:
        """Requests that errored, timed out or answered incompletely (queue-full not included)."""
        return sum(r.outcome in ("error", "timeout", "incomplete") for r in self.records)

    @property
    def queue_full(self) -> int:
        return self.count("queue_full")

    @property
    def busy(self) -> int:
        """Requests the admission line refused at once ("Busy: N ahead of you")."""
        return self.count("busy")

    def latencies(self) -> list[float]:
        return sorted(r.seconds for r in self.records if r.outcome == "ok")

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the successful requests' latencies (None if none)."""
        values = self.latencies()
        if not values:
            return None
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1]

    def summary(self) -> dict:
        return {
            "requests": len(self.records), "ok": self.ok, "failed": self.failed,
            "queue_full": self.queue_full, "busy": self.busy, "not_started": self.count("not_started"),
            "p50_s": self.percentile(50), "p95_s": self.percentile(95),
            "max_s": max(self.latencies(), default=None), "wall_s": round(self.wall_seconds, 3),
            "fds_before": self.fds_before, "fds_after": self.fds_after,
            "watched_bytes_before": self.watched_before, "watched_bytes_after": self.watched_after,
            "errors": sorted({f"{r.outcome}: {r.detail}" for r in self.records
                              if r.outcome not in ("ok", "not_started")})[:10],
        }

    def report(self) -> str:
        def seconds(value):
            return "n/a" if value is None else f"{value:.2f} s"

        lines = [
            f"requests: {len(self.records)} ({self.ok} ok, {self.failed} failed, {self.busy} busy, "
            f"{self.queue_full} queue full, "
            f"{self.count('not_started')} not started before the time limit) in {self.wall_seconds:.1f} s",
            f"latency: p50 {seconds(self.percentile(50))}, p95 {seconds(self.percentile(95))}, "
            f"max {seconds(max(self.latencies(), default=None))}",
        ]
        if self.fds_before is not None:
            lines.append(f"server open file descriptors: {self.fds_before} before, {self.fds_after} after")
        for folder, before in self.watched_before.items():
            lines.append(f"bytes under {folder}: {before} before, {self.watched_after.get(folder)} after")
        lines += [f"  {error}" for error in self.summary()["errors"]]
        return "\n".join(lines)


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"refusing to load {url!r}: only loopback addresses ({', '.join(sorted(LOOPBACK_HOSTS))}) "
                         f"are allowed")


def open_fds(pid: int | str = "self") -> int | None:
    """Number of open file descriptors of a process (Linux /proc), None where unknown."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def synthetic_xray(path: Path, side: int = 256) -> Path:
    """A smooth grayscale PNG (not a real X-ray) for load testing."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:side, 0:side]
    pixels = 128 + 60 * np.sin(xx / (side / 7)) * np.cos(yy / (side / 9)) + 30 * (xx > side // 2)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(path)
    return path


def check_answer(answer) -> str:
    """'' if the /explain answer is complete, else what is missing."""
    from latentshift.io.render import gif_frame_count

    if not isinstance(answer, (tuple, list)) or len(answer) < 2:
        return f"unexpected answer {answer!r:.120}"
    gif, summary_path = answer[0], answer[-1]
    if not gif or not Path(gif).is_file():
        return "no GIF"
    frames = gif_frame_count(gif)
    if frames <= 1:
        return f"GIF has {frames} frame"
    if not summary_path or not Path(summary_path).is_file():
        return "no summary.json"
    try:
        summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"summary.json unreadable: {error}"
    if summary.get("gif_frames") != frames:
        return f"summary says {summary.get('gif_frames')} GIF frames, the GIF has {frames}"
    return ""


def _request_outcome(job, request_timeout: float) -> tuple[str, str]:
    """(outcome, detail) of one submitted ``/explain`` job, once it answered, failed or timed out."""
    from gradio_client.exceptions import AppError

    QueueError = getattr(__import__("gradio_client.utils", fromlist=["QueueError"]), "QueueError", ())
    try:
        problem = check_answer(job.result(timeout=request_timeout))
        return ("incomplete", problem) if problem else ("ok", "")
    except QueueError as error:
        return "queue_full", str(error)
    except TimeoutError:
        job.cancel()
        return "timeout", f"no answer within {request_timeout:g} s"
    except AppError as error:
        return "busy" if "Busy:" in str(error) else "error", f"AppError: {error}"
    except Exception as error:  # noqa: BLE001
        text = str(error)
        return "queue_full" if "queue is full" in text.lower() else "error", f"{type(error).__name__}: {text}"


def _client_loop(number: int, url: str, image: Path, requests: int, explain_kwargs: dict, deadline: float,
                 request_timeout: float, downloads: Path, records: list, lock: threading.Lock,
                 start: threading.Barrier) -> None:
    from gradio_client import Client, handle_file

    def add(record: RequestRecord) -> None:
        with lock:
            records.append(record)

    client = None
    try:
        client = Client(url, verbose=False, download_files=str(downloads / f"client-{number}"))
    except Exception as error:  # noqa: BLE001 - reported, not raised
        detail = f"could not connect: {type(error).__name__}: {error}"
        for index in range(requests):
            add(RequestRecord(number, index, 0.0, "error", detail))
        return
    finally:
        try:
            start.wait(timeout=max(1.0, deadline - time.monotonic()))
        except threading.BrokenBarrierError:
            pass
    try:
        for index in range(requests):
            if time.monotonic() >= deadline:
                add(RequestRecord(number, index, 0.0, "not_started", "time limit reached"))
                continue
            started = time.perf_counter()
            job = client.submit(image=handle_file(str(image)), **explain_kwargs, api_name="/explain")
            outcome, detail = _request_outcome(job, request_timeout)
            add(RequestRecord(number, index, time.perf_counter() - started, outcome, detail[:300]))
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


def run_load(url: str, *, clients: int = 8, requests: int = 5, image: str | os.PathLike | None = None,
             explain_kwargs: dict | None = None, time_limit: float = 600.0, request_timeout: float = 300.0,
             server_pid: int | None = None, watch: list[str] | None = None, settle: float = 0.0) -> LoadResult:
    """Run the load test and return its :class:`LoadResult` (also used by the tests)."""
    check_loopback(url)
    if clients < 1 or requests < 1:
        raise ValueError("clients and requests must be at least 1")
    if clients * requests > MAX_TOTAL_REQUESTS:
        raise ValueError(f"at most {MAX_TOTAL_REQUESTS} requests in all, asked for {clients * requests}")
    result = LoadResult()
    watch = [str(folder) for folder in (watch or [])]
    result.fds_before = open_fds(server_pid) if server_pid else None
    result.watched_before = {folder: folder_bytes(folder) for folder in watch}
    work = Path(tempfile.mkdtemp(prefix="latentshift-loadtest-"))
    try:
        image_path = Path(image) if image else synthetic_xray(work / "xray.png")
        if not image_path.is_file():
            raise FileNotFoundError(f"image {str(image_path)!r} not found")
        lock = threading.Lock()
        start = threading.Barrier(clients)
        began = time.monotonic()
        deadline = began + time_limit
        threads = [threading.Thread(
            target=_client_loop, name=f"loadtest-client-{n}", daemon=True,
            args=(n, url, image_path, requests, dict(explain_kwargs or {}), deadline, request_timeout, work,
                  result.records, lock, start)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline + request_timeout + 30 - time.monotonic()))
        result.wall_seconds = time.monotonic() - began
        with lock:
            missing = clients * requests - len(result.records)
            if any(thread.is_alive() for thread in threads) and missing:
                result.records.append(RequestRecord(-1, -1, 0.0, "timeout",
                                                    f"{missing} request(s) still running at the time limit"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if settle > 0:
        time.sleep(settle)
    result.fds_after = open_fds(server_pid) if server_pid else None
    result.watched_after = {folder: folder_bytes(folder) for folder in watch}
    return result


def build_parser(prog: str = "python -m latentshift_research.tools.loadtest") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="app address (loopback only)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=5, help="requests per client (default 5)")
    parser.add_argument("--image", help="image to upload (default: a synthetic 256×256 PNG)")
    parser.add_argument("--frames", type=int, help="sweep frames (default: the app's)")
    parser.add_argument("--ig-steps", type=int, help="Integrated-Gradients steps (default: the app's)")
    parser.add_argument("--time-limit", type=float, default=600.0,
                        help="no request starts after this many seconds (default 600)")
    parser.add_argument("--request-timeout", type=float, default=300.0,
                        help="longest wait for one answer in seconds (default 300)")
    parser.add_argument("--server-pid", type=int, help="count this process's open file descriptors before/after")
    parser.add_argument("--watch", action="append", default=[], metavar="DIR",
                        help="report the bytes under DIR before and after (repeatable)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait before the final fd/size measurement (e.g. the cache expiry)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    soak = parser.add_argument_group("soak (latentshift/tools/soak.py): starts its own app, --url is not used")
    soak.add_argument("--soak", type=float, metavar="MINUTES",
                      help="serve the app for MINUTES to --clients clients with mixed traffic, SIGKILL it halfway")
    soak.add_argument("--images-dir", help="X-rays to send (recursive; default the app's examples)")
    soak.add_argument("--pool", type=int, default=24, help="how many of them (default 24; repeats hit the store)")
    soak.add_argument("--every", type=float, default=30.0, help="seconds between records (default 30)")
    soak.add_argument("--temp-max-age", type=float, default=300.0,
                      help="the app's temporary-file age limit during the soak (default 300 s)")
    soak.add_argument("--compare-target", default="Pneumonia", help="finding of the compare requests")
    soak.add_argument("--work", help="folder for the app's files and store (default a new temporary one)")
    soak.add_argument("--out", help="also append every record as a JSON line to this file")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    if args.soak is not None:
        from .soak import main_soak

        return main_soak(args)
    explain_kwargs = {}
    if args.frames is not None:
        explain_kwargs["frames"] = args.frames
    if args.ig_steps is not None:
        explain_kwargs["ig_steps"] = args.ig_steps
    try:
        result = run_load(args.url, clients=args.clients, requests=args.requests, image=args.image,
                          explain_kwargs=explain_kwargs, time_limit=args.time_limit,
                          request_timeout=args.request_timeout, server_pid=args.server_pid, watch=args.watch,
                          settle=args.settle)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"load test of {args.url}: {args.clients} clients × {args.requests} requests")
    print(result.report())
    if args.json:
        print(json.dumps(result.summary()))
    return 0 if result.failed == 0 and result.ok == len(result.records) else 1


if __name__ == "__main__":
    sys.exit(main())
