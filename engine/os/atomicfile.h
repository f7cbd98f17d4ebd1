/* Whole-file writes that readers never see half done: data goes to PATH.tmp.PID, is flushed and
 * fsync'd, and only then renamed to PATH (mode 0640). Write errors are sticky and reported once,
 * at commit; on any error the temporary file is removed. Not for appending or for huge records
 * that must stream with per-call error checks. */
#ifndef ATOMICFILE_H
#define ATOMICFILE_H

#include <stddef.h>

struct atomicfile;

/* Creates PATH.tmp.PID (exclusively; a stale one left by a crashed process with our pid is
 * replaced). -errno of open, -ENOMEM. */
int atomicfile_open(const char *path, struct atomicfile **ret);
/* Buffered writes; the first error is kept and returned by atomicfile_commit. */
void atomicfile_write(struct atomicfile *f, const void *buf, size_t len);
void atomicfile_putc(struct atomicfile *f, char c);
void atomicfile_printf(struct atomicfile *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Flushes, fsyncs and renames to the final path, then frees f. On failure the temporary file
 * is unlinked, f is freed and the first error is returned (-ENOSPC, -EIO, ...). */
int atomicfile_commit(struct atomicfile *f);
/* Drops the temporary file and frees f; accepts NULL. */
void atomicfile_abort(struct atomicfile *f);

#endif
