/* Running a shipped script inside a CPython target (see pyexec.h).
 *
 * The files. In the first of the target's /tmp, /var/tmp, /dev/shm that exists (as the target
 * sees it: through /proc/PID/root when it lives in another mount namespace), three files named
 * profiler-agent-py.RANDOM.{py,in.json,out.json}, created O_EXCL, mode 0600, given to the target's
 * user (no fallback to wider modes: the output holds the target's data). The script copy is the
 * shipped prelude (the main() every script shares), the shipped script, and one line,
 * `main(SCRIPT, INPUT, OUTPUT)`: under PEP 768 the script runs from a fresh namespace without its
 * own path, so the paths (our random names, checked to be plain) are the only thing the agent
 * writes that is not the shipped text. The script opens its
 * input and output, then unlinks all three before it works, so a run the agent no longer waits for
 * (the agent killed with -9) still cleans up; the agent holds the directory and the output file
 * open, reads the answer through its own descriptor when the script closes it (inotify), and
 * unlinks whatever is left on every path. Between the files' creation and the request, only a
 * guard removes them if the agent dies there: a child forked before the first file is made,
 * waiting on a pipe; told "placed", it leaves them to the script; at EOF (the agent gone, or done
 * and clean) it unlinks them.
 *
 * 3.14 on (PEP 768, as sys.remote_exec and `pdb -p` do it: Python/remote_debugging.c
 * send_exec_to_proc_handle; the target side is Python/ceval_gil.c _PyRunRemoteDebugger): the
 * interpreter's config.remote_debug must be 1 (PYTHON_DISABLE_REMOTE_DEBUG and -X
 * disable_remote_debug make it 0: refused, said so). The path goes into the chosen thread state's
 * debugger_script_path, then 1 into debugger_pending_call, then _PY_EVAL_PLEASE_STOP_BIT (1 << 5)
 * into its eval_breaker; at its next eval-breaker check that thread runs the file with
 * PyRun_String in a fresh dict. The thread: the one running an asyncio event loop (the one whose
 * task list holds the tasks, as pytasks reads them), else the main thread. Unlike CPython's
 * client, which writes the whole word back, only the eval breaker's low byte is read, or-ed and
 * written: the instrumentation version in its upper bits is never written, and a lost update can
 * only drop an event bit the interpreter sets again (a GIL drop request is re-sent every
 * interval). A request another debugger left pending is not overwritten (-EBUSY). Withdrawing:
 * 0 into the pending flag while the path there is still ours.
 *
 * 3.11 to 3.13: ptrace (inject.h) seizes one thread and calls, in the target,
 * PyMem_RawMalloc for a copy of a short text and Py_AddPendingCall(PyRun_SimpleString, copy);
 * the main thread runs it at its next eval-breaker check, holding the GIL. A pending call is an
 * int (*)(void *): on x86-64 (System V) int PyRun_SimpleString(const char *) takes its one
 * pointer in rdi and returns its int in eax exactly as such a function does, so the interpreter's
 * call through the pointer is that call; no code of ours is placed in the target. The text execs
 * the script in a fresh dict and swallows every exception, because a pending call returning -1
 * without an exception set would raise SystemError in whatever the main thread runs (and a
 * SystemExit would end the process); a KeyboardInterrupt that lands meanwhile is re-raised
 * with _thread.interrupt_main(). Py_AddPendingCall takes the interpreter's pending-call lock: the
 * seized thread must not be inside the interpreter holding it, so it is taken only when it is
 * blocked in a system call, is not the main thread (only the main thread runs pending calls, and
 * other callers of Py_AddPendingCall are rare C extensions), or runs outside the interpreter's
 * code. A queued call cannot be taken back: withdrawing deletes the script, which makes the text
 * a no-op (its open fails, swallowed), and leaves the copy (under 1 KiB) allocated, since the
 * queue still points at it; after an answer, the copy is freed (PyRun_SimpleString parsed it
 * before the script ran, and never reads it again).
 *
 * Either way the request is taken only when the thread runs bytecode: an idle event loop, in
 * epoll_wait with no timer due, never would. So, until the script has started, the caller's
 * wake (see pyexec.h; the agent writes one byte to the loop's self-pipe) is called a few times,
 * bounded; this module itself never touches the target's fds. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "os/inject.h"
#include "os/targetfile.h"
#include "os/procfs.h"
#include "python/pydebug.h"
#include "python/pyexec.h"
#include "python/pyframes.h"
#include "python/pytasks.h"
#include "python/pywalk.h"

#define NAME_TAG "profiler-agent-py."
#define PATH_BYTES 256
#define SLICE_MS 100          /* how often a wait looks at cancel and the target */
#define SEIZE_TRIES 50        /* attempts at a thread safe for Py_AddPendingCall */
#define EVAL_PLEASE_STOP 0x20 /* _PY_EVAL_PLEASE_STOP_BIT, Include/internal/pycore_ceval.h */
#define THREADS_MAX 4096

