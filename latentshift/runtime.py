"""Process start-up settings: glibc's allocator knobs, set in-process (bottom layer).

:func:`set_allocator_tunables` calls glibc's ``mallopt`` through ctypes so that large blocks
come from the heap (never ``mmap``), freed memory is never trimmed back to the system, and threads
share at most two heaps:
the decoder's large activations (hundreds of MiB per batch of 8 with the xrv-size models) are
then reused rather than page-faulted in on every call (measured: the batch-8 cost halves on 2
CPU cores). These are the three knobs of :data:`ALLOCATOR_TUNABLES` (the same settings as the
environment variable ``GLIBC_TUNABLES``, which glibc reads only when a process starts):

=================================  ==========================  ==========================
``GLIBC_TUNABLES`` name            ``mallopt`` parameter        value
=================================  ==========================  ==========================
``glibc.malloc.mmap_max``          ``M_MMAP_MAX`` (-4)          0: no block is mmap-ed
``glibc.malloc.trim_threshold``    ``M_TRIM_THRESHOLD`` (-1)    -1: never trim (the
                                                                tunable's 16 GiB, more than
                                                                any heap here)
``glibc.malloc.arena_max``         ``M_ARENA_MAX`` (-8)         2: at most two heaps
=================================  ==========================  ==========================

The arena limit bounds what "never trim" keeps: by default glibc gives threads up to 8 heaps per
core, and the app's worker threads (explanations, comparisons, predictions at once) spread over a
dozen of them, each kept at its own high-water mark. In a soak the server's RSS then crept up as
more of them reached a large explanation (12-13 heaps, 640 MiB of them after 4 minutes). Two heaps
hold the work of two cores.

Either way glibc also stops adjusting the mmap threshold dynamically. Call it first thing in
an entry point and in each worker process an entry point starts (they do not inherit it)::

    from latentshift.runtime import set_allocator_tunables
    set_allocator_tunables()

It does nothing when ``GLIBC_TUNABLES`` is set (the host chose), when
``LATENTSHIFT_NO_ALLOCATOR_TUNING=1``, or off glibc Linux. It runs before an entry point reads its
settings, so it reads its one variable itself (through :func:`latentshift.settings.read_variable`);
it imports nothing else of the package.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

from .settings import read_variable, variable_name

logger = logging.getLogger(__name__)

#: The same settings as glibc tunables (for a host that sets ``GLIBC_TUNABLES`` itself).
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=2"
#: ``mallopt`` parameter numbers (glibc's malloc.h) and the values that match :data:`ALLOCATOR_TUNABLES`.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MALLOPT_SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 2))
OPT_OUT = variable_name("allocator_tuning")  # LATENTSHIFT_NO_ALLOCATOR_TUNING


def should_set_tunables(environ=None) -> bool:
    """Whether :func:`set_allocator_tunables` would call ``mallopt`` (``environ``: os.environ)."""
    environ = os.environ if environ is None else environ
    try:
        opted_out = not read_variable("allocator_tuning", environ)
    except ValueError:  # a malformed value: the entry point's settings name it and stop the command
        opted_out = False
    if opted_out or "GLIBC_TUNABLES" in environ:
        return False
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def set_allocator_tunables(environ=None) -> bool:
    """Set :data:`MALLOPT_SETTINGS` in this process; True when glibc accepted them (idempotent)."""
    if not should_set_tunables(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as error:
        logger.warning("glibc's mallopt is not available (%s); the allocator keeps its defaults", error)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    accepted = all(mallopt(parameter, value) == 1 for parameter, value in MALLOPT_SETTINGS)
    if not accepted:
        logger.warning("glibc's mallopt refused the allocator settings %s", MALLOPT_SETTINGS)
    return accepted
