/* The profile's call tree as one self-contained interactive flame graph SVG: "all" at the bottom,
 * a root per thread name above it, callers below callees, widths proportional to samples. A
 * frame's label is its function; hovering it tells the function's module and file:line too.
 * Zoom, search and hover details are a small script embedded in the file; nothing is fetched.
 * Frames narrower than a tenth of a pixel are left out (and so are absent when zoomed in). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/profile_priv.h"

#define IMG_W 1200
#define PAD_X 10
#define FRAME_H 16
#define TOP_H 60
#define BOTTOM_H 30
#define CHAR_W 7 /* of the 12px monospace font, for fitting names in frames */
#define MIN_FRAME_W 0.1
#define THREAD_PREFIX "thread "
#define LABEL_CAP (PROFILE_MAX_NAME + sizeof(THREAD_PREFIX) + 2)

/* The script works from each frame's label (data-name), its title ("LABEL in MODULE at FILE:LINE
 * (N samples, P%)", what a search looks through) and its rect. */
static const char script[] =
    "\"use strict\";\n"
    "var details, matched, unzoombtn, frames, fullw;\n"
    "function rect(g) { return g.getElementsByTagName(\"rect\")[0]; }\n"
    "function fname(g) { return g.getAttribute(\"data-name\"); }\n"
    "function about(g) {\n"
    "  var t = g.getElementsByTagName(\"title\")[0].textContent;\n"
    "  return t.replace(/ \\(\\d+ samples, [0-9.]+%\\)$/, \"\");\n"
    "}\n"
    "function init(evt) {\n"
    "  details = document.getElementById(\"details\");\n"
    "  matched = document.getElementById(\"matched\");\n"
    "  unzoombtn = document.getElementById(\"unzoom\");\n"
    "  frames = document.getElementById(\"frames\").getElementsByTagName(\"g\");\n"
    "  if (!frames.length)\n"
    "    return;\n"
    "  fullw = +rect(frames[0]).getAttribute(\"width\");\n"
    "  for (var i = 0; i < frames.length; i++) {\n"
    "    var g = frames[i], r = rect(g);\n"
    "    g.setAttribute(\"data-x\", r.getAttribute(\"x\"));\n"
    "    g.setAttribute(\"data-w\", r.getAttribute(\"width\"));\n"
    "    r.setAttribute(\"data-fill\", r.getAttribute(\"fill\"));\n"
    "    g.addEventListener(\"click\", function() { zoom(this); });\n"
    "    g.addEventListener(\"mouseover\", function() {\n"
    "      details.textContent = this.getElementsByTagName(\"title\")[0].textContent;\n"
    "    });\n"
    "    g.addEventListener(\"mouseout\", function() { details.textContent = \" \"; });\n"
    "  }\n"
    "}\n"
    "function place(g, x, w) {\n"
    "  var r = rect(g), t = g.getElementsByTagName(\"text\")[0];\n"
    "  var n = Math.floor((w - 6) / 7), s = Array.from(fname(g));\n"
    "  r.setAttribute(\"x\", x.toFixed(1));\n"
    "  r.setAttribute(\"width\", w.toFixed(1));\n"
    "  t.setAttribute(\"x\", (x + 3).toFixed(1));\n"
    "  t.textContent = n < 3 ? \"\" : s.length <= n ? s.join(\"\") :\n"
    "    s.slice(0, n - 2).join(\"\") + \"..\";\n"
    "}\n"
    "function zoom(node) {\n"
    "  var nx = +node.getAttribute(\"data-x\"), nw = +node.getAttribute(\"data-w\");\n"
    "  var ny = +rect(node).getAttribute(\"y\"), x0 = +frames[0].getAttribute(\"data-x\");\n"
    "  var scale = fullw / nw, eps = 1e-6;\n"
    "  unzoombtn.setAttribute(\"class\", \"btn\");\n"
    "  for (var i = 0; i < frames.length; i++) {\n"
    "    var g = frames[i], x = +g.getAttribute(\"data-x\"), w = +g.getAttribute(\"data-w\");\n"
    "    var y = +rect(g).getAttribute(\"y\");\n"
    "    if (x + w <= nx + eps || x >= nx + nw - eps) {\n"
    "      g.style.display = \"none\";\n"
    "      continue;\n"
    "    }\n"
    "    g.style.display = \"\";\n"
    "    if (y > ny) {\n"
    "      g.setAttribute(\"class\", \"f parent\");\n"
    "      place(g, x0, fullw);\n"
    "    } else {\n"
    "      g.setAttribute(\"class\", \"f\");\n"
    "      place(g, x0 + (x - nx) * scale, w * scale);\n"
    "    }\n"
    "  }\n"
    "}\n"
    "function unzoom() {\n"
    "  unzoombtn.setAttribute(\"class\", \"btn hide\");\n"
    "  for (var i = 0; i < frames.length; i++) {\n"
    "    var g = frames[i];\n"
    "    g.style.display = \"\";\n"
    "    g.setAttribute(\"class\", \"f\");\n"
    "    place(g, +g.getAttribute(\"data-x\"), +g.getAttribute(\"data-w\"));\n"
    "  }\n"
    "}\n"
    "function search() {\n"
    "  var term = prompt(\"Search frames (regular expression); empty to clear:\", \"\");\n"
    "  var re, spans = [], covered = 0, end = -1;\n"
    "  if (term === null)\n"
    "    return;\n"
    "  try { re = new RegExp(term); } catch (e) { alert(\"Bad expression: \" + e); return; }\n"
    "  for (var i = 0; i < frames.length; i++) {\n"
    "    var g = frames[i], r = rect(g), hit = term !== \"\" && re.test(about(g));\n"
    "    r.setAttribute(\"fill\", hit ? \"rgb(230,0,230)\" : r.getAttribute(\"data-fill\"));\n"
    "    if (hit)\n"
    "      spans.push([+g.getAttribute(\"data-x\"), +g.getAttribute(\"data-w\")]);\n"
    "  }\n"
    "  spans.sort(function(a, b) { return a[0] - b[0]; });\n"
    "  for (var j = 0; j < spans.length; j++) {\n"
    "    var a = spans[j][0], b = a + spans[j][1];\n"
    "    if (a < end)\n"
    "      a = end;\n"
    "    if (b > a)\n"
    "      covered += b - a;\n"
    "    if (b > end)\n"
    "      end = b;\n"
    "  }\n"
    "  matched.textContent = term === \"\" ? \" \" :\n"
    "    \"Matched: \" + (100 * covered / fullw).toFixed(2) + \"% of samples\";\n"
    "}\n";

