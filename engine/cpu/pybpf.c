/* The in-kernel Python frame copier (see pybpf.h). The program, per sample:
 *   tstate = tstates[current tid]           (none: the sample goes out without Python frames)
 *   frame  = tstate->current_frame          (3.11, 3.12: tstate->cframe->current_frame)
 *   up to PYBPF_FRAMES_MAX times: copy frame, its code, instr, owner (and 3.11's is_entry),
 *                                 frame = frame->previous
 *   write the record with bpf_perf_event_output into this CPU's output event
 * and returns 1, so the sample itself is written right after the record. A cpu-clock sample and
 * the program run in the same hrtimer interrupt of the sampled thread's CPU, so the record and
 * its sample are neighbours in that CPU's ring: the reader pairs them by ring and tid. The
 * layout's offsets are immediates: one program per target, assembled at load. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include "cpu/pybpf.h"
#include "os/perfring.h"

#define INSNS_MAX 4096
#define LOG_BYTES 65536
#define FRAME_SPAN_MAX 128 /* bytes of a _PyInterpreterFrame read at once (on the BPF stack) */
#define RECORD_HEADER 16
#define RECORD_BYTES sizeof(struct pybpf_record)
/* The BPF stack: the tid key at -4, the array key at -8, a pointer read at -16, a frame below. */
#define FP_TID (-4)
#define FP_KEY (-8)
#define FP_PTR (-16)
#define FP_FRAME (-16 - FRAME_SPAN_MAX)

_Static_assert(sizeof(struct pybpf_frame) == 32, "record layout");
_Static_assert(offsetof(struct pybpf_record, frames) == RECORD_HEADER, "record layout");

struct pybpf {
    int prog, tstates, scratch, out;
    int *outfds; /* by CPU number; -1: none */
    size_t ncpus;
};

struct asm_ {
    struct bpf_insn v[INSNS_MAX];
    size_t n;
    bool full;
};

static long sys_bpf(int cmd, union bpf_attr *a)
{
    return syscall(SYS_bpf, cmd, a, sizeof(*a));
}

static void emit(struct asm_ *a, uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
    if (a->n == INSNS_MAX) {
        a->full = true;
        return;
    }
    a->v[a->n++] =
        (struct bpf_insn){.code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm};
}

static void mov_reg(struct asm_ *a, uint8_t dst, uint8_t src)
{
    emit(a, BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0);
}

static void mov_imm(struct asm_ *a, uint8_t dst, int32_t imm)
{
    emit(a, BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm);
}

static void alu_imm(struct asm_ *a, uint8_t op, uint8_t dst, int32_t imm)
{
    emit(a, BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
}

static void ld_imm64(struct asm_ *a, uint8_t dst, uint8_t src, uint64_t imm)
{
    emit(a, BPF_LD | BPF_DW | BPF_IMM, dst, src, 0, (int32_t)(uint32_t)imm);
    emit(a, 0, 0, 0, 0, (int32_t)(uint32_t)(imm >> 32));
}

static void ldx(struct asm_ *a, uint8_t size, uint8_t dst, uint8_t src, int16_t off)
{
    emit(a, BPF_LDX | size | BPF_MEM, dst, src, off, 0);
}

static void stx(struct asm_ *a, uint8_t size, uint8_t dst, uint8_t src, int16_t off)
{
    emit(a, BPF_STX | size | BPF_MEM, dst, src, off, 0);
}

static void call(struct asm_ *a, int32_t helper)
{
    emit(a, BPF_JMP | BPF_CALL, 0, 0, 0, helper);
}

/* A forward jump whose target is set later with land(). */
static size_t jump(struct asm_ *a, uint8_t op, uint8_t reg, int32_t imm)
{
    emit(a, BPF_JMP | op | (op == BPF_JA ? 0 : BPF_K), reg, 0, 0, imm);
    return a->n - 1;
}

static void land(struct asm_ *a, size_t at)
{
    if (at < a->n)
        a->v[at].off = (int16_t)(a->n - at - 1);
}

/* r1 = FP + fp_off, r2 = len, r3 = r_addr + add; bpf_probe_read_user; on failure to fail. */
static size_t read_user(struct asm_ *a, int16_t fp_off, int32_t len, uint8_t r_addr, int32_t add)
{
    mov_reg(a, BPF_REG_1, BPF_REG_10);
    alu_imm(a, BPF_ADD, BPF_REG_1, fp_off);
    mov_imm(a, BPF_REG_2, len);
    mov_reg(a, BPF_REG_3, r_addr);
    if (add)
        alu_imm(a, BPF_ADD, BPF_REG_3, add);
    call(a, BPF_FUNC_probe_read_user);
    return jump(a, BPF_JNE, BPF_REG_0, 0);
}

static uint32_t frame_span(const struct pylayout *l)
{
    uint32_t span = l->if_owner + 1;
    uint32_t ends[] = {l->if_code + 8, l->if_previous + 8, l->if_instr + 8,
                       l->has_is_entry ? l->if_is_entry + 1 : 0};
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++)
        if (ends[i] > span)
            span = ends[i];
    return span;
}

