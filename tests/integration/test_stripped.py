"""A CPU profile of code in a stripped shared library (tests/workloads/stripped/libchain.c, built
and stripped here, loaded by build/workloads/stripped_chain), opened as users open it: every
function of the library is its own node, named by its symbol or by the library's name and its
start address as nm gives it in the unstripped copy, and the call graph has exactly the edges the
program has. The graph is read the way gprof2dot reads it (Python's pstats: each function's
callers; gprof2dot itself is not packaged in Debian) and as `callgrind_annotate --inclusive=yes
--tree=caller` prints it."""
import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, agent_session, running_workload

LIB = "libchain.so"
SRC = os.path.join(ROOT, "tests", "workloads", "stripped", "libchain.c")
STATICS = ["chain_leaf", "chain_mid", "chain_outer", "chain_side", "chain_after_asm"]
# The program's call graph (libchain.c's header), by symbol name.
EDGES = {("main", "chain_run"), ("chain_run", "chain_outer"), ("chain_outer", "chain_mid"),
         ("chain_mid", "chain_leaf"), ("chain_run", "chain_side"),
         ("chain_run", "chain_after_asm")}
SHARES = {"chain_leaf": 0.40, "chain_side": 0.30, "chain_after_asm": 0.30}


@pytest.fixture(scope="module")
def library(workdir):
    """The stripped library, and each function's name in a profile: its symbol when .dynsym
    keeps one, else LIB+0xSTART with START from nm of the unstripped copy."""
    full = os.path.join(workdir, "full")
    os.makedirs(full)
    subprocess.run(["gcc", "-O2", "-g", "-fPIC", "-shared", "-fno-toplevel-reorder",
                    "-fno-optimize-sibling-calls", "-o", os.path.join(full, LIB), SRC], check=True)
    path = os.path.join(workdir, LIB)
    subprocess.run(["strip", "-o", path, os.path.join(full, LIB)], check=True)
    nm = subprocess.run(["nm", "--defined-only", os.path.join(full, LIB)], check=True,
                        capture_output=True, text=True).stdout
    starts = {name: int(addr, 16) for addr, _, name in (line.split() for line in nm.splitlines())}
    names = {s: f"{LIB}+{starts[s]:#x}" for s in STATICS}
    names.update(main="main", chain_run="chain_run")
    return path, names


@pytest.fixture(scope="module")
def profile(workdir, library):
    path, names = library
    with running_workload("stripped_chain", path) as target, \
            agent_session(workdir, "stripped", f"pid:{target.pid}") as s:
        result, _ = s.command("start", {"seconds": 3, "frequency": 999}, timeout=30)
    assert result["status"] == "ok", result
    return result, names


def pstats_graph(path):
    """Self-time shares and caller -> callee edges by function name, as pstats reads the file."""
    script = r"""
import json, pstats, sys
st = pstats.Stats(sys.argv[1])
total = sum(v[2] for v in st.stats.values())
print(json.dumps({"self": {k[2]: v[2] / total for k, v in st.stats.items()},
                  "modules": {k[2]: k[0] for k in st.stats},
                  "edges": [[c[2], k[2]] for k, v in st.stats.items() for c in v[4]]}))
"""
    p = subprocess.run(["/usr/bin/python3", "-c", script, path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def cycles(edges):
    """The strongly connected components of more than one function (Tarjan's, as gprof2dot
    finds its cycles), and the functions that call themselves."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in graph:
        if v not in index:
            visit(v)
    return found, sorted(a for a, b in edges if a == b)


def check_graph(edges, names):
    """edges has the program's edges among the library's functions and main, and no other."""
    ours = {names[a] for e in EDGES for a in e}
    want = {(names[a], names[b]) for a, b in EDGES}
    seen = {(a, b) for a, b in edges if a in ours and b in ours}
    assert seen == want, (sorted(seen - want), sorted(want - seen))
    assert cycles(edges) == ([], []), cycles(edges)


def test_each_stripped_function_is_its_own_node(profile):
    result, names = profile
    g = pstats_graph(result["files"][0])
    lib_funcs = {f for f, m in g["modules"].items() if m.endswith("/" + LIB)}
    # Every function of the library that ran is there under its own name, and nothing else of
    # the library is: no "[unknown]", and no function named by the size-0 symbol before it.
    assert lib_funcs == {names[f] for f in ["chain_run", *STATICS]}, lib_funcs
    for func, share in SHARES.items():
        assert abs(g["self"][names[func]] - share) < 0.08, (func, g["self"])
    check_graph(g["edges"], names)
    top = [t["function"] for t in result["summary"]["top"][:3]]
    assert set(top) == {names[f] for f in SHARES}, top


CALLGRIND_LINE = re.compile(r"^\s*[\d,]+ \([\d.]+%\)\s+[\d,]+ \([\d.]+%\)\s+([<*>])\s+"
                            r"[^:\s]*:(\S+)(?: \([\d,]+x\))? \[(.*)\]$")


def test_callgrind_annotate_shows_the_programs_graph(profile):
    result, names = profile
    p = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=caller",
                        result["files"][1]], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    edges, callers, inclusive = [], [], {}
    for line in p.stdout.splitlines():
        m = CALLGRIND_LINE.match(line)
        if not m:
            callers = []
            continue
        kind, func, obj = m.groups()
        if kind == "<":
            callers.append(func)
        elif kind == "*":
            edges += [(c, func) for c in callers]
            inclusive[func] = float(re.search(r"\(([\d.]+)%\)", line).group(1))
            callers = []
    # Each function its own entry, with its inclusive share: the chain down to chain_leaf
    # carries chain_leaf's 40%, chain_run all of the library's time.
    for func in ["chain_outer", "chain_mid", "chain_leaf"]:
        assert abs(inclusive[names[func]] - 40) < 8, (func, inclusive)
    assert inclusive[names["chain_run"]] > 95, inclusive
    check_graph(edges, names)