static const char style[] = "text { font-family: monospace; font-size: 12px; fill: rgb(0,0,0); }\n"
                            "#title { font-size: 17px; text-anchor: middle; }\n"
                            "#subtitle { text-anchor: middle; fill: rgb(90,90,90); }\n"
                            ".btn { cursor: pointer; fill: rgb(30,60,160); }\n"
                            ".btn:hover { text-decoration: underline; }\n"
                            ".hide { display: none; }\n"
                            ".f { cursor: pointer; }\n"
                            ".f:hover rect { stroke: rgb(0,0,0); stroke-width: 0.5; }\n"
                            ".parent { opacity: 0.5; }\n";

/* Module palette: a function's color is its module's, shaded by its name. */
static const unsigned char palette[][3] = {
    {230, 110, 60}, {225, 170, 60}, {210, 90, 90},   {200, 160, 100},
    {230, 200, 80}, {185, 125, 65}, {220, 130, 130}, {205, 105, 45},
};

struct fg {
    struct atomicfile *f;
    const struct profile *p;
    uint32_t *child, *first; /* children of n: child[first[n] .. first[n + 1]) */
    uint64_t *x;             /* offset of each node, in samples */
};

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static const char *node_name(const struct profile *p, uint32_t n)
{
    if (n == 0)
        return "all";
    if (p->node[n].depth == 1)
        return p->str[p->node[n].id];
    return p->str[p->func[p->node[n].id].name];
}

static int cmp_child(const void *a, const void *b, void *ctx)
{
    const struct profile *p = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = strcmp(node_name(p, x), node_name(p, y));
    if (c)
        return c;
    return (p->node[x].id > p->node[y].id) - (p->node[x].id < p->node[y].id);
}

/* XML text of s, at most max characters: markup escaped, control characters as spaces, and
 * what XML 1.0 cannot carry (bad UTF-8, U+FFFE, U+FFFF) as U+FFFD. */
static void put_xml(struct atomicfile *f, const char *s, size_t max)
{
    size_t len = strlen(s), i = 0;
    for (; i < len && max; max--) {
        uint32_t cp;
        size_t k = profile_utf8_next(s + i, len - i, &cp);
        if (!k || cp == 0xfffe || cp == 0xffff)
            atomicfile_write(f, "\xef\xbf\xbd", 3);
        else if (cp < 0x20 || cp == 0x7f)
            atomicfile_putc(f, ' ');
        else if (cp == '&')
            atomicfile_write(f, "&amp;", 5);
        else if (cp == '<')
            atomicfile_write(f, "&lt;", 4);
        else if (cp == '>')
            atomicfile_write(f, "&gt;", 4);
        else if (cp == '"')
            atomicfile_write(f, "&quot;", 6);
        else
            atomicfile_write(f, s + i, k);
        i += k ? k : 1;
    }
}

