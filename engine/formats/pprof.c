/* The profile as pprof's profile.proto (github.com/google/pprof, proto/profile.proto), gzipped:
 * what `go tool pprof` and Grafana Pyroscope read. Each call tree path with samples ending there
 * is a sample with two values, [samples count, cpu nanoseconds], and a "thread" label; a
 * function is one location (the profile keeps functions, not addresses: a location's address is
 * 0 and its line the function's first); a module is a mapping with its path (no addresses and
 * no build id: the profile keeps neither). The string table is the profile's own, then the
 * names this file adds. A protobuf encoder of the few wire types needed, not a general one. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "formats/callpaths.h"

/* profile.proto's field numbers. */
enum {
    PROFILE_SAMPLE_TYPE = 1,
    PROFILE_SAMPLE = 2,
    PROFILE_MAPPING = 3,
    PROFILE_LOCATION = 4,
    PROFILE_FUNCTION = 5,
    PROFILE_STRING_TABLE = 6,
    PROFILE_TIME_NANOS = 9,
    PROFILE_DURATION_NANOS = 10,
    PROFILE_PERIOD_TYPE = 11,
    PROFILE_PERIOD = 12,
    PROFILE_DEFAULT_SAMPLE_TYPE = 14,
    VALUE_TYPE_TYPE = 1,
    VALUE_TYPE_UNIT = 2,
    SAMPLE_LOCATION_ID = 1,
    SAMPLE_VALUE = 2,
    SAMPLE_LABEL = 3,
    LABEL_KEY = 1,
    LABEL_STR = 2,
    MAPPING_ID = 1,
    MAPPING_FILENAME = 5,
    MAPPING_HAS_FUNCTIONS = 7,
    MAPPING_HAS_FILENAMES = 8,
    LOCATION_ID = 1,
    LOCATION_MAPPING_ID = 2,
    LOCATION_LINE = 4,
    LINE_FUNCTION_ID = 1,
    LINE_LINE = 2,
    FUNCTION_ID = 1,
    FUNCTION_NAME = 2,
    FUNCTION_SYSTEM_NAME = 3,
    FUNCTION_FILENAME = 4,
    FUNCTION_START_LINE = 5,
};

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

/* The strings this file adds after the profile's own, in this order, then function labels. */
static const char *const added[] = {"samples", "count", "cpu", "nanoseconds", "thread"};
enum { S_SAMPLES, S_COUNT, S_CPU, S_NANOSECONDS, S_THREAD, S_ADDED };

/* One message other than a string (those go straight out): a sample of CALLPATHS_MAX_FRAMES
 * locations is the largest, at most 5 bytes an id. */
#define PB_MAX (CALLPATHS_MAX_FRAMES * 5 + 256)

struct pb {
    size_t len;
    bool over;
    unsigned char buf[PB_MAX];
};

struct gz {
    z_stream z;
    struct atomicfile *f;
    int err;
    unsigned char out[1 << 16];
};

