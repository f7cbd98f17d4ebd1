/* A draft-07 JSON Schema validator (see schema.h). A document is compiled into a tree of struct
 * schema nodes, refusing every keyword the tree cannot enforce; validation walks the tree and the
 * instance together and stops at the first error, written as a sentence. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h> /* isfinite, a macro: no libm */
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schema.h"

#define SCHEMA_DEPTH_MAX 64       /* nesting of arrays/objects, in a schema and in an instance */
#define SCHEMA_FILE_MAX (1 << 20) /* bytes of a schema file */
#define SCHEMA_UNIQUE_MAX 1024    /* items uniqueItems compares pairwise */
#define SCHEMA_PATH_MAX 256       /* an error only has SCHEMA_ERR_MAX bytes anyway */

enum {
    TYPE_NULL = 1 << 0,
    TYPE_BOOLEAN = 1 << 1,
    TYPE_OBJECT = 1 << 2,
    TYPE_ARRAY = 1 << 3,
    TYPE_NUMBER = 1 << 4,
    TYPE_STRING = 1 << 5,
    TYPE_INTEGER = 1 << 6,
};

static const struct {
    const char *name;
    const char *noun;
    unsigned bit;
} types[] = {
    /* In the order an error lists them: "must be a string or null". */
    {"boolean", "a boolean", TYPE_BOOLEAN},
    {"object", "an object", TYPE_OBJECT},
    {"array", "an array", TYPE_ARRAY},
    {"number", "a number", TYPE_NUMBER},
    {"integer", "an integer", TYPE_INTEGER},
    {"string", "a string", TYPE_STRING},
    {"null", "null", TYPE_NULL},
};

struct regex {
    char *source;
    regex_t re;
};

struct property {
    char *name;
    struct schema *schema;
};

struct pattern_property {
    struct regex regex;
    struct schema *schema;
};

struct schema {
    int boolean;    /* 1 or 0 for the schemas `true` and `false`, -1 for an object schema */
    unsigned types; /* TYPE_* bits, 0 when `type` is absent */
    /* Numbers stay json objects (held references) so an int64 bound is compared exactly. */
    struct json_object *minimum, *maximum, *exclusive_minimum, *exclusive_maximum;
    int64_t min_length, max_length; /* -1 when absent, as are the counts below */
    struct regex *pattern;
    /* json-c represents JSON null as NULL, hence the has_ flags. */
    bool has_enum, has_const, has_default;
    struct json_object *enum_values, *const_value, *default_value;
    /* Rendered once here: rendering caches text inside the json object, which validation must
     * not modify. */
    char *enum_text, *const_text;
    struct property *properties;
    size_t n_properties;
    struct pattern_property *pattern_properties;
    size_t n_pattern_properties;
    struct schema *additional_properties;
    char **required;
    size_t n_required;
    int64_t min_properties, max_properties;
    struct schema *property_names;
    struct schema *items;      /* `items` as one schema for every item */
    struct schema **item_list; /* `items` as an array: one schema per position */
    size_t n_item_list;
    bool has_item_list;
    struct schema *additional_items; /* items past item_list; the spec ignores it otherwise */
    int64_t min_items, max_items;
    bool unique_items;
};

struct compiler {
    char *err;
    size_t errlen;
    char pointer[SCHEMA_PATH_MAX]; /* JSON pointer of the keyword being compiled */
    size_t pointer_len;
};

struct validator {
    char *err;
    size_t errlen;
    char path[SCHEMA_PATH_MAX]; /* "a.b[2]" of the value being validated, "" at the top */
    size_t path_len;
};

/* Drops a multi-byte UTF-8 sequence that truncation cut short, so errors stay valid UTF-8. */
static void utf8_trim(char *s, size_t len)
{
    size_t start = len, need;
    unsigned char lead;

    while (start > 0 && ((unsigned char)s[start - 1] & 0xc0) == 0x80 && len - start < 3)
        start--;
    if (start == 0)
        return;
    lead = (unsigned char)s[start - 1];
    if (lead < 0xc0)
        return;
    need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    if (len - (start - 1) < need)
        s[start - 1] = '\0';
}

static void write_error(char *err, size_t errlen, const char *prefix, const char *fmt, va_list ap)
{
    int n;

    if (errlen == 0)
        return;
    n = snprintf(err, errlen, "%s", prefix);
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    utf8_trim(err, strlen(err));
}

static void set_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    write_error(err, errlen, "", fmt, ap);
    va_end(ap);
}

