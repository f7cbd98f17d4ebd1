/* libFuzzer target over the Python frame walker and the location table decoder, fed arbitrary
 * memory: one input is a layout selector byte, a thread id byte and a memory image mapped at
 * BASE, which holds _PyRuntime at its start (and, for the debug-offsets layout, the
 * _Py_DebugOffsets that begin it). The walker reads only that image, through its reader
 * interface; every read outside it fails as an unmapped page would. Checks: no crash, no read
 * outside the image, every result within the limits pyframes.h promises. The same image is
 * decoded as a location table. Not a test of meaning: no frame here is expected to be right.
 * Thread names are looked for too (sys.modules and dicts from the image). Seeds
 * (tests/fuzz/corpus/pyframes/) are small fake 3.11, 3.12, 3.13, 3.14 and 3.15 runtimes (the
 * last three with the _Py_DebugOffsets of real builds) with one thread, a shim frame, one Python
 * frame, its code object, names and line table. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "python/pydebug.h"
#include "python/pylayout.h"
#include "python/pyline.h"
#include "python/pywalk.h"
#include "fuzzcheck.h"

#define BASE 0x100000ull
#define CODE_TYPE 0xc0de0000ull /* addresses of the type objects, as the seeds write them */
#define STR_TYPE 0x57200000ull
#define BYTES_TYPE 0xb7e50000ull
#define DICT_TYPE 0xd1c70000ull
#define HEADER 2 /* layout selector, thread id */

struct image {
    const uint8_t *b;
    size_t n;
};

static int image_read(void *ctx, uint64_t addr, void *buf, size_t len)
{
    const struct image *im = ctx;

    CHECK(addr != 0 && addr + len >= addr, "walker read at %#llx+%zu", (unsigned long long)addr,
          len);
    if (addr < BASE || addr - BASE > im->n || len > im->n - (addr - BASE))
        return -EFAULT;
    memcpy(buf, im->b + (addr - BASE), len);
    return 0;
}

static void check_thread(const struct pyframes_thread *t)
{
    CHECK(t->tid > 0, "tid %d", t->tid);
    CHECK(t->nframes <= PYFRAMES_MAX_FRAMES, "%zu frames", t->nframes);
    for (size_t j = 0; j < t->nframes; j++) {
        const struct pyframes_frame *f = &t->frames[j];
        CHECK(f->filename && f->funcname, "frame without names");
        CHECK(strlen(f->filename) < PYFRAMES_STR_MAX && strlen(f->funcname) < PYFRAMES_STR_MAX,
              "name too long");
        CHECK(f->line >= 0 && f->firstlineno >= 0, "line %d, first %d", f->line, f->firstlineno);
    }
}

/* sys.remote_exec's fields: the agent writes into the target where they point, so each must lie
 * inside the struct the same bytes size, whatever the bytes. */
static void check_remote(const struct image *im)
{
    struct pydebug_remote d;
    struct error err = {0};

    if (pydebug_remote(im->b, im->n, &d, &err) < 0) {
        CHECK(err.code == -EOPNOTSUPP && err.reason[0], "error %d without a reason", err.code);
        return;
    }
    CHECK(d.script_path_size >= PYDEBUG_SCRIPT_PATH_MIN &&
              d.script_path_size <= PYDEBUG_SCRIPT_PATH_MAX,
          "script path size %u", d.script_path_size);
    CHECK(d.ts_eval_breaker <= PYLAYOUT_FIELD_MAX && d.is_enabled <= PYLAYOUT_FIELD_MAX &&
              d.is_threads_main <= PYLAYOUT_FIELD_MAX &&
              (uint64_t)d.ts_script_path + d.script_path_size <= PYLAYOUT_FIELD_MAX &&
              d.ts_pending <= PYLAYOUT_FIELD_MAX,
          "a field past any struct: breaker %u pending %u path %u+%u enabled %u main %u",
          d.ts_eval_breaker, d.ts_pending, d.ts_script_path, d.script_path_size, d.is_enabled,
          d.is_threads_main);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct image im = {data + HEADER, size > HEADER ? size - HEADER : 0};
    struct pylayout l;
    struct error err = {0};
    struct pywalk *w;
    int line;

    if (size < HEADER)
        return 0;
    if (pyline_addr2line(im.b, im.n, 1, data[1], &line) == 0)
        CHECK(line >= 0, "line %d", line);
    switch (data[0] % 3) {
    case 0:
    case 1:
        CHECK(pylayout_known(11 + data[0] % 3, &l) == 0, "no table");
        CHECK(pylayout_check(&l, &err) == 0, "table refused: %s", err.reason);
        break;
    default:
        check_remote(&im);
        if (pydebug_layout(im.b, im.n, &l, &err) < 0) {
            CHECK(err.code == -EOPNOTSUPP && err.reason[0], "error %d without a reason", err.code);
            return 0;
        }
    }
    struct pywalk_addrs a = {BASE, CODE_TYPE, STR_TYPE, BYTES_TYPE, DICT_TYPE};
    struct pywalk_reader r = {image_read, &im};
    if (pywalk_new(&l, &a, &r, &w) < 0)
        return 0;
    if (data[1]) {
        struct pyframes_thread t;
        if (pywalk_thread(w, data[1], &t) == 0) {
            CHECK(t.tid == data[1], "asked for %d, got %d", data[1], t.tid);
            check_thread(&t);
            pyframes_thread_clear(&t);
        }
    } else {
        struct pyframes_thread *ts;
        size_t n;
        if (pywalk_threads(w, &ts, &n) == 0) {
            CHECK(n <= PYFRAMES_MAX_THREADS, "%zu threads", n);
            for (size_t i = 0; i < n; i++)
                check_thread(&ts[i]);
            pyframes_threads_free(ts, n);
        }
    }
    pywalk_free(w);
    return 0;
}
