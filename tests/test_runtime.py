"""The allocator re-exec: once, never when opted out or already set, restarting the same program."""

import os
import subprocess
import sys
import textwrap

from latentshift import runtime


def test_should_reexec_guards():
    assert not runtime.should_reexec({"LATENTSHIFT_NO_REEXEC": "1"})
    assert not runtime.should_reexec({runtime.MARKER: "1"})
    assert not runtime.should_reexec({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})


def test_reexec_sets_the_tunables_once_and_keeps_the_arguments(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from latentshift.runtime import reexec_with_allocator_tunables
        print("start", flush=True)
        reexec_with_allocator_tunables(sys.argv)
        print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", runtime.MARKER, runtime.OPT_OUT)}
    env["PYTHONPATH"] = os.pathsep.join([str(runtime.__file__).rsplit("/latentshift/", 1)[0],
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(script), "a", "b"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    if runtime.should_reexec(env):
        assert out == ["start", "start", f"{runtime.ALLOCATOR_TUNABLES} ['a', 'b']"]
    else:
        assert out[-1] == "None ['a', 'b']"
