"""A seccomp deny-list as a classic BPF program, built with struct (no libseccomp).

bwrap loads it (`--seccomp FD`) just before exec'ing the job. Denied calls fail
with EPERM; a foreign architecture (x32 ABI, i386 on x86_64) is killed, since
syscall numbers differ there and the list would not apply.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

# seccomp_data offsets: nr, arch, instruction_pointer, args[6] (low word first on LE).
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16

# Namespace-creating clone flags (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME).
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

DENIED = (
    "ptrace", "mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "pivot_root", "chroot", "swapon", "swapoff", "reboot", "userfaultfd",
    "personality", "process_vm_readv", "process_vm_writev", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr",
)

ARCHES = {
    "x86_64": (0xC000003E, {
        "ptrace": 101, "mount": 165, "umount2": 166, "unshare": 272, "setns": 308, "clone": 56,
        "clone3": 435, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "pivot_root": 155, "chroot": 161, "swapon": 167,
        "swapoff": 168, "reboot": 169, "userfaultfd": 323, "personality": 135,
        "process_vm_readv": 310, "process_vm_writev": 311,
    }),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "mount": 40, "umount2": 39, "unshare": 97, "setns": 268, "clone": 220,
        "clone3": 435, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
        "perf_event_open": 241, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "pivot_root": 41, "chroot": 51, "swapon": 224,
        "swapoff": 225, "reboot": 142, "userfaultfd": 282, "personality": 92,
        "process_vm_readv": 270, "process_vm_writev": 271,
    }),
}
# Numbers shared by both (asm-generic, added after the tables split).
_COMMON = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
           "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
           "mount_setattr": 442}


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None) -> bytes:
    """The BPF program (array of struct sock_filter) for this machine."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise ValueError(f"no seccomp table for {machine}")
    audit_arch, table = ARCHES[machine]
    table = {**table, **_COMMON}
    eperm = RET_ERRNO | errno.EPERM
    prog = [
        _ins(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _ins(_JEQ_K, 1, 0, audit_arch),
        _ins(_RET_K, 0, 0, RET_KILL_PROCESS),
        _ins(_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if machine == "x86_64":
        # x32 syscalls carry bit 30; they are another ABI: kill.
        prog += [_ins(_JGE_K, 0, 1, 0x40000000), _ins(_RET_K, 0, 0, RET_KILL_PROCESS)]
    for name in DENIED:
        prog += [_ins(_JEQ_K, 0, 1, table[name]), _ins(_RET_K, 0, 0, eperm)]
    # clone3 passes flags in memory BPF cannot read: ENOSYS makes libc fall back to clone.
    prog += [_ins(_JEQ_K, 0, 1, table["clone3"]), _ins(_RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]
    prog += [
        _ins(_JEQ_K, 0, 3, table["clone"]),
        _ins(_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        _ins(_JSET_K, 0, 1, CLONE_NS_FLAGS),
        _ins(_RET_K, 0, 0, eperm),
        _ins(_RET_K, 0, 0, RET_ALLOW),
    ]
    return b"".join(prog)


def filter_fd(program: bytes) -> int:
    """A memfd holding the program at offset 0, for `bwrap --seccomp FD`."""
    fd = os.memfd_create("xgrader-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