static size_t utf8_chars(const char *s)
{
    size_t len = strlen(s), i = 0, n = 0;
    while (i < len) {
        uint32_t cp;
        size_t k = profile_utf8_next(s + i, len - i, &cp);
        i += k ? k : 1;
        n++;
    }
    return n;
}

static void node_color(const struct profile *p, uint32_t n, unsigned char rgb[3])
{
    const struct profile_node *nd = &p->node[n];
    uint32_t h;
    size_t i;

    if (n == 0 || nd->depth == 1) {
        h = n ? hash_name(node_name(p, n)) : 0;
        rgb[0] = (unsigned char)(150 + h % 30);
        rgb[1] = (unsigned char)(170 + h % 30);
        rgb[2] = 210;
        return;
    }
    if (p->func[nd->id].module == p->s_unknown) {
        rgb[0] = rgb[1] = rgb[2] = 190;
        return;
    }
    memcpy(rgb, palette[hash_name(p->str[p->func[nd->id].module]) % 8], 3);
    h = hash_name(node_name(p, n));
    for (i = 0; i < 3; i++) {
        int v = rgb[i] + (int)((h >> (8 * i)) & 31) - 16;
        rgb[i] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

/* A frame's label into buf (LABEL_CAP bytes): "all", "thread NAME", the function's name, or for
 * a function without a symbol its module's base name in brackets, as perf's flame graphs name
 * it ("[libx.so.1]"). */
static void frame_label(const struct profile *p, uint32_t n, char *buf)
{
    const struct profile_func *fn = n && p->node[n].depth > 1 ? &p->func[p->node[n].id] : NULL;
    const char *base;

    if (n && !fn) {
        snprintf(buf, LABEL_CAP, "%s%s", THREAD_PREFIX, node_name(p, n));
    } else if (fn && fn->name == p->s_unknown && fn->module != p->s_unknown) {
        base = strrchr(p->str[fn->module], '/');
        snprintf(buf, LABEL_CAP, "[%s]", base && base[1] ? base + 1 : p->str[fn->module]);
    } else {
        snprintf(buf, LABEL_CAP, "%s", node_name(p, n));
    }
}

/* What hovering a function's frame adds to its label: " in MODULE" (unless unknown, or the
 * Python file that stands for it) and " at FILE:LINE" (its first line; FILE alone without). */
static void put_whereabouts(struct fg *c, uint32_t n)
{
    const struct profile *p = c->p;
    const struct profile_func *fn;

    if (n == 0 || p->node[n].depth == 1)
        return;
    fn = &p->func[p->node[n].id];
    if (fn->module != p->s_unknown && fn->module != fn->file) {
        atomicfile_printf(c->f, " in ");
        put_xml(c->f, p->str[fn->module], SIZE_MAX);
    }
    if (fn->file) {
        atomicfile_printf(c->f, " at ");
        put_xml(c->f, p->str[fn->file], SIZE_MAX);
        if (fn->func_line > 0)
            atomicfile_printf(c->f, ":%d", fn->func_line);
    }
}

static void put_frame(struct fg *c, uint32_t n, double scale, unsigned height)
{
    const struct profile *p = c->p;
    const struct profile_node *nd = &p->node[n];
    double x = PAD_X + (double)c->x[n] * scale, w = (double)nd->samples * scale;
    double y = height - BOTTOM_H - (double)(nd->depth + 1) * FRAME_H;
    size_t fit = w > 6 ? (size_t)((w - 6) / CHAR_W) : 0, len;
    unsigned char rgb[3];
    char label[LABEL_CAP];

    frame_label(p, n, label);
    len = utf8_chars(label);
    node_color(p, n, rgb);
    atomicfile_printf(c->f, "<g class=\"f\" data-name=\"");
    put_xml(c->f, label, SIZE_MAX);
    atomicfile_printf(c->f, "\"><title>");
    put_xml(c->f, label, SIZE_MAX);
    put_whereabouts(c, n);
    atomicfile_printf(c->f,
                      " (%" PRIu64 " samples, %.2f%%)</title>"
                      "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" rx=\"2\" "
                      "fill=\"rgb(%u,%u,%u)\"/><text x=\"%.1f\" y=\"%.1f\">",
                      nd->samples, 100.0 * (double)nd->samples / (double)p->node[0].samples, x, y,
                      w, FRAME_H - 1, rgb[0], rgb[1], rgb[2], x + 3, y + 11.5);
    if (fit >= 3 && len <= fit) {
        put_xml(c->f, label, SIZE_MAX);
    } else if (fit >= 3) {
        /* Shortened as the script does it on zoom. */
        put_xml(c->f, label, fit - 2);
        atomicfile_printf(c->f, "..");
    }
    atomicfile_printf(c->f, "</text></g>\n");
}

/* Children lists sorted by name (as flame graphs are), and each node's offset from them. */
static int layout(struct fg *c)
{
    const struct profile *p = c->p;
    size_t i, n = p->nnode;

    c->first = calloc(n + 1, sizeof(*c->first));
    c->child = malloc(n * sizeof(*c->child));
    c->x = calloc(n, sizeof(*c->x));
    if (!c->first || !c->child || !c->x)
        return -ENOMEM;
    for (i = 1; i < n; i++)
        c->first[p->node[i].parent + 1]++;
    for (i = 0; i < n; i++)
        c->first[i + 1] += c->first[i];
    for (i = 1; i < n; i++)
        c->child[c->first[p->node[i].parent]++] = (uint32_t)i;
    for (i = n; i > 0; i--)
        c->first[i] = c->first[i - 1];
    c->first[0] = 0;
    /* A parent is always created before its children: one pass in index order places all. */
    for (i = 0; i < n; i++) {
        uint64_t at = c->x[i];
        uint32_t k;
        qsort_r(c->child + c->first[i], c->first[i + 1] - c->first[i], sizeof(*c->child), cmp_child,
                (void *)p);
        for (k = c->first[i]; k < c->first[i + 1]; k++) {
            c->x[c->child[k]] = at;
            at += p->node[c->child[k]].samples;
        }
    }
    return 0;
}

int profile_write_flamegraph(const struct profile *p, const char *path, const char *title,
                             struct error *err)
{
    struct fg c = {0};
    uint32_t depth = 0;
    unsigned height;
    double scale;
    size_t i, threads = 0;
    int r;

    error_clear(err);
    c.p = p;
    r = layout(&c);
    if (r < 0)
        goto out;
    for (i = 0; i < p->nnode; i++) {
        if (p->node[i].depth > depth)
            depth = p->node[i].depth;
        threads += p->node[i].depth == 1;
    }
    height = TOP_H + (depth + 1) * FRAME_H + BOTTOM_H;
    scale = p->node[0].samples ? (double)(IMG_W - 2 * PAD_X) / (double)p->node[0].samples : 0;
    r = atomicfile_open(path, &c.f);
    if (r < 0)
        goto out;
    atomicfile_printf(c.f,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
                      "<svg version=\"1.1\" width=\"%d\" height=\"%u\" viewBox=\"0 0 %d %u\" "
                      "onload=\"init(evt)\" xmlns=\"http://www.w3.org/2000/svg\">\n"
                      "<style type=\"text/css\"><![CDATA[\n%s]]></style>\n"
                      "<script type=\"text/ecmascript\"><![CDATA[\n%s]]></script>\n"
                      "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%u\" "
                      "fill=\"rgb(250,250,245)\"/>\n"
                      "<text id=\"title\" x=\"%d\" y=\"24\">",
                      IMG_W, height, IMG_W, height, style, script, IMG_W, height, IMG_W / 2);
    put_xml(c.f, title ? title : "CPU profile", SIZE_MAX);
    atomicfile_printf(c.f,
                      "</text>\n<text id=\"subtitle\" x=\"%d\" y=\"44\">%" PRIu64
                      " samples, %zu thread names, %.3f s sampled; click a frame to zoom</text>\n"
                      "<text id=\"unzoom\" class=\"btn hide\" x=\"%d\" y=\"24\" "
                      "onclick=\"unzoom()\">Reset Zoom</text>\n"
                      "<text id=\"search\" class=\"btn\" x=\"%d\" y=\"24\" "
                      "onclick=\"search()\">Search</text>\n"
                      "<text id=\"matched\" x=\"%d\" y=\"%u\"> </text>\n"
                      "<text id=\"details\" x=\"%d\" y=\"%u\"> </text>\n<g id=\"frames\">\n",
                      IMG_W / 2, p->samples, threads, (double)p->total_ns / 1e9, PAD_X,
                      IMG_W - PAD_X - 60, IMG_W - PAD_X - 240, height - 10, PAD_X, height - 10);
    for (i = 0; i < p->nnode; i++)
        if (p->node[0].samples && (double)p->node[i].samples * scale >= MIN_FRAME_W)
            put_frame(&c, (uint32_t)i, scale, height);
    atomicfile_printf(c.f, "</g>\n</svg>\n");
    r = atomicfile_commit(c.f);
    c.f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(c.f);
    free(c.first);
    free(c.child);
    free(c.x);
    return r;
}
