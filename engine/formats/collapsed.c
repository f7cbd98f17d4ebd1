/* The profile as Brendan Gregg's collapsed stacks, the input of flamegraph.pl, inferno and
 * speedscope: one line per call tree path with samples ending there, "thread NAME;outermost;...;
 * innermost COUNT", COUNT in samples. Not a flame graph itself (flamegraph.c draws one). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "formats/callpaths.h"

/* A frame is text between ';' up to the line's last space: a ';' in a name would split it (it
 * becomes ':', as stackcollapse-perf.pl does) and a line break would end the line. Spaces are
 * fine: readers take the count after the last one. */
static void put_text(struct atomicfile *f, const char *s, size_t len)
{
    static const char special[] = ";\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"
                                  "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e"
                                  "\x1f\x7f";
    const char *end = s + len;

    while (s < end) {
        size_t plain = strcspn(s, special);
        if (plain > (size_t)(end - s))
            plain = (size_t)(end - s);
        atomicfile_write(f, s, plain);
        s += plain;
        if (s < end)
            atomicfile_putc(f, *s++ == ';' ? ':' : ' ');
    }
}

/* Where s ends in whitespace and a number ("worker 2", "x 1.5"): flamegraph.pl reads a stack
 * ending so as a differential profile's first count. The whitespace's offset, else len. */
static size_t count_like_tail(const char *s, size_t len)
{
    size_t i = len, digits;

    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
        i--;
    if (i > 0 && s[i - 1] == '.')
        i--;
    for (digits = 0; i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9'; digits++)
        i--;
    if (i == len || (s[i] == '.' && !digits) || i == 0)
        return len;
    return (unsigned char)s[i - 1] <= ' ' ? i - 1 : len;
}

/* The innermost frame, its count-like tail kept apart by '_' instead of the whitespace. */
static void put_innermost(struct atomicfile *f, const char *s)
{
    size_t len = strlen(s), k = count_like_tail(s, len);

    put_text(f, s, k);
    if (k < len) {
        atomicfile_putc(f, '_');
        put_text(f, s + k + 1, len - k - 1);
    }
}

int profile_write_collapsed(const struct profile *p, const char *path, struct error *err)
{
    struct callpaths c;
    struct atomicfile *f = NULL;
    uint32_t frames[CALLPATHS_MAX_FRAMES];
    size_t n, k;
    int r;

    error_clear(err);
    r = callpaths_init(&c, p);
    if (r < 0)
        return error_fill(err, r);
    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    for (n = 0; n < p->nnode; n++) {
        if (!c.self_samples[n])
            continue;
        k = callpaths_frames(&c, (uint32_t)n, frames);
        atomicfile_printf(f, "thread ");
        put_text(f, p->str[c.thread[n]], strlen(p->str[c.thread[n]]));
        while (k-- > 1) {
            atomicfile_putc(f, ';');
            put_text(f, c.label[frames[k]], strlen(c.label[frames[k]]));
        }
        atomicfile_putc(f, ';');
        put_innermost(f, c.label[frames[0]]);
        atomicfile_printf(f, " %" PRIu64 "\n", c.self_samples[n]);
    }
    r = atomicfile_commit(f);
    f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(f);
    callpaths_destroy(&c);
    return r;
}
