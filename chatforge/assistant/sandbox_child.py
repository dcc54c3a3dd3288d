"""The sandbox's child process: ``python -I -S -B sandbox_child.py KEY=VALUE... < code``.

Standalone on purpose (standard library only, never imported by chatforge): ``sandbox.py`` runs it as a
script and reads its stdout/stderr files and exit status. The order below is the security argument.

As root, before any model-written code exists in the process:
  1. read the program from stdin; set the resource limits (CPU, address space, file size, no core);
  2. ``unshare`` new PID, network, IPC and UTS namespaces and fork: the child is PID 1 of a namespace
     that holds nothing else, so killing it (or its parent, via PDEATHSIG) kills every process the
     code could ever have made; the network namespace has only a down loopback;
  3. in the child, a new mount namespace whose root is an empty read-only tmpfs holding read-only binds
     of the interpreter's prefix and /usr, /dev/{null,zero,urandom,random}, and the scratch folder at
     /scratch: there is no /etc, /root, /home, /tmp or /proc to read or write (pivot_root, the same
     construction as bubblewrap's);
  4. drop to uid/gid 65534 (nobody) with no groups, so RLIMIT_NPROC=0 is enforced (the kernel
     exempts root) and every capability is gone; PDEATHSIG=SIGKILL; no_new_privs;
  5. a seccomp filter (Linux, x86-64 / aarch64) that fails fork/vfork/clone/clone3, execve(at), ptrace,
     pidfd_*, kill/tkill/tgkill, setsid/setpgid, namespace and mount calls, sockets, bpf, io_uring,
     keyctl and process_vm_* with EPERM (kills the process for a foreign syscall ABI);
  6. ctypes (used for 2-5) is dropped from sys.modules, the audit hook is installed and the
     unaudited process/stat calls are replaced by audited wrappers; then the code runs.
The audit hook (PEP 578) is the tripwire that turns most attempts into a clean "denied" message;
steps 2-5 are the wall that holds when the tripwire is bypassed (PEP 578 is not a sandbox).
Everything the hook uses is bound in its closure before the code runs, so rebinding builtins or
module attributes (``builtins.any``, ``os.fspath``) changes nothing, and it copies str/bytes
arguments to exact ``str`` so a subclass cannot lie through overridden methods.

Without step 2-5 (not root, no namespaces) the script exits with code 97 and one line on stderr,
unless LIMITS["unsafe"] is set (``--unsafe-python``): then it runs with limits + hook only.
"""
import _signal
import _stat
import builtins
import errno
import os
import posix
import resource
import sys

EXIT_NO_ISOLATION, EXIT_MEMORY = 97, 3
MACHINE = os.uname().machine
NOBODY = 65534
SCRATCH = "/scratch"

