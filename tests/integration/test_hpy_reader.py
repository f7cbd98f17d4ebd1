"""Tests of hpy.py, the strict reader of guppy stat dumps the other tests use: a good dump reads
back exactly, each kind of damage is refused, and where guppy is installed, guppy's own
hpy().load() agrees with it on the good dumps."""
import os
import subprocess
import sys

import pytest

from hpy import HpyError, load_hpy

HERE = os.path.dirname(os.path.abspath(__file__))

HEADER = [
    ".loader: _load_stat",
    ".format: SetFormat",
    ".timemade: 1732485600.123456",
    ".count: 10",
    ".size: 3500",
    ".kindname: ",
    ".kindheader: Allocation site (function <- callers)",
    ".numrows: 3",
]
ROWS = [
    ".r: 4 2000 make_buf <- handle (request) <- main",
    ".r: 5 1000 operator new(unsigned long) <- std::vector<int>::push_back <- main",
    ".r: 1 500 libfoo.so.1+0x1a2b <- ??",
]
END = ".end: .loader: _load_stat"
GOOD = HEADER + ROWS + [END]


def write(tmp_path, lines, name="heap_profile.1.hpy", tail="\n"):
    path = tmp_path / name
    path.write_bytes(("\n".join(lines) + tail).encode("utf-8"))
    return str(path)


def replace(lines, prefix, new):
    """lines with the one line starting with prefix replaced by new (or dropped if None)."""
    hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(hits) == 1, prefix
    out = list(lines)
    if new is None:
        del out[hits[0]]
    else:
        out[hits[0]] = new
    return out


def test_good_dump_reads_back(tmp_path):
    stat = load_hpy(write(tmp_path, GOOD))
    assert stat.header["count"] == 10
    assert stat.header["size"] == 3500
    assert stat.header["numrows"] == 3
    assert stat.header["timemade"] == pytest.approx(1732485600.123456)
    assert stat.header["kindname"] == ""
    assert stat.header["kindheader"] == "Allocation site (function <- callers)"
    assert [(r.count, r.size) for r in stat.rows] == [(4, 2000), (5, 1000), (1, 500)]
    assert stat.rows[0].kind == "make_buf <- handle (request) <- main"
    assert stat.rows[1].kind.startswith("operator new(unsigned long) <- ")


def test_empty_dump_reads_back(tmp_path):
    lines = HEADER[:3] + [".count: 0", ".size: 0"] + HEADER[5:7] + [".numrows: 0", END]
    stat = load_hpy(write(tmp_path, lines))
    assert stat.rows == []
    assert (stat.header["count"], stat.header["size"]) == (0, 0)


def swap_rows(lines):
    out = list(lines)
    i = out.index(ROWS[0])
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


