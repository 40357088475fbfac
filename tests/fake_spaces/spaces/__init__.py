"""A stand-in for Hugging Face's ``spaces`` package (tests only): ``GPU`` as ZeroGPU runs it.

Without ``SPACES_ZERO_GPU=true`` it returns the function itself, as the real package does. With it,
each call runs in a **forked worker process**, as on ZeroGPU: the arguments cross as pickles, the result
(or each item a generator yields, or the exception) comes back as a pickle, and the worker leaves with
``os._exit`` (no atexit handlers of the parent run in it). Every call is appended to ``$FAKE_SPACES_LOG``
as a JSON line: the function's name, the duration asked for and the worker's pid.
"""

from __future__ import annotations

import functools
import inspect
import json
import multiprocessing
import os
import pickle

ON_ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
_FORK = multiprocessing.get_context("fork")


def GPU(task=None, *, duration=None, size=None):  # noqa: N802 - the real package's name
    if task is None or not callable(task):
        return functools.partial(GPU, duration=duration, size=size)
    if not ON_ZERO_GPU:
        return task
    if inspect.isgeneratorfunction(task):
        @functools.wraps(task)
        def generator_handler(*args, **kwargs):
            for kind, value in _in_worker(task, duration, args, kwargs, generator=True):
                if kind == "item":
                    yield value
        return generator_handler

    @functools.wraps(task)
    def handler(*args, **kwargs):
        for kind, value in _in_worker(task, duration, args, kwargs, generator=False):
            return value
    return handler


def _in_worker(task, duration, args, kwargs, generator):
    """(kind, value) messages of one call run in a forked process; raises the worker's exception."""
    arguments = pickle.dumps((args, kwargs))  # ZeroGPU sends the arguments as a pickle
    receive, send = _FORK.Pipe(duplex=False)
    worker = _FORK.Process(target=_work, args=(send, task, duration, arguments, generator), daemon=True)
    worker.start()
    send.close()
    try:
        while True:
            try:
                kind, value = pickle.loads(receive.recv_bytes())
            except EOFError:
                raise RuntimeError("ZeroGPU worker error: the worker died") from None
            if kind == "error":
                raise value
            yield kind, value
            if kind in ("value", "end"):
                return
    finally:
        receive.close()
        worker.join(timeout=60)


def _work(send, task, duration, arguments, generator):
    try:
        with open(os.environ["FAKE_SPACES_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"function": task.__name__, "duration": duration, "pid": os.getpid()}) + "\n")
        args, kwargs = pickle.loads(arguments)
        if generator:
            for item in task(*args, **kwargs):
                send.send_bytes(pickle.dumps(("item", item)))
            send.send_bytes(pickle.dumps(("end", None)))
        else:
            send.send_bytes(pickle.dumps(("value", task(*args, **kwargs))))
    except BaseException as exc:  # noqa: BLE001 - sent back and raised in the caller, as ZeroGPU does
        send.send_bytes(pickle.dumps(("error", exc)))
    finally:
        send.close()
        os._exit(0)
