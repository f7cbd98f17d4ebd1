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

#endif