struct files {
    int dirfd, outfd;
    int guard_fd;                     /* write end of the guard's pipe, -1 when none */
    pid_t guard;                      /* the guard child, 0 when none */
    char dir[PATH_BYTES];             /* as the target sees it */
    char name[3][80];                 /* script, input, output */
    char path[3][PATH_BYTES + 160];   /* as the target sees them */
    char agent_out[PATH_BYTES + 160]; /* our path to the output */
    bool made[3];
};

enum { SCRIPT, INPUT, OUTPUT };

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Appends the shipped file path to *text (of *len bytes, grown). */
static int append_file(const char *path, char **text, size_t *len, struct error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return error_set(err, -errno, "cannot read the script %s: %s", path, strerror(errno));
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > PYEXEC_SCRIPT_MAX) {
        r = error_set(err, -EFBIG, "the script %s is not a file of at most %u bytes", path,
                      PYEXEC_SCRIPT_MAX);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    char *grown = realloc(*text, *len + size + 1);
    if (!grown) {
        r = error_set(err, -ENOMEM, NULL);
        goto out;
    }
    *text = grown;
    if (read(fd, grown + *len, size) != (ssize_t)size) {
        r = error_set(err, -EIO, "cannot read the script %s", path);
        goto out;
    }
    *len += size;
    grown[(*len)++] = '\n'; /* a file without a final newline ends before the next one starts */
out:
    close(fd);
    return r;
}

/* The prelude, then the shipped script, then the line that calls main() with the three paths.
 * The paths are ours (a fixed directory and random hex), checked to need no quoting. */
static int script_text(const struct pyexec_request *req, const struct files *f, char **ret,
                       struct error *err)
{
    for (int i = 0; i < 3; i++)
        for (const char *p = f->path[i]; *p; p++)
            if (!isalnum((unsigned char)*p) && !strchr("/._-", *p))
                return error_set(err, -EINVAL, "the target's temporary directory %s needs quoting",
                                 f->dir);
    char *text = NULL;
    size_t len = 0, tail = sizeof(f->path) + 64;
    int r = req->prelude ? append_file(req->prelude, &text, &len, err) : 0;
    if (r == 0)
        r = append_file(req->script, &text, &len, err);
    char *grown = r == 0 ? realloc(text, len + tail) : NULL;
    if (r == 0 && !grown)
        r = error_set(err, -ENOMEM, NULL);
    if (r < 0) {
        free(text);
        return r;
    }
    snprintf(grown + len, tail, "main(\"%s\", \"%s\", \"%s\")\n", f->path[SCRIPT], f->path[INPUT],
             f->path[OUTPUT]);
    *ret = grown;
    return 0;
}

/* Creates name in the directory, the target's user's, mode 0600, holding data. fd_ret (may be
 * NULL) keeps it open for reading. */
