#!/usr/bin/env python3
"""Seeds for the fuzz targets over what a profiled process controls (fuzz_procfs, fuzz_elf,
fuzz_perf), written into tests/fuzz/corpus/{procfs,elf,perf}/. The /proc files are captured from
a child process of this machine that holds one fd of every kind objects.c tells apart; the net
tables are this machine's with some inodes renumbered to those of fuzz_procfs's fixture sockets;
the ELF files are built from a one-line C file; the perf records are written as the kernel frames
them for the sampler's attributes. Run it again when a reader or the fixture changes."""
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# fuzz_procfs selectors: its enum kind, then one per net table in sockets.c's order.
K_MAPS, K_STAT, K_STATUS, K_COMM, K_CMDLINE, K_FDINFO, K_NET = range(7)
NET_TABLES = ["tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6", "icmp",
              "icmp6", "unix", "netlink", "packet"]
FIXTURE_INODES = [1, 2, 12345, 18446744073709551615, 4294967296]


def write(name, sub, data):
    d = os.path.join(CORPUS, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def libc_fd(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = getattr(libc, name)(*args)
    if fd < 0:
        raise OSError(ctypes.get_errno(), name)
    return fd


def procfs_seeds():
    """fds of every kind in a child, and its /proc files."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        log = open("/tmp/fuzz_seed.log", "a")
        efd = os.eventfd(3)
        tfd = libc_fd("timerfd_create", 1, 0)

        class Itimerspec(ctypes.Structure):
            _fields_ = [("i_s", ctypes.c_long), ("i_ns", ctypes.c_long),
                        ("v_s", ctypes.c_long), ("v_ns", ctypes.c_long)]
        spec = Itimerspec(7, 0, 6, 438000000)
        ctypes.CDLL(None).timerfd_settime(tfd, 0, ctypes.byref(spec), None)
        ep = libc_fd("epoll_create1", 0)
        ev = struct.pack("=IQ", 1 | (1 << 31), 0)
        buf = ctypes.create_string_buffer(ev)
        ctypes.CDLL(None).epoll_ctl(ep, 1, tfd, buf)
        ctypes.CDLL(None).epoll_ctl(ep, 1, efd, buf)
        mask = ctypes.c_uint64((1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGTERM - 1)))
        sfd = libc_fd("signalfd", -1, ctypes.byref(mask), 0)
        ino = libc_fd("inotify_init1", 0)
        ctypes.CDLL(None).inotify_add_watch(ino, b"/tmp", 0x100)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        fds = {"file": log.fileno(), "eventfd": efd, "timerfd": tfd, "epoll": ep,
               "signalfd": sfd, "inotify": ino}
        os.write(w, repr(fds).encode())
        os.close(w)
        signal.pause()
        os._exit(0)
    os.close(w)
    fds = eval(os.read(r, 4096).decode())
    os.close(r)
    try:
        base = "/proc/%d" % pid
        write("maps", "procfs", bytes([K_MAPS]) + read(base + "/maps"))
        write("stat", "procfs", bytes([K_STAT]) + read(base + "/stat"))
        write("status", "procfs", bytes([K_STATUS]) + read(base + "/status"))
        write("comm", "procfs", bytes([K_COMM]) + read(base + "/comm"))
        write("cmdline", "procfs", bytes([K_CMDLINE]) + read(base + "/cmdline"))
        for kind, fd in fds.items():
            write("fdinfo-" + kind, "procfs",
                  bytes([K_FDINFO]) + read("%s/fdinfo/%d" % (base, fd)))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # A timers file as the kernel writes it (this machine's child has none).
    write("timers", "procfs", bytes([K_FDINFO]) +
          b"ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.42\nClockID: 1\n"
          b"ID: 1\nsignal: 0/0000000000000000\nnotify: thread/tid.43\nClockID: 0\n")
    for i, table in enumerate(NET_TABLES):
        try:
            lines = read("/proc/net/" + table).split(b"\n")
        except OSError:
            continue
        # Renumber the inode column of the first rows to the fixture's sockets.
        col = 6 if table == "unix" else 8 if table == "packet" else 9
        out = [lines[0]]
        for k, line in enumerate(lines[1:6]):
            f = line.split()
            if len(f) > col and k < len(FIXTURE_INODES):
                line = line.replace(b" " + f[col], b" %d" % FIXTURE_INODES[k], 1)
            out.append(line)
        if table == "unix":
            out.insert(1, b"0000000000000000: 00000002 00000000 00010000 0001 01 12345 @abs'\"name")
        write("net-" + table, "procfs", bytes([K_NET + i]) + b"\n".join(out).rstrip(b"\n") + b"\n")


def elf_seeds():
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        flags = ["-Os", "-Wl,-z,noseparate-code", "-Wl,--build-id"]
        subprocess.run(["cc", *flags, "-s", "-o", d + "/stripped", src], check=True)
        subprocess.run(["cc", *flags, "-g", "-o", d + "/debug", src], check=True)
        subprocess.run(["cc", *flags, "-g", "-shared", "-fPIC", "-o", d + "/lib.so", src],
                       check=True)
        for name in ("stripped", "debug", "lib.so"):
            data = read(os.path.join(d, name))
            assert len(data) < 20000, (name, len(data))
            write(name, "elf", data)


def trailer(pid, tid, ident):
    return struct.pack("=IIQQ", pid, tid, 1000, ident)


def record(rtype, misc, body):
    size = 8 + len(body)
    assert size % 8 == 0
    return struct.pack("=IHH", rtype, misc, size) + body


def perf_seeds():
    pid, ident = 4242, 100
    stack = struct.pack("=8Q", 0, 0x40, 0, 0, 0, 0, 0, 0)  # saved rbp, a return address
    regs = [0] * 17
    regs[6] = 0x7ffc0000  # BP, in perf's bit order
    regs[7] = 0x7ffc0000  # SP
    regs[8] = 0x10        # IP: an offset from LLVMFuzzerInitialize
    sample = record(9, 2, struct.pack("=QIIQQQ", ident, pid, pid, 1000, 1010101, 2) +
                    struct.pack("=17Q", *regs) + struct.pack("=Q", len(stack)) + stack +
                    struct.pack("=Q", len(stack)))
    other = record(9, 2, struct.pack("=QIIQQQ", 200, pid, pid + 1, 1001, 1010101, 2) +
                   struct.pack("=17Q", *regs) + struct.pack("=Q", 0))
    comm = record(3, 0x2000, struct.pack("=II", pid, pid + 1) + b"worker\0\0" +
                  trailer(pid, pid + 1, ident))
    mmap2 = record(10, 2, struct.pack("=IIQQQIIQQII", pid, pid, 0x7f0000000000, 0x1000, 0,
                                      8, 1, 1234, 0, 5, 2) + b"/lib/x.so\0\0\0\0\0\0\0" +
                   trailer(pid, pid, ident))
    fork = record(7, 0, struct.pack("=IIIIQ", pid, pid, pid + 2, pid, 1002) +
                  trailer(pid, pid + 2, ident))
    exit_ = record(4, 0, struct.pack("=IIIIQ", pid, pid, pid + 2, pid, 1003) +
                   trailer(pid, pid + 2, ident))
    lost = record(2, 0, struct.pack("=QQ", ident, 3) + trailer(pid, pid, ident))
    records = sample + other + comm + mmap2 + fork + exit_ + lost + sample

    def ring(k, tail, data):
        return bytes([k]) + struct.pack("=QH", tail, len(data)) + data

    write("records", "perf", ring(6, 0, records))
    write("records-wrapped", "perf", ring(6, 4096 - 40, records))
    write("sample-high-tail", "perf", ring(10, 2**64 - 8, sample))
    write("bad-header", "perf", ring(0, 0, struct.pack("=IHH", 9, 0, 12) + b"\0" * 8))


if __name__ == "__main__":
    procfs_seeds()
    elf_seeds()
    perf_seeds()
    sys.exit(0)