/* The program described at the top, in a. */
static int assemble(struct asm_ *a, const struct pylayout *l, int tstates, int scratch, int out)
{
    size_t keep[4], trunc[PYBPF_FRAMES_MAX + 2], done[PYBPF_FRAMES_MAX + 1];
    size_t ntrunc = 0, ndone = 0;
    uint32_t span = frame_span(l);
    if (span > FRAME_SPAN_MAX || l->ts_frame > INT16_MAX || l->cf_current_frame > INT16_MAX)
        return -EINVAL;

    mov_reg(a, BPF_REG_6, BPF_REG_1); /* ctx */
    call(a, BPF_FUNC_get_current_pid_tgid);
    stx(a, BPF_W, BPF_REG_10, BPF_REG_0, FP_TID);
    ld_imm64(a, BPF_REG_1, BPF_PSEUDO_MAP_FD, (uint64_t)tstates);
    mov_reg(a, BPF_REG_2, BPF_REG_10);
    alu_imm(a, BPF_ADD, BPF_REG_2, FP_TID);
    call(a, BPF_FUNC_map_lookup_elem);
    keep[0] = jump(a, BPF_JEQ, BPF_REG_0, 0);
    ldx(a, BPF_DW, BPF_REG_7, BPF_REG_0, 0); /* tstate */
    emit(a, BPF_ST | BPF_W | BPF_MEM, BPF_REG_10, 0, FP_KEY, 0);
    ld_imm64(a, BPF_REG_1, BPF_PSEUDO_MAP_FD, (uint64_t)scratch);
    mov_reg(a, BPF_REG_2, BPF_REG_10);
    alu_imm(a, BPF_ADD, BPF_REG_2, FP_KEY);
    call(a, BPF_FUNC_map_lookup_elem);
    keep[1] = jump(a, BPF_JEQ, BPF_REG_0, 0);
    mov_reg(a, BPF_REG_8, BPF_REG_0); /* the record */
    ldx(a, BPF_W, BPF_REG_1, BPF_REG_10, FP_TID);
    stx(a, BPF_W, BPF_REG_8, BPF_REG_1, 0);
    keep[2] = read_user(a, FP_PTR, 8, BPF_REG_7, (int32_t)l->ts_frame);
    ldx(a, BPF_DW, BPF_REG_9, BPF_REG_10, FP_PTR);
    if (l->ts_cframe) {
        done[ndone++] = jump(a, BPF_JEQ, BPF_REG_9, 0);
        keep[3] = read_user(a, FP_PTR, 8, BPF_REG_9, (int32_t)l->cf_current_frame);
        ldx(a, BPF_DW, BPF_REG_9, BPF_REG_10, FP_PTR);
    } else {
        keep[3] = SIZE_MAX;
    }
    /* r7 counts the frames copied from here on. Unrolled: the verifier sees each path's count
     * as a constant, which bounds the record size below. */
    mov_imm(a, BPF_REG_7, 0);
    for (int i = 0; i < PYBPF_FRAMES_MAX; i++) {
        int16_t at = (int16_t)(RECORD_HEADER + i * (int)sizeof(struct pybpf_frame));
        done[ndone++] = jump(a, BPF_JEQ, BPF_REG_9, 0);
        trunc[ntrunc++] = read_user(a, FP_FRAME, (int32_t)span, BPF_REG_9, 0);
        ldx(a, BPF_DW, BPF_REG_1, BPF_REG_10, (int16_t)(FP_FRAME + (int)l->if_code));
        ld_imm64(a, BPF_REG_2, 0, l->code_mask);
        emit(a, BPF_ALU64 | BPF_AND | BPF_X, BPF_REG_1, BPF_REG_2, 0, 0);
        stx(a, BPF_DW, BPF_REG_8, BPF_REG_1, at);
        ldx(a, BPF_DW, BPF_REG_1, BPF_REG_10, (int16_t)(FP_FRAME + (int)l->if_instr));
        stx(a, BPF_DW, BPF_REG_8, BPF_REG_1, (int16_t)(at + 8));
        stx(a, BPF_DW, BPF_REG_8, BPF_REG_9, (int16_t)(at + 16));
        ldx(a, BPF_B, BPF_REG_1, BPF_REG_10, (int16_t)(FP_FRAME + (int)l->if_owner));
        stx(a, BPF_B, BPF_REG_8, BPF_REG_1, (int16_t)(at + 24));
        if (l->has_is_entry) {
            ldx(a, BPF_B, BPF_REG_1, BPF_REG_10, (int16_t)(FP_FRAME + (int)l->if_is_entry));
            stx(a, BPF_B, BPF_REG_8, BPF_REG_1, (int16_t)(at + 25));
        }
        ldx(a, BPF_DW, BPF_REG_9, BPF_REG_10, (int16_t)(FP_FRAME + (int)l->if_previous));
        alu_imm(a, BPF_ADD, BPF_REG_7, 1);
    }
    /* Past the last frame copied: truncated (r1 = 1), or at the chain's end (r1 = 0). */
    mov_imm(a, BPF_REG_1, 1);
    size_t to_out = jump(a, BPF_JA, 0, 0);
    for (size_t i = 0; i < ntrunc; i++)
        land(a, trunc[i]);
    mov_imm(a, BPF_REG_1, 1);
    size_t to_out2 = jump(a, BPF_JA, 0, 0);
    for (size_t i = 0; i < ndone; i++)
        land(a, done[i]);
    mov_imm(a, BPF_REG_1, 0);
    land(a, to_out);
    land(a, to_out2);
    stx(a, BPF_W, BPF_REG_8, BPF_REG_7, 4);
    stx(a, BPF_W, BPF_REG_8, BPF_REG_1, 8);
    mov_reg(a, BPF_REG_5, BPF_REG_7);
    alu_imm(a, BPF_MUL, BPF_REG_5, (int32_t)sizeof(struct pybpf_frame));
    alu_imm(a, BPF_ADD, BPF_REG_5, RECORD_HEADER);
    size_t too_big = jump(a, BPF_JGT, BPF_REG_5, (int32_t)RECORD_BYTES);
    mov_reg(a, BPF_REG_1, BPF_REG_6);
    ld_imm64(a, BPF_REG_2, BPF_PSEUDO_MAP_FD, (uint64_t)out);
    ld_imm64(a, BPF_REG_3, 0, BPF_F_CURRENT_CPU);
    mov_reg(a, BPF_REG_4, BPF_REG_8);
    call(a, BPF_FUNC_perf_event_output);
    land(a, too_big);
    for (size_t i = 0; i < 4; i++)
        if (keep[i] != SIZE_MAX)
            land(a, keep[i]);
    mov_imm(a, BPF_REG_0, 1); /* the sample goes out, with or without a record */
    emit(a, BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    return a->full ? -E2BIG : 0;
}

static int map_new(enum bpf_map_type type, uint32_t key, uint32_t value, uint32_t max)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = key;
    a.value_size = value;
    a.max_entries = max;
    int fd = (int)sys_bpf(BPF_MAP_CREATE, &a);
    return fd < 0 ? -errno : fd;
}