static void pb_varint(struct pb *b, uint64_t v)
{
    do {
        if (b->len >= sizeof(b->buf)) {
            b->over = true;
            return;
        }
        b->buf[b->len++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

static void pb_key(struct pb *b, unsigned field, unsigned wire)
{
    pb_varint(b, (uint64_t)field << 3 | wire);
}

/* A scalar field; zero is proto3's default and is left out. */
static void pb_uint(struct pb *b, unsigned field, uint64_t v)
{
    if (!v)
        return;
    pb_key(b, field, WIRE_VARINT);
    pb_varint(b, v);
}

static void pb_int(struct pb *b, unsigned field, uint64_t v)
{
    pb_uint(b, field, v > INT64_MAX ? INT64_MAX : v);
}

static void pb_message(struct pb *b, unsigned field, const struct pb *m)
{
    pb_key(b, field, WIRE_LEN);
    pb_varint(b, m->len);
    if (m->over || b->len + m->len > sizeof(b->buf)) {
        b->over = true;
        return;
    }
    memcpy(b->buf + b->len, m->buf, m->len);
    b->len += m->len;
}

static void gz_write(struct gz *g, const void *data, size_t len, int flush)
{
    g->z.next_in = (Bytef *)data;
    g->z.avail_in = (uInt)len;
    do {
        int r;
        g->z.next_out = g->out;
        g->z.avail_out = sizeof(g->out);
        r = deflate(&g->z, flush);
        if (r == Z_STREAM_ERROR && !g->err)
            g->err = -EIO;
        atomicfile_write(g->f, g->out, sizeof(g->out) - g->z.avail_out);
    } while (g->z.avail_out == 0);
}

/* A length-delimited field of the top-level Profile message. */
static void emit_bytes(struct gz *g, unsigned field, const void *data, size_t len)
{
    struct pb h;

    h.len = 0;
    h.over = false;
    pb_key(&h, field, WIRE_LEN);
    pb_varint(&h, len);
    gz_write(g, h.buf, h.len, Z_NO_FLUSH);
    gz_write(g, data, len, Z_NO_FLUSH);
}

static void emit(struct gz *g, unsigned field, const struct pb *m)
{
    if (m->over && !g->err)
        g->err = -EOVERFLOW;
    emit_bytes(g, field, m->buf, m->len);
}

static void pb_reset(struct pb *b)
{
    b->len = 0;
    b->over = false;
}

static void emit_value_type(struct gz *g, struct pb *m, unsigned field, uint64_t type,
                            uint64_t unit)
{
    pb_reset(m);
    pb_int(m, VALUE_TYPE_TYPE, type);
    pb_int(m, VALUE_TYPE_UNIT, unit);
    emit(g, field, m);
}

struct ids {
    uint32_t *name;    /* per function: the string id of its label */
    uint32_t *mapping; /* per string: the mapping id of the module it names, 0 = none */
    bool *has_files;   /* per string: a module whose functions name their source file */
};

/* Gives a mapping to every module that is a file (not "[unknown]" or "[vdso]", nor the .py
 * file that stands for a Python function's module) and a string to every label that is not its
 * function's symbol. */
static void number(const struct callpaths *c, struct ids *ids)
{
    const struct profile *p = c->p;
    uint32_t next_str = (uint32_t)p->nstr + S_ADDED, next_map = 1;
    size_t i;

    for (i = 0; i < p->nfunc; i++) {
        const struct profile_func *fn = &p->func[i];
        if (!c->label[i])
            continue;
        ids->name[i] = strcmp(c->label[i], p->str[fn->name]) ? next_str++ : fn->name;
        if (p->str[fn->module][0] != '/' || fn->module == fn->file)
            continue;
        if (!ids->mapping[fn->module])
            ids->mapping[fn->module] = next_map++;
        ids->has_files[fn->module] |= fn->file != PROFILE_NO_STRING;
    }
}

static void emit_header(struct gz *g, struct pb *m, const struct profile *p, uint64_t start_ns,
                        uint64_t duration_ns)
{
    uint32_t s = (uint32_t)p->nstr;

    emit_value_type(g, m, PROFILE_SAMPLE_TYPE, s + S_SAMPLES, s + S_COUNT);
    emit_value_type(g, m, PROFILE_SAMPLE_TYPE, s + S_CPU, s + S_NANOSECONDS);
    emit_value_type(g, m, PROFILE_PERIOD_TYPE, s + S_CPU, s + S_NANOSECONDS);
    pb_reset(m);
    pb_int(m, PROFILE_TIME_NANOS, start_ns);
    pb_int(m, PROFILE_DURATION_NANOS, duration_ns);
    pb_int(m, PROFILE_PERIOD, p->samples ? p->total_ns / p->samples : 0);
    pb_int(m, PROFILE_DEFAULT_SAMPLE_TYPE, s + S_CPU);
    gz_write(g, m->buf, m->len, Z_NO_FLUSH);
}

static void emit_tables(struct gz *g, struct pb *m, const struct callpaths *c,
                        const struct ids *ids)
{
    const struct profile *p = c->p;
    struct pb line;
    size_t i;

    for (i = 0; i < p->nstr; i++) {
        if (!ids->mapping[i])
            continue;
        pb_reset(m);
        pb_uint(m, MAPPING_ID, ids->mapping[i]);
        pb_int(m, MAPPING_FILENAME, i);
        pb_uint(m, MAPPING_HAS_FUNCTIONS, 1);
        pb_uint(m, MAPPING_HAS_FILENAMES, ids->has_files[i]);
        emit(g, PROFILE_MAPPING, m);
    }
    for (i = 0; i < p->nfunc; i++) {
        const struct profile_func *fn = &p->func[i];
        if (!c->label[i])
            continue;
        pb_reset(m);
        pb_uint(m, FUNCTION_ID, i + 1);
        pb_int(m, FUNCTION_NAME, ids->name[i]);
        pb_int(m, FUNCTION_SYSTEM_NAME, fn->name == p->s_unknown ? 0 : fn->name);
        pb_int(m, FUNCTION_FILENAME, fn->file);
        pb_int(m, FUNCTION_START_LINE, fn->func_line > 0 ? (uint64_t)fn->func_line : 0);
        emit(g, PROFILE_FUNCTION, m);

        pb_reset(&line);
        pb_uint(&line, LINE_FUNCTION_ID, i + 1);
        pb_int(&line, LINE_LINE, fn->func_line > 0 ? (uint64_t)fn->func_line : 0);
        pb_reset(m);
        pb_uint(m, LOCATION_ID, i + 1);
        pb_uint(m, LOCATION_MAPPING_ID, ids->mapping[fn->module]);
        pb_message(m, LOCATION_LINE, &line);
        emit(g, PROFILE_LOCATION, m);
    }
}

static void emit_samples(struct gz *g, struct pb *m, const struct callpaths *c)
{
    const struct profile *p = c->p;
    uint32_t frames[CALLPATHS_MAX_FRAMES];
    struct pb packed, label;
    size_t n, k, i;

    for (n = 0; n < p->nnode; n++) {
        if (!c->self_samples[n])
            continue;
        pb_reset(m);
        pb_reset(&packed);
        k = callpaths_frames(c, (uint32_t)n, frames);
        for (i = 0; i < k; i++)
            pb_varint(&packed, (uint64_t)frames[i] + 1);
        pb_message(m, SAMPLE_LOCATION_ID, &packed);
        pb_reset(&packed);
        pb_varint(&packed, c->self_samples[n] > INT64_MAX ? INT64_MAX : c->self_samples[n]);
        pb_varint(&packed, c->self_ns[n] > INT64_MAX ? INT64_MAX : c->self_ns[n]);
        pb_message(m, SAMPLE_VALUE, &packed);
        pb_reset(&label);
        pb_int(&label, LABEL_KEY, p->nstr + S_THREAD);
        pb_int(&label, LABEL_STR, c->thread[n]);
        pb_message(m, SAMPLE_LABEL, &label);
        emit(g, PROFILE_SAMPLE, m);
    }
}

/* The string table: the profile's strings (the first, "unknown", is "" as pprof requires), the
 * added ones, then the labels number() gave ids, in its order. */
static void emit_strings(struct gz *g, const struct callpaths *c, const struct ids *ids)
{
    const struct profile *p = c->p;
    size_t i;

    for (i = 0; i < p->nstr; i++)
        emit_bytes(g, PROFILE_STRING_TABLE, p->str[i] ? p->str[i] : "",
                   p->str[i] ? strlen(p->str[i]) : 0);
    for (i = 0; i < S_ADDED; i++)
        emit_bytes(g, PROFILE_STRING_TABLE, added[i], strlen(added[i]));
    for (i = 0; i < p->nfunc; i++)
        if (c->label[i] && ids->name[i] >= p->nstr)
            emit_bytes(g, PROFILE_STRING_TABLE, c->label[i], strlen(c->label[i]));
}

int profile_write_pprof(const struct profile *p, const char *path, uint64_t start_ns,
                        uint64_t duration_ns, struct error *err)
{
    struct callpaths c;
    struct ids ids = {0};
    struct gz *g = NULL;
    struct pb *m = NULL;
    bool deflating = false;
    int r;

    error_clear(err);
    r = callpaths_init(&c, p);
    if (r < 0)
        return error_fill(err, r);
    r = -ENOMEM;
    g = calloc(1, sizeof(*g));
    m = malloc(sizeof(*m));
    ids.name = calloc(p->nfunc ? p->nfunc : 1, sizeof(*ids.name));
    ids.mapping = calloc(p->nstr ? p->nstr : 1, sizeof(*ids.mapping));
    ids.has_files = calloc(p->nstr ? p->nstr : 1, sizeof(*ids.has_files));
    if (!g || !m || !ids.name || !ids.mapping || !ids.has_files)
        goto out;
    /* windowBits 15 + 16: a gzip header and trailer around the deflate stream. */
    if (deflateInit2(&g->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        goto out;
    deflating = true;
    r = atomicfile_open(path, &g->f);
    if (r < 0)
        goto out;
    number(&c, &ids);
    emit_header(g, m, p, start_ns, duration_ns);
    emit_tables(g, m, &c, &ids);
    emit_samples(g, m, &c);
    emit_strings(g, &c, &ids);
    gz_write(g, NULL, 0, Z_FINISH);
    if (g->err) {
        r = error_set(err, g->err, "the pprof encoder %s",
                      g->err == -EOVERFLOW ? "met a message larger than its buffer"
                                           : "could not compress");
        goto out;
    }
    r = atomicfile_commit(g->f);
    g->f = NULL;
out:
    error_fill(err, r);
    if (g) {
        atomicfile_abort(g->f);
        if (deflating)
            deflateEnd(&g->z);
    }
    free(g);
    free(m);
    free(ids.name);
    free(ids.mapping);
    free(ids.has_files);
    callpaths_destroy(&c);
    return r;
}
