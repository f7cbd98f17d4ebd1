"""Seeds for fuzz_pyframes: fake runtimes with one thread, a shim frame and one Python frame.

Usage: python3 tests/fuzz/gen_pyframes.py OUTDIR PY313 PY314 PY315
PY31x are the interpreters whose real _Py_DebugOffsets (read from the start of their
_PyRuntime section) the 3.13-3.15 seeds carry, e.g. build/pyroot/usr/bin/python3.13 from
tests/pyroot.sh. The 3.11 and 3.12 seeds use the layouts of engine/python/pylayout.c."""
import struct, subprocess, sys

BASE = 0x100000
CODE_TYPE, STR_TYPE, BYTES_TYPE = 0xc0de0000, 0x57200000, 0xb7e50000

L311 = dict(rt_interp_head=40, rt_gil_tstate=576, is_next=0, is_threads_head=16, is_gil=None,
            ts_next=8, ts_interp=16, ts_frame=56, cframe=True, cf_current_frame=8, ts_thread_id=152,
            ts_native_id=160, if_code=32, if_previous=48, if_instr=56, if_owner=69, instr_prev=True,
            shim=None, co_firstlineno=72, co_filename=112, co_qualname=128, co_linetable=136,
            co_firsttraceable=168, co_code=184, str_state=32, str_ascii=48, ready=True)
L312 = dict(rt_interp_head=40, rt_gil_tstate=None, is_next=0, is_threads_head=72, is_gil=384,
            gil_holder=8, gil_locked=16, ts_next=8, ts_interp=16, ts_frame=56, cframe=True,
            cf_current_frame=0, ts_thread_id=136, ts_native_id=144, if_code=0, if_previous=8,
            if_instr=56, if_owner=70, instr_prev=True, shim=3, co_firstlineno=68, co_filename=112,
            co_qualname=128, co_linetable=136, co_firsttraceable=176, co_code=192, str_state=32,
            str_ascii=40, ready=False)
# positions in _Py_DebugOffsets (engine/python/pydebug.c shapes)
SHAPES = {13: dict(interp_head=40, is_next=64, is_threads_head=72, is_ceval_gil=112, is_gil=120,
                   locked=136, holder=144, ts_next=168, ts_interp=176, ts_frame=184, ts_thread_id=192,
                   ts_native_id=200, if_previous=232, if_code=240, if_instr=248, if_owner=264,
                   co_filename=280, co_qualname=296, co_linetable=304, co_firstlineno=312,
                   co_code=344, str_ascii=560, str_state=544),
          14: dict(interp_head=40, is_next=64, is_threads_head=72, is_ceval_gil=120, is_gil=128,
                   locked=144, holder=152, ts_next=192, ts_interp=200, ts_frame=208,
                   ts_thread_id=216, ts_native_id=224, if_previous=256, if_code=264, if_instr=272,
                   if_owner=288, co_filename=320, co_qualname=336, co_linetable=344,
                   co_firstlineno=352, co_code=384, str_ascii=640, str_state=624),
          15: dict(interp_head=40, is_next=64, is_threads_head=72, is_ceval_gil=120, is_gil=128,
                   locked=144, holder=152, ts_next=192, ts_interp=200, ts_frame=208,
                   ts_thread_id=240, ts_native_id=248, if_previous=320, if_code=328, if_instr=336,
                   if_owner=352, co_filename=384, co_qualname=400, co_linetable=408,
                   co_firstlineno=416, co_code=448, str_ascii=736, str_state=720)}


def runtime_bytes(path, n):
    syms = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True).stdout
    addr = next(int(l.split()[1], 16) for l in syms.splitlines() if l.endswith(" _PyRuntime"))
    secs = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True).stdout
    for l in secs.splitlines():
        f = l.replace("[ ", "[").split()
        if len(f) > 6 and f[2] in ("PROGBITS",) and f[1] in (".data", ".PyRuntime"):
            va, off, size = int(f[3], 16), int(f[4], 16), int(f[5], 16)
            if va <= addr < va + size:
                with open(path, "rb") as fh:
                    fh.seek(off + addr - va)
                    return bytearray(fh.read(n))
    raise SystemExit("no _PyRuntime data in " + path)


