/* The frame walker: every thread state of every interpreter of one CPython runtime, and each
 * one's chain of _PyInterpreterFrames, with file, function and line of each frame. Reads memory
 * through a reader (process_vm_readv for a live target, a fake address space in the fuzzer) and
 * the offsets of a struct pylayout. Not a finder: the runtime and type addresses come from the
 * caller (pyframes.c), and thread ids are as the target sees them (its PID namespace's). */
#ifndef PYWALK_H
#define PYWALK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "python/pyframes.h"
#include "python/pylayout.h"

struct pywalk_reader {
    /* len bytes at addr into buf: 0, or a negative errno (-EFAULT for memory not mapped,
     * -ESRCH when the target is gone). addr is never 0 and addr + len never wraps. */
    int (*read)(void *ctx, uint64_t addr, void *buf, size_t len);
    void *ctx;
};

/* Addresses in the target: _PyRuntime, and the type objects the walker checks objects
 * against (PyCode_Type, PyUnicode_Type, PyBytes_Type, PyDict_Type; dict_type 0: no names). */
struct pywalk_addrs {
    uint64_t runtime, code_type, str_type, bytes_type, dict_type;
};

struct pywalk;

/* l must have passed pylayout_check; l, a and r are copied. */
int pywalk_new(const struct pylayout *l, const struct pywalk_addrs *a,
               const struct pywalk_reader *r, struct pywalk **ret);
void pywalk_free(struct pywalk *w);
/* One pass over every thread state, as pyframes_read describes, thread names included; tids
 * unmapped. -EFAULT (or the reader's error) when the runtime's interpreter list is unreadable. */
int pywalk_threads(struct pywalk *w, struct pyframes_thread **ret, size_t *ret_n);
/* The thread state whose native_thread_id is tid, without its name (a sampler's path: three
 * dict walks a sample would be too many); -ENOENT when none. */
int pywalk_thread(struct pywalk *w, pid_t tid, struct pyframes_thread *ret);

/* For other readers of the same runtime (pytasks.c): the layout and addresses w was made with,
 * and the reads the walker checks its own objects with. */
const struct pylayout *pywalk_layout(const struct pywalk *w);
const struct pywalk_addrs *pywalk_addrs(const struct pywalk *w);
/* len bytes at addr through the reader; -EFAULT for addr 0 or a range that wraps. */
int pywalk_read(const struct pywalk *w, uint64_t addr, void *buf, size_t len);
/* The str object at addr as UTF-8, cut at PYFRAMES_STR_MAX; free() it. -EBADMSG when it is not
 * an exact, compact str. */
int pywalk_str(const struct pywalk *w, uint64_t addr, char **ret);
/* The _PyInterpreterFrame at addr (a coroutine's gi_iframe, say) into f: 0, or 1 for a shim
 * frame or one that has not started (f untouched); -EBADMSG when it is not a frame. Code objects
 * read are cached until pywalk_end_pass. Free f's strings with pywalk_frame_clear. */
int pywalk_frame(struct pywalk *w, uint64_t addr, struct pyframes_frame *f);
void pywalk_frame_clear(struct pyframes_frame *f);
void pywalk_end_pass(struct pywalk *w);
/* Calls fn for every thread state of every interpreter (at most PYFRAMES_MAX_THREADS), with the
 * interpreter, the thread state and its native id (the target's), until fn returns non-zero
 * (returned). -EFAULT (or the reader's error) when the interpreter list is unreadable. */
int pywalk_each_thread(struct pywalk *w,
                       int (*fn)(void *ctx, uint64_t interp, uint64_t tstate, pid_t tid),
                       void *ctx);

/* A thread's frames from raw copies (pyframes_decode), tid left 0. Code objects met are kept
 * from one call to the next (checked as within a pass), until the cache fills. */
int pywalk_decode(struct pywalk *w, const struct pyframes_raw_frame *raw, size_t n,
                  struct pyframes_thread *ret);

#endif
