"""The result store's push to a dataset repo (latentshift/results/mirror.py): huggingface_hub's own
CommitScheduler creates the private repo and commits the store's ``entries/`` to the local fake Hub
(tests/fakehub.py: create repo, preupload, NDJSON commit), and an empty store restores from what was pushed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from huggingface_hub.errors import HfHubHTTPError

from fakehub import FakeHub
from latentshift.results import mirror
from latentshift.results.store import SECONDS_PER_DAY, ResultStore, result_key

REPO = "lab/results"
TOKEN = "hf_test_token"


def put_result(store: ResultStore, folder: Path, n: int, status: str):
    """A small stored result: a random GIF-like file and a summary (their bytes are checked later)."""
    folder.mkdir(parents=True)
    (folder / "latentshift.gif").write_bytes(b"GIF89a" + os.urandom(200))
    (folder / "summary.json").write_text(json.dumps({"target": "Pneumonia", "n": n}))
    key = result_key(f"{n:064x}", {"classifier": "c", "autoencoder": "a"}, {"frames": 12})
    return store.put(key, {"gif": folder / "latentshift.gif", "summary": folder / "summary.json"},
                     {"page": {"status": status}})


def folder_bytes_by_name(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


@pytest.fixture
def schedulers():
    """Schedulers made by a test; each is stopped at the end (a stopped one pushes nothing more)."""
    made = []
    yield made
    for scheduler in made:
        scheduler.stop()
        assert scheduler.trigger().result() is None


def held_files(hub: FakeHub) -> dict[str, bytes]:
    """The files on the repo's main branch now."""
    return hub.repos[REPO][hub.branches[REPO]["main"]]


def test_a_push_makes_a_private_repo_that_an_empty_store_restores_whole(tmp_path, hub, schedulers, monkeypatch,
                                                                        caplog):
    source = ResultStore(tmp_path / "source", retention_days=30)
    fresh = put_result(source, tmp_path / "a", 1, "fresh")
    with monkeypatch.context() as clock:            # written 20 days ago: 10 days left
        written = time.time() - 20 * SECONDS_PER_DAY
        clock.setattr(time, "time", lambda: written)
        old = put_result(source, tmp_path / "b", 2, "old")
    with caplog.at_level("INFO", logger="latentshift.results"):
        scheduler = mirror.start_mirror(source, REPO, TOKEN, every_minutes=10, endpoint=hub.url)
    assert scheduler is not None
    schedulers.append(scheduler)
    assert "the first push creates it" in caplog.text      # no repo yet: said plainly, not as a failure
    scheduler.trigger().result()

    assert hub.private[REPO] is True
    files = held_files(hub)
    catalog = json.loads(files["entries/catalog.json"])["results"]
    assert set(catalog) == {fresh.id, old.id}
    for result in (fresh, old):
        for name, data in folder_bytes_by_name(result.folder).items():
            assert files[f"entries/{result.id[:2]}/{result.id}/{name}"] == data
    assert not [name for name in files if name.endswith(".tmp")]

    target = ResultStore(tmp_path / "target", retention_days=30)
    later = time.time() + 15 * SECONDS_PER_DAY    # the old result has expired by then, the fresh one not
    assert mirror.restore(target, REPO, token=TOKEN, endpoint=hub.url, now=later) == [fresh.id]
    assert folder_bytes_by_name(target.folder_of(fresh.id)) == folder_bytes_by_name(fresh.folder)
    assert target.get(fresh.id).record["page"]["status"] == "fresh" and target.verify(fresh.id) == ""
    assert target.lookup(old.id).state == "unknown"
    with pytest.raises(HfHubHTTPError, match="401"):   # private: nothing is served without the token
        mirror.restore(ResultStore(tmp_path / "anonymous", retention_days=30), REPO, token=False,
                       endpoint=hub.url)


def test_later_pushes_send_only_new_results(tmp_path, hub, schedulers):
    store = ResultStore(tmp_path / "store", retention_days=30)
    first = put_result(store, tmp_path / "a", 1, "first")
    scheduler = mirror.start_mirror(store, REPO, TOKEN, every_minutes=10, endpoint=hub.url)
    schedulers.append(scheduler)
    scheduler.trigger().result()
    head, asked = hub.branches[REPO]["main"], len(hub.requests)
    scheduler.trigger().result()                  # nothing new: the catalog is left as it was, nothing sent
    assert hub.branches[REPO]["main"] == head and len(hub.requests) == asked

    second = put_result(store, tmp_path / "b", 2, "second")
    scheduler.trigger().result()
    assert hub.branches[REPO]["main"] != head
    assert set(json.loads(held_files(hub)["entries/catalog.json"])["results"]) == {first.id, second.id}
    assert len([path for method, path in hub.requests if method == "POST" and "/commit/" in path]) == 2
    target = ResultStore(tmp_path / "target", retention_days=30)
    assert sorted(mirror.restore(target, REPO, token=TOKEN, endpoint=hub.url)) == sorted([first.id, second.id])


def test_a_failed_push_is_logged_and_the_next_one_sends_everything(tmp_path, hub, schedulers, caplog):
    store = ResultStore(tmp_path / "store", retention_days=30)
    first = put_result(store, tmp_path / "a", 1, "first")
    hub.commit_status = 500
    with caplog.at_level("WARNING"):
        scheduler = mirror.start_mirror(store, REPO, TOKEN, every_minutes=10, endpoint=hub.url)
        schedulers.append(scheduler)
        with pytest.raises(HfHubHTTPError, match="500"):
            scheduler.trigger().result()
    pushes = [r.getMessage() for r in caplog.records if r.name == "latentshift.results" and "push" in r.getMessage()]
    assert pushes and all(REPO in line and "500" in line and "retries" in line for line in pushes)
    assert held_files(hub) == {}                  # the repo was made, nothing committed

    second = put_result(store, tmp_path / "b", 2, "second")   # the store goes on working
    assert store.get(second.id) is not None and store.check() == {"missing": [], "corrupt": [], "unindexed": []}
    hub.commit_status = 200
    scheduler.trigger().result()
    target = ResultStore(tmp_path / "target", retention_days=30)
    assert sorted(mirror.restore(target, REPO, token=TOKEN, endpoint=hub.url)) == sorted([first.id, second.id])
