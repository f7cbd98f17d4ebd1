/* Sites, limits and name cleaning shared by the hpy and massif writers (see heap.h). Both files
 * are line formats read by other people's parsers, so every name is cleaned to one line of valid
 * UTF-8 and cut to a bounded length here, once, before either writes it. */
#include <errno.h>
#include <string.h>
#include "formats/heap.h"

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when it is not one. Overlong forms,
 * surrogates and code points beyond U+10FFFF are invalid, as Python's decoder says. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n, i;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

void heap_put_clean(char *dst, size_t *len, const char *src, bool no_hash)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t out = 0, n;

    while (*s) {
        n = utf8_len(s);
        if (out + (n ? n : 1) > HEAP_NAME_MAX) {
            memcpy(dst + *len + out, HEAP_ELLIPSIS, sizeof(HEAP_ELLIPSIS) - 1);
            out += sizeof(HEAP_ELLIPSIS) - 1;
            break;
        }
        if (!n || (n == 1 && (*s < 0x20 || *s == 0x7f || (no_hash && *s == '#')))) {
            dst[*len + out++] = '?';
            s++;
            continue;
        }
        memcpy(dst + *len + out, s, n);
        out += n;
        s += n;
    }
    *len += out;
    dst[*len] = '\0';
}

const char *heap_base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

int heap_check_sites(const struct heap_site *sites, size_t nsites, struct error *err)
{
    size_t i;

    if (nsites > HEAP_MAX_SITES)
        return error_set(err, -E2BIG, "%zu allocation sites, more than the %d a file may hold",
                         nsites, HEAP_MAX_SITES);
    if (nsites && !sites)
        return error_set(err, -EINVAL, NULL);
    for (i = 0; i < nsites; i++)
        if (sites[i].nframes && !sites[i].frames)
            return error_set(err, -EINVAL, NULL);
    return 0;
}
