"""Process start-up settings that must exist before the interpreter starts (bottom layer).

glibc reads ``GLIBC_TUNABLES`` only when a process starts, so setting it from Python is too
late for the running process. :func:`reexec_with_allocator_tunables` re-executes the
current process once with the allocator tunables set: no ``mmap`` for large blocks and no
trimming, so the decoder's large activations (hundreds of MiB per batch of 8 with the
xrv-size models) are reused rather than page-faulted in on every call (measured: the batch-8
cost halves on 2 CPU cores). It imports nothing of the package.

Call it first thing in an entry point, before torch is imported::

    from latentshift.runtime import reexec_with_allocator_tunables
    reexec_with_allocator_tunables(sys.argv)

It returns (doing nothing) when the variable is already set, when
``LATENTSHIFT_NO_REEXEC=1``, when this process is already the re-executed one (marker
``LATENTSHIFT_REEXECED``), off glibc Linux, or when the exec fails. On a host where the
environment can be configured instead (e.g. a Space's variables), set
``GLIBC_TUNABLES`` there and no re-exec happens.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

#: Large blocks from the heap (never mmap), never trimmed back to the system.
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
MARKER = "LATENTSHIFT_REEXECED"
OPT_OUT = "LATENTSHIFT_NO_REEXEC"


def should_reexec(environ: dict | None = None) -> bool:
    """Whether :func:`reexec_with_allocator_tunables` would re-execute (``environ``: os.environ)."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT) == "1" or environ.get(MARKER) or "GLIBC_TUNABLES" in environ:
        return False
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def reexec_with_allocator_tunables(argv: list[str]) -> None:
    """Replace this process by ``sys.executable`` + ``argv`` with ``GLIBC_TUNABLES`` set, once.

    ``argv`` is the process's ``sys.argv`` (``argv[0]`` the script or ``-m`` module path as
    Python saw it). Returns only when no re-exec is needed or it failed (logged).
    """
    if not should_reexec() or not argv or argv[0] in ("-c", ""):  # `python -c` / REPL: cannot restart
        return
    environ = dict(os.environ, GLIBC_TUNABLES=ALLOCATOR_TUNABLES, **{MARKER: "1"})
    command = [sys.executable, *_interpreter_arguments(argv)]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, command, environ)
    except OSError as error:  # exec failed: carry on without the tunables
        logger.warning("could not re-execute with GLIBC_TUNABLES (%s); continuing without", error)


def _interpreter_arguments(argv: list[str]) -> list[str]:
    """The arguments that start this program again: ``-m module …`` when it was run as a
    module (``sys.argv[0]`` is then the module's file), else ``argv`` as given."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["-m", name, *argv[1:]]
    return list(argv)
