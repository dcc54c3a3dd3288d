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

Layers, from strongest to weakest, and what each one stops
----------------------------------------------------------
1. A separate process (``python -I -S -B``: isolated mode, no site-packages, no .pyc writes),
   in its own session/process group with a fresh empty environment and a fresh temporary working
   directory that is deleted afterwards. Stops: crashes and corrupted state leaking into the
   server; leftovers between calls. Does not stop: anything the OS lets the user account do.
2. A wall-clock timeout in the parent, which SIGKILLs the whole process group. Stops: infinite
   loops, sleeps, blocked reads. Always works, whatever the child does.
3. Resource limits (``setrlimit``) applied before the user code runs: RLIMIT_CPU (CPU seconds ->
   SIGXCPU), RLIMIT_AS (address space -> MemoryError on a 10 GB allocation), RLIMIT_FSIZE (largest
   file the child may write; stdout/stderr go to files, so this also bounds output), RLIMIT_NPROC=0
   (no new processes or threads) and RLIMIT_CORE=0. Kernel-enforced, but note: RLIMIT_NPROC is
   *not* enforced for root, which is why layer 5 also blocks fork/exec.
4. A network namespace (``unshare -n``) when we are root and the kernel allows it: the child
   sees only a down loopback interface, so no connection can leave the machine. Kernel-enforced;
   skipped silently (best effort) where unavailable, e.g. unprivileged containers.
5. An audit hook (PEP 578, ``sys.addaudithook``) installed before the user code, which raises
   PermissionError on: sockets, subprocess/os.system/exec/spawn/fork/kill, ctypes (a way around
   everything else), importing ``_posixsubprocess``, raising resource limits, gc/frame
   introspection, opening a file for writing outside the working directory, and opening/listing
   anything for reading outside an allowlist (the standard library, the working directory,
   /dev/null, /dev/urandom). Reading ``/etc/passwd`` is refused here. PEP 578 itself says audit
   hooks are not a sandbox: C extensions, races and interpreter bugs can get around them. They
   are a tripwire that turns the common attacks into clean errors; layers 1-4 are the walls.

Not done (say so rather than pretend): seccomp syscall filtering, dropping to an unprivileged
uid (the interpreter here lives under a root-only home directory), filesystem namespaces.

The parent never ``eval``s anything; the child gets its code on stdin, its limits in argv.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field


@dataclass
class SandboxConfig:
    wall_s: float = field(default=5.0, metadata={"help": "wall-clock limit per run (seconds)"})
    cpu_s: int = field(default=3, metadata={"help": "CPU-time limit per run (RLIMIT_CPU, seconds)"})
    mem_mb: int = field(default=512, metadata={"help": "address-space limit (RLIMIT_AS, MiB)"})
    fsize_mb: int = field(default=8, metadata={"help": "largest file/output the code may write (RLIMIT_FSIZE, MiB)"})
    max_output_chars: int = field(default=2000, metadata={"help": "tool output is truncated to this many chars"})
    max_code_chars: int = field(default=20000, metadata={"help": "longest program accepted"})
    network_namespace: bool = field(default=True, metadata={"help": "run under `unshare -n` when possible"})


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None        # negative = killed by that signal (subprocess convention)
    timed_out: bool
    error: str | None            # None | timeout | cpu_limit | memory | denied | output_limit | exception | crashed | bad_input
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