# Linux constants (include/uapi/linux/{sched,mount,prctl,seccomp,filter,audit}.h)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x20000000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_PRIVATE, MS_RELATIME = 1024, 2048, 1 << 18, 1 << 21
# statvfs f_flag bit -> mount flag: a bind mount in a user namespace must keep its source's (locked) flags
KEEP_FLAGS = {os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME,
              os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
# (audit arch, pivot_root nr, denied syscall numbers) from the kernel's syscall tables
SECCOMP_ARCH = {
    "x86_64": (0xC000003E, 155, [
        57, 58, 56, 435,            # fork vfork clone clone3
        59, 322,                    # execve execveat
        101, 310, 311,              # ptrace process_vm_readv/writev
        434, 424, 438,              # pidfd_open pidfd_send_signal pidfd_getfd
        62, 200, 234, 129, 297,     # kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo
        112, 109,                   # setsid setpgid
        272, 308, 165, 166, 155, 161,  # unshare setns mount umount2 pivot_root chroot
        41, 53,                     # socket socketpair
        321, 298, 323, 425, 426, 427,  # bpf perf_event_open userfaultfd io_uring_*
        248, 249, 250]),            # add_key request_key keyctl
    "aarch64": (0xC00000B7, 41, [
        220, 435, 221, 281, 117, 270, 271, 434, 424, 438, 129, 130, 131, 138, 240, 157, 154,
        97, 268, 40, 39, 41, 51, 198, 199, 280, 241, 282, 425, 426, 427, 217, 218, 219]),
}


def set_limits(limits: dict) -> None:
    mb = 1024 * 1024
    # soft = hard CPU limit: SIGKILL at the limit (a SIGXCPU handler cannot stretch it, and PID 1 of a
    # namespace ignores SIGXCPU); sandbox.py tells cpu_limit from a crash by the CPU time used.
    for lim, val in ((resource.RLIMIT_CPU, (limits["cpu_s"],) * 2),
                     (resource.RLIMIT_AS, (limits["mem_mb"] * mb,) * 2),
                     (resource.RLIMIT_FSIZE, (limits["fsize_mb"] * mb,) * 2),
                     (resource.RLIMIT_NPROC, (0, 0)), (resource.RLIMIT_CORE, (0, 0))):
        hard = resource.getrlimit(lim)[1]
        if hard != resource.RLIM_INFINITY:  # never ask for more than we already have
            val = (min(val[0], hard), min(val[1], hard))
        resource.setrlimit(lim, val)


# ----------------------------------------------------------------------------- the wall (root only)

class Wall:
    """The kernel calls of steps 2-5, through ctypes (Python 3.11 has no os.unshare/os.mount)."""

    def __init__(self):
        import ctypes  # lazy: only the wall needs it, and it leaves sys.modules before user code
        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            e = self.ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    def unshare(self, flags: int) -> None:
        self._check(self.libc.unshare(flags), "unshare")

    def mount(self, src, dst, fstype, flags: int, data=None) -> None:
        enc = lambda s: None if s is None else s.encode()
        self._check(self.libc.mount(enc(src), enc(dst), enc(fstype), self.ctypes.c_ulong(flags), enc(data)),
                    f"mount {dst}")

    def bind_ro(self, src: str, dst: str, writable: bool = False) -> None:
        self.mount(src, dst, None, MS_BIND | MS_REC)
        kept = os.statvfs(src).f_flag
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY)
        self.mount(None, dst, None, flags | sum(ms for st, ms in KEEP_FLAGS.items() if kept & st))

    def build_root(self, fs: str, work: str) -> None:
        """Steps 3: a fresh read-only root with only what the interpreter needs, then pivot into it."""
        self.unshare(CLONE_NEWNS)
        self.mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
        self.mount("tmpfs", fs, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        dirs = sorted({os.path.realpath(sys.base_prefix), "/usr"})
        for d in dirs:
            if any(d.startswith(o + "/") for o in dirs if o != d):
                continue
            os.makedirs(fs + d, exist_ok=True)
            self.bind_ro(d, fs + d)
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):  # usrmerge: /lib -> usr/lib
                os.symlink(os.readlink(top), fs + top)
            elif os.path.isdir(top):
                os.makedirs(fs + top)
                self.bind_ro(top, fs + top)
        os.makedirs(fs + "/dev")
        for dev in ("null", "zero", "urandom", "random"):
            open(fs + "/dev/" + dev, "w").close()
            self.bind_ro("/dev/" + dev, fs + "/dev/" + dev, writable=True)
        os.makedirs(fs + SCRATCH)
        self.bind_ro(work, fs + SCRATCH, writable=True)
        os.chdir(fs)
        if MACHINE not in SECCOMP_ARCH:  # glibc has no pivot_root wrapper: we need the syscall number
            raise OSError(errno.ENOSYS, f"pivot_root: no syscall table for {MACHINE}")
        self._check(self.libc.syscall(SECCOMP_ARCH[MACHINE][1], b".", b"."), "pivot_root")
        self._check(self.libc.umount2(b".", MNT_DETACH), "umount old root")  # the old root, stacked on "."
        os.chdir("/")
        self.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.chdir(SCRATCH)

    def drop_privileges(self, userns: bool) -> None:
        """Step 4 (order matters: groups and gid while still root, uid last; PDEATHSIG after setuid,
        which clears it). In a user namespace we already are nobody there, with capabilities valid
        only inside it; capset drops them all (in both cases: nothing may remain)."""
        if not userns:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        ct = self.ctypes
        header = (ct.c_uint32 * 2)(0x20080522, 0)     # _LINUX_CAPABILITY_VERSION_3, this thread
        self._check(self.libc.capset(header, (ct.c_uint32 * 6)()), "capset")
        self._check(self.libc.prctl(PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        self._check(self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")

    def seccomp(self) -> bool:
        """Step 5; False (and nothing installed) on an architecture we have no syscall table for."""
        spec = SECCOMP_ARCH.get(MACHINE)
        if spec is None:
            return False
        arch, _, denied = spec
        n = len(denied)
        # [0] A=arch [1] arch ok? [2] A=nr [3] x32 ABI? [4..4+n) nr denied? [4+n] allow [5+n] EPERM [6+n] kill
        prog = [(BPF_LD_W_ABS, 0, 0, 4), (BPF_JEQ_K, 0, n + 4, arch), (BPF_LD_W_ABS, 0, 0, 0),
                (BPF_JGE_K, n + 1, 0, 0x40000000)]
        prog += [(BPF_JEQ_K, n - i, 0, nr) for i, nr in enumerate(denied)]
        prog += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
                 (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS)]
        ct = self.ctypes

        class SockFilter(ct.Structure):
            _fields_ = [("code", ct.c_ushort), ("jt", ct.c_ubyte), ("jf", ct.c_ubyte), ("k", ct.c_uint)]

        class SockFprog(ct.Structure):
            _fields_ = [("len", ct.c_ushort), ("filter", ct.POINTER(SockFilter))]
        insns = (SockFilter * len(prog))(*[SockFilter(*p) for p in prog])
        fprog = SockFprog(len(prog), insns)
        self._check(self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ct.byref(fprog), 0, 0), "seccomp")
        return True


def forget_ctypes() -> None:
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]