static int make_file(struct files *f, int which, pid_t pid, const char *data, int *fd_ret,
                     struct error *err)
{
    int fd =
        openat(f->dirfd, f->name[which], O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return error_set(err, -errno, "cannot create %s in the target's %s: %s", f->name[which],
                         f->dir, strerror(errno));
    f->made[which] = true;
    int r = targetfile_give(fd, pid, 0);
    if (r < 0) {
        r = error_set(err, -EPERM,
                      "cannot give a file in the target's %s to its user (%s): the agent needs "
                      "CAP_CHOWN to run scripts in a process of another user",
                      f->dir, strerror(-r));
        goto fail;
    }
    r = write_all(fd, data, strlen(data));
    if (r < 0) {
        error_set(err, r, "cannot write %s in the target's %s: %s", f->name[which], f->dir,
                  strerror(-r));
        goto fail;
    }
    if (fd_ret)
        *fd_ret = fd;
    else
        close(fd);
    return 0;
fail:
    close(fd);
    return r;
}

/* The guard: forked from a threaded process, so only async-signal-safe calls (read, unlinkat,
 * _exit) from here on. Until the parent writes a byte it owns the files' removal. */
static __attribute__((noreturn)) void guard_main(const struct files *f, int fd)
{
    char c;
    ssize_t got;

    while ((got = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    if (got != 1)
        for (int i = 0; i < 3; i++)
            unlinkat(f->dirfd, f->name[i], 0);
    _exit(0);
}

/* Starts the guard of f's files (names and directory known, no file made yet). */
static int guard_start(struct files *f, struct error *err)
{
    int fds[2];

    if (pipe2(fds, O_CLOEXEC) < 0)
        return error_set(err, -errno, "cannot make a pipe: %s", strerror(errno));
    pid_t child = fork();
    if (child < 0) {
        close(fds[0]);
        close(fds[1]);
        return error_set(err, -errno, "cannot start a process: %s", strerror(errno));
    }
    if (child == 0) {
        close(fds[1]);
        guard_main(f, fds[0]);
    }
    close(fds[0]);
    f->guard = child;
    f->guard_fd = fds[1];
    return 0;
}

/* Ends the guard: placed, the files are the script's to remove (a request in the target will
 * run it); else the guard removes them, as the parent does anyway. */
static void guard_end(struct files *f, bool placed)
{
    if (!f->guard)
        return;
    if (placed && write(f->guard_fd, "p", 1) != 1) {
        /* The guard is gone already: nothing waits for the byte. */
    }
    close(f->guard_fd);
    while (waitpid(f->guard, NULL, 0) < 0 && errno == EINTR)
        ;
    f->guard = 0;
    f->guard_fd = -1;
}

static void files_remove(struct files *f)
{
    for (int i = 0; i < 3; i++)
        if (f->made[i] && f->dirfd >= 0)
            unlinkat(f->dirfd, f->name[i], 0); /* the script may have done it already */
    if (f->outfd >= 0)
        close(f->outfd);
    if (f->dirfd >= 0)
        close(f->dirfd);
    f->outfd = f->dirfd = -1;
}

/* The three files in the target's temporary directory. The directory stays open: the files can
 * be removed even once the target (and with it /proc/PID/root) is gone. */
static int files_make(struct files *f, pid_t pid, const struct pyexec_request *req,
                      struct error *err)
{
    static const char *const dirs[] = {"/tmp", "/var/tmp", "/dev/shm", NULL};
    static const char *const suffix[] = {".py", ".in.json", ".out.json"};
    char agent_dir[PATH_BYTES], target_dir[PATH_BYTES], probe[64], *text = NULL;
    unsigned char rnd[12];
    char hex[sizeof(rnd) * 2 + 1];
    int r;

    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return error_set(err, -EIO, "no random bytes for the file names");
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    snprintf(probe, sizeof(probe), NAME_TAG "%s", hex);
    r = targetfile_place(pid, targetfile_same_ns(pid), dirs, probe, target_dir, sizeof(target_dir),
                         agent_dir, sizeof(agent_dir));
    if (r < 0)
        return error_set(err, r, "the target has no /tmp, /var/tmp or /dev/shm");
    *strrchr(agent_dir, '/') = '\0';
    *strrchr(target_dir, '/') = '\0';
    snprintf(f->dir, sizeof(f->dir), "%s", target_dir);
    for (int i = 0; i < 3; i++) {
        snprintf(f->name[i], sizeof(f->name[i]), "%s%s", probe, suffix[i]);
        snprintf(f->path[i], sizeof(f->path[i]), "%s/%s", f->dir, f->name[i]);
    }
    snprintf(f->agent_out, sizeof(f->agent_out), "%s/%s", agent_dir, f->name[OUTPUT]);
    f->dirfd = open(agent_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->dirfd < 0)
        return error_set(err, -errno, "cannot open the target's %s: %s", f->dir, strerror(errno));
    r = script_text(req, f, &text, err);
    if (r == 0)
        r = guard_start(f, err);
    if (r == 0)
        r = make_file(f, SCRIPT, pid, text, NULL, err);
    if (r == 0)
        r = make_file(f, INPUT, pid, req->input, NULL, err);
    if (r == 0)
        r = make_file(f, OUTPUT, pid, "", &f->outfd, err);
    free(text);
    return r;
}

/* The answer, once the script has closed its output: all of it, ending with a newline. */
static int read_output(struct files *f, char **ret)
{
    struct stat st;
    if (fstat(f->outfd, &st) < 0)
        return -errno;
    if (st.st_size <= 0 || st.st_size > PYEXEC_OUTPUT_MAX)
        return st.st_size > 0 ? -EFBIG : -EAGAIN;
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len + 1);
    if (!buf)
        return -ENOMEM;
    ssize_t n = pread(f->outfd, buf, len, 0);
    if (n != (ssize_t)len || buf[len - 1] != '\n') {
        free(buf);
        return -EAGAIN;
    }
    buf[len] = '\0';
    *ret = buf;
    return 0;
}

static bool target_alive(pid_t pid, uint64_t starttime)
{
    uint64_t st;
    char state;
    return procfs_read_starttime(PROCFS_ROOT, pid, &st) == 0 && st == starttime &&
           procfs_read_state(PROCFS_ROOT, pid, 0, &state) == 0 && state != 'Z' && state != 'X';
}

/* Waits for the script's answer until deadline (monotonic ms). The watch was set before the
 * request went out, so no close is missed. Until the script has started (it removes its own
 * file first), req->wake is called, bounded: the first at once. */
static int wait_answer(struct files *f, int ifd, pid_t pid, uint64_t starttime, int64_t deadline,
                       const struct pyexec_request *req, char **ret)
{
    int64_t next_wake = mono_ms();
    int wakes = 0;

    for (;;) {
        int64_t now = mono_ms(), left = deadline - now;
        if (req->cancel && atomic_load(req->cancel))
            return -ECANCELED;
        if (!target_alive(pid, starttime))
            return -ESRCH;
        if (left <= 0)
            return -ETIMEDOUT;
        if (req->wake && wakes < PYEXEC_WAKES && now >= next_wake &&
            faccessat(f->dirfd, f->name[SCRIPT], F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
            req->wake(pid, req->wake_userdata);
            wakes++;
            next_wake = now + PYEXEC_WAKE_MS;
        }
        struct pollfd pfd = {.fd = ifd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)(left < SLICE_MS ? left : SLICE_MS));
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n <= 0)
            continue;
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        bool closed = false;
        ssize_t len = read(ifd, buf, sizeof(buf));
        for (ssize_t at = 0; len > 0 && at + (ssize_t)sizeof(struct inotify_event) <= len;) {
            const struct inotify_event *ev = (const struct inotify_event *)(buf + at);
            closed |= (ev->mask & IN_CLOSE_WRITE) != 0;
            at += (ssize_t)(sizeof(*ev) + ev->len);
        }
        if (closed && read_output(f, ret) == 0)
            return 0;
    }
}

/* ---- 3.14 on: PEP 768 ---- */

static int write_mem(pid_t pid, uint64_t addr, const void *data, size_t len)
{
    struct iovec local = {(void *)data, len}, remote = {(void *)(uintptr_t)addr, len};
    ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EFAULT;
}

struct thread_entry {
    uint64_t interp, tstate;
    pid_t tid;
};

struct thread_list {
    struct thread_entry *t; /* THREADS_MAX of them */
    size_t n;
};

static int collect_thread(void *ctx, uint64_t interp, uint64_t tstate, pid_t tid)
{
    struct thread_list *l = ctx;
    if (l->n == THREADS_MAX)
        return 1;
    l->t[l->n++] = (struct thread_entry){interp, tstate, tid};
    return 0;
}

/* The thread that runs an event loop: the one running a task, else the one whose list holds
 * the most tasks (a loop thread creates its tasks). 0 when there is none or tasks cannot be
 * read (before 3.14 on this path never, or without _asyncio). */
static pid_t loop_thread(struct pyframes *p, pid_t pid)
{
    struct pytasks_task *tasks;
    size_t n;
    pid_t best = 0;
    struct error e;

    if (pytasks_read(p, pid, &tasks, &n, &e) < 0)
        return 0;
    size_t best_count = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tasks[i].tid)
            continue;
        if (tasks[i].running) {
            best = tasks[i].tid;
            break;
        }
        size_t count = 0;
        for (size_t j = 0; j < n; j++)
            count += tasks[j].tid == tasks[i].tid;
        if (count > best_count) {
            best_count = count;
            best = tasks[i].tid;
        }
    }
    pytasks_free(tasks, n);
    return best;
}

