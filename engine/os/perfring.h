/* What the perf_event users of the engine (sampler_perf.c, memprobe.c, objsrc.c) share: opening
 * events, one mmap'd ring buffer per online CPU, framing the records in it, and reading the
 * sample fields they have in common. Not a policy: which events, which threads, what a record
 * means stay with the callers. x86-64 user registers only. */
#ifndef PERFRING_H
#define PERFRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <asm/perf_regs.h>
#include <linux/perf_event.h>

#define PERFRING_NREGS 17 /* libunwind's x86-64 numbering: RAX..R15, RIP */
/* The x86-64 user registers perfring_rd_regs reads: all but flags and segments. */
#define PERFRING_REGS_MASK                                                                         \
    ((1ull << PERF_REG_X86_AX) | (1ull << PERF_REG_X86_BX) | (1ull << PERF_REG_X86_CX) |           \
     (1ull << PERF_REG_X86_DX) | (1ull << PERF_REG_X86_SI) | (1ull << PERF_REG_X86_DI) |           \
     (1ull << PERF_REG_X86_BP) | (1ull << PERF_REG_X86_SP) | (1ull << PERF_REG_X86_IP) |           \
     (1ull << PERF_REG_X86_R8) | (1ull << PERF_REG_X86_R9) | (1ull << PERF_REG_X86_R10) |          \
     (1ull << PERF_REG_X86_R11) | (1ull << PERF_REG_X86_R12) | (1ull << PERF_REG_X86_R13) |        \
     (1ull << PERF_REG_X86_R14) | (1ull << PERF_REG_X86_R15))

struct perfring {
    int fd; /* the event that owns the mapping; -1: not mapped */
    struct perf_event_mmap_page *meta;
    unsigned char *data;
    uint64_t size; /* data bytes, a power of two */
    size_t map_len;
    uint64_t head, tail; /* of the current round (perfring_begin) */
};

/* One ring per online CPU. */
struct perfring_cpus {
    int *cpus; /* the CPUs' numbers */
    size_t n;
    struct perfring *rings; /* rings[i] is CPU cpus[i]'s */
    unsigned char *copy;    /* a record that wraps a ring's end is copied here */
};

/* An event writing into the rings, found again by the id its samples carry
 * (PERF_SAMPLE_IDENTIFIER). */
struct perfring_ev {
    uint64_t id;
    int fd;
    uint32_t chain; /* index in perfring_evs.chains */
    uint32_t tag;   /* the caller's: what the event is for */
    bool hup;       /* the caller's: no longer polled */
};

/* The events opened for one thread and their inherited copies. */
struct perfring_chain {
    pid_t tid; /* the thread they were opened for */
    bool disabled;
};

struct perfring_evs {
    struct perfring_ev *v; /* ascending id */
    size_t n, cap;
    struct perfring_chain *chains;
    size_t nchains, chains_cap;
};

/* A bounded reader of a record's fields. */
struct perfring_rd {
    const unsigned char *p;
    size_t left;
};

/* perf_event_open(a, pid, cpu, no group, close-on-exec). */
int perfring_event_open(struct perf_event_attr *a, pid_t pid, int cpu, int *ret_fd);
/* The same with a->inherit_thread = *inherit_thread; a kernel that does not know the flag (before
 * 5.13) refuses it with EINVAL: then *inherit_thread becomes false for good, and forked
 * children's copies are the caller's to drop (their pid is not the target's). */
int perfring_event_open_inherit(struct perf_event_attr *a, pid_t pid, int cpu, bool *inherit_thread,
                                int *ret_fd);

/* Maps pages of data (a power of two) plus the control page of fd into rg, which then owns fd.
 * -EPERM or -ENOMEM: the mlock allowance refused the size (see perfring_shrink); fd stays the
 * caller's on any failure. */
int perfring_map(struct perfring *rg, int fd, size_t pages);
/* Whether a mapping refused with r is worth trying again with half the pages, no fewer than
 * floor; if so, *pages is halved. */
bool perfring_shrink(int r, size_t *pages, size_t floor);

