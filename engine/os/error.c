/* The engine's one error convention: see error.h. */
#include <stdarg.h>
#include <stdio.h>
#include "os/error.h"

int error_set(struct error *e, int code, const char *fmt, ...)
{
    va_list ap;

    if (!e)
        return code;
    e->code = code;
    e->reason[0] = '\0';
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(e->reason, sizeof(e->reason), fmt, ap);
        va_end(ap);
    }
    return code;
}

void error_clear(struct error *e)
{
    if (e) {
        e->code = 0;
        e->reason[0] = '\0';
    }
}

int error_fill(struct error *e, int code)
{
    if (e && !e->code)
        error_set(e, code, NULL);
    return code;
}
