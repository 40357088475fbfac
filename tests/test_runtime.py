"""The allocator settings: mallopt in-process gives what GLIBC_TUNABLES gives at start; opt-outs respected."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from latentshift import runtime

#: In a fresh process: optionally the settings, then one 64 MiB block allocated and freed; prints
#: (mmap-ed blocks added by the allocation, heap bytes kept after the free) from glibc's mallinfo2.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from latentshift.runtime import set_allocator_tunables
    libc = ctypes.CDLL(None)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    applied = set_allocator_tunables() if sys.argv[1] == "set" else None
    mapped = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks - mapped
    libc.free(block)
    print(applied, mapped, libc.mallinfo2().arena >= 64 << 20)
""")

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                                or tuple(int(p) for p in platform.libc_ver()[1].split(".")[:2]) < (2, 33),
                                reason="glibc ≥ 2.33 (mallinfo2) only")


def probe(tmp_path, mode: str, **env_changes) -> list[str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", runtime.OPT_OUT)}
    env.update(env_changes)
    env["PYTHONPATH"] = os.pathsep.join([str(runtime.__file__).rsplit("/latentshift/", 1)[0],
                                         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_opt_outs():
    assert not runtime.should_set_tunables({runtime.OPT_OUT: "1"})
    assert not runtime.should_set_tunables({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    assert not runtime.set_allocator_tunables({runtime.OPT_OUT: "1"})
    assert not runtime.should_set_tunables({runtime.OPT_OUT: "True"})


@glibc_only
def test_a_malformed_opt_out_ends_the_command_with_one_line_not_a_traceback():
    assert runtime.should_set_tunables({runtime.OPT_OUT: "maybe"}), "before the settings are read: the default"
    completed = subprocess.run([sys.executable, "-m", "latentshift", "weights", "list", "--no-network"],
                               env={**os.environ, runtime.OPT_OUT: "maybe"}, capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip() == (f"error: {runtime.OPT_OUT} must be on (1, true, yes, on) or off "
                                        f"(0, false, no, off), not 'maybe'")


@glibc_only
def test_mallopt_in_process_does_what_the_start_up_tunables_do(tmp_path):
    # glibc's defaults: a 64 MiB block is mmap-ed, and given back when freed
    assert probe(tmp_path, "none") == ["None", "1", "False"]
    # set at process start (as GLIBC_TUNABLES does): from the heap, and kept
    assert probe(tmp_path, "set", GLIBC_TUNABLES=runtime.ALLOCATOR_TUNABLES) == ["False", "0", "True"]
    # set in-process: the same
    assert probe(tmp_path, "set") == ["True", "0", "True"]
    assert probe(tmp_path, "set", **{runtime.OPT_OUT: "1"}) == ["False", "1", "False"]


#: In a fresh process: optionally the settings, then 8 threads allocating at once; glibc's
#: malloc_stats (on stderr) lists one "Arena N:" per heap the threads were given.
ARENA_PROBE = textwrap.dedent("""
    import ctypes, sys, threading
    from latentshift.runtime import set_allocator_tunables
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    if sys.argv[1] == "set":
        set_allocator_tunables()
    barrier = threading.Barrier(8)
    def work():
        barrier.wait()
        blocks = [libc.malloc(1 << 20) for _ in range(4)]
        barrier.wait()
        for block in blocks:
            libc.free(block)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    libc.malloc_stats()
""")


@glibc_only
def test_threads_share_at_most_two_heaps(tmp_path):
    def arenas(mode: str) -> int:
        script = tmp_path / "arenas.py"
        script.write_text(ARENA_PROBE)
        env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", runtime.OPT_OUT)}
        env["PYTHONPATH"] = str(runtime.__file__).rsplit("/latentshift/", 1)[0]
        stderr = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                                check=True).stderr
        return stderr.count("Arena ")

    assert arenas("none") > 2  # glibc's default: a heap per thread, up to 8 per core
    assert arenas("set") <= 2
