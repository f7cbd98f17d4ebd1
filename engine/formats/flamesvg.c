/* The flame graph's SVG document (see flamesvg.h): the markup, style and script both flame graphs
 * share, and the layout of a tree's frames. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/flamesvg.h"

#define FRAME_H 16
#define TOP_H 60
#define BOTTOM_H 30
#define CHAR_W 7 /* of the 12px monospace font, for fitting names in frames */

/* The script works from each frame's label (data-name), its title (its hover text, "LABEL in
 * MODULE at FILE:LINE" and its figures in parentheses, the rest what a search looks through)
 * and its rect. */
static const char script[] =
    "\"use strict\";\n"
    "var details, matched, unzoombtn, frames, fullw;\n"
    "function rect(g) { return g.getElementsByTagName(\"rect\")[0]; }\n"
    "function fname(g) { return g.getAttribute(\"data-name\"); }\n"
    "function about(g) {\n"
    "  var t = g.getElementsByTagName(\"title\")[0].textContent;\n"
    "  return t.replace(/ \\((\\d+ samples, [0-9.]+%|[0-9.]+% -> [0-9.]+%, [-+][0-9.]+ pts)\\)$/,"
    " \"\");\n"
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

void flamesvg_text(struct flamesvg *s, const char *text, size_t max)
{
    size_t len = strlen(text), i = 0;

    for (; i < len && max; max--) {
        uint32_t cp;
        size_t k = profile_utf8_next(text + i, len - i, &cp);
        if (!k || cp == 0xfffe || cp == 0xffff)
            atomicfile_write(s->f, "\xef\xbf\xbd", 3);
        else if (cp < 0x20 || cp == 0x7f)
            atomicfile_putc(s->f, ' ');
        else if (cp == '&')
            atomicfile_write(s->f, "&amp;", 5);
        else if (cp == '<')
            atomicfile_write(s->f, "&lt;", 4);
        else if (cp == '>')
            atomicfile_write(s->f, "&gt;", 4);
        else if (cp == '"')
            atomicfile_write(s->f, "&quot;", 6);
        else
            atomicfile_write(s->f, text + i, k);
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

static int cmp_sibling(const void *a, const void *b, void *ctx)
{
    const struct flamesvg_tree *t = ctx;

    return t->cmp(t->ctx, *(const uint32_t *)a, *(const uint32_t *)b);
}

int flamesvg_layout(const struct flamesvg_tree *t, uint64_t **ret_x)
{
    size_t i, n = t->n;
    uint32_t *first = calloc(n + 1, sizeof(*first)), *child = malloc((n ? n : 1) * sizeof(*child));
    uint64_t *x = calloc(n ? n : 1, sizeof(*x));
    int r = -ENOMEM;

    if (!first || !child || !x)
        goto out;
    /* Children lists: child[first[p] .. first[p + 1]) are p's. */
    for (i = 1; i < n; i++)
        first[t->parent(t->ctx, (uint32_t)i) + 1]++;
    for (i = 0; i < n; i++)
        first[i + 1] += first[i];
    for (i = 1; i < n; i++)
        child[first[t->parent(t->ctx, (uint32_t)i)]++] = (uint32_t)i;
    for (i = n; i > 0; i--)
        first[i] = first[i - 1];
    first[0] = 0;
    /* A parent comes before its children: one pass in index order places all. */
    for (i = 0; i < n; i++) {
        uint64_t at = x[i];

        qsort_r(child + first[i], first[i + 1] - first[i], sizeof(*child), cmp_sibling, (void *)t);
        for (uint32_t k = first[i]; k < first[i + 1]; k++) {
            x[child[k]] = at;
            at += t->width(t->ctx, child[k]);
        }
    }
    *ret_x = x;
    x = NULL;
    r = 0;
out:
    free(first);
    free(child);
    free(x);
    return r;
}

double flamesvg_scale(uint64_t total)
{
    return total ? (double)(FLAMESVG_WIDTH - 2 * FLAMESVG_PAD_X) / (double)total : 0;
}

int flamesvg_open(struct flamesvg *s, const char *path, uint32_t depth, unsigned extra_lines,
                  const unsigned char background[3], const char *title, const char *subtitle)
{
    int r;

    memset(s, 0, sizeof(*s));
    s->base = TOP_H + ((double)depth + 1) * FRAME_H;
    s->extra_y = s->base + FLAMESVG_LINE_H + 2;
    s->height =
        (unsigned)s->base + extra_lines * FLAMESVG_LINE_H + (extra_lines ? 8 : 0) + BOTTOM_H;
    r = atomicfile_open(path, &s->f);
    if (r < 0)
        return r;
    atomicfile_printf(s->f,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
                      "<svg version=\"1.1\" width=\"%d\" height=\"%u\" viewBox=\"0 0 %d %u\" "
                      "onload=\"init(evt)\" xmlns=\"http://www.w3.org/2000/svg\">\n"
                      "<style type=\"text/css\"><![CDATA[\n%s]]></style>\n"
                      "<script type=\"text/ecmascript\"><![CDATA[\n%s]]></script>\n"
                      "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%u\" "
                      "fill=\"rgb(%u,%u,%u)\"/>\n"
                      "<text id=\"title\" x=\"%d\" y=\"24\">",
                      FLAMESVG_WIDTH, s->height, FLAMESVG_WIDTH, s->height, style, script,
                      FLAMESVG_WIDTH, s->height, background[0], background[1], background[2],
                      FLAMESVG_WIDTH / 2);
    flamesvg_text(s, title, SIZE_MAX);
    atomicfile_printf(s->f, "</text>\n<text id=\"subtitle\" x=\"%d\" y=\"44\">",
                      FLAMESVG_WIDTH / 2);
    flamesvg_text(s, subtitle, SIZE_MAX);
    atomicfile_printf(s->f,
                      "</text>\n"
                      "<text id=\"unzoom\" class=\"btn hide\" x=\"%d\" y=\"24\" "
                      "onclick=\"unzoom()\">Reset Zoom</text>\n"
                      "<text id=\"search\" class=\"btn\" x=\"%d\" y=\"24\" "
                      "onclick=\"search()\">Search</text>\n"
                      "<text id=\"matched\" x=\"%d\" y=\"%u\"> </text>\n"
                      "<text id=\"details\" x=\"%d\" y=\"%u\"> </text>\n",
                      FLAMESVG_PAD_X, FLAMESVG_WIDTH - FLAMESVG_PAD_X - 60,
                      FLAMESVG_WIDTH - FLAMESVG_PAD_X - 240, s->height - 10, FLAMESVG_PAD_X,
                      s->height - 10);
    return 0;
}

void flamesvg_frames(struct flamesvg *s)
{
    atomicfile_printf(s->f, "<g id=\"frames\">\n");
}

void flamesvg_frame_begin(struct flamesvg *s, const char *label)
{
    atomicfile_printf(s->f, "<g class=\"f\" data-name=\"");
    flamesvg_text(s, label, SIZE_MAX);
    atomicfile_printf(s->f, "\"><title>");
    flamesvg_text(s, label, SIZE_MAX);
}

void flamesvg_frame_end(struct flamesvg *s, const char *label, uint32_t depth, double x, double w,
                        const unsigned char rgb[3])
{
    double y = s->base - ((double)depth + 1) * FRAME_H;
    size_t fit = w > 6 ? (size_t)((w - 6) / CHAR_W) : 0, len = utf8_chars(label);

    atomicfile_printf(s->f,
                      "</title><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" rx=\"2\" "
                      "fill=\"rgb(%u,%u,%u)\"/><text x=\"%.1f\" y=\"%.1f\">",
                      x, y, w, FRAME_H - 1, rgb[0], rgb[1], rgb[2], x + 3, y + 11.5);
    if (fit >= 3 && len <= fit) {
        flamesvg_text(s, label, SIZE_MAX);
    } else if (fit >= 3) {
        /* Shortened as the script does it on zoom. */
        flamesvg_text(s, label, fit - 2);
        atomicfile_printf(s->f, "..");
    }
    atomicfile_printf(s->f, "</text></g>\n");
}

void flamesvg_whereabouts(struct flamesvg *s, const struct profile *p, uint32_t f)
{
    const struct profile_func *fn = &p->func[f];

    if (fn->module != p->s_unknown && fn->module != fn->file) {
        atomicfile_printf(s->f, " in ");
        flamesvg_text(s, p->str[fn->module], SIZE_MAX);
    }
    if (fn->file) {
        atomicfile_printf(s->f, " at ");
        flamesvg_text(s, p->str[fn->file], SIZE_MAX);
        if (fn->func_line > 0)
            atomicfile_printf(s->f, ":%d", fn->func_line);
    }
}

int flamesvg_commit(struct flamesvg *s)
{
    int r;

    atomicfile_printf(s->f, "</g>\n</svg>\n");
    r = atomicfile_commit(s->f);
    s->f = NULL;
    return r;
}

void flamesvg_abort(struct flamesvg *s)
{
    atomicfile_abort(s->f);
    s->f = NULL;
}
