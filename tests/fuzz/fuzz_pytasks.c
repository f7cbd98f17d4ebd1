/* libFuzzer target over the asyncio task reader (engine/python/pytasks.c), fed arbitrary memory
 * as fuzz_pyframes feeds the frame walker: one input is a memory image mapped at BASE that holds
 * a 3.14-or-later _PyRuntime (its _Py_DebugOffsets first) at its start and the target's
 * _Py_AsyncioModuleDebugOffsets in its last 104 bytes. Every read outside the image fails as an
 * unmapped page would. Checks: no crash, no read outside the image, every task within the
 * limits pytasks.h promises. Seeds (tests/fuzz/corpus/pytasks/, gen_pytasks.py): the 3.14 and
 * 3.15 runtimes of fuzz_pyframes' seeds with the offsets of real builds' .AsyncioDebug. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "python/pydebug.h"
#include "python/pytasks.h"
#include "python/pywalk.h"
#include "fuzzcheck.h"

#define BASE 0x100000ull
#define CODE_TYPE 0xc0de0000ull /* addresses of the type objects, as the seeds write them */
#define STR_TYPE 0x57200000ull
#define BYTES_TYPE 0xb7e50000ull
#define DICT_TYPE 0xd1c70000ull
#define ASYNCIO_DEBUG_BYTES 104 /* _Py_AsyncioModuleDebugOffsets of 3.14 and 3.15 */

struct image {
    const uint8_t *b;
    size_t n;
};

static int image_read(void *ctx, uint64_t addr, void *buf, size_t len)
{
    const struct image *im = ctx;

    CHECK(addr != 0 && addr + len >= addr, "reader read at %#llx+%zu", (unsigned long long)addr,
          len);
    if (addr < BASE || addr - BASE > im->n || len > im->n - (addr - BASE))
        return -EFAULT;
    memcpy(buf, im->b + (addr - BASE), len);
    return 0;
}

static void check_task(const struct pytasks_task *t)
{
    CHECK(memchr(t->name, '\0', sizeof(t->name)) != NULL, "name not terminated");
    CHECK(t->repr ? strlen(t->repr) < PYTASKS_REPR_MAX : t->truncated, "repr missing or too long");
    CHECK(t->state <= PYTASKS_FINISHED, "state %d", (int)t->state);
    CHECK(t->nstack <= PYTASKS_MAX_DEPTH, "%zu coroutines", t->nstack);
    CHECK(t->nawaiters <= PYTASKS_MAX_AWAITERS, "%zu awaiters", t->nawaiters);
    for (size_t j = 0; j < t->nstack; j++) {
        const struct pyframes_frame *f = &t->stack[j];

        CHECK(f->filename && f->funcname, "coroutine without names");
        CHECK(strlen(f->filename) < PYFRAMES_STR_MAX && strlen(f->funcname) < PYFRAMES_STR_MAX,
              "name too long");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct image im = {data, size};
    struct pytasks_task *tasks;
    struct pylayout l;
    struct error err = {0};
    struct pywalk *w;
    size_t n;

    if (size < ASYNCIO_DEBUG_BYTES || pydebug_layout(data, size, &l, &err) < 0)
        return 0;
    struct pywalk_addrs a = {BASE, CODE_TYPE, STR_TYPE, BYTES_TYPE, DICT_TYPE};
    struct pywalk_reader r = {image_read, &im};
    if (pywalk_new(&l, &a, &r, &w) < 0)
        return 0;
    int e = pytasks_walk(w, BASE + size - ASYNCIO_DEBUG_BYTES, &tasks, &n, &err);
    if (e == 0) {
        CHECK(n <= PYTASKS_MAX_TASKS, "%zu tasks", n);
        for (size_t i = 0; i < n; i++)
            check_task(&tasks[i]);
        pytasks_free(tasks, n);
    } else {
        CHECK(e < 0 && e == err.code, "error %d, reason's %d", e, err.code);
    }
    pywalk_free(w);
    return 0;
}
