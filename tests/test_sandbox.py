"""Sandbox security: every attack is stopped, reported as a tool error, and the next call works.

Most tests need the OS wall (root: namespaces + seccomp, as in CI); without it every call is
refused, which the last tests check, and the rest skip."""
import ast
import os
import shutil
import uuid

import pytest

from chatforge.assistant import sandbox
from chatforge.assistant.sandbox import SandboxConfig, run_python
from chatforge.assistant.tools import ToolBox

CFG = SandboxConfig(wall_s=2.5, cpu_s=1, mem_mb=256, max_output_chars=500)
WALL_ONLY = SandboxConfig(wall_s=4.0, cpu_s=1, mem_mb=256, max_output_chars=500, tripwire=False)
BENIGN = "print(sum(range(10)))"
ISOLATED = run_python(BENIGN, CFG).ok
pytestmark = pytest.mark.skipif(not ISOLATED, reason="no OS isolation here (needs root and namespaces)")


def check_stopped(code: str, kinds: set[str]) -> str:
    r = run_python(code, CFG)
    assert r.error in kinds, (code, r)
    out = r.to_tool_output()
    assert out.startswith("error: "), out
    after = run_python(BENIGN, CFG)  # the next call still works
    assert after.ok and after.stdout.strip() == "45", after
    return out


def test_benign_code_works():
    r = run_python(BENIGN, CFG)
    assert r.ok and r.stdout == "45\n" and r.exit_code == 0 and not r.timed_out
    r = run_python("import math, json, re, collections, itertools, statistics, fractions, datetime\n"
                   "print(math.factorial(5), json.dumps([1]))", CFG)
    assert r.ok and r.stdout.strip() == "120 [1]", r


def test_letter_counting_via_code():
    out = ToolBox(sandbox=CFG)("python", "w = 'strawberry'\nprint(w.count('r'))")
    assert out.strip() == "3"


def test_scratch_dir_is_writable_and_fresh():
    r = run_python("open('a.txt', 'w').write('hi'); print(open('a.txt').read())", CFG)
    assert r.ok and r.stdout.strip() == "hi"
    r = run_python("import os; print(os.listdir('.'))", CFG)  # nothing left over from the last run
    assert r.ok and r.stdout.strip() == "[]"


def test_read_etc_passwd():
    out = check_stopped("print(open('/etc/passwd').read())", {"denied"})
    assert "root:" not in out
    check_stopped("import os; os.chdir('/etc'); print(open('passwd').read())", {"denied"})


def test_write_outside_its_directory():
    target = f"/tmp/chatforge_sandbox_test_{uuid.uuid4().hex}"
    check_stopped(f"open({target!r}, 'w').write('x')", {"denied"})
    check_stopped(f"import os; os.open({target!r}, os.O_WRONLY | os.O_CREAT)", {"denied"})
    assert not os.path.exists(target)


def test_socket():
    check_stopped("import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)", {"denied"})
    check_stopped("import socket; socket.socket()", {"denied"})


def test_subprocess():
    check_stopped("import subprocess; subprocess.run(['id'])", {"denied"})
    check_stopped("import os; os.system('id')", {"denied"})
    check_stopped("import os; os.execv('/bin/true', ['true'])", {"denied"})
    check_stopped("import ctypes", {"denied"})


def test_fork_bomb():
    check_stopped("import os\nwhile True:\n    os.fork()", {"denied", "cpu_limit", "timeout"})


def test_infinite_loop():
    out = check_stopped("while True:\n    pass", {"cpu_limit", "timeout"})
    assert "limit" in out
    check_stopped("import time; time.sleep(60)", {"timeout"})


def test_huge_allocation():
    out = check_stopped("x = bytearray(10 * 1024**3)", {"memory"})
    assert "MemoryError" in out


def test_output_truncated_and_exceptions_reported():
    r = run_python("print('x' * 100000)", CFG)
    assert r.ok and r.truncated and len(r.stdout) <= CFG.max_output_chars
    assert len(r.to_tool_output(300)) < 400
    out = check_stopped("print('before')\n1/0", {"exception"})
    assert "ZeroDivisionError" in out and "before" in out


def test_cannot_raise_its_limits():
    check_stopped("import resource; resource.setrlimit(resource.RLIMIT_CPU, (100, 100))", {"denied"})


@pytest.mark.parametrize("code", ["x" * 30000, "print(1)\x00"])
def test_bad_input(code):
    r = run_python(code, CFG)
    assert r.error == "bad_input" and r.to_tool_output().startswith("error: ")


