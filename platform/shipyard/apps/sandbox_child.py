"""The sandbox's child: lock this process down, then run the program. Stdlib only; run as a script.

    python -I -S -B sandbox_child.py WORKDIR WRITABLE MEMORY_MB CPU_S OUTPUT_BYTES READ_DIR...

Order matters: resource limits first, then Landlock (filesystem, TCP and signal/socket scopes), then a
seccomp filter (no new processes, sockets, ptrace, namespaces, permission changes or limit changes), and
only then is the program read from WORKDIR/program.py and executed. A setup failure exits with
``SETUP_FAILED`` and a one-line reason on stderr, so the parent never runs code unconfined.
"""

import ctypes
import errno
import os
import resource
import signal
import sys

SETUP_FAILED = 120
NR_CREATE_RULESET, NR_ADD_RULE, NR_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
PR_SET_NO_NEW_PRIVS = 38
FS_ABI1 = (1 << 13) - 1  # execute .. make_sym: every filesystem right Landlock ABI 1 knows
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read_file, read_dir
NET_ALL = (1 << 0) | (1 << 1)  # bind_tcp, connect_tcp (ABI 4)
SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)
DENIED = ["socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "fork", "vfork", "clone",
          "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "kill", "rt_sigqueueinfo",
          "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "unshare", "setns", "mount", "umount2",
          "pivot_root", "chroot", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf",
          "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "personality", "prctl",
          "setrlimit", "prlimit64", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
          "fchownat", "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr",
          "removexattr", "lremovexattr", "fremovexattr", "setuid", "setgid", "setreuid", "setregid",
          "setresuid", "setresgid", "setgroups", "memfd_create", "name_to_handle_at", "open_by_handle_at",
          "mknod", "mknodat", "swapon", "swapoff", "reboot", "init_module", "finit_module", "delete_module"]
SELF_ONLY = ["tkill", "tgkill", "rt_tgsigqueueinfo"]  # signals to itself only (raise, abort)
NO_SYS = ["clone3"]  # ENOSYS: glibc then falls back to clone, which is denied


class Fail(Exception):
    pass


def limit(memory_mb: int, cpu_s: int, output_bytes: int) -> None:
    for name, value in (("RLIMIT_AS", memory_mb << 20), ("RLIMIT_FSIZE", output_bytes),
                        ("RLIMIT_NOFILE", 64), ("RLIMIT_NPROC", 0), ("RLIMIT_CORE", 0), ("RLIMIT_MEMLOCK", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    # SIGXCPU at the soft limit (the error says "cpu time limit"); the hard limit's SIGKILL a second later only
    # ends a program that ignores it. Soft == hard sent a bare SIGKILL whenever the CPU limit beat the wall clock.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the output limit a write fails with EFBIG instead


def _syscall(libc, *args) -> int:
    res = libc.syscall(*args)
    if res < 0:
        raise Fail(f"landlock: {os.strerror(ctypes.get_errno())}")
    return res


def landlock(workdir: str, writable: bool, read_dirs: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(NR_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise Fail("Landlock is not available in this kernel (Linux >= 5.13 with landlock in its LSM list)")
    fs = FS_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    attr = (ctypes.c_uint64 * 3)(fs, NET_ALL if abi >= 4 else 0, SCOPE_ALL if abi >= 6 else 0)
    size = 8 * (3 if abi >= 6 else 2 if abi >= 4 else 1)
    ruleset = _syscall(libc, ctypes.c_long(NR_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))
    for path, access in [(d, FS_READ) for d in read_dirs] + [(workdir, fs if writable else FS_READ)]:
        if not os.path.isdir(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = (ctypes.c_char * 12).from_buffer_copy(access.to_bytes(8, "little") + fd.to_bytes(4, "little"))
        _syscall(libc, ctypes.c_long(NR_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                 ctypes.c_uint32(0))
        os.close(fd)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise Fail("prctl(NO_NEW_PRIVS) failed")
    _syscall(libc, ctypes.c_long(NR_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0))
    os.close(ruleset)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def load_seccomp():
    """libseccomp, loaded before Landlock hides the system's libraries."""
    try:
        return ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        raise Fail(f"libseccomp is not installed ({e})") from None


def seccomp(lib) -> None:
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(0x7FFF0000)))  # allow what is not named below
    eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    not_self = (ArgCmp * 1)(ArgCmp(0, 1, os.getpid(), 0))  # arg0 != this process
    for names, action, cmp in ((DENIED, eperm, None), (NO_SYS, enosys, None), (SELF_ONLY, eperm, not_self)):
        for name in names:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not on this architecture
            rc = lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(action), nr, len(cmp) if cmp else 0, cmp)
            if rc != 0:
                raise Fail(f"seccomp: cannot add a rule for {name} ({os.strerror(-rc)})")
    if lib.seccomp_load(ctx) != 0:
        raise Fail("seccomp: the filter did not load")
    lib.seccomp_release(ctx)


def main(argv: list[str]) -> None:
    workdir, writable, memory_mb, cpu_s, output_bytes, *read_dirs = argv
    try:
        source = open(os.path.join(workdir, "program.py"), encoding="utf-8").read()
        limit(int(memory_mb), int(cpu_s), int(output_bytes))
        lib = load_seccomp()
        landlock(workdir, writable == "1", read_dirs)
        seccomp(lib)
    except (Fail, OSError, ValueError) as e:
        print(f"sandbox setup failed: {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    code = compile(source, "program.py", "exec")
    del argv, source, read_dirs, lib
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main(sys.argv[1:])
