"""Seeds for fuzz_pytasks: fuzz_pyframes' 3.14 and 3.15 runtimes (tests/fuzz/corpus/pyframes/,
without their two header bytes) followed by the _Py_AsyncioModuleDebugOffsets of real builds,
read from their .AsyncioDebug section.

Usage: python3 tests/fuzz/gen_pytasks.py OUTDIR PYFRAMES_CORPUS ELF314 ELF315
ELF31x: the file holding that version's .AsyncioDebug (3.14 in Debian: the _asyncio extension,
build/pyroot/usr/lib/python3.14/lib-dynload/_asyncio.cpython-314-x86_64-linux-gnu.so; 3.15:
build/pyroot/usr/bin/python3.15)."""
import os
import subprocess
import sys
import tempfile


def section(path):
    with tempfile.NamedTemporaryFile() as out:
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.AsyncioDebug", path,
                        out.name], check=True)
        data = open(out.name, "rb").read()
    assert len(data) == 104, (path, len(data))
    return data


def main(outdir, corpus, elf314, elf315):
    os.makedirs(outdir, exist_ok=True)
    for name, elf in (("v3_14", elf314), ("v3_15", elf315)):
        runtime = open(os.path.join(corpus, name + "_debug"), "rb").read()[2:]
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(runtime + section(elf))


if __name__ == "__main__":
    main(*sys.argv[1:])
