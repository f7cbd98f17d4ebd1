/* Location table decoding (see pyline.h). Every byte read is checked against the table's
 * length: the table comes from a target's memory. */
#include <errno.h>
#include <limits.h>
#include "python/pyline.h"

/* Entry codes, bits 3-6 of an entry's first byte (_PyCodeLocationInfoKind,
 * Include/cpython/code.h; the table in InternalDocs/code_objects.md): */
#define LOC_ONE_LINE0 10    /* 10-12: line delta is code - 10, then two column bytes */
#define LOC_NO_COLUMNS 13   /* svarint line delta */
#define LOC_LONG 14         /* svarint line delta, then end line, column, end column varints */
#define LOC_NONE 15         /* no line */
#define VARINT_SHIFT_MAX 30 /* 6-bit chunks: more than 32 bits is not a line delta */

static int varint(const unsigned char *t, size_t n, size_t *i, uint32_t *ret)
{
    uint32_t v = 0;
    unsigned shift = 0;

    for (;;) {
        if (*i >= n || shift > VARINT_SHIFT_MAX)
            return -EBADMSG;
        unsigned char b = t[(*i)++];
        v |= (uint32_t)(b & 0x3f) << shift;
        shift += 6;
        if (!(b & 0x40))
            break;
    }
    *ret = v;
    return 0;
}

static int svarint(const unsigned char *t, size_t n, size_t *i, int32_t *ret)
{
    uint32_t u;
    int r = varint(t, n, i, &u);
    if (r == 0)
        *ret = (u & 1) ? -(int32_t)(u >> 1) : (int32_t)(u >> 1);
    return r;
}

int pyline_addr2line(const unsigned char *t, size_t n, int firstlineno, int64_t lasti, int *ret)
{
    int64_t addr = 0, line = firstlineno;
    size_t i = 0;

    if (lasti < 0)
        return -EBADMSG;
    while (i < n) {
        unsigned char b = t[i++];
        unsigned code = (b >> 3) & 15;
        int64_t units = (b & 7) + 1;
        int32_t d = 0;
        uint32_t skip;

        if (!(b & 0x80))
            return -EBADMSG;
        if (code == LOC_LONG) {
            if (svarint(t, n, &i, &d) || varint(t, n, &i, &skip) || varint(t, n, &i, &skip) ||
                varint(t, n, &i, &skip))
                return -EBADMSG;
        } else if (code == LOC_NO_COLUMNS) {
            if (svarint(t, n, &i, &d))
                return -EBADMSG;
        } else if (code >= LOC_ONE_LINE0 && code < LOC_NO_COLUMNS) {
            d = (int32_t)(code - LOC_ONE_LINE0);
            i += 2;
        } else if (code < LOC_ONE_LINE0) {
            i += 1; /* short form: one column byte */
        }
        if (i > n)
            return -EBADMSG;
        line += d; /* each entry moves it by less than 2^31: no int64 overflow */
        if (lasti < addr + units) {
            *ret = code == LOC_NONE || line <= 0 || line > INT_MAX ? 0 : (int)line;
            return 0;
        }
        addr += units;
    }
    return -EBADMSG;
}
