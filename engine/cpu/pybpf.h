/* The in-kernel half of sampling a CPython target: a BPF program that each of the sampler's
 * perf events runs at the moment it samples, copying the sampled thread's chain of
 * _PyInterpreterFrames (address, code object, instruction pointer, owner of each) into the same
 * CPU's ring just before the sample itself. So the native stack (the sample's register and stack
 * copy) and the Python stack describe one instant, with the target never stopped. The program
 * is assembled here with the layout's offsets as immediates (no compiler, no libbpf) and loaded
 * with bpf(2). Not a frame decoder: names and lines are pyframes_decode's, later, from the
 * addresses. Needs CAP_BPF and CAP_PERFMON (or root). */
#ifndef PYBPF_H
#define PYBPF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "python/pyframes.h"
#include "python/pylayout.h"

#define PYBPF_FRAMES_MAX 128 /* frames copied per sample (shim frames included) */
#define PYBPF_THREADS_MAX 4096

/* A record as the program writes it (the RAW part of a PERF_COUNT_SW_BPF_OUTPUT sample). */
struct pybpf_record {
    uint32_t tid;       /* the kernel's (our namespace's) id of the sampled thread */
    uint32_t nframes;   /* frames[] filled */
    uint32_t truncated; /* the chain went on past PYBPF_FRAMES_MAX, or a read failed */
    uint32_t pad;
    struct pybpf_frame {
        uint64_t code, instr; /* as in the frame: f_code/f_executable (masked), instr pointer */
        uint64_t addr;        /* of the frame itself */
        uint8_t owner, is_entry;
        uint8_t pad[6];
    } frames[PYBPF_FRAMES_MAX];
};

struct pybpf;

/* Assembles and loads the program for layout l. -EPERM/-EACCES when this process may not load
 * it, -EINVAL when the kernel's verifier refuses it (its first complaint in err). */
int pybpf_new(const struct pylayout *l, struct pybpf **ret, struct error *err);
void pybpf_free(struct pybpf *b);
/* The program's fd, for PERF_EVENT_IOC_SET_BPF on each sampling event. */
int pybpf_prog_fd(const struct pybpf *b);
/* Opens the output event of CPU cpu and sends its records into the ring owned by ring_fd (an
 * event on the same CPU, with CLOCK_MONOTONIC). *ret_id: the id its samples carry. */
int pybpf_output_open(struct pybpf *b, int cpu, int ring_fd, uint64_t *ret_id);
/* The thread tid's PyThreadState is at tstate (0: forget tid). */
int pybpf_set_thread(struct pybpf *b, pid_t tid, uint64_t tstate);
/* Checks a record of raw_len bytes and gives its frames as pyframes_decode takes them
 * (out has PYBPF_FRAMES_MAX entries). -EBADMSG when it does not hold together. */
int pybpf_parse(const unsigned char *raw, size_t raw_len, pid_t *ret_tid,
                struct pyframes_raw_frame *out, size_t *ret_n, bool *ret_truncated);

#endif