/* The verifier's last complaint: the log's last non-empty line. */
static void log_reason(char *log, struct error *err, int code)
{
    size_t n = strnlen(log, LOG_BYTES);
    while (n > 0 && (log[n - 1] == '\n' || log[n - 1] == ' '))
        log[--n] = '\0';
    const char *line = strrchr(log, '\n');
    error_set(err, code, "the kernel refused the Python frame reader (%s)",
              line     ? line + 1
              : log[0] ? log
                       : strerror(-code));
}

static int load(struct pybpf *b, const struct pylayout *l, struct error *err)
{
    struct asm_ *a = calloc(1, sizeof(*a));
    char *log = calloc(1, LOG_BYTES);
    union bpf_attr at;
    int r;
    if (!a || !log) {
        r = error_set(err, -ENOMEM, NULL);
        goto out;
    }
    r = assemble(a, l, b->tstates, b->scratch, b->out);
    if (r < 0) {
        error_set(err, r, "this Python's frame layout does not fit the in-kernel reader");
        goto out;
    }
    memset(&at, 0, sizeof(at));
    at.prog_type = BPF_PROG_TYPE_PERF_EVENT;
    at.insns = (uint64_t)(uintptr_t)a->v;
    at.insn_cnt = (uint32_t)a->n;
    /* bpf_probe_read_user is offered to GPL programs only. */
    at.license = (uint64_t)(uintptr_t) "GPL";
    b->prog = (int)sys_bpf(BPF_PROG_LOAD, &at);
    if (b->prog < 0 && errno != EPERM && errno != EACCES) {
        /* Again with the verifier's log, for its reason (a log too small for a program that
         * passes would fail the load by itself). */
        at.log_buf = (uint64_t)(uintptr_t)log;
        at.log_size = LOG_BYTES;
        at.log_level = 1;
        b->prog = (int)sys_bpf(BPF_PROG_LOAD, &at);
    }
    if (b->prog < 0) {
        r = -errno;
        if (r == -EPERM || r == -EACCES)
            error_set(err, r,
                      "loading a BPF program was refused (the agent lacks CAP_BPF, or bpf() is "
                      "filtered)");
        else
            log_reason(log, err, r);

        goto out;
    }
    r = 0;
out:
    free(a);
    free(log);
    return r;
}