def launch_isolated(limits: dict) -> None:
    """Steps 2-5. Returns in the isolated child; the launcher waits, mirrors its status and exits."""
    wall = Wall()
    flags = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    userns = False
    try:
        wall.unshare(flags)                    # root (CAP_SYS_ADMIN)
    except PermissionError:
        if not limits.get("userns", True):
            raise
        # unprivileged: a user namespace in which our uid/gid appear as nobody, with capabilities
        # that count only inside it (user_namespaces(7)); the kernel may forbid it: then unavailable
        uid, gid = os.geteuid(), os.getegid()
        wall.unshare(CLONE_NEWUSER | flags)
        maps = (("setgroups", "deny"), ("uid_map", f"{NOBODY} {uid} 1"), ("gid_map", f"{NOBODY} {gid} 1"))
        for name, text in maps:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        userns = True
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)   # the parent's os.wait4 on us sums the child's CPU time
        code = os.waitstatus_to_exitcode(status)
        if code < 0:                      # die of the same signal so the parent sees -sig
            if -code not in (_signal.SIGKILL, _signal.SIGSTOP):
                _signal.signal(-code, _signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)
    try:
        wall.build_root(limits["fs"], limits["work"])
        wall.drop_privileges(userns)
        wall.seccomp()
    except OSError as e:
        os.write(2, f"[sandbox] isolation failed: {e}\n".encode())
        os._exit(EXIT_NO_ISOLATION)
    del wall
    forget_ctypes()


# ----------------------------------------------------------------------------- the tripwire

