"""A sandbox for running model-written Python: the ``python`` tool's engine room.

Threat model
------------
The code comes from a small language model (or from a user steering it), so treat it as
untrusted: it may loop forever, allocate without bound, print gigabytes, try to read secrets
(``/etc/passwd``, SSH keys, the checkpoint folder), write outside its scratch space, open network
connections, or spawn processes (a fork bomb). The goal is that every such attempt is *stopped*,
comes back to the model as a tool error ("error: ..."), and the next call works normally.
It is NOT a defence against a determined human attacker with kernel exploits: for that, run the
whole server in a VM or a container with seccomp (gVisor, Firecracker, nsjail).

Layers, from strongest to weakest (the child's side is in ``sandbox_child.py``)
-------------------------------------------------------------------------------
1. OS isolation (the wall; as root, or without root inside an unprivileged user namespace where
   the kernel allows one): new PID, mount, network, IPC and UTS namespaces; a read-only root holding only the interpreter, /usr and a few /dev nodes (no /etc,
   /root, /home, /work, /tmp, /proc); uid/gid 65534 with no capabilities, so RLIMIT_NPROC=0 holds;
   no_new_privs and a seccomp filter failing fork/clone/exec/ptrace/pidfd/kill/setsid/mount/
   socket calls with EPERM. Stops: reading secrets, writing outside the scratch folder, starting
   processes (fork bombs, shells), signalling the host, networking, even after the tripwire is
   bypassed. Where it cannot be built the tool refuses ("unavailable") unless ``--unsafe-python``.
2. A separate process (``python -I -S -B``: isolated mode, no site-packages, no .pyc writes) in its
   own session with an empty environment and a fresh scratch folder deleted afterwards.
3. A wall-clock timeout in the parent, which SIGKILLs the process group; the code runs as PID 1 of
   its namespace, so that kill (or its launcher's death, via PDEATHSIG) ends every process in it.
4. Resource limits: RLIMIT_CPU (soft = hard: SIGKILL at the limit, labelled cpu_limit from the CPU
   time ``wait4`` reports), RLIMIT_AS (MemoryError), RLIMIT_FSIZE (stdout/stderr are files, so this
   bounds output: labelled output_limit), RLIMIT_NPROC=0, RLIMIT_CORE=0.
5. An audit hook (PEP 578) installed before the code: the tripwire that turns common attacks into a
   clean "denied" (sockets, subprocess/exec/fork/kill, ctypes, _posixsubprocess, setrlimit, gc,
   settrace, frames of the sandbox itself, reads/stats/listings outside the standard library and
   the scratch folder, writes outside the scratch folder). Hardened: every name it uses is bound
   before the code runs, str arguments are copied to exact ``str``, and unaudited calls
   (os.stat/readlink/pidfd_open/setsid, signal.pidfd_send_signal) go through audited wrappers.
   PEP 578 says hooks are not a sandbox; that is why layer 1 exists.

Not a defence against kernel exploits: for that run the server in a VM or gVisor/Firecracker.
The parent never ``eval``s anything; the child gets its code on stdin, its limits in argv.
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHILD = str(Path(__file__).resolve().with_name("sandbox_child.py"))
EXIT_NO_ISOLATION, EXIT_MEMORY = 97, 3   # sandbox_child.py's exit codes
NOBODY = 65534
UNSAFE_ENV = "CHATFORGE_UNSAFE_PYTHON"


@dataclass
class SandboxConfig:
    wall_s: float = field(default=5.0, metadata={"help": "wall-clock limit per run (seconds)"})
    cpu_s: int = field(default=3, metadata={"help": "CPU-time limit per run (RLIMIT_CPU, seconds)"})
    mem_mb: int = field(default=512, metadata={"help": "address-space limit (RLIMIT_AS, MiB)"})
    fsize_mb: int = field(default=8, metadata={"help": "largest file/output the code may write (RLIMIT_FSIZE, MiB)"})
    max_output_chars: int = field(default=2000, metadata={"help": "tool output is truncated to this many chars"})
    max_code_chars: int = field(default=20000, metadata={"help": "longest program accepted"})
    unsafe_python: bool = field(default=False, metadata={
        "help": "run the python tool even where OS isolation is unavailable (audit hook + limits only); "
                "env CHATFORGE_UNSAFE_PYTHON=1 does the same"})
    user_namespace: bool = field(default=True, metadata={
        "help": "without root, build the wall inside an unprivileged user namespace (where the kernel allows)"})
    tripwire: bool = field(default=True, metadata={
        "help": "install the audit hook (off only in tests that check the OS wall alone)"})


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None        # negative = killed by that signal (subprocess convention)
    timed_out: bool
    error: str | None            # None | timeout | cpu_limit | memory | denied | output_limit | exception | crashed | bad_input | unavailable
    truncated: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_tool_output(self, max_chars: int = 2000) -> str:
        """What the model sees: stdout on success, "error: <kind>: <detail>" (+ stdout) on failure."""
        if self.ok:
            text = self.stdout if self.stdout.strip() else "(no output)"
            if self.stderr.strip():
                text += "\n[stderr]\n" + self.stderr
        else:
            lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
            denied = [ln for ln in lines if ln.startswith("[sandbox] denied")]
            detail = {"timeout": "wall-clock limit reached", "cpu_limit": "CPU-time limit reached",
                      "output_limit": "output/file size limit reached"}.get(self.error or "", "")
            detail = detail or (denied[0].replace("[sandbox] denied: ", "", 1) if denied else (lines[-1] if lines else f"exit status {self.exit_code}"))
            text = f"error: {self.error}: {detail}"
            if self.stdout.strip():
                text += "\n[stdout]\n" + self.stdout
        if len(text) > max_chars:
            text = text[:max_chars] + "\n... [output truncated]"
        return text


def _read_head(f, max_chars: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(max_chars * 4 + 1)  # enough bytes for max_chars UTF-8 chars
    text = data.decode("utf-8", errors="replace")
    more = len(data) > max_chars * 4 or bool(f.read(1))
    if len(text) > max_chars:
        text, more = text[:max_chars], True
    return text, more


def unsafe_python_allowed(cfg: SandboxConfig) -> bool:
    return cfg.unsafe_python or os.environ.get(UNSAFE_ENV, "") == "1"


def add_unsafe_python_arg(parser: argparse.ArgumentParser) -> None:
    """``--unsafe-python`` for the commands whose model may call the python tool."""
    parser.add_argument("--unsafe-python", action="store_true",
                        help="let the python tool run where OS isolation (namespaces, seccomp) is unavailable, "
                             "with only the audit hook and resource limits; same as "
                             f"{UNSAFE_ENV}=1")


def apply_unsafe_python_arg(args: argparse.Namespace) -> None:
    if getattr(args, "unsafe_python", False):
        os.environ[UNSAFE_ENV] = "1"   # read by every SandboxConfig, however deep the toolbox is built


def run_python(code: str, cfg: SandboxConfig | None = None) -> SandboxResult:
    """Run ``code`` in the sandbox and return what happened. Never raises for anything the code does."""
    cfg = cfg or SandboxConfig()
    if len(code) > cfg.max_code_chars:
        return SandboxResult("", f"program too long ({len(code)} > {cfg.max_code_chars} chars)", None, False, "bad_input")
    if "\x00" in code:
        return SandboxResult("", "program contains a NUL byte", None, False, "bad_input")
    root = tempfile.mkdtemp(prefix="chatforge-sandbox-")
    t0 = time.perf_counter()
    try:
        work, fs = os.path.join(root, "work"), os.path.join(root, "fs")
        os.mkdir(work)
        os.mkdir(fs)
        if os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)   # the isolated child runs as nobody
        limits = {"cpu_s": int(cfg.cpu_s), "mem_mb": int(cfg.mem_mb), "fsize_mb": int(cfg.fsize_mb),
                  "isolate": True, "unsafe": unsafe_python_allowed(cfg), "tripwire": cfg.tripwire,
                  "userns": cfg.user_namespace, "work": work, "fs": fs}
        code_path = os.path.join(root, "code.py")
        with open(code_path, "wb") as f:
            f.write(code.encode("utf-8", errors="replace"))
        with open(code_path, "rb") as stdin, open(os.path.join(root, "stdout"), "w+b") as out, \
                open(os.path.join(root, "stderr"), "w+b") as err:
            rc, timed_out, cpu = _run_child(_child_cmd(limits), stdin, out, err, work, cfg.wall_s)
            stdout, t1 = _read_head(out, cfg.max_output_chars)
            stderr, t2 = _read_head(err, cfg.max_output_chars)
            too_big = max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size) >= cfg.fsize_mb * 2**20
    except OSError as e:  # could not even start: report, do not crash the chat
        return SandboxResult("", f"sandbox failed to start: {e}", None, False, "crashed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # rusage scales tick counts to the precise runtime the limit uses: seen 0.98 s at a 1-s limit
    error = _classify(rc, timed_out, stderr, cpu >= 0.8 * cfg.cpu_s, too_big)
    if error == "unavailable":
        stderr = ("the python tool needs OS isolation (PID/mount/network namespaces, seccomp) and it is "
                  f"unavailable here ({stderr.strip() or 'no detail'}); pass --unsafe-python to run it with "
                  "only the audit hook and resource limits")
    return SandboxResult(stdout, stderr, rc, timed_out, error, truncated=t1 or t2, seconds=time.perf_counter() - t0)


def _child_cmd(limits: dict) -> list[str]:
    return [sys.executable, "-I", "-S", "-B", CHILD, *(f"{k}={int(v) if isinstance(v, bool) else v}"
                                                      for k, v in limits.items())]


def _run_child(cmd: list[str], stdin, out, err, cwd: str, wall_s: float) -> tuple[int, bool, float]:
    """Start the child in its own session, wait at most ``wall_s``, kill its process group (the
    isolated child is also PID 1 of its namespace: killing it takes everything it made). Returns
    (exit code, negative = signal; timed out; CPU seconds of the child and everything it reaped)."""
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, cwd=cwd, env={"LANG": "C.UTF-8"},
                            start_new_session=True, close_fds=True)
    timed_out = not _exited_within(proc.pid, wall_s)
    _kill_group(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here (wait4 has the CPU time)
    return proc.returncode, timed_out, usage.ru_utime + usage.ru_stime


def _exited_within(pid: int, seconds: float) -> bool:
    """Wait for ``pid`` to exit without reaping it (wait4 reaps it afterwards, with its CPU time)."""
    try:
        pidfd = os.pidfd_open(pid)   # Linux >= 5.3: readable once the process exits
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            return bool(select.select([pidfd], [], [], seconds)[0])
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + seconds   # older kernels: poll without reaping
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
    return False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(rc: int | None, timed_out: bool, stderr: str, cpu_spent: bool, too_big: bool) -> str | None:
    if timed_out:
        return "timeout"
    if rc == EXIT_NO_ISOLATION and "[sandbox] isolation" in stderr:
        return "unavailable"
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and cpu_spent):
        return "cpu_limit"
    if rc == -signal.SIGXFSZ or (rc != 0 and too_big):
        return "output_limit"
    if "[sandbox] denied" in stderr:
        return "denied"
    if rc == EXIT_MEMORY or "MemoryError" in stderr:
        return "memory"
    if rc is not None and rc < 0:
        return "crashed"
    if rc != 0:
        return "exception"
    return None
