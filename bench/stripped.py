#!/usr/bin/python3
"""profiler.start on Debian's stripped programs, beside `perf record` over the same seconds of the
same process: xz compressing a stream (the work in liblzma, stripped) and sqlite3 inserting,
indexing and grouping rows (libsqlite3, stripped; Debian exports some internals in .dynsym), each
the same mix of work over any fraction of a second. For each:
- distinct functions with self time in our profile, against perf report's distinct entries
  (perf names stripped code by sampled address, one entry per address) and against the same
  entries put back into functions by the .eh_frame FDE that covers each address;
- the top five functions by self time, ours and perf's (its addresses grouped so), side by side.
Not a test: nothing here judges a figure."""
import bisect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from common import agent_session

SECONDS = float(os.environ.get("SECONDS_PER_RUN", "5"))
FREQ = 999
PERF = shutil.which("perf")
SQL_ROUND = """CREATE TABLE IF NOT EXISTS t(a INTEGER, b TEXT);
DELETE FROM t;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000)
INSERT INTO t SELECT random() % 5000, hex(randomblob(12)) FROM c;
CREATE INDEX IF NOT EXISTS ta ON t(a);
SELECT a, count(*), max(b) FROM t GROUP BY a ORDER BY 2 DESC LIMIT 1;
SELECT count(*) FROM t WHERE b LIKE '%AB%';
DROP INDEX ta;
"""


def feed(proc, chunk):
    """Writes chunk to proc's stdin again and again until it goes."""
    def run():
        try:
            while True:
                proc.stdin.write(chunk)
                proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    threading.Thread(target=run, daemon=True).start()


def xz_input():
    """12 MiB of real binaries (24 libraries, 512 KiB of each) cut into 4 KiB pieces dealt out
    in turn: any tenth of a second of xz's work has the same mix, so the two profilers' windows,
    which do not start at the same instant, see the same program."""
    lib = "/usr/lib/x86_64-linux-gnu"
    files = []
    for name in sorted(os.listdir(lib)):
        p = os.path.join(lib, name)
        if len(files) < 24 and os.path.isfile(p) and not os.path.islink(p) and \
                os.path.getsize(p) >= 512 << 10:
            files.append(open(p, "rb").read(512 << 10))
    return b"".join(f[i:i + 4096] for i in range(0, 512 << 10, 4096) for f in files)


class Functions:
    """Function starts of a module from the FDEs readelf lists in its .eh_frame."""

    def __init__(self, path):
        text = subprocess.run(["readelf", "--debug-dump=frames", path], capture_output=True,
                              text=True).stdout
        ranges = sorted((int(a, 16), int(b, 16)) for a, b in
                        re.findall(r" FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", text))
        self.starts = [a for a, _ in ranges]
        self.ends = [b for _, b in ranges]

    def start_of(self, addr):
        i = bisect.bisect_right(self.starts, addr) - 1
        return self.starts[i] if i >= 0 and addr < self.ends[i] else None


def perf_entries(data, maps):
    """perf report's sample count, its self-time entries as (share, module basename, symbol), and
    the same grouped into functions: an address in a stripped module becomes basename+0xSTART of
    its FDE."""
    out = subprocess.run([PERF, "report", "-i", data, "--no-children", "--sort", "dso,sym",
                          "--stdio", "-q", "-n", "--percent-limit", "0"],
                         capture_output=True, text=True).stdout
    samples = 0
    raw, grouped, fdes, kernel = [], {}, {}, set()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*\S)", line)
        if not m:
            continue
        share, dso, user, sym = float(m.group(1)), m.group(3), m.group(4) == ".", m.group(5)
        samples += int(m.group(2))
        raw.append((share, dso, sym, user))
        name = sym
        if re.fullmatch(r"0x[0-9a-f]+", sym) and dso in maps:
            fdes.setdefault(dso, Functions(maps[dso]))
            start = fdes[dso].start_of(int(sym, 16))
            name = f"{dso}+{start:#x}" if start is not None else f"{dso} {sym}"
        grouped[name] = grouped.get(name, 0.0) + share
        if not user:
            kernel.add(name)
    return samples, raw, grouped, kernel