def from_debug(dbg, minor):
    s = SHAPES[minor]
    u = lambda pos: struct.unpack_from("<Q", dbg, pos)[0]
    gil = u(s["is_gil"])
    return dict(rt_interp_head=u(s["interp_head"]), rt_gil_tstate=None, is_next=u(s["is_next"]),
                is_threads_head=u(s["is_threads_head"]), is_gil=u(s["is_ceval_gil"]),
                gil_holder=u(s["holder"]) - gil, gil_locked=u(s["locked"]) - gil,
                ts_next=u(s["ts_next"]), ts_interp=u(s["ts_interp"]), ts_frame=u(s["ts_frame"]),
                cframe=False, ts_thread_id=u(s["ts_thread_id"]), ts_native_id=u(s["ts_native_id"]),
                if_code=u(s["if_code"]), if_previous=u(s["if_previous"]), if_instr=u(s["if_instr"]),
                if_owner=u(s["if_owner"]), instr_prev=False, shim=3,
                co_firstlineno=u(s["co_firstlineno"]), co_filename=u(s["co_filename"]),
                co_qualname=u(s["co_qualname"]), co_linetable=u(s["co_linetable"]),
                co_firsttraceable=u(s["co_code"]) - 16, co_code=u(s["co_code"]),
                str_state=u(s["str_state"]), str_ascii=u(s["str_ascii"]), ready=False)


def image(L, prefix=b"", tag=0):
    size = 0x2e00
    m = bytearray(size)
    m[:len(prefix)] = prefix
    put = lambda off, v, fmt="<Q": struct.pack_into(fmt, m, off, v)
    I, T, CF, F1, F0, C, S1, S2, B, G = (0x400, 0x2400, 0x2800, 0x2900, 0x2a00, 0x2b00, 0x2c00,
                                         0x2c80, 0x2d00, 0x2d80)
    put(L["rt_interp_head"], BASE + I)
    put(I + L["is_next"], 0)
    put(I + L["is_threads_head"], BASE + T)
    if L["rt_gil_tstate"]:
        put(L["rt_gil_tstate"], BASE + T)
    else:
        put(I + L["is_gil"], BASE + G)
        put(G + L["gil_holder"], BASE + T)
        put(G + L["gil_locked"], 1, "<i")
    put(T + L["ts_next"], 0)
    put(T + L["ts_interp"], BASE + I)
    put(T + L["ts_thread_id"], 0x7f0000001000)
    put(T + L["ts_native_id"], 7)
    if L["cframe"]:
        put(T + L["ts_frame"], BASE + CF)
        put(CF + L["cf_current_frame"], BASE + F1)
    else:
        put(T + L["ts_frame"], BASE + F1)
    put(F1 + L["if_code"], BASE + C | tag)
    put(F1 + L["if_previous"], BASE + F0 if L["shim"] else 0)
    unit = 3
    put(F1 + L["if_instr"], BASE + C + L["co_code"] + 2 * unit)
    m[F1 + L["if_owner"]] = 0
    if L["shim"]:
        m[F0 + L["if_owner"]] = L["shim"]
    else:
        m[F1 + L["if_owner"] - 1] = 1  # 3.11's is_entry, just before owner
    put(F0 + L["if_previous"], 0)
    put(C + 8, CODE_TYPE)
    put(C + 16, 8)  # code units
    put(C + L["co_firstlineno"], 10, "<i")
    put(C + L["co_filename"], BASE + S1)
    put(C + L["co_qualname"], BASE + S2)
    put(C + L["co_linetable"], BASE + B)
    put(C + L["co_firsttraceable"], 0, "<i")
    for at, text in ((S1, b"app.py"), (S2, b"main")):
        put(at + 8, STR_TYPE)
        put(at + 16, len(text))
        put(at + L["str_state"], (1 << 2) | (1 << 5) | (1 << 6) | ((1 << 7) if L["ready"] else 0),
            "<I")
        m[at + L["str_ascii"]:at + L["str_ascii"] + len(text)] = text
    table = bytes([0x80 | (13 << 3) | 7, 4])  # 8 units, no columns, line +2
    put(B + 8, BYTES_TYPE)
    put(B + 16, len(table))
    m[B + 32:B + 32 + len(table)] = table
    return bytes(m)


out = sys.argv[1]
seeds = {"v3_11": bytes([0, 0]) + image(L311), "v3_12": bytes([1, 0]) + image(L312),
         "v3_12_tid": bytes([1, 7]) + image(L312)}
d13 = runtime_bytes(sys.argv[2], 1024)
d14 = runtime_bytes(sys.argv[3], 1024)
d15 = runtime_bytes(sys.argv[4], 1024)
seeds["v3_15_debug"] = bytes([2, 0]) + image(from_debug(d15, 15), bytes(d15[:888]), tag=1)
seeds["v3_13_debug"] = bytes([2, 0]) + image(from_debug(d13, 13), bytes(d13[:584]))
seeds["v3_14_debug"] = bytes([2, 7]) + image(from_debug(d14, 14), bytes(d14[:760]), tag=1)
seeds["linetable"] = bytes([0, 5]) + bytes([0x80 | (13 << 3) | 7, 4, 0x80 | (14 << 3) | 3, 0x43,
                                            0x01, 2, 3, 4, 0xf8, 0x80 | (10 << 3), 1, 2])
for name, b in seeds.items():
    with open("%s/%s" % (out, name), "wb") as f:
        f.write(b)