int pybpf_new(const struct pylayout *l, struct pybpf **ret, struct error *err)
{
    int r;
    struct pybpf *b = calloc(1, sizeof(*b));
    error_clear(err);
    if (!b)
        return error_set(err, -ENOMEM, NULL);
    b->prog = b->tstates = b->scratch = b->out = -1;
    b->ncpus = (size_t)get_nprocs_conf();
    b->outfds = malloc(b->ncpus * sizeof(*b->outfds));
    if (!b->outfds) {
        r = error_set(err, -ENOMEM, NULL);
        goto out;
    }
    for (size_t i = 0; i < b->ncpus; i++)
        b->outfds[i] = -1;
    r = b->tstates = map_new(BPF_MAP_TYPE_HASH, 4, 8, PYBPF_THREADS_MAX);
    if (r >= 0)
        r = b->scratch = map_new(BPF_MAP_TYPE_PERCPU_ARRAY, 4, RECORD_BYTES, 1);
    if (r >= 0)
        r = b->out = map_new(BPF_MAP_TYPE_PERF_EVENT_ARRAY, 4, 4, (uint32_t)b->ncpus);
    if (r < 0) {
        if (r == -EPERM || r == -EACCES)
            error_set(
                err, r,
                "creating BPF maps was refused (the agent lacks CAP_BPF, or bpf() is filtered)");
        else
            error_set(err, r, "cannot create the BPF maps of the Python frame reader (%s)",
                      strerror(-r));
        goto out;
    }
    r = load(b, l, err);
out:
    if (r < 0) {
        pybpf_free(b);
        return r;
    }
    *ret = b;
    return 0;
}

