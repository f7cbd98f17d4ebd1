/* The `dump_sockets` action: every socket of the target, in Python's socket repr, as one record.
 * Not the listing itself (engine/objects/sockets.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "actions.h"
#include "objects/sockets.h"
#include "run.h"

struct socket_lines {
    char *text;
    size_t len, cap;
    unsigned count;
};

static int add_socket_line(const char *line, void *userdata)
{
    struct socket_lines *s = userdata;
    size_t n = strlen(line);

    if (s->len + n + 2 > s->cap) {
        size_t cap = (s->cap + n + 2) * 2;
        char *p = realloc(s->text, cap);

        if (!p)
            return -ENOMEM;
        s->text = p;
        s->cap = cap;
    }
    s->text[s->len++] = '\n';
    memcpy(s->text + s->len, line, n + 1);
    s->len += n;
    s->count++;
    return 0;
}

int action_dump_sockets(struct run *run)
{
    struct socket_lines lines = {0};
    struct error e;

    if (sockets_dump(PROCFS_ROOT, run->target.pid, add_socket_line, &lines, &e) < 0) {
        free(lines.text);
        return run_engine_fail_error(run, "socket listing", &e);
    }
    run_record(run, "Sockets used by %s (pid %d):%s", run->target.name, (int)run->target.pid,
               lines.text ? lines.text : "");
    json_object_object_add(run->summary, "sockets", json_object_new_int((int)lines.count));
    free(lines.text);
    return 0;
}