struct remote {
    struct pywalk *w;
    struct thread_list l;
    struct pydebug_remote d;
    uint64_t tstate;
    pid_t tid; /* the target's id of that thread */
};

static int rd_i32(const struct pywalk *w, uint64_t addr, int32_t *ret)
{
    return pywalk_read(w, addr, ret, sizeof(*ret));
}

/* Whether tstate still is a thread state of the target, for tid: a thread that ended meanwhile
 * may have had its memory reused, which we must not write into. */
static bool tstate_alive(struct remote *rm)
{
    rm->l.n = 0;
    if (pywalk_each_thread(rm->w, collect_thread, &rm->l) < 0)
        return false;
    for (size_t i = 0; i < rm->l.n; i++)
        if (rm->l.t[i].tstate == rm->tstate && rm->l.t[i].tid == rm->tid)
            return true;
    return false;
}

static int remote_request(struct pyframes *p, pid_t pid, const struct files *f, struct remote *rm,
                          struct error *err)
{
    struct thread_list *l = &rm->l;
    unsigned char buf[PYDEBUG_READ_MAX];
    int32_t enabled = 0, pending = 0;
    int r;

    rm->w = pyframes_walker(p);
    r = pywalk_read(rm->w, pywalk_addrs(rm->w)->runtime, buf, sizeof(buf));
    if (r < 0)
        return error_set(err, r, "cannot read the target's _Py_DebugOffsets");
    r = pydebug_remote(buf, sizeof(buf), &rm->d, err);
    if (r < 0)
        return r;
    l->t = calloc(THREADS_MAX, sizeof(*l->t));
    if (!l->t)
        return error_set(err, -ENOMEM, NULL);
    l->n = 0;
    r = pywalk_each_thread(rm->w, collect_thread, l);
    if (r < 0 || l->n == 0)
        return error_set(err, r < 0 ? r : -ESRCH, "cannot read the target's thread states");
    /* interpreters.head is the newest: the main interpreter is the last one listed. */
    uint64_t main_interp = l->t[l->n - 1].interp, main_ts = 0;
    if (rd_i32(rm->w, main_interp + rm->d.is_enabled, &enabled) < 0 ||
        pywalk_read(rm->w, main_interp + rm->d.is_threads_main, &main_ts, sizeof(main_ts)) < 0)
        return error_set(err, -EFAULT, "cannot read the target's interpreter state");
    if (enabled != 1)
        return error_set(err, -EOPNOTSUPP,
                         "remote debugging is disabled in the target "
                         "(PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug)");
    pid_t want = loop_thread(p, pid);
    rm->tstate = 0;
    for (size_t i = 0; i < l->n && !rm->tstate; i++)
        if (l->t[i].interp == main_interp &&
            (want ? l->t[i].tid == want : l->t[i].tstate == main_ts)) {
            rm->tstate = l->t[i].tstate;
            rm->tid = l->t[i].tid;
        }
    if (!rm->tstate)
        return error_set(err, -ESRCH, "the target's main thread has no thread state");
    size_t plen = strlen(f->path[SCRIPT]) + 1;
    if (plen > rm->d.script_path_size)
        return error_set(err, -ENAMETOOLONG, "the script's path is too long for the target");
    uint64_t pend_at = rm->tstate + rm->d.ts_pending;
    if (rd_i32(rm->w, pend_at, &pending) < 0)
        return error_set(err, -EFAULT, "cannot read the thread's remote debugging state");
    if (pending)
        return error_set(err, -EBUSY, "another debugger's script is pending in thread %d",
                         (int)rm->tid);
    /* Path first, then the flag, then the bit: the thread acts on the bit, reads the flag, then
     * copies the path. */
    int32_t one = 1;
    uint8_t breaker;
    uint64_t eb_at = rm->tstate + rm->d.ts_eval_breaker;
    r = write_mem(pid, rm->tstate + rm->d.ts_script_path, f->path[SCRIPT], plen);
    if (r == 0)
        r = write_mem(pid, pend_at, &one, sizeof(one));
    if (r == 0)
        r = pywalk_read(rm->w, eb_at, &breaker, 1);
    if (r == 0) {
        breaker |= EVAL_PLEASE_STOP;
        r = write_mem(pid, eb_at, &breaker, 1);
    }
    if (r < 0)
        return error_set(err, r, "cannot write the request into the target: %s", strerror(-r));
    return 0;
}