# The child's prelude. Runs under `python -I -S -B -c`, reads the program from stdin, locks itself
# down, then executes the program in a fresh __main__ module. Everything it needs is captured in a
# closure of immutable values so the program cannot easily reach in and edit the allowlist.
_BOOTSTRAP = r'''
import sys, os, resource, traceback, types, builtins
def _main():
    limits = __import__("json").loads(sys.argv[1])
    code = sys.stdin.read()
    sys.stdin.close()
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    sys.stderr.reconfigure(encoding="utf-8", errors="replace")
    work = os.path.realpath(os.getcwd())
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    read_roots = (work, stdlib, os.path.realpath(sys.base_exec_prefix) + "/lib")
    read_files = frozenset(["/dev/null", "/dev/urandom"])
    MB = 1024 * 1024
    for lim, val in ((resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1)),
                     (resource.RLIMIT_AS, (limits["mem_mb"] * MB,) * 2),
                     (resource.RLIMIT_FSIZE, (limits["fsize_mb"] * MB,) * 2),
                     (resource.RLIMIT_NPROC, (0, 0)), (resource.RLIMIT_CORE, (0, 0))):
        hard = resource.getrlimit(lim)[1]
        if hard != resource.RLIM_INFINITY:  # never ask for more than we already have
            val = (min(val[0], hard), min(val[1], hard))
        resource.setrlimit(lim, val)
    DENY = frozenset(["subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                      "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "resource.setrlimit", "resource.prlimit",
                      "sys._current_frames", "gc.get_objects", "gc.get_referrers",
                      "gc.get_referents", "os.startfile", "os.setuid", "os.chroot"])
    WRITE_EVENTS = frozenset(["os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                              "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
                              "shutil.copyfile", "shutil.move", "os.chflags", "os.lchown"])
    BAD_IMPORTS = frozenset(["ctypes", "_ctypes", "_posixsubprocess", "multiprocessing"])
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, isdir, write2 = os.path.realpath, os.path.isdir, os.write

    def inside(p, roots):
        return any(p == r or p.startswith(r + "/") for r in roots)

    def deny(what):
        write2(2, ("[sandbox] denied: " + what + "\n").encode("utf-8", "replace"))
        raise PermissionError("sandbox: " + what + " is not allowed")

    def path_of(p):
        if isinstance(p, int):
            return None
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        return realpath(os.fspath(p))

    def hook(event, args):
        if event == "open":
            p = path_of(args[0])
            if p is None:
                return
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & WRITE_FLAGS:
                if not inside(p, (work,)):
                    deny(f"open {p!r} for writing (only the working directory is writable)")
            elif not (inside(p, read_roots) or p in read_files):
                deny(f"open {p!r} for reading (outside the allowlist)")
            elif isdir(p) and not inside(p, (work,)):
                deny(f"open directory {p!r}")
        elif event in DENY or event.startswith(("socket.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn")):
            deny(event)
        elif event == "import" and args[0].split(".")[0] in BAD_IMPORTS:
            deny("import " + args[0])
        elif event in WRITE_EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(path_of(a), (work,)):
                    deny(f"{event} outside the working directory")
        elif event in ("os.listdir", "os.scandir"):
            p = path_of(args[0]) if args and args[0] is not None else work
            if p is not None and not inside(p, read_roots):
                deny(f"{event} {p!r}")
        elif event in ("object.__setattr__", "object.__delattr__") and args[1] in (
                "__code__", "__globals__", "__closure__", "cell_contents", "__builtins__"):
            deny(f"{event} {args[1]}")

    sys.addaudithook(hook)
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<code>", "exec"), main.__dict__)
    except SystemExit:
        raise
    except MemoryError:
        sys.stderr.write("MemoryError: out of memory (limit %d MiB)\n" % limits["mem_mb"])
        sys.stdout.flush()
        os._exit(3)
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb, limit=8)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
_main()
'''


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """``("unshare", "-n", "--")`` when a new network namespace can be made here, else ()."""
    exe = shutil.which("unshare")
    if exe is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ()
    try:
        ok = subprocess.run([exe, "-n", "--", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "-n", "--") if ok else ()


def _read_head(f, max_chars: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(max_chars * 4 + 1)  # enough bytes for max_chars UTF-8 chars
    text = data.decode("utf-8", errors="replace")
    more = len(data) > max_chars * 4 or bool(f.read(1))
    if len(text) > max_chars:
        text, more = text[:max_chars], True
    return text, more


def run_python(code: str, cfg: SandboxConfig | None = None) -> SandboxResult:
    """Run ``code`` in the sandbox and return what happened. Never raises for anything the code does."""
    cfg = cfg or SandboxConfig()
    if len(code) > cfg.max_code_chars:
        return SandboxResult("", f"program too long ({len(code)} > {cfg.max_code_chars} chars)", None, False, "bad_input")
    if "\x00" in code:
        return SandboxResult("", "program contains a NUL byte", None, False, "bad_input")
    limits = {"cpu_s": int(cfg.cpu_s), "mem_mb": int(cfg.mem_mb), "fsize_mb": int(cfg.fsize_mb)}
    prefix = _netns_prefix() if cfg.network_namespace else ()
    cmd = [*prefix, sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP, json.dumps(limits)]
    root = tempfile.mkdtemp(prefix="chatforge-sandbox-")
    t0 = time.perf_counter()
    try:
        work = os.path.join(root, "work")
        os.mkdir(work)
        with open(os.path.join(root, "stdout"), "w+b") as out, open(os.path.join(root, "stderr"), "w+b") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work},
                                    start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.communicate(code.encode("utf-8", errors="replace"), timeout=cfg.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # also reaps anything that escaped into the group
                proc.wait()
            stdout, t1 = _read_head(out, cfg.max_output_chars)
            stderr, t2 = _read_head(err, cfg.max_output_chars)
    except OSError as e:  # could not even start: report, do not crash the chat
        return SandboxResult("", f"sandbox failed to start: {e}", None, False, "crashed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rc = proc.returncode
    return SandboxResult(stdout, stderr, rc, timed_out, _classify(rc, timed_out, stderr),
                         truncated=t1 or t2, seconds=time.perf_counter() - t0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(rc: int | None, timed_out: bool, stderr: str) -> str | None:
    if timed_out:
        return "timeout"
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and "CPU" in stderr):
        return "cpu_limit"
    if rc == -signal.SIGXFSZ:
        return "output_limit"
    if "[sandbox] denied" in stderr:
        return "denied"
    if rc == 3 or "MemoryError" in stderr:
        return "memory"
    if rc is not None and rc < 0:
        return "crashed"
    if rc != 0:
        return "exception"
    return None