BROKEN = {  # case: (lines, what the error must say)
    "count does not add up": (replace(GOOD, ".count:", ".count: 11"), ".count says 11"),
    "size does not add up": (replace(GOOD, ".size:", ".size: 3499"), ".size says 3499"),
    "numrows too many": (replace(GOOD, ".numrows:", ".numrows: 4"), ".numrows is 4"),
    "numrows too few": (replace(GOOD, ".numrows:", ".numrows: 2"), ".numrows is 2"),
    "not largest first": (swap_rows(GOOD), "larger than the row before"),
    "no end line": (GOOD[:-1], "no '.end"),
    "end line misspelt": (GOOD[:-1] + [".end: .loader: _load_stats"], "expected a row or"),
    "text after end": (GOOD + ["junk"], "text after the .end"),
    "second dump after end": (GOOD + GOOD, "text after the .end"),
    "blank line in rows": (GOOD[:-2] + [""] + GOOD[-2:], "expected a row or"),
    "kind twice": (HEADER[:3] + [".count: 2", ".size: 20"] + HEADER[5:7]
                   + [".numrows: 2", ".r: 1 10 f <- main", ".r: 1 10 f <- main", END],
                   "listed twice"),
    "zero-size row": (replace(replace(GOOD, ".r: 1 500", ".r: 1 0 x"), ".size:", ".size: 3000"),
                      "has size 0"),
    "no loader": (GOOD[1:], "no initial .loader"),
    "other loader": (replace(GOOD, ".loader:", ".loader: _load_other"), "loader is not"),
    "other format": (replace(GOOD, ".format:", ".format: IdFormat"), "not SetFormat"),
    "no kindheader": (replace(GOOD, ".kindheader:", None), "no .kindheader"),
    "no timemade": (replace(GOOD, ".timemade:", None), "no .timemade"),
    "timemade not a number": (replace(GOOD, ".timemade:", ".timemade: soon"), "not a number"),
    "count not a number": (replace(GOOD, ".count:", ".count: ten"), ".count 'ten'"),
    "header line without colon": (GOOD[:2] + [".oops"] + GOOD[2:], "not a .NAME: VALUE"),
    "header given twice": (GOOD[:2] + [".size: 3500"] + GOOD[2:], "given twice"),
    "row with two fields": (replace(GOOD, ".r: 1 500", ".r: 1 500"), "COUNT SIZE KIND"),
    "row count negative": (replace(GOOD, ".r: 4 2000", ".r: -4 2000 make_buf <- main"),
                           "count '-4'"),
    "row size with sign": (replace(GOOD, ".r: 4 2000", ".r: 4 +2000 make_buf <- main"),
                           "size '[+]2000'"),
    "row without space after colon": (replace(GOOD, ".r: 4 2000", ".r:4 2000 make_buf"),
                                      "expected a row or"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_dump_is_refused(tmp_path, case):
    lines, message = BROKEN[case]
    with pytest.raises(HpyError, match=message):
        load_hpy(write(tmp_path, lines))


def test_missing_final_newline_is_refused(tmp_path):
    with pytest.raises(HpyError):
        load_hpy(write(tmp_path, GOOD, tail=""))


def test_carriage_return_is_refused(tmp_path):
    path = tmp_path / "cr.hpy"
    path.write_bytes(("\n".join(GOOD) + "\n").replace("handle (request)", "a\rb").encode())
    with pytest.raises(HpyError):
        load_hpy(str(path))


def test_invalid_utf8_is_refused(tmp_path):
    path = tmp_path / "bad.hpy"
    path.write_bytes(("\n".join(GOOD) + "\n").encode().replace(b"make_buf", b"make\xffbuf"))
    with pytest.raises(HpyError):
        load_hpy(str(path))


def test_command_line(tmp_path):
    good = subprocess.run([sys.executable, os.path.join(HERE, "hpy.py"), write(tmp_path, GOOD)],
                          capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("rows=3 count=10 size=3500 timemade=1732485600.123456\n")
    bad = subprocess.run([sys.executable, os.path.join(HERE, "hpy.py"),
                          write(tmp_path, BROKEN["no end line"][0], name="bad.hpy")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "bad.hpy" in bad.stderr


@pytest.mark.parametrize("lines", [GOOD, HEADER[:3] + [".count: 0", ".size: 0"] + HEADER[5:7]
                                   + [".numrows: 0", END]], ids=["rows", "empty"])
def test_guppy_agrees(tmp_path, lines):
    guppy = pytest.importorskip("guppy")
    path = write(tmp_path, lines)
    ours = load_hpy(path)
    theirs = guppy.hpy().load(path)
    assert (theirs.count, theirs.size, theirs.numrows) == (
        ours.header["count"], ours.header["size"], ours.header["numrows"])
    assert theirs.kindheader == ours.header["kindheader"]
    assert [(r.count, r.size, r.name) for r in theirs.get_rows()] == [
        (r.count, r.size, r.kind) for r in ours.rows]
    # Rendering divides by the totals and wraps the kinds: it must not raise either.
    assert "Total size = %d bytes" % ours.header["size"] in str(theirs)