# ----------------------------------------------------------------------------- issue 14's six escapes

SHADOW = "print(open('/etc/shadow').read())"


def test_escape_1_rebinding_builtins():
    check_stopped("import builtins; builtins.any = lambda it: True; builtins.isinstance = lambda *a: True\n"
                  + SHADOW, {"denied"})


def test_escape_2_rebinding_os_fspath():
    check_stopped("import os, os.path; w = os.getcwd(); os.fspath = lambda p: w\n"
                  "os.path.realpath = lambda p, **k: w\n" + SHADOW, {"denied"})


def test_escape_3_frames_of_the_sandbox():
    out = check_stopped("import sys; print(sys._getframe(1).f_locals)", {"denied"})
    assert "_getframe" in out
    check_stopped("import sys; f = sys._getframe(1)\nfor c in f.f_back.f_code.co_consts: print(c)", {"denied"})


def test_escape_4_str_subclass_import():
    code = ("class S(str):\n"
            "    def split(self, *a, **k): return ['harmless']\n"
            "    def partition(self, *a): return ('harmless', '', '')\n"
            "    def __eq__(self, o): return False\n"
            "    __hash__ = str.__hash__\n"
            "ps = __import__(S('_posixsubprocess'))\n"
            "print('imported', ps)")
    out = check_stopped(code, {"denied"})
    assert "imported" not in out


FORK_EXEC_SETSID = ("import subprocess\n"
                    "p = subprocess.Popen(['/bin/sh', '-c', 'sleep 30'], start_new_session=True)\n"
                    "print('started', p.pid)")


def test_escape_5_setsid_process_outlives_the_call():
    check_stopped(FORK_EXEC_SETSID, {"denied"})
    r = run_python(FORK_EXEC_SETSID, WALL_ONLY)  # the wall alone: fork fails with EPERM (seccomp)
    assert r.error == "denied" and "started" not in r.stdout, r
    r = run_python("import os\nos.setsid()", WALL_ONLY)
    assert r.error == "denied" and "Operation not permitted" in r.stderr, r


def test_escape_6_pidfd_kills_the_host():
    code = "import os, signal\nfd = os.pidfd_open(os.getppid())\nsignal.pidfd_send_signal(fd, signal.SIGKILL)"
    check_stopped(code, {"denied"})
    check_stopped("import signal\nsignal.pidfd_send_signal(0, signal.SIGKILL)", {"denied"})
    r = run_python(code, WALL_ONLY)
    assert r.error == "denied", r  # seccomp: EPERM (and there is no parent in its PID namespace)


# ----------------------------------------------------------------------------- more of our own

def test_stat_and_readlink_outside_the_roots():
    check_stopped("import os; print(os.stat('/etc/shadow'))", {"denied"})
    check_stopped("import os; print(os.path.exists('/root'))", {"denied"})
    check_stopped("import os; print(os.readlink('/proc/self/exe'))", {"denied"})


def test_no_threads_no_code_objects_no_trace():
    check_stopped("import threading; t = threading.Thread(target=print); t.start()", {"denied", "exception"})
    check_stopped("c = compile('1', 'x', 'eval').replace(co_code=b'd\\xff\\x00S')\nprint(eval(c))", {"denied"})
    check_stopped("import sys; sys.settrace(lambda *a: None)", {"denied"})


def test_write_through_a_symlink_and_rewrite_closures():
    check_stopped("import os; os.symlink('/etc', 'e'); open('e/x', 'w')", {"denied"})
    # the tripwire's wrappers can be unwrapped (cells are writable and readable without an audit
    # event), but the original os.stat then finds nothing: the wall's root has no /etc
    out = check_stopped("import os\norig = [c.cell_contents for c in os.stat.__closure__\n"
                        "        if getattr(c.cell_contents, '__name__', '') == 'stat'][0]\n"
                        "print(orig('/etc/shadow'))", {"exception"})
    assert "FileNotFoundError" in out


def test_standard_library_still_works():
    code = ("import collections, enum, dataclasses, typing, statistics, fractions, re, json, pathlib\n"
            "P = collections.namedtuple('P', 'x y')\n"
            "class C(enum.Enum):\n    A = 1\n"
            "pathlib.Path('f.txt').write_text('hi')\n"
            "print(P(1, 2).x, C.A.value, statistics.mean([1, 2, 3]), pathlib.Path('f.txt').read_text())")
    r = run_python(code, CFG)
    assert r.ok and r.stdout.split() == ["1", "1", "2", "hi"], r


