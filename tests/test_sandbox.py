"""Sandbox security: every attack is stopped, reported as a tool error, and the next call works."""
import os
import uuid

import pytest

from chatforge.assistant.sandbox import SandboxConfig, run_python
from chatforge.assistant.tools import ToolBox

CFG = SandboxConfig(wall_s=2.0, cpu_s=1, mem_mb=256, max_output_chars=500)
BENIGN = "print(sum(range(10)))"


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