def our_shares(cprof):
    """Self-time share in percent of each function of our pstats file."""
    script = ("import json,pstats,sys; st=pstats.Stats(sys.argv[1]); "
              "t=sum(v[2] for v in st.stats.values()); "
              "print(json.dumps({k[2]: 100*v[2]/t for k,v in st.stats.items() if v[2] > 0}))")
    p = subprocess.run(["/usr/bin/python3", "-c", script, cprof], capture_output=True, text=True,
                       check=True)
    return json.loads(p.stdout)


def module_paths(pid):
    """Basename -> path of the files pid maps (perf names a DSO by its basename)."""
    paths = {}
    for line in open(f"/proc/{pid}/maps"):
        f = line.split()
        if len(f) >= 6 and f[5].startswith("/"):
            paths[os.path.basename(f[5])] = f[5]
    return paths


def measure(name, argv, chunk, work):
    target = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    feed(target, chunk)
    time.sleep(1)
    data = os.path.join(work, f"perf.{name}")
    try:
        with agent_session(work, "bench", f"pid:{target.pid}") as s:
            perf = subprocess.Popen([PERF, "record", "-q", "-e", "cpu-clock", "-F", str(FREQ),
                                     "-p", str(target.pid), "-o", data, "--", "sleep",
                                     str(SECONDS)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result, _ = s.command("start", {"seconds": SECONDS, "frequency": FREQ},
                                  timeout=SECONDS + 60)
            perf.wait()
        maps = module_paths(target.pid)
    finally:
        target.kill()
        target.wait()
    assert result["status"] == "ok", result
    ours = our_shares(result["files"][0])
    perf_samples, raw, grouped, kernel = perf_entries(data, maps)
    print(f"\n{name} ({' '.join(argv)}), {SECONDS:.0f} s at {FREQ} Hz, samples: ours "
          f"{result['summary']['samples']}, perf {perf_samples}")
    # Our sampler counts user mode only (exclude_kernel); perf's kernel symbols are counted
    # apart.
    user_raw = sum(1 for e in raw if e[3])
    # perf names each PLT stub (foo@plt); ours name a module's .plt as one, by its FDE.
    plt = sum(1 for f in grouped if f.endswith("@plt"))
    print(f"  distinct user-space functions with self time: ours {len(ours)}; perf report "
          f"{user_raw} entries (symbols and addresses), {len(grouped) - len(kernel)} once its "
          f"addresses are grouped by the FDE that covers them ({plt} of them PLT stubs), and "
          f"{len(kernel)} kernel symbols, {sum(e[0] for e in raw if not e[3]):.1f}% of its "
          f"samples")
    # perf's shares over its user-space samples, the whole that ours are shares of.
    user_total = sum(e[0] for e in raw if e[3]) or 1.0
    perf_user = {f: 100 * v / user_total for f, v in grouped.items() if f not in kernel}
    top_ours = sorted(ours.items(), key=lambda kv: -kv[1])[:5]
    top_perf = sorted(perf_user.items(), key=lambda kv: -kv[1])[:5]
    print(f"  {'ours':<32} {'%':>5} {'perf':>5}   {'perf top five (grouped, user)':<32} {'%':>5}")
    for (fo, so), (fp, sp) in zip(top_ours, top_perf + [("", 0.0)] * 5):
        print(f"  {fo[:32]:<32} {so:5.1f} {perf_user.get(fo, 0.0):5.1f}   {fp[:32]:<32} {sp:5.1f}")
    print("  perf's own top five (raw): " +
          ", ".join(f"{sym} {share:.1f}%" for share, _, sym, _ in raw[:5]))


def main():
    if not PERF:
        sys.exit("perf is not installed (Debian: linux-perf)")
    work = tempfile.mkdtemp(prefix="bench-stripped-")
    try:
        measure("xz", ["xz", "-6", "-T1", "-c"], xz_input(), work)
        measure("sqlite3", ["sqlite3", ":memory:"], SQL_ROUND.encode(), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
