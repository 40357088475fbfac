"""The admission line (latentshift/app/admission.py): bounded, first come first served, places given back."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from latentshift.app.admission import Line, LineFull, busy_text, computing


def test_a_full_line_refuses_at_once_with_the_number_ahead():
    line = Line(slots=1, waiting=2)
    tickets = [line.admit() for _ in range(3)]
    with pytest.raises(LineFull) as refused:
        line.admit()
    assert str(refused.value) == busy_text(3) == "Busy: 3 ahead of you, try again in a minute."
    assert line.counts() == {"running": 0, "waiting": 3, "refused": 1}
    tickets[2].release()
    line.admit()  # a place given back is free again


def test_turns_come_in_order_and_report_how_many_are_ahead():
    line = Line(slots=1, waiting=3)
    first, second, third = line.admit(), line.admit(), line.admit()

    async def scenario():
        first_turn = [ahead async for ahead in first.turn()]
        seen = []

        async def wait_third():
            async for ahead in third.turn(report_every_s=100):
                seen.append(ahead)

        waiting = asyncio.create_task(wait_third())
        await asyncio.sleep(0.3)
        first.release()          # second (not third) is next
        await asyncio.sleep(0.3)
        assert not waiting.done()
        second.wait_turn(timeout_s=1)
        second.release()
        await asyncio.wait_for(waiting, 5)
        return first_turn, seen

    first_turn, seen = asyncio.run(scenario())
    assert first_turn == [] and seen[0] == 2 and seen[-1] == 1
    assert line.counts()["running"] == 1
    third.release()
    assert line.counts() == {"running": 0, "waiting": 0, "refused": 0}


def test_a_cancelled_waiter_gives_its_place_back():
    line = Line(slots=1, waiting=1)
    running = line.admit()
    running.wait_turn(timeout_s=1)

    async def abandoned():
        ticket = line.admit()
        try:
            async for _ in ticket.turn():
                pass
        finally:
            ticket.release()

    async def scenario():
        task = asyncio.create_task(abandoned())
        await asyncio.sleep(0.3)
        task.cancel()            # the page was closed while it waited
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert line.counts()["waiting"] == 0
    running.release()


def test_computing_blocks_worker_threads_one_at_a_time():
    line = Line(slots=1, waiting=5)
    inside, most = [], [0]
    lock = threading.Lock()

    def work():
        with computing(line, timeout_s=30):
            with lock:
                inside.append(1)
                most[0] = max(most[0], len(inside))
            threading.Event().wait(0.05)
            with lock:
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert most[0] == 1 and line.counts() == {"running": 0, "waiting": 0, "refused": 0}


def test_an_example_row_runs_in_its_turn_and_a_full_line_refuses_it(tmp_path):
    """The examples' (lazily cached) explanation waits in the same line as the page's runs."""
    import gradio as gr
    from appserver import serve_app

    with serve_app(tmp_path / "app", waiting=1) as served:
        examples = [inspect.getclosurevars(fn.fn).nonlocals["self"] for fn in served.demo.fns.values()
                    if getattr(fn.fn, "__name__", "") == "load_example_output"]
        assert examples, "the page has no cached example rows"
        gallery, line = examples[0], served.runs.line
        row = gallery.non_none_examples[0]
        running = []
        for _ in gallery.fn(*row):
            running.append(line.counts()["running"])
        assert running and set(running) == {1}, running
        assert line.counts() == {"running": 0, "waiting": 0, "refused": 0}
        held = [line.admit() for _ in range(line.capacity)]
        with pytest.raises(gr.Error, match="Busy: 2 ahead of you"):
            next(gallery.fn(*row))
        for ticket in held:
            ticket.release()