static void append_bytes(char *buf, size_t size, size_t *len, const char *s, size_t n)
{
    size_t start = *len;

    for (size_t i = 0; i < n && *len + 1 < size; i++) {
        unsigned char ch = (unsigned char)s[i];
        /* Paths end up in log records: no control characters. */
        buf[(*len)++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    buf[*len] = '\0';
    if (*len - start < n)
        utf8_trim(buf, *len);
    *len = strlen(buf);
}

/* Without libm: every double of magnitude 2^52 or more is a whole number. */
static bool is_integral(double d)
{
    return isfinite(d) && (d >= 0x1p52 || d <= -0x1p52 || d == (double)(int64_t)d);
}

static bool is_number(struct json_object *o)
{
    return json_object_is_type(o, json_type_int) ||
           (json_object_is_type(o, json_type_double) && isfinite(json_object_get_double(o)));
}

/* Every int64, uint64 and double json-c holds is exact in x86-64's 64-bit-mantissa long double. */
static long double number_value(struct json_object *o)
{
    if (json_object_is_type(o, json_type_int)) {
        int64_t i = json_object_get_int64(o);
        if (i == INT64_MAX)
            return (long double)json_object_get_uint64(o);
        return (long double)i;
    }
    return (long double)json_object_get_double(o);
}

static void format_number(struct json_object *o, char *buf, size_t len)
{
    if (json_object_is_type(o, json_type_int)) {
        int64_t i = json_object_get_int64(o);
        if (i == INT64_MAX)
            snprintf(buf, len, "%" PRIu64, json_object_get_uint64(o));
        else
            snprintf(buf, len, "%" PRId64, i);
        return;
    }
    /* The shortest form that reads back as the same double: 0.1, not 0.10000000000000001. */
    for (int precision = 15; precision <= 17; precision++) {
        snprintf(buf, len, "%.*g", precision, json_object_get_double(o));
        if (strtod(buf, NULL) == json_object_get_double(o))
            return;
    }
}

/* True when containers nest more than `levels` deep; recursion stops at levels + 1. */
static bool deeper_than(struct json_object *o, int levels)
{
    if (json_object_is_type(o, json_type_object)) {
        if (levels == 0)
            return true;
        json_object_object_foreach(o, key, val)
        {
            (void)key;
            if (deeper_than(val, levels - 1))
                return true;
        }
    } else if (json_object_is_type(o, json_type_array)) {
        size_t n = json_object_array_length(o);
        if (levels == 0)
            return true;
        for (size_t i = 0; i < n; i++)
            if (deeper_than(json_object_array_get_idx(o, i), levels - 1))
                return true;
    }
    return false;
}

/* Deep equality where numbers compare by value (1 == 1.0). Depth is bounded by the callers'
 * deeper_than checks on both documents. */
static bool json_equal(struct json_object *a, struct json_object *b)
{
    enum json_type ta = json_object_get_type(a), tb = json_object_get_type(b);

    if (is_number(a) && is_number(b))
        return number_value(a) == number_value(b);
    if (ta != tb)
        return false;
    switch (ta) {
    case json_type_null:
        return true;
    case json_type_boolean:
        return json_object_get_boolean(a) == json_object_get_boolean(b);
    case json_type_string:
        return json_object_get_string_len(a) == json_object_get_string_len(b) &&
               memcmp(json_object_get_string(a), json_object_get_string(b),
                      (size_t)json_object_get_string_len(a)) == 0;
    case json_type_array: {
        size_t n = json_object_array_length(a);
        if (n != json_object_array_length(b))
            return false;
        for (size_t i = 0; i < n; i++)
            if (!json_equal(json_object_array_get_idx(a, i), json_object_array_get_idx(b, i)))
                return false;
        return true;
    }
    case json_type_object: {
        if (json_object_object_length(a) != json_object_object_length(b))
            return false;
        json_object_object_foreach(a, key, val)
        {
            struct json_object *other;
            if (!json_object_object_get_ex(b, key, &other) || !json_equal(val, other))
                return false;
        }
        return true;
    }
    default:
        return false; /* non-finite doubles: equal to nothing, as no JSON text can hold them */
    }
}

static size_t utf8_length(const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            n++;
    return n;
}

/* ---- compiling ---- */

static int compile_error(struct compiler *c, const char *fmt, ...)
{
    char prefix[SCHEMA_PATH_MAX + 16];
    va_list ap;

    snprintf(prefix, sizeof(prefix), "schema #%s: ", c->pointer);
    va_start(ap, fmt);
    write_error(c->err, c->errlen, prefix, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static size_t pointer_push(struct compiler *c, const char *token)
{
    size_t old = c->pointer_len;

    append_bytes(c->pointer, sizeof(c->pointer), &c->pointer_len, "/", 1);
    for (const char *p = token; *p != '\0'; p++) {
        if (*p == '~')
            append_bytes(c->pointer, sizeof(c->pointer), &c->pointer_len, "~0", 2);
        else if (*p == '/')
            append_bytes(c->pointer, sizeof(c->pointer), &c->pointer_len, "~1", 2);
        else
            append_bytes(c->pointer, sizeof(c->pointer), &c->pointer_len, p, 1);
    }
    return old;
}

static size_t pointer_push_index(struct compiler *c, size_t i)
{
    char token[32];

    snprintf(token, sizeof(token), "%zu", i);
    return pointer_push(c, token);
}

static void pointer_pop(struct compiler *c, size_t old)
{
    c->pointer_len = old;
    c->pointer[old] = '\0';
}

static int compile_node(struct compiler *c, struct json_object *doc, struct schema **ret);

/* POSIX EREs and ECMA-262 share a common core; refuse what they read differently (escapes such as
 * \d or \n, lazy quantifiers, (?...) groups, bracket subtleties, multi-byte characters inside
 * brackets or under a quantifier), so a pattern is either enforced as written or refused. */
static const char *regex_incompatibility(const char *p)
{
    bool in_class = false, class_start = false;

    for (size_t i = 0; p[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)p[i], next = (unsigned char)p[i + 1];
        if (in_class) {
            if (ch == '\\')
                return "a backslash inside [...]";
            if (ch >= 0x80)
                return "a non-ASCII character inside [...]";
            if (ch == '[' && (next == ':' || next == '.' || next == '='))
                return "a POSIX bracket class";
            if (ch == ']') {
                if (class_start)
                    return "']' first inside [...]";
                in_class = false;
            }
            class_start = false;
            continue;
        }
        if (ch == '\\') {
            if (next != '\0' && isalnum(next) && strchr("wWsSbB", next) == NULL)
                return "an escape sequence POSIX reads differently";
            if (next != '\0')
                i++;
        } else if (ch == '[') {
            in_class = true;
            class_start = true;
            if (next == '^')
                i++;
        } else if ((ch == '*' || ch == '+' || ch == '?' || ch == '}') && next == '?') {
            return "a lazy quantifier";
        } else if (ch == '(' && next == '?') {
            return "a (?...) group";
        } else if (ch >= 0x80 && (next == '*' || next == '+' || next == '?' || next == '{')) {
            return "a quantifier on a non-ASCII character";
        }
    }
    return NULL;
}

static int regex_compile(struct compiler *c, const char *source, struct regex *ret)
{
    const char *why = regex_incompatibility(source);
    char msg[128];
    int r;

    if (why != NULL)
        return compile_error(c,
                             "pattern '%s' uses %s, which POSIX regular expressions do not "
                             "read as ECMA-262 does",
                             source, why);
    r = regcomp(&ret->re, source, REG_EXTENDED | REG_NOSUB);
    if (r != 0) {
        regerror(r, NULL, msg, sizeof(msg));
        return compile_error(c, "pattern '%s' does not compile: %s", source, msg);
    }
    ret->source = strdup(source);
    if (ret->source == NULL) {
        regfree(&ret->re);
        return -ENOMEM;
    }
    return 0;
}

static void regex_destroy(struct regex *r)
{
    if (r->source == NULL)
        return;
    regfree(&r->re);
    free(r->source);
}

static bool regex_match(const struct regex *r, const char *s, size_t len)
{
    regmatch_t m = {.rm_so = 0, .rm_eo = (regoff_t)len};

    /* REG_STARTEND bounds the match by len, so a \u0000 inside a string does not cut it. */
    return regexec(&r->re, s, 1, &m, REG_STARTEND) == 0;
}

static struct json_object **json_field(struct schema *s, size_t offset)
{
    return (struct json_object **)((char *)s + offset);
}

static int kw_annotation(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    (void)s;
    (void)off;
    if (!json_object_is_type(v, json_type_string))
        return compile_error(c, "must be a string");
    return 0;
}

static int kw_schema_uri(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    const char *uri = json_object_get_string(v);

    (void)s;
    (void)off;
    /* Other drafts give keywords (items, exclusiveMinimum) other meanings. */
    if (!json_object_is_type(v, json_type_string) ||
        (strcmp(uri, "http://json-schema.org/draft-07/schema#") != 0 &&
         strcmp(uri, "http://json-schema.org/draft-07/schema") != 0))
        return compile_error(c, "only draft-07 schemas are supported");
    return 0;
}

static int kw_examples(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    (void)s;
    (void)off;
    if (!json_object_is_type(v, json_type_array))
        return compile_error(c, "must be an array");
    return 0;
}

static char *render(struct json_object *v)
{
    return strdup(
        json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
}

static int kw_const(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    (void)c;
    (void)off;
    s->const_text = render(v);
    if (s->const_text == NULL)
        return -ENOMEM;
    s->const_value = json_object_get(v);
    s->has_const = true;
    return 0;
}

static int kw_default(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    (void)c;
    (void)off;
    s->default_value = json_object_get(v);
    s->has_default = true;
    return 0;
}

static int kw_enum(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    (void)off;
    if (!json_object_is_type(v, json_type_array))
        return compile_error(c, "must be an array");
    s->enum_text = render(v);
    if (s->enum_text == NULL)
        return -ENOMEM;
    s->enum_values = json_object_get(v);
    s->has_enum = true;
    return 0;
}

static int kw_number(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    if (!is_number(v))
        return compile_error(c, "must be a number");
    *json_field(s, off) = json_object_get(v);
    return 0;
}

static int kw_count(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    int64_t *field = (int64_t *)((char *)s + off);
    double d;

    if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 0) {
        *field = json_object_get_int64(v);
        return 0;
    }
    d = json_object_get_double(v);
    if (json_object_is_type(v, json_type_double) && d >= 0 && d < 0x1p63 && is_integral(d)) {
        *field = (int64_t)d;
        return 0;
    }
    return compile_error(c, "must be a non-negative integer");
}

static int kw_boolean(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    (void)off;
    if (!json_object_is_type(v, json_type_boolean))
        return compile_error(c, "must be a boolean");
    s->unique_items = json_object_get_boolean(v);
    return 0;
}

static int kw_type(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 1;

    (void)off;
    if (!json_object_is_type(v, json_type_array) && !json_object_is_type(v, json_type_string))
        return compile_error(c, "must be a type name or an array of them");
    for (size_t i = 0; i < n; i++) {
        struct json_object *name =
            json_object_is_type(v, json_type_array) ? json_object_array_get_idx(v, i) : v;
        unsigned bit = 0;
        for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
            if (json_object_is_type(name, json_type_string) &&
                strcmp(json_object_get_string(name), types[t].name) == 0)
                bit = types[t].bit;
        if (bit == 0)
            return compile_error(c, "%s is not a type", json_object_to_json_string(name));
        if (s->types & bit)
            return compile_error(c, "names %s twice", json_object_to_json_string(name));
        s->types |= bit;
    }
    /* An empty list allows no type at all. */
    if (s->types == 0)
        s->boolean = 0;
    return 0;
}

static int kw_pattern(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    int r;

    (void)off;
    if (!json_object_is_type(v, json_type_string))
        return compile_error(c, "must be a string");
    s->pattern = calloc(1, sizeof(*s->pattern));
    if (s->pattern == NULL)
        return -ENOMEM;
    r = regex_compile(c, json_object_get_string(v), s->pattern);
    if (r < 0) {
        free(s->pattern);
        s->pattern = NULL;
    }
    return r;
}

static int kw_subschema(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    return compile_node(c, v, (struct schema **)((char *)s + off));
}

static int kw_properties(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    size_t n = 0;
    int r;

    (void)off;
    if (!json_object_is_type(v, json_type_object))
        return compile_error(c, "must be an object");
    s->properties = calloc((size_t)json_object_object_length(v) + 1, sizeof(*s->properties));
    if (s->properties == NULL)
        return -ENOMEM;
    json_object_object_foreach(v, key, val)
    {
        size_t old = pointer_push(c, key);
        struct property *p = &s->properties[n];
        r = compile_node(c, val, &p->schema);
        pointer_pop(c, old);
        if (r < 0)
            return r;
        s->n_properties = ++n;
        p->name = strdup(key);
        if (p->name == NULL)
            return -ENOMEM;
    }
    return 0;
}

static int kw_pattern_properties(struct compiler *c, struct schema *s, struct json_object *v,
                                 size_t off)
{
    size_t n = 0;
    int r;

    (void)off;
    if (!json_object_is_type(v, json_type_object))
        return compile_error(c, "must be an object");
    s->pattern_properties =
        calloc((size_t)json_object_object_length(v) + 1, sizeof(*s->pattern_properties));
    if (s->pattern_properties == NULL)
        return -ENOMEM;
    json_object_object_foreach(v, key, val)
    {
        size_t old = pointer_push(c, key);
        struct pattern_property *p = &s->pattern_properties[n];
        r = regex_compile(c, key, &p->regex);
        if (r == 0) {
            s->n_pattern_properties = ++n;
            r = compile_node(c, val, &p->schema);
        }
        pointer_pop(c, old);
        if (r < 0)
            return r;
    }
    return 0;
}

static int kw_required(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;

    (void)off;
    if (!json_object_is_type(v, json_type_array))
        return compile_error(c, "must be an array of field names");
    s->required = calloc(n + 1, sizeof(*s->required));
    if (s->required == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct json_object *name = json_object_array_get_idx(v, i);
        if (!json_object_is_type(name, json_type_string))
            return compile_error(c, "must be an array of field names");
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->required[j], json_object_get_string(name)) == 0)
                return compile_error(c, "names '%s' twice", s->required[j]);
        s->required[i] = strdup(json_object_get_string(name));
        if (s->required[i] == NULL)
            return -ENOMEM;
        s->n_required = i + 1;
    }
    return 0;
}

static int kw_items(struct compiler *c, struct schema *s, struct json_object *v, size_t off)
{
    size_t n;
    int r;

    (void)off;
    if (!json_object_is_type(v, json_type_array))
        return compile_node(c, v, &s->items);
    n = json_object_array_length(v);
    s->has_item_list = true;
    s->item_list = calloc(n + 1, sizeof(*s->item_list));
    if (s->item_list == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t old = pointer_push_index(c, i);
        r = compile_node(c, json_object_array_get_idx(v, i), &s->item_list[i]);
        pointer_pop(c, old);
        if (r < 0)
            return r;
        s->n_item_list = i + 1;
    }
    return 0;
}

#define AT(field) offsetof(struct schema, field)

static const struct keyword {
    const char *name;
    int (*compile)(struct compiler *c, struct schema *s, struct json_object *v, size_t off);
    size_t offset;
} keywords[] = {
    {"$schema", kw_schema_uri, 0},
    {"$id", kw_annotation, 0},
    {"$comment", kw_annotation, 0},
    {"title", kw_annotation, 0},
    {"description", kw_annotation, 0},
    {"examples", kw_examples, 0},
    {"default", kw_default, 0},
    {"type", kw_type, 0},
    {"enum", kw_enum, 0},
    {"const", kw_const, 0},
    {"minimum", kw_number, AT(minimum)},
    {"maximum", kw_number, AT(maximum)},
    {"exclusiveMinimum", kw_number, AT(exclusive_minimum)},
    {"exclusiveMaximum", kw_number, AT(exclusive_maximum)},
    {"minLength", kw_count, AT(min_length)},
    {"maxLength", kw_count, AT(max_length)},
    {"pattern", kw_pattern, 0},
    {"properties", kw_properties, 0},
    {"patternProperties", kw_pattern_properties, 0},
    {"additionalProperties", kw_subschema, AT(additional_properties)},
    {"required", kw_required, 0},
    {"minProperties", kw_count, AT(min_properties)},
    {"maxProperties", kw_count, AT(max_properties)},
    {"propertyNames", kw_subschema, AT(property_names)},
    {"items", kw_items, 0},
    {"additionalItems", kw_subschema, AT(additional_items)},
    {"minItems", kw_count, AT(min_items)},
    {"maxItems", kw_count, AT(max_items)},
    {"uniqueItems", kw_boolean, 0},
};

static int compile_node(struct compiler *c, struct json_object *doc, struct schema **ret)
{
    struct schema *s = NULL;
    int r = 0;

    if (!json_object_is_type(doc, json_type_object) && !json_object_is_type(doc, json_type_boolean))
        return compile_error(c, "a schema must be an object or a boolean");
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->min_length = s->max_length = s->min_properties = s->max_properties = -1;
    s->min_items = s->max_items = -1;
    if (json_object_is_type(doc, json_type_boolean)) {
        s->boolean = json_object_get_boolean(doc);
        goto out;
    }
    s->boolean = -1;
    json_object_object_foreach(doc, key, val)
    {
        const struct keyword *kw = NULL;
        size_t old;
        for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
            if (strcmp(keywords[i].name, key) == 0)
                kw = &keywords[i];
        if (kw == NULL) {
            r = compile_error(c, "keyword '%s' is not supported", key);
            goto out;
        }
        old = pointer_push(c, key);
        r = kw->compile(c, s, val, kw->offset);
        pointer_pop(c, old);
        if (r < 0)
            goto out;
    }
out:
    if (r < 0) {
        schema_free(s);
        return r;
    }
    *ret = s;
    return 0;
}

int schema_compile(struct json_object *doc, struct schema **ret, char *err, size_t errlen)
{
    struct compiler c = {.err = err, .errlen = errlen};
    int r;

    if (deeper_than(doc, SCHEMA_DEPTH_MAX))
        return compile_error(&c, "nested deeper than %d levels", SCHEMA_DEPTH_MAX);
    r = compile_node(&c, doc, ret);
    if (r == -ENOMEM)
        set_error(err, errlen, "out of memory compiling a schema");
    return r;
}

int schema_load_file(const char *path, struct schema **ret, char *err, size_t errlen)
{
    struct json_tokener *tok = NULL;
    struct json_object *doc = NULL;
    char *buf = NULL, cerr[SCHEMA_ERR_MAX];
    size_t n, end;
    FILE *f = NULL;
    int r;

    f = fopen(path, "re");
    if (f == NULL) {
        r = -errno;
        set_error(err, errlen, "cannot open %s: %s", path, strerror(-r));
        goto out;
    }
    buf = malloc(SCHEMA_FILE_MAX + 1);
    tok = json_tokener_new_ex(SCHEMA_DEPTH_MAX);
    if (buf == NULL || tok == NULL) {
        r = -ENOMEM;
        set_error(err, errlen, "out of memory reading %s", path);
        goto out;
    }
    n = fread(buf, 1, SCHEMA_FILE_MAX + 1, f);
    if (ferror(f)) {
        r = -EIO;
        set_error(err, errlen, "cannot read %s", path);
        goto out;
    }
    if (n > SCHEMA_FILE_MAX) {
        r = -EFBIG;
        set_error(err, errlen, "%s is larger than %d bytes", path, SCHEMA_FILE_MAX);
        goto out;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    /* The terminating NUL ends a top-level literal such as `true`; the tokener stops at a NUL,
     * so the check below catches one inside the file. */
    buf[n] = '\0';
    doc = json_tokener_parse_ex(tok, buf, (int)n + 1);
    end = json_tokener_get_parse_end(tok);
    if (json_tokener_get_error(tok) != json_tokener_success) {
        r = -EINVAL;
        set_error(err, errlen, "%s is not valid JSON: %s at byte %zu", path,
                  json_tokener_error_desc(json_tokener_get_error(tok)), end);
        goto out;
    }
    while (end < n && isspace((unsigned char)buf[end]))
        end++;
    if (end < n) {
        r = -EINVAL;
        set_error(err, errlen, "%s is not valid JSON: unexpected data at byte %zu", path, end);
        goto out;
    }
    r = schema_compile(doc, ret, cerr, sizeof(cerr));
    if (r < 0)
        set_error(err, errlen, "%s: %s", path, cerr);
out:
    json_object_put(doc);
    if (tok != NULL)
        json_tokener_free(tok);
    free(buf);
    if (f != NULL)
        fclose(f);
    return r;
}

void schema_free(struct schema *s)
{
    if (s == NULL)
        return;
    json_object_put(s->minimum);
    json_object_put(s->maximum);
    json_object_put(s->exclusive_minimum);
    json_object_put(s->exclusive_maximum);
    json_object_put(s->enum_values);
    json_object_put(s->const_value);
    json_object_put(s->default_value);
    free(s->enum_text);
    free(s->const_text);
    if (s->pattern != NULL)
        regex_destroy(s->pattern);
    free(s->pattern);
    for (size_t i = 0; i < s->n_properties; i++) {
        free(s->properties[i].name);
        schema_free(s->properties[i].schema);
    }
    free(s->properties);
    for (size_t i = 0; i < s->n_pattern_properties; i++) {
        regex_destroy(&s->pattern_properties[i].regex);
        schema_free(s->pattern_properties[i].schema);
    }
    free(s->pattern_properties);
    schema_free(s->additional_properties);
    for (size_t i = 0; i < s->n_required; i++)
        free(s->required[i]);
    free(s->required);
    schema_free(s->property_names);
    schema_free(s->items);
    for (size_t i = 0; i < s->n_item_list; i++)
        schema_free(s->item_list[i]);
    free(s->item_list);
    schema_free(s->additional_items);
    free(s);
}

/* ---- validating ---- */

static int invalid(struct validator *v, const char *fmt, ...)
{
    char prefix[SCHEMA_PATH_MAX + 4];
    va_list ap;

    snprintf(prefix, sizeof(prefix), "%s: ", v->path_len > 0 ? v->path : "payload");
    va_start(ap, fmt);
    write_error(v->err, v->errlen, prefix, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static size_t path_push_key(struct validator *v, const char *key)
{
    size_t old = v->path_len;

    if (old > 0)
        append_bytes(v->path, sizeof(v->path), &v->path_len, ".", 1);
    append_bytes(v->path, sizeof(v->path), &v->path_len, key, strlen(key));
    return old;
}

static size_t path_push_index(struct validator *v, size_t i)
{
    size_t old = v->path_len;
    char token[32];

    snprintf(token, sizeof(token), "[%zu]", i);
    append_bytes(v->path, sizeof(v->path), &v->path_len, token, strlen(token));
    return old;
}

static void path_pop(struct validator *v, size_t old)
{
    v->path_len = old;
    v->path[old] = '\0';
}

static unsigned instance_types(struct json_object *o)
{
    double d;

    switch (json_object_get_type(o)) {
    case json_type_null:
        return TYPE_NULL;
    case json_type_boolean:
        return TYPE_BOOLEAN;
    case json_type_int:
        return TYPE_NUMBER | TYPE_INTEGER;
    case json_type_double:
        d = json_object_get_double(o);
        if (!isfinite(d))
            return 0;
        return is_integral(d) ? TYPE_NUMBER | TYPE_INTEGER : TYPE_NUMBER;
    case json_type_string:
        return TYPE_STRING;
    case json_type_object:
        return TYPE_OBJECT;
    case json_type_array:
        return TYPE_ARRAY;
    }
    return 0;
}

static int type_error(struct validator *v, unsigned allowed)
{
    char list[128] = "";
    size_t len = 0, count = 0, seen = 0;

    /* "a number" already covers "an integer". */
    if (allowed & TYPE_NUMBER)
        allowed &= ~(unsigned)TYPE_INTEGER;
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        count += (allowed & types[t].bit) != 0;
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        if (!(allowed & types[t].bit))
            continue;
        seen++;
        if (seen > 1) {
            const char *sep = seen == count ? " or " : ", ";
            append_bytes(list, sizeof(list), &len, sep, strlen(sep));
        }
        append_bytes(list, sizeof(list), &len, types[t].noun, strlen(types[t].noun));
    }
    return invalid(v, "must be %s", list);
}

static int validate_node(struct validator *v, const struct schema *s, struct json_object *o);

static int validate_numbers(struct validator *v, const struct schema *s, struct json_object *o)
{
    long double x = number_value(o);
    char bound[64];

    if (s->minimum != NULL && x < number_value(s->minimum)) {
        format_number(s->minimum, bound, sizeof(bound));
        return invalid(v, "must be at least %s", bound);
    }
    if (s->maximum != NULL && x > number_value(s->maximum)) {
        format_number(s->maximum, bound, sizeof(bound));
        return invalid(v, "must be at most %s", bound);
    }
    if (s->exclusive_minimum != NULL && x <= number_value(s->exclusive_minimum)) {
        format_number(s->exclusive_minimum, bound, sizeof(bound));
        return invalid(v, "must be greater than %s", bound);
    }
    if (s->exclusive_maximum != NULL && x >= number_value(s->exclusive_maximum)) {
        format_number(s->exclusive_maximum, bound, sizeof(bound));
        return invalid(v, "must be less than %s", bound);
    }
    return 0;
}

static int validate_string(struct validator *v, const struct schema *s, struct json_object *o)
{
    const char *str = json_object_get_string(o);
    size_t len = (size_t)json_object_get_string_len(o);
    size_t chars = utf8_length(str, len);

    if (s->min_length >= 0 && chars < (uint64_t)s->min_length)
        return invalid(v, "must be at least %" PRId64 " character%s", s->min_length,
                       s->min_length == 1 ? "" : "s");
    if (s->max_length >= 0 && chars > (uint64_t)s->max_length)
        return invalid(v, "must be at most %" PRId64 " character%s", s->max_length,
                       s->max_length == 1 ? "" : "s");
    if (s->pattern != NULL && !regex_match(s->pattern, str, len))
        return invalid(v, "does not match pattern %s", s->pattern->source);
    return 0;
}

static const struct property *find_property(const struct schema *s, const char *name)
{
    for (size_t i = 0; i < s->n_properties; i++)
        if (strcmp(s->properties[i].name, name) == 0)
            return &s->properties[i];
    return NULL;
}

static bool matches_pattern_property(const struct schema *s, const char *name)
{
    for (size_t i = 0; i < s->n_pattern_properties; i++)
        if (regex_match(&s->pattern_properties[i].regex, name, strlen(name)))
            return true;
    return false;
}

static int validate_object(struct validator *v, const struct schema *s, struct json_object *o)
{
    int64_t n = json_object_object_length(o);
    size_t old;
    int r;

    /* Unknown fields first: a misspelt field is the likeliest mistake and the best message. */
    if (s->additional_properties != NULL && s->additional_properties->boolean == 0) {
        json_object_object_foreach(o, key, value)
        {
            (void)value;
            if (find_property(s, key) == NULL && !matches_pattern_property(s, key)) {
                old = path_push_key(v, key);
                set_error(v->err, v->errlen, "unknown field '%s'", v->path);
                path_pop(v, old);
                return -EINVAL;
            }
        }
    }
    for (size_t i = 0; i < s->n_required; i++) {
        if (json_object_object_get_ex(o, s->required[i], NULL))
            continue;
        path_push_key(v, s->required[i]);
        return invalid(v, "required field is missing");
    }
    json_object_object_foreach(o, key, value)
    {
        const struct property *p = find_property(s, key);
        bool matched = p != NULL;
        old = path_push_key(v, key);
        r = p != NULL ? validate_node(v, p->schema, value) : 0;
        for (size_t i = 0; r == 0 && i < s->n_pattern_properties; i++) {
            if (!regex_match(&s->pattern_properties[i].regex, key, strlen(key)))
                continue;
            matched = true;
            r = validate_node(v, s->pattern_properties[i].schema, value);
        }
        if (r == 0 && !matched && s->additional_properties != NULL)
            r = validate_node(v, s->additional_properties, value);
        path_pop(v, old);
        if (r < 0)
            return r;
    }
    if (s->min_properties >= 0 && n < s->min_properties)
        return invalid(v, "must have at least %" PRId64 " field%s", s->min_properties,
                       s->min_properties == 1 ? "" : "s");
    if (s->max_properties >= 0 && n > s->max_properties)
        return invalid(v, "must have at most %" PRId64 " field%s", s->max_properties,
                       s->max_properties == 1 ? "" : "s");
    if (s->property_names != NULL) {
        json_object_object_foreach(o, key, value)
        {
            struct json_object *name = json_object_new_string(key);
            char token[SCHEMA_PATH_MAX];
            (void)value;
            if (name == NULL)
                return -ENOMEM;
            snprintf(token, sizeof(token), "%s (field name)", key);
            utf8_trim(token, strlen(token));
            old = path_push_key(v, token);
            r = validate_node(v, s->property_names, name);
            path_pop(v, old);
            json_object_put(name);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static int validate_array(struct validator *v, const struct schema *s, struct json_object *o)
{
    size_t n = json_object_array_length(o), old;
    int r;

    if (s->min_items >= 0 && n < (uint64_t)s->min_items)
        return invalid(v, "must have at least %" PRId64 " item%s", s->min_items,
                       s->min_items == 1 ? "" : "s");
    if (s->max_items >= 0 && n > (uint64_t)s->max_items)
        return invalid(v, "must have at most %" PRId64 " item%s", s->max_items,
                       s->max_items == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
        const struct schema *item = s->items;
        if (s->has_item_list)
            item = i < s->n_item_list ? s->item_list[i] : s->additional_items;
        if (item == NULL)
            continue;
        old = path_push_index(v, i);
        r = validate_node(v, item, json_object_array_get_idx(o, i));
        path_pop(v, old);
        if (r < 0)
            return r;
    }
    if (!s->unique_items)
        return 0;
    if (n > SCHEMA_UNIQUE_MAX)
        return invalid(v, "must have at most %d items to be checked for duplicates",
                       SCHEMA_UNIQUE_MAX);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (json_equal(json_object_array_get_idx(o, i), json_object_array_get_idx(o, j)))
                return invalid(v, "must not contain duplicate items (items %zu and %zu are equal)",
                               i, j);
    return 0;
}

static int validate_node(struct validator *v, const struct schema *s, struct json_object *o)
{
    unsigned t = instance_types(o);

    if (s->boolean == 1)
        return 0;
    if (s->boolean == 0)
        return invalid(v, "is not allowed");
    if (t == 0)
        return invalid(v, "must be a finite number");
    if (s->types != 0 && !(s->types & t))
        return type_error(v, s->types);
    if (s->has_enum) {
        size_t n = json_object_array_length(s->enum_values), i;
        for (i = 0; i < n; i++)
            if (json_equal(o, json_object_array_get_idx(s->enum_values, i)))
                break;
        if (i == n)
            return invalid(v, "must be one of %s", s->enum_text);
    }
    if (s->has_const && !json_equal(o, s->const_value))
        return invalid(v, "must be %s", s->const_text);
    if (t & TYPE_NUMBER)
        return validate_numbers(v, s, o);
    if (t & TYPE_STRING)
        return validate_string(v, s, o);
    if (t & TYPE_OBJECT)
        return validate_object(v, s, o);
    if (t & TYPE_ARRAY)
        return validate_array(v, s, o);
    return 0;
}

int schema_validate(const struct schema *s, struct json_object *instance, char *err, size_t errlen)
{
    struct validator v = {.err = err, .errlen = errlen};

    if (deeper_than(instance, SCHEMA_DEPTH_MAX))
        return invalid(&v, "nested deeper than %d levels", SCHEMA_DEPTH_MAX);
    return validate_node(&v, s, instance);
}

int schema_apply_defaults(const struct schema *s, struct json_object *obj)
{
    struct json_object **copies = NULL;
    bool *missing = NULL;
    size_t added = 0, i;
    int r = 0;

    if (!json_object_is_type(obj, json_type_object))
        return -EINVAL;
    if (s->n_properties == 0)
        return 0;
    copies = calloc(s->n_properties, sizeof(*copies));
    missing = calloc(s->n_properties, sizeof(*missing));
    if (copies == NULL || missing == NULL) {
        r = -ENOMEM;
        goto out;
    }
    /* Copy every default before adding any, so a failure leaves obj as it was. */
    for (i = 0; i < s->n_properties; i++) {
        const struct schema *p = s->properties[i].schema;
        if (!p->has_default || json_object_object_get_ex(obj, s->properties[i].name, NULL))
            continue;
        missing[i] = true;
        if (p->default_value != NULL &&
            json_object_deep_copy(p->default_value, &copies[i], NULL) < 0) {
            r = -ENOMEM;
            goto out;
        }
    }
    for (i = 0; i < s->n_properties; i++) {
        if (!missing[i])
            continue;
        if (json_object_object_add(obj, s->properties[i].name, copies[i]) < 0) {
            r = -ENOMEM;
            goto out;
        }
        copies[i] = NULL;
        added = i + 1;
    }
out:
    if (r < 0) {
        for (i = 0; i < added; i++)
            if (missing[i])
                json_object_object_del(obj, s->properties[i].name);
    }
    for (i = 0; copies != NULL && i < s->n_properties; i++)
        json_object_put(copies[i]);
    free(copies);
    free(missing);
    return r;
}
