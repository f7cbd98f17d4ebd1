"""Strict reader of guppy's stat dump (heap_profile.T.hpy), for the tests.

It parses the file the way guppy's `hpy().load(path)` does (Use.load, then Part.Stat: the
`.loader:` line names the loader; header lines `.NAME: VALUE` up to the first `.r:` line, each
value an int where int() takes it; rows `.r: COUNT SIZE KIND` split on the first two spaces;
`.end` ends the rows), and raises HpyError on anything guppy would choke on or that breaks the
dump's own rules: counts and sizes that do not add up to the header, a wrong .numrows, rows not
largest first, a KIND listed twice, a missing or misplaced `.end: .loader: _load_stat` line.
It is not guppy: it reads only the SetFormat dumps that profiler-agent writes.

    python3 hpy.py FILE     validates FILE and prints its header numbers
"""
import re
import sys
from dataclasses import dataclass

LOADER = "_load_stat"
END = ".end: .loader: " + LOADER
REQUIRED = ("loader", "format", "timemade", "count", "size", "kindname", "kindheader", "numrows")
DIGITS = re.compile(r"[0-9]+")


class HpyError(ValueError):
    """The file is not a valid stat dump."""


@dataclass
class Row:
    count: int
    size: int
    kind: str


@dataclass
class Stat:
    header: dict
    rows: list


def _int_or_str(value):
    # Stat.__init__ keeps a header value as a string when int() refuses it.
    try:
        return int(value)
    except ValueError:
        return value


def _number(text, what, lineno):
    if not DIGITS.fullmatch(text):
        raise HpyError("line %d: %s %r is not a non-negative integer" % (lineno, what, text))
    return int(text)


def _lines(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HpyError("not UTF-8: %s" % e) from None
    # guppy reads in text mode, where a lone '\r' also ends a line.
    if "\r" in text:
        raise HpyError("carriage return in the file")
    if not text.endswith("\n"):
        raise HpyError("the last line has no newline")
    return text[:-1].split("\n")


def _header(lines):
    first = lines[0]
    if not first.startswith(".loader:"):
        raise HpyError("line 1: no initial .loader directive")
    if first[first.index(":") + 1:].strip() != LOADER:
        raise HpyError("line 1: loader is not %s" % LOADER)
    header = {}
    i = 0
    while i < len(lines) and lines[i] and not lines[i].startswith(".r:"):
        line = lines[i]
        if line.startswith(".end"):
            break
        if not line.startswith(".") or ":" not in line:
            raise HpyError("line %d: not a .NAME: VALUE header line: %r" % (i + 1, line))
        name = line[1:line.index(":")]
        if name in header:
            raise HpyError("line %d: .%s given twice" % (i + 1, name))
        header[name] = _int_or_str(line[line.index(":") + 1:].strip())
        i += 1
    for name in REQUIRED:
        if name not in header:
            raise HpyError("header has no .%s" % name)
    if header["format"] != "SetFormat":
        raise HpyError(".format is %r, not SetFormat" % (header["format"],))
    try:
        header["timemade"] = float(header["timemade"])
    except ValueError:
        raise HpyError(".timemade %r is not a number" % (header["timemade"],)) from None
    for name in ("count", "size", "numrows"):
        if not isinstance(header[name], int) or header[name] < 0:
            raise HpyError(".%s %r is not a non-negative integer" % (name, header[name]))
    return header, i


def _rows(lines, i):
    rows = []
    while i < len(lines) and lines[i].startswith(".r: "):
        parts = lines[i][4:].split(" ", 2)
        if len(parts) != 3:
            raise HpyError("line %d: a row is .r: COUNT SIZE KIND" % (i + 1))
        rows.append(Row(_number(parts[0], "count", i + 1), _number(parts[1], "size", i + 1),
                        parts[2]))
        i += 1
    if i >= len(lines):
        raise HpyError("no %r line" % END)
    if lines[i] != END:
        raise HpyError("line %d: expected a row or %r, got %r" % (i + 1, END, lines[i]))
    if i + 1 != len(lines):
        raise HpyError("line %d: text after the .end line" % (i + 2))
    return rows


def load_hpy(path):
    """Parses and checks the dump at path; returns a Stat (header dict, rows in file order)."""
    lines = _lines(path)
    header, i = _header(lines)
    rows = _rows(lines, i)
    if header["numrows"] != len(rows):
        raise HpyError(".numrows is %d but there are %d rows" % (header["numrows"], len(rows)))
    if sum(r.count for r in rows) != header["count"]:
        raise HpyError("rows count %d objects, .count says %d"
                       % (sum(r.count for r in rows), header["count"]))
    if sum(r.size for r in rows) != header["size"]:
        raise HpyError("rows size %d bytes, .size says %d"
                       % (sum(r.size for r in rows), header["size"]))
    seen = set()
    for n, row in enumerate(rows):
        if row.size == 0:
            raise HpyError("row %d (%s) has size 0" % (n, row.kind))
        if n and row.size > rows[n - 1].size:
            raise HpyError("row %d (%s) is larger than the row before it" % (n, row.kind))
        if row.kind in seen:
            raise HpyError("row %d: kind %r listed twice" % (n, row.kind))
        seen.add(row.kind)
    return Stat(header, rows)


def main(argv):
    if len(argv) != 2:
        print("usage: hpy.py FILE", file=sys.stderr)
        return 2
    try:
        stat = load_hpy(argv[1])
    except (OSError, HpyError) as e:
        print("%s: %s" % (argv[1], e), file=sys.stderr)
        return 1
    h = stat.header
    print("rows=%d count=%d size=%d timemade=%f" % (h["numrows"], h["count"], h["size"],
                                                     h["timemade"]))
    for row in stat.rows[:5]:
        print("%d %d %s" % (row.count, row.size, row.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
