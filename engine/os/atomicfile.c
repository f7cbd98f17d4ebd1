/* Write-to-temporary-then-rename files with sticky errors (see atomicfile.h). The buffer is ours
 * rather than stdio's so that the errno of the write that failed is the one reported. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include "os/atomicfile.h"

#define ATOMICFILE_BUF (64 * 1024)
#define ATOMICFILE_MODE 0640

struct atomicfile {
    int fd;
    int err;     /* first error, negative errno */
    int created; /* tmp exists and is ours to unlink */
    char *path, *tmp;
    size_t len;
    char buf[ATOMICFILE_BUF];
};

static void flush_buf(struct atomicfile *f)
{
    size_t off = 0;
    while (!f->err && off < f->len) {
        ssize_t w = write(f->fd, f->buf + off, f->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            f->err = -errno;
        else if (w == 0)
            f->err = -EIO;
        else
            off += (size_t)w;
    }
    f->len = 0;
}

static int open_tmp(const char *tmp)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, ATOMICFILE_MODE);
    if (fd < 0 && errno == EEXIST) {
        /* Our pid owns this name: the file can only be a leftover of a crashed earlier us. */
        if (unlink(tmp) < 0)
            return -errno;
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, ATOMICFILE_MODE);
    }
    return fd < 0 ? -errno : fd;
}

int atomicfile_open(const char *path, struct atomicfile **ret)
{
    struct atomicfile *f = NULL;
    size_t n;
    int r;

    if (!path || !*path)
        return -EINVAL;
    f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->fd = -1;
    n = strlen(path) + sizeof(".tmp.") + 3 * sizeof(pid_t);
    f->path = strdup(path);
    f->tmp = malloc(n);
    if (!f->path || !f->tmp) {
        r = -ENOMEM;
        goto out;
    }
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    r = open_tmp(f->tmp);
    if (r < 0)
        goto out;
    f->fd = r;
    f->created = 1;
    /* The umask must not decide who may read profiles. */
    if (fchmod(f->fd, ATOMICFILE_MODE) < 0) {
        r = -errno;
        goto out;
    }
    *ret = f;
    f = NULL;
    r = 0;
out:
    atomicfile_abort(f);
    return r;
}

void atomicfile_write(struct atomicfile *f, const void *buf, size_t len)
{
    const char *p = buf;
    while (len && !f->err) {
        size_t k = sizeof(f->buf) - f->len;
        if (k > len)
            k = len;
        memcpy(f->buf + f->len, p, k);
        f->len += k;
        p += k;
        len -= k;
        if (f->len == sizeof(f->buf))
            flush_buf(f);
    }
}

void atomicfile_putc(struct atomicfile *f, char c)
{
    if (f->len == sizeof(f->buf))
        flush_buf(f);
    if (!f->err)
        f->buf[f->len++] = c;
}

void atomicfile_printf(struct atomicfile *f, const char *fmt, ...)
{
    va_list ap;
    char small[512];
    char *big = NULL;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        if (!f->err)
            f->err = -EINVAL;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        atomicfile_write(f, small, (size_t)n);
        return;
    }
    big = malloc((size_t)n + 1);
    if (!big) {
        if (!f->err)
            f->err = -ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    atomicfile_write(f, big, (size_t)n);
    free(big);
}

int atomicfile_commit(struct atomicfile *f)
{
    int r;

    flush_buf(f);
    r = f->err;
    if (!r && fsync(f->fd) < 0)
        r = -errno;
    if (close(f->fd) < 0 && !r)
        r = -errno;
    f->fd = -1;
    if (!r && rename(f->tmp, f->path) < 0)
        r = -errno;
    if (!r)
        f->created = 0;
    atomicfile_abort(f);
    return r;
}

void atomicfile_abort(struct atomicfile *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    if (f->created)
        unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    free(f);
}