def make_hook(work: str, read_roots: tuple, read_files: frozenset):
    """The audit hook. Every name it touches is a local of this function, bound now: no builtins,
    no module attributes (``os.fspath``, ``os.path.realpath`` read ``os.*`` at call time). Long on
    purpose: its helpers must share those closure cells and no cell with anything user code can reach."""
    lstat, stat, readlink, getcwd, write2 = posix.lstat, posix.stat, posix.readlink, posix.getcwd, posix.write
    is_link, is_dir = _stat.S_ISLNK, _stat.S_ISDIR
    type_, isinstance_, str_, bytes_, int_, memoryview_ = type, isinstance, str, bytes, int, memoryview
    str_copy, startswith, split = str.__str__, str.startswith, str.split
    rpartition, partition = str.rpartition, str.partition
    encode, decode, len_, os_error, perm_error = str.encode, bytes.decode, len, OSError, PermissionError
    deny_events = frozenset([
        "subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "pty.spawn", "resource.setrlimit", "resource.prlimit", "sys._current_frames",
        "sys.settrace", "sys.setprofile", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "os.startfile", "os.setuid", "os.chroot", "sys.addaudithook", "code.__new__", "sandbox.deny"])
    here = os.path.realpath(__file__)
    deny_prefixes = ("socket.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "_posixsubprocess")
    write_events = frozenset(["os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                              "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
                              "shutil.copyfile", "shutil.move", "os.chflags", "os.lchown"])
    bad_imports = frozenset(["ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing"])
    code_attrs = frozenset(["__code__", "__globals__", "__closure__", "cell_contents", "__builtins__"])
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    work_roots = (work,)

    def exact(s):
        """An exact str from str/bytes; a subclass is copied, so its overridden methods never run."""
        if type_(s) is str_:
            return s
        if isinstance_(s, str_):
            return str_copy(s)
        if isinstance_(s, bytes_):
            return decode(bytes_(memoryview_(s)), "utf-8", "surrogateescape")
        return None

    def resolve(p):
        """os.path.realpath with the primitives bound above (the user may rebind os.*)."""
        if not startswith(p, "/"):
            p = getcwd() + "/" + p
        todo, cur, hops = split(p, "/")[::-1], "", 0
        while todo:
            name = todo.pop()
            if name == "" or name == ".":
                continue
            if name == "..":
                cur = rpartition(cur, "/")[0]
                continue
            nxt = cur + "/" + name
            try:
                link = is_link(lstat(nxt).st_mode)
            except os_error:
                link = False
            if not link:
                cur = nxt
                continue
            hops += 1
            if hops > 40:
                deny("a symlink loop")
            target = readlink(nxt)
            if startswith(target, "/"):
                cur = ""
            todo += split(target, "/")[::-1]
        return cur or "/"

    def inside(p, roots):
        for r in roots:
            if p == r or startswith(p, r + "/"):
                return True
        return False

    def deny(what):
        write2(2, encode("[sandbox] denied: " + what + "\n", "utf-8", "replace"))
        raise perm_error("sandbox: " + what + " is not allowed")

    def path_of(a):
        if type_(a) is int_:
            return None
        s = exact(a)
        if s is None:
            deny("a path that is not str or bytes")
        return resolve(s)

    def check_read(event, p):
        if p is not None and not (inside(p, read_roots) or p in read_files):
            deny(f"{event} {p!r} (outside the allowlist)")

    def is_directory(p):
        try:
            return is_dir(stat(p).st_mode)
        except os_error:
            return False

    def hook(event, args):
        if event == "open":
            p = path_of(args[0])
            if p is None:
                return
            mode = "" if args[1] is None else exact(args[1])
            flags = 0 if args[2] is None else args[2]
            if mode is None or type_(flags) is not int_:
                deny("open with an odd mode")
            if "w" in mode or "a" in mode or "x" in mode or "+" in mode or flags & write_flags:
                if not inside(p, work_roots):
                    deny(f"open {p!r} for writing (only the working directory is writable)")
            else:
                check_read("open", p)
                if is_directory(p) and not inside(p, work_roots):
                    deny(f"open directory {p!r}")
        elif event == "sys._getframe":
            # the standard library needs caller frames (namedtuple, enum, typing); only this script's
            # frames (run, main: the hook's never coexist with user code) are refused
            if args[0].f_code.co_filename == here:
                deny("sys._getframe into the sandbox's own frames")
        elif event in deny_events or startswith(event, deny_prefixes):
            deny(event)
        elif event == "import":
            name = exact(args[0])
            if name is None or partition(name, ".")[0] in bad_imports:
                deny("import " + (name or "?"))
        elif event in write_events:
            for a in args[:2]:
                if a is not None and type_(a) is not int_ and not inside(path_of(a), work_roots):
                    deny(f"{event} outside the working directory")
        elif event == "os.listdir" or event == "os.scandir" or event == "sandbox.stat":
            check_read(event, path_of(args[0]) if len_(args) and args[0] is not None else work)
        elif (event == "object.__setattr__" or event == "object.__delattr__") and exact(args[1]) in code_attrs:
            deny(event + " " + exact(args[1]))
    return hook


def make_guard(orig, event, audit, fspath):
    """A wrapper raising ``event`` (with the exact path the real call will get) before ``orig``.
    Module level, so its closure shares no cell with the hook's; its names are bound here too."""
    type_, int_, isinstance_, str_, str_copy = type, int, isinstance, str, str.__str__
    bytes_, memoryview_ = bytes, memoryview

    def guarded(*args, **kw):
        if args and args[0] is not None and type_(args[0]) is not int_:
            p = fspath(args[0])
            args = (str_copy(p) if isinstance_(p, str_) else bytes_(memoryview_(p)),) + args[1:]
        audit(event, *args[:1])
        return orig(*args, **kw)
    return guarded


def lock_modules(audit) -> None:
    """Process calls with no audit event of their own: raise one the hook denies or checks."""
    for mod in (os, posix):
        for name in ("stat", "lstat", "readlink", "access", "statvfs", "chdir"):
            if hasattr(mod, name):
                setattr(mod, name, make_guard(getattr(posix, name), "sandbox.stat", audit, os.fspath))
        for name in ("pidfd_open", "setsid", "setpgid", "setpgrp", "setns", "unshare"):
            if hasattr(mod, name):
                setattr(mod, name, make_guard(getattr(posix, name), "sandbox.deny", audit, os.fspath))
    for mod in (_signal, sys.modules.get("signal")):   # signal.py copies _signal's names on import
        if hasattr(mod, "pidfd_send_signal"):
            setattr(mod, "pidfd_send_signal", make_guard(_signal.pidfd_send_signal, "sandbox.deny", audit, os.fspath))


# ----------------------------------------------------------------------------- main

def run(code: str, limits: dict) -> None:
    work = os.path.realpath(os.getcwd())
    os.environ.clear()
    os.environ.update({"HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    read_roots = (work, stdlib, os.path.realpath(sys.base_exec_prefix) + "/lib")
    excepthook, flush_out, flush_err, exit_now = sys.__excepthook__, sys.stdout.flush, sys.stderr.flush, os._exit
    # this script may be read (its frames appear in tracebacks): it is public and holds no secret
    read_files = frozenset(["/dev/null", "/dev/urandom", "/dev/zero", os.path.realpath(__file__)])
    if limits.get("tripwire", True):
        sys.addaudithook(make_hook(work, read_roots, read_files))
        lock_modules(sys.audit)
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<code>", "exec"), main.__dict__)
    except SystemExit:
        raise
    except MemoryError:
        os.write(2, b"MemoryError: out of memory (limit %d MiB)\n" % limits["mem_mb"])
        flush_out()
        exit_now(EXIT_MEMORY)
    except BaseException as e:
        # the C-level printer bound before the code ran (the code may have replaced sys.excepthook)
        if e.__traceback__ is not None:  # drop this frame: the program starts at "<code>"
            e.__traceback__ = e.__traceback__.tb_next
        excepthook(type(e), e, e.__traceback__)
        if isinstance(e, OSError) and e.errno in (errno.EPERM, errno.EACCES):
            os.write(2, f"[sandbox] denied: {e}\n".encode("utf-8", "replace"))
        flush_out()
        flush_err()
        exit_now(1)
    flush_out()


def parse_limits(argv: list[str]) -> dict:
    """``key=value`` arguments (ints, 0/1 flags, paths). Not JSON: importing json (re, enum) would
    cost ~15 ms of every call's start; likewise _signal, not signal (enum), and no types module."""
    limits: dict = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        limits[key] = int(value) if value.lstrip("-").isdigit() else value
    return limits


def main() -> None:
    limits = parse_limits(sys.argv[1:])
    code = sys.stdin.read()
    sys.stdin.close()
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    sys.stderr.reconfigure(encoding="utf-8", errors="replace")
    set_limits(limits)
    if limits["isolate"]:
        try:
            launch_isolated(limits)
        except OSError as e:  # no namespaces here (not root, or a locked-down container)
            if not limits["unsafe"]:
                os.write(2, f"[sandbox] isolation unavailable: {e}\n".encode())
                os._exit(EXIT_NO_ISOLATION)
            forget_ctypes()   # --unsafe-python: resource limits and the tripwire only
    run(code, limits)


main()
