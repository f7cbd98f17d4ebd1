/* The engine's unwinder on a live target, timed sample by sample for bench/unwind_cost.py:
 * perf_event samples at FREQ Hz for SECONDS, each unwound by stacks_unwind_regs and timed alone
 * on this thread's CPU clock (time the machine gave to others is not the unwinder's), then a
 * thread dump twice on a new unwinder (cold: files, tables and symbols loaded; warm: cached).
 * Prints one JSON object. Usage: unwind_cost PID SECONDS FREQ. Not a test: it judges nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cpu/sampler.h"
#include "unwind/stacks.h"

#define MAX_SAMPLES (1u << 20)

struct run {
    struct stacks *s;
    double *cost_us;
    size_t n, frames, scanned, truncated;
    double overhead_us;
    struct stacks_frame out[STACKS_MAX_FRAMES];
};

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_sample(const struct sampler_sample *smp, void *userdata)
{
    struct run *r = userdata;
    size_t n = 0;
    int truncated = 0;
    double t0 = cpu_us();
    stacks_unwind_regs(r->s, smp->regs, smp->stack_addr, smp->stack, smp->stack_len, r->out,
                       STACKS_MAX_FRAMES, &n, &truncated);
    double c = cpu_us() - t0 - r->overhead_us;
    if (r->n < MAX_SAMPLES)
        r->cost_us[r->n++] = c > 0 ? c : 0;
    r->frames += n;
    r->truncated += truncated != 0;
    for (size_t i = 0; i < n; i++)
        r->scanned += r->out[i].scanned;
    return 0;
}

static void on_maps(void *userdata)
{
    stacks_maps_changed(((struct run *)userdata)->s);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The clock read itself, taken off each sample's cost: the median of empty pairs. */
static double clock_overhead(void)
{
    double d[101];
    for (int i = 0; i < 101; i++) {
        double t0 = cpu_us();
        d[i] = cpu_us() - t0;
    }
    qsort(d, 101, sizeof(d[0]), cmp_double);
    return d[50];
}

static double dump_ms(struct stacks *s)
{
    struct stacks_dump *d = NULL;
    double t0 = cpu_us();
    if (stacks_dump_threads(s, NULL, &d, NULL) < 0)
        return -1;
    double ms = (cpu_us() - t0) / 1e3;
    stacks_dump_free(d);
    return ms;
}

int main(int argc, char **argv)
{
    struct sampler *smp = NULL;
    struct sampler_callbacks cb = {.sample = on_sample, .maps_changed = on_maps};
    struct run r = {0};
    struct stacks *fresh = NULL;
    struct error e;

    if (argc != 4)
        return 2;
    pid_t pid = (pid_t)strtol(argv[1], NULL, 10);
    double seconds = strtod(argv[2], NULL);
    unsigned freq = (unsigned)strtoul(argv[3], NULL, 10);
    r.cost_us = calloc(MAX_SAMPLES, sizeof(*r.cost_us));
    if (!r.cost_us || stacks_new(pid, &r.s) < 0 || stacks_new(pid, &fresh) < 0)
        return 1;
    r.overhead_us = clock_overhead();
    double cold_dump = dump_ms(fresh), warm_dump = dump_ms(fresh);
    if (sampler_open(pid, freq, 0, NULL, &smp, &e) < 0) {
        fprintf(stderr, "sampler: %s\n", e.reason);
        return 1;
    }
    double end = mono_s() + seconds;
    while (mono_s() < end)
        if (sampler_poll(smp, 100, &cb, &r) < 0)
            break;
    sampler_close(smp);
    if (r.n < 2)
        return 1;
    double first = r.cost_us[0], sum = 0;
    qsort(r.cost_us + 1, r.n - 1, sizeof(double), cmp_double);
    for (size_t i = 1; i < r.n; i++)
        sum += r.cost_us[i];
    size_t w = r.n - 1;
    printf("{\"samples\": %zu, \"frames_per_sample\": %.1f, \"scanned_frames\": %zu, "
           "\"truncated\": %zu, \"first_us\": %.1f, \"warm_median_us\": %.2f, "
           "\"warm_p99_us\": %.2f, \"warm_mean_us\": %.2f, \"cold_dump_ms\": %.1f, "
           "\"warm_dump_ms\": %.2f}\n",
           r.n, (double)r.frames / (double)r.n, r.scanned, r.truncated, first, r.cost_us[1 + w / 2],
           r.cost_us[1 + (w * 99) / 100 < r.n ? 1 + (w * 99) / 100 : r.n - 1], sum / (double)w,
           cold_dump, warm_dump);
    stacks_free(fresh);
    stacks_free(r.s);
    free(r.cost_us);
    return 0;
}