/* Starts a round: the records the kernel has committed so far. */
void perfring_begin(struct perfring *rg);
/* The header of the record at the tail: 0; -ENODATA when the round has no more; -EBADMSG when
 * the header cannot be framed, and then the rest of the round is dropped (one loss). */
int perfring_peek(struct perfring *rg, struct perf_event_header *ret);
/* n bytes at off into the record at the tail, across the ring's end; off + n within its size. */
void perfring_read(const struct perfring *rg, size_t off, void *dst, size_t n);
/* The record at the tail, of the size peeked, in one piece: in the ring, or copied into copy. */
const unsigned char *perfring_record(const struct perfring *rg, size_t size, unsigned char *copy);
/* Frees the record at the tail, of the size peeked, for the kernel to write over. */
void perfring_consume(struct perfring *rg, size_t size);

/* One pass over pid's threads: open(userdata, tid) for each that covered(userdata, tid) says has
 * no events yet; a thread that exits meanwhile (-ESRCH) is skipped. *ret_new: how many were
 * opened. Stops at open's first other error. */
int perfring_scan_threads(pid_t pid, bool (*covered)(void *userdata, pid_t tid),
                          int (*open)(void *userdata, pid_t tid), void *userdata, size_t *ret_new);
/* Opening races with the threads the target starts meanwhile: scan(userdata, &n), one pass
 * opening n new threads, is repeated until a pass opens none, at most passes times; threads
 * started later are the caller's rescans'. -ESRCH when no pass opened any thread; else scan's
 * first error, or 0. */
int perfring_scan_settle(int (*scan)(void *userdata, size_t *ret_new), void *userdata, int passes);

/* Reads the online CPUs and allocates a ring (not mapped) for each. c zeroed before. */
int perfring_cpus_init(struct perfring_cpus *c);
/* Unmaps every ring and closes the events that own them. Accepts a zeroed c. */
void perfring_cpus_destroy(struct perfring_cpus *c);
/* Whether fd owns a ring's mapping (and so is closed by perfring_cpus_destroy). */
bool perfring_cpus_owns(const struct perfring_cpus *c, int fd);
/* Hands every record of every ring, CPU by CPU, to fn (ci: the ring's index), freeing each as
 * it goes; a record fn fails on is freed all the same and its error returned. Unframeable data
 * count in *lost. */
int perfring_cpus_drain(struct perfring_cpus *c,
                        int (*fn)(void *arg, size_t ci, const unsigned char *rec, size_t size),
                        void *arg, uint64_t *lost);

int perfring_evs_add(struct perfring_evs *e, uint64_t id, int fd, uint32_t chain, uint32_t tag);
/* The event of id; NULL when it is not ours. */
struct perfring_ev *perfring_evs_find(struct perfring_evs *e, uint64_t id);
/* Room for one more chain, which will be chains[nchains]. */
int perfring_evs_chain_reserve(struct perfring_evs *e);
/* Marks the chain disabled and stops its events (the kernel stops their copies with them). */
void perfring_evs_chain_disable(struct perfring_evs *e, uint32_t chain);
/* Frees the tables; the events' fds stay the caller's to close. Accepts a zeroed e. */
void perfring_evs_destroy(struct perfring_evs *e);

/* A reader of the fields after the header of a record of size bytes. */
void perfring_rd_init(struct perfring_rd *d, const unsigned char *rec, size_t size);
bool perfring_rd_u64(struct perfring_rd *d, uint64_t *v);
bool perfring_rd_u32(struct perfring_rd *d, uint32_t *v);
bool perfring_rd_bytes(struct perfring_rd *d, size_t n, const unsigned char **v);
/* The PERF_SAMPLE_REGS_USER registers of PERFRING_REGS_MASK (after the abi word), into
 * libunwind's numbering. */
bool perfring_rd_regs(struct perfring_rd *d, uint64_t regs[PERFRING_NREGS]);
/* A PERF_SAMPLE_STACK_USER field: the copied stack (NULL when empty) and its dynamic size. */
bool perfring_rd_stack(struct perfring_rd *d, const unsigned char **ret_stack, size_t *ret_len);
/* How many records a PERF_RECORD_LOST says were lost; 1 when it is malformed. */
uint64_t perfring_lost(const unsigned char *rec, size_t size);

#endif
