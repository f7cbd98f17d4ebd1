/* Sites, limits and name cleaning shared by the hpy and massif writers (see heap.h). Both files
 * are line formats read by other people's parsers, so every name is cleaned to one line of valid
 * UTF-8 and cut to a bounded length here, once, before either writes it. Allocation functions
 * are told by their names: no symbol table says which function wraps malloc. */
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include "formats/heap.h"

#define ID_MAX 128 /* bytes of a function's own identifier looked at */

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

/* A frame without a symbol: no name, or the name the unwinder gives a function of a stripped
 * module, "BASENAME+0xSTART". */
static bool unnamed(const struct stacks_frame *fr)
{
    const char *base, *p;
    size_t n;

    if (!fr->func || !*fr->func)
        return true;
    if (!fr->module)
        return false;
    base = heap_base_name(fr->module);
    n = strlen(base);
    if (strncmp(fr->func, base, n) || strncmp(fr->func + n, "+0x", 3))
        return false;
    for (p = fr->func + n + 3; isxdigit((unsigned char)*p); p++)
        ;
    return p > fr->func + n + 3 && !*p;
}

/* The function's own identifier, lower case, into id: "std::allocator<int>::allocate(unsigned
 * long)" gives "allocate" (template arguments, scopes and parameters left out). False for
 * operators but operator new, which gives "operator new". */
static bool identifier(const char *name, char id[ID_MAX])
{
    size_t start = 0, i, n = 0;
    int depth = 0;

    if (strstr(name, "operator new")) {
        memcpy(id, "operator new", sizeof("operator new"));
        return true;
    }
    for (i = 0; name[i] && !(name[i] == '(' && depth == 0); i++) {
        if (name[i] == '<')
            depth++;
        else if (name[i] == '>' && depth > 0)
            depth--;
        else if (depth == 0 && name[i] == ':' && name[i + 1] == ':')
            start = i + 2;
    }
    if (!strncmp(name + start, "operator", 8))
        return false;
    for (depth = 0; start < i && n + 1 < ID_MAX; start++) {
        if (name[start] == '<')
            depth++;
        else if (name[start] == '>' && depth > 0)
            depth--;
        else if (depth == 0)
            id[n++] = (char)tolower((unsigned char)name[start]);
    }
    id[n] = '\0';
    return n > 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Named as an allocation function or one of its wrappers. A false positive only makes a label
 * longer (the frame is still shown), so the words are broad. */
static bool allocator_name(const char *name)
{
    static const char *const within[] = {"malloc",  "calloc", "realloc",  "strdup",
                                         "strndup", "memdup", "asprintf", "operator new"};
    static const char *const ending[] = {"alloc", "allocate"};
    char id[ID_MAX];
    size_t i;

    if (!identifier(name, id) || ends_with(id, "dealloc"))
        return false;
    for (i = 0; i < sizeof(within) / sizeof(within[0]); i++)
        if (strstr(id, within[i]))
            return true;
    for (i = 0; i < sizeof(ending) / sizeof(ending[0]); i++)
        if (ends_with(id, ending[i]))
            return true;
    return false;
}

size_t heap_alloc_path(const struct stacks_frame *frames, size_t nframes)
{
    size_t i, path = 0;

    for (i = 0; i < nframes && i < HEAP_ALLOC_PATH_MAX; i++) {
        if (unnamed(&frames[i]))
            continue;
        if (!allocator_name(frames[i].func))
            break;
        path = i + 1;
    }
    return path;
}

uint64_t heap_call_site(uint64_t return_address)
{
    return return_address ? return_address - 1 : 0;
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