/* Takes a request the thread has not picked up back: 0 into the flag while the path is ours. */
static void remote_withdraw(pid_t pid, struct remote *rm, const struct files *f)
{
    char path[sizeof(f->path[SCRIPT])];
    int32_t pending = 0, zero = 0;
    size_t plen = strlen(f->path[SCRIPT]) + 1;

    if (rd_i32(rm->w, rm->tstate + rm->d.ts_pending, &pending) < 0 || pending != 1 ||
        pywalk_read(rm->w, rm->tstate + rm->d.ts_script_path, path, plen) < 0 ||
        memcmp(path, f->path[SCRIPT], plen) != 0 || !tstate_alive(rm))
        return;
    write_mem(pid, rm->tstate + rm->d.ts_pending, &zero, sizeof(zero));
}

/* ---- 3.11 to 3.13: Py_AddPendingCall ---- */

struct pending {
    uint64_t add_call, run_string, raw_malloc, raw_free;
    uint64_t copy; /* the text's copy in the target; 0: none */
};

/* Whether pc lies in an executable mapping of the interpreter's module. */
static bool in_interpreter(pid_t pid, const char *module, uint64_t pc)
{
    struct procfs_map *maps;
    size_t n;
    bool in = false;
    if (procfs_read_maps(PROCFS_ROOT, pid, &maps, &n) < 0)
        return true; /* unknown: treat as unsafe */
    for (size_t i = 0; i < n && !in; i++)
        in = maps[i].perms[2] == 'x' && !strcmp(maps[i].path, module) && pc >= maps[i].start &&
             pc < maps[i].end;
    procfs_maps_free(maps, n);
    return in;
}