void pybpf_free(struct pybpf *b)
{
    if (!b)
        return;
    for (size_t i = 0; b->outfds && i < b->ncpus; i++)
        if (b->outfds[i] >= 0)
            close(b->outfds[i]);
    free(b->outfds);
    int fds[] = {b->prog, b->tstates, b->scratch, b->out};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(b);
}

int pybpf_prog_fd(const struct pybpf *b)
{
    return b->prog;
}

int pybpf_output_open(struct pybpf *b, int cpu, int ring_fd, uint64_t *ret_id)
{
    struct perf_event_attr a;
    union bpf_attr u;
    uint32_t key = (uint32_t)cpu;
    int fd, r;
    if (cpu < 0 || (size_t)cpu >= b->ncpus)
        return -EINVAL;
    if (b->outfds[cpu] >= 0)
        return -EEXIST;
    memset(&a, 0, sizeof(a));
    a.size = sizeof(a);
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_BPF_OUTPUT;
    a.sample_period = 1;
    a.sample_type = PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_RAW;
    a.use_clockid = 1; /* as the ring's owner: the kernel refuses mixed clocks in one ring */
    a.clockid = CLOCK_MONOTONIC;
    r = perfring_event_open(&a, -1, cpu, &fd);
    if (r < 0)
        return r;
    if (ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT, ring_fd) < 0 ||
        ioctl(fd, PERF_EVENT_IOC_ID, ret_id) < 0)
        goto fail;
    memset(&u, 0, sizeof(u));
    u.map_fd = (uint32_t)b->out;
    u.key = (uint64_t)(uintptr_t)&key;
    u.value = (uint64_t)(uintptr_t)&fd;
    if (sys_bpf(BPF_MAP_UPDATE_ELEM, &u) < 0)
        goto fail;
    b->outfds[cpu] = fd;
    return 0;
fail:
    r = -errno;
    close(fd);
    return r;
}

int pybpf_set_thread(struct pybpf *b, pid_t tid, uint64_t tstate)
{
    union bpf_attr u;
    uint32_t key = (uint32_t)tid;
    memset(&u, 0, sizeof(u));
    u.map_fd = (uint32_t)b->tstates;
    u.key = (uint64_t)(uintptr_t)&key;
    u.value = (uint64_t)(uintptr_t)&tstate;
    if (sys_bpf(tstate ? BPF_MAP_UPDATE_ELEM : BPF_MAP_DELETE_ELEM, &u) < 0)
        return errno == ENOENT ? 0 : -errno;
    return 0;
}

int pybpf_parse(const unsigned char *raw, size_t raw_len, pid_t *ret_tid,
                struct pyframes_raw_frame *out, size_t *ret_n, bool *ret_truncated)
{
    struct pybpf_record h;
    if (raw_len < RECORD_HEADER)
        return -EBADMSG;
    memcpy(&h, raw, RECORD_HEADER);
    if (h.nframes > PYBPF_FRAMES_MAX ||
        raw_len < RECORD_HEADER + (size_t)h.nframes * sizeof(struct pybpf_frame))
        return -EBADMSG;
    for (size_t i = 0; i < h.nframes; i++) {
        struct pybpf_frame f;
        memcpy(&f, raw + RECORD_HEADER + i * sizeof(f), sizeof(f));
        out[i] = (struct pyframes_raw_frame){f.code, f.instr, f.addr, f.owner, f.is_entry != 0};
    }
    *ret_tid = (pid_t)h.tid;
    *ret_n = h.nframes;
    *ret_truncated = h.truncated != 0;
    return 0;
}