def test_the_wall_alone():
    """Without the audit hook the OS still refuses: no /etc/shadow, no writes outside the scratch
    folder, no process, no signal to the parent, no network; and it runs as nobody, as PID 1."""
    r = run_python("import os; print(os.getuid(), os.getgid(), os.getpid(), os.getcwd())", WALL_ONLY)
    assert r.ok and r.stdout.split() == ["65534", "65534", "1", "/scratch"], r
    target = f"/tmp/chatforge_sandbox_wall_{uuid.uuid4().hex}"
    for code in (SHADOW, f"open({target!r}, 'w')", "open('/usr/x', 'w')", "import os; os.fork()",
                 "import os; os.execv('/bin/sh', ['sh'])", "import os; os.kill(0, 9)",
                 "import os; os.kill(os.getppid(), 9)", "import os; os.kill(1, 9)",
                 "import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)"):
        r = run_python(code, WALL_ONLY)
        assert r.error in ("denied", "exception") and r.exit_code == 1, (code, r)
    assert not os.path.exists(target)
    r = run_python("import os; print(sorted(os.listdir('/')))", WALL_ONLY)
    top = ast.literal_eval(r.stdout)
    assert {"scratch", "usr", "dev"} <= set(top) and not {"etc", "home", "tmp", "proc", "work"} & set(top), r


def test_labels_cpu_limit_and_output_limit():
    slow = SandboxConfig(wall_s=8.0, cpu_s=1, mem_mb=256)  # a loaded CI machine: CPU second < wall second
    r = run_python("import signal; signal.signal(signal.SIGXCPU, lambda *a: None)\nwhile True: pass", slow)
    assert r.error == "cpu_limit", r
    r = run_python("import sys\nfor _ in range(200): sys.stdout.write('x' * 2**20)", CFG)
    assert r.error == "output_limit" and r.truncated, r


def without_capabilities(monkeypatch, keep: str = "") -> None:
    """Run the child with an empty capability bounding set (what a non-root user has)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    plain = sandbox._child_cmd
    monkeypatch.setattr(sandbox, "_child_cmd", lambda limits: [setpriv, "--bounding-set=-all" + keep, *plain(limits)])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the parent does not chown the scratch folder either
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)


def test_refuses_without_isolation(monkeypatch):
    """No capabilities and no user namespace: one clear line, unless --unsafe-python."""
    without_capabilities(monkeypatch)
    cfg = SandboxConfig(wall_s=2.5, cpu_s=1, user_namespace=False)
    r = run_python(BENIGN, cfg)
    assert r.error == "unavailable" and "--unsafe-python" in r.to_tool_output(), r
    assert len(r.to_tool_output().splitlines()) == 1
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    r = run_python(BENIGN, cfg)
    assert r.ok and r.stdout.strip() == "45", r
    assert run_python(SHADOW, cfg).error == "denied"  # the tripwire still stands


def test_the_wall_without_root_in_a_user_namespace(monkeypatch):
    """A process without capabilities builds the same wall inside an unprivileged user namespace.
    (+setfcap only because this test runs as uid 0: the kernel asks for CAP_SETFCAP to map host root;
    a real user maps its own uid without any capability.)"""
    without_capabilities(monkeypatch, keep=",+setfcap")
    wall_only = SandboxConfig(wall_s=2.5, cpu_s=1, tripwire=False)
    r = run_python("import os; open('f', 'w').write('x'); print(os.getuid(), os.getpid(), open('f').read())",
                   wall_only)
    assert r.ok and r.stdout.split() == ["65534", "1", "x"], r
    for code in (SHADOW, "open('/usr/x', 'w')", "import os; os.fork()", "import os; os.kill(0, 9)",
                 "import os; os.setuid(0)"):
        r = run_python(code, wall_only)
        assert r.error in ("denied", "exception") and r.exit_code == 1, (code, r)
    assert run_python(BENIGN, CFG).ok


def test_unsafe_python_flag_sets_the_env(monkeypatch):
    import argparse
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    p = argparse.ArgumentParser()
    sandbox.add_unsafe_python_arg(p)
    sandbox.apply_unsafe_python_arg(p.parse_args([]))
    assert not sandbox.unsafe_python_allowed(SandboxConfig())
    sandbox.apply_unsafe_python_arg(p.parse_args(["--unsafe-python"]))
    assert sandbox.unsafe_python_allowed(SandboxConfig())