/* Whether the seized thread tid cannot be holding the pending-call lock (see the top). */
static bool safe_for_pending(pid_t pid, pid_t tid, const char *module)
{
    char path[96], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/syscall", (int)pid, (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0)
        return false;
    buf[len] = '\0';
    if (buf[0] != '-')
        return buf[0] >= '0' && buf[0] <= '9'; /* blocked in a system call */
    if (tid != pid)
        return true; /* not the main thread */
    const char *last = strrchr(buf, ' ');
    if (!last)
        return false;
    char *end;
    errno = 0;
    unsigned long long pc = strtoull(last + 1, &end, 16);
    return !errno && end != last + 1 && !in_interpreter(pid, module, pc);
}

static int seize_for_pending(pid_t pid, const char *module, struct inject **ret, struct error *err)
{
    for (int i = 0; i < SEIZE_TRIES; i++) {
        struct inject *in;
        int r = inject_attach(pid, &in, err);
        if (r < 0)
            return r;
        if (safe_for_pending(pid, inject_tid(in), module)) {
            *ret = in;
            return 0;
        }
        inject_detach(in);
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return error_set(err, -EAGAIN,
                     "each time, the target's main thread was running the interpreter (where "
                     "it may hold the pending-call lock) and no other thread could be used");
}

static int pending_symbols(pid_t pid, const char *module, struct pending *pc, struct error *err)
{
    static const char *const names[] = {"Py_AddPendingCall", "PyRun_SimpleString",
                                        "PyMem_RawMalloc", "PyMem_RawFree"};
    uint64_t *const at[] = {&pc->add_call, &pc->run_string, &pc->raw_malloc, &pc->raw_free};
    for (size_t i = 0; i < 4; i++) {
        int r = inject_symbol(pid, module, names[i], at[i]);
        if (r < 0)
            return error_set(err, -EOPNOTSUPP, "the interpreter %s does not export %s", module,
                             names[i]);
    }
    return 0;
}

static int pending_request(pid_t pid, const char *module, const struct files *f, struct pending *pc,
                           struct error *err)
{
    char text[4 * sizeof(f->path[SCRIPT])];
    struct inject *in = NULL;
    uint64_t rc = 0;
    int r;

    r = pending_symbols(pid, module, pc, err);
    if (r < 0)
        return r;
    /* Evaluated in __main__, it binds no name there: everything happens in exec's own dicts. */
    snprintf(text, sizeof(text),
             "exec('try:\\n with open(\"%s\", \"rb\") as f: s = f.read()\\n"
             " exec(compile(s, \"%s\", \"exec\"), {})\\n"
             "except KeyboardInterrupt:\\n import _thread; _thread.interrupt_main()\\n"
             "except BaseException:\\n pass\\n', {})",
             f->path[SCRIPT], f->path[SCRIPT]);
    size_t len = strlen(text) + 1;
    r = seize_for_pending(pid, module, &in, err);
    if (r < 0)
        return r;
    uint64_t arg = len;
    r = inject_call(in, pc->raw_malloc, &arg, 1, &pc->copy);
    if (r == 0 && !pc->copy)
        r = -ENOMEM;
    if (r == 0)
        r = write_mem(pid, pc->copy, text, len);
    if (r == 0) {
        uint64_t args[2] = {pc->run_string, pc->copy};
        r = inject_call(in, pc->add_call, args, 2, &rc);
    }
    if (r == 0 && (int)rc != 0)
        r = -EBUSY;
    if (r < 0 && pc->copy) {
        uint64_t ignored;
        if (inject_call(in, pc->raw_free, &pc->copy, 1, &ignored) == 0)
            pc->copy = 0;
    }
    int d = inject_detach(in);
    if (r == -EBUSY)
        return error_set(err, r, "the target's queue of pending calls is full");
    if (r < 0)
        return error_set(err, r, "calling into the target failed: %s", strerror(-r));
    if (d < 0)
        return error_set(err, d, "the target's thread could not be restored: %s", strerror(-d));
    return 0;
}

/* After the answer: the text was parsed before the script ran, so its copy can go. */
static void pending_free(pid_t pid, struct pending *pc)
{
    struct inject *in;
    struct error e;
    uint64_t ignored;
    if (!pc->copy || inject_attach(pid, &in, &e) < 0)
        return;
    if (inject_call(in, pc->raw_free, &pc->copy, 1, &ignored) == 0)
        pc->copy = 0;
    inject_detach(in);
}

/* ---- public ---- */

int pyexec_run(pid_t pid, const struct pyexec_request *req, struct pyexec_result *ret,
               struct error *err)
{
    struct files f = {.dirfd = -1, .outfd = -1, .guard_fd = -1};
    struct pyframes *p = NULL;
    struct remote rm = {0};
    struct pending pc = {0};
    char version[PYFRAMES_VERSION_MAX], *out = NULL;
    uint64_t starttime;
    int ifd = -1, r;
    bool asked = false;

    error_clear(err);
    if (req->timeout_ms <= 0 || req->timeout_ms > PYEXEC_TIMEOUT_MAX_MS)
        return error_set(err, -EINVAL, "timeout out of range");
    int64_t t0 = mono_ms(), deadline = t0 + req->timeout_ms;
    r = procfs_read_starttime(PROCFS_ROOT, pid, &starttime);
    if (r < 0)
        return error_set(err, -ESRCH, NULL);
    r = pyframes_attach(pid, version, sizeof(version), &p, err);
    if (r == -ENOENT)
        error_clear(err);
    if (r < 0)
        return r;
    unsigned minor = pyframes_layout(p)->minor;
    r = files_make(&f, pid, req, err);
    if (r < 0)
        goto out;
    ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (ifd < 0 || inotify_add_watch(ifd, f.agent_out, IN_CLOSE_WRITE) < 0) {
        r = error_set(err, -errno, "cannot watch the script's output: %s", strerror(errno));
        goto out;
    }
    if (minor >= 14)
        r = remote_request(p, pid, &f, &rm, err);
    else
        r = pending_request(pid, pyframes_module(p), &f, &pc, err);
    if (r < 0)
        goto out;
    asked = true;
    guard_end(&f, true);
    r = wait_answer(&f, ifd, pid, starttime, deadline, req, &out);
    if (r == -ETIMEDOUT)
        error_set(err, r,
                  "the target reached no safe point in %.1f s (busy in C code, blocked waiting, "
                  "or a build without remote debugging); the request was withdrawn",
                  req->timeout_ms / 1000.0);
out:
    /* Withdraw before the files go, so that a late pickup finds either no request or, in the
     * instant between, no script (a no-op). */
    if (asked && r < 0 && minor >= 14)
        remote_withdraw(pid, &rm, &f);
    files_remove(&f);
    guard_end(&f, false);
    if (asked && r == 0 && minor < 14)
        pending_free(pid, &pc);
    if (ifd >= 0)
        close(ifd);
    free(rm.l.t);
    pyframes_free(p);
    if (r < 0)
        return error_fill(err, r);
    ret->output = out;
    ret->minor = minor;
    ret->method = minor >= 14 ? "remote_exec" : "pending_call";
    ret->tid = minor >= 14 ? rm.tid : pid;
    ret->wait_ms = (double)(mono_ms() - t0);
    return 0;
}
