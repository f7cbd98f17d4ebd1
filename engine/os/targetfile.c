/* Placing files where a target opens them (see targetfile.h). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "os/targetfile.h"

static bool same_file(const char *self, const char *other)
{
    struct stat a, b;
    return stat(self, &a) == 0 && stat(other, &b) == 0 && a.st_ino == b.st_ino &&
           a.st_dev == b.st_dev;
}

bool targetfile_same_ns(pid_t pid)
{
    char ns[64], root[64];
    snprintf(ns, sizeof(ns), "/proc/%d/ns/mnt", (int)pid);
    snprintf(root, sizeof(root), "/proc/%d/root", (int)pid);
    return same_file("/proc/self/ns/mnt", ns) && same_file("/proc/self/root", root);
}

int targetfile_own_path(pid_t pid, const char *seen, char *buf, size_t len)
{
    char link[64], root[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/%d/root", (int)pid);
    ssize_t n = readlink(link, root, sizeof(root) - 1);
    if (n < 0)
        return -errno;
    root[n] = '\0';
    /* "/" strips nothing; a root that is a prefix but not a directory of seen is not it. */
    size_t skip = 0;
    if (n > 1 && !strncmp(seen, root, (size_t)n) && seen[n] == '/')
        skip = (size_t)n;
    int w = snprintf(buf, len, "%s", seen + skip);
    if (w < 0 || (size_t)w >= len)
        return -ENAMETOOLONG;
    size_t tag = strlen(" (deleted)");
    if ((size_t)w > tag && !strcmp(buf + w - tag, " (deleted)"))
        buf[w - tag] = '\0';
    return 0;
}

int targetfile_place(pid_t pid, bool same_ns, const char *const *dirs, const char *name,
                     char *target_path, size_t tlen, char *agent_path, size_t alen)
{
    for (size_t i = 0; dirs[i]; i++) {
        struct stat st;
        if (same_ns)
            snprintf(agent_path, alen, "%s/%s", dirs[i], name);
        else
            snprintf(agent_path, alen, "/proc/%d/root%s/%s", (int)pid, dirs[i], name);
        char *slash = strrchr(agent_path, '/');
        *slash = '\0';
        int ok = stat(agent_path, &st) == 0 && S_ISDIR(st.st_mode);
        *slash = '/';
        if (!ok)
            continue;
        snprintf(target_path, tlen, "%s/%s", dirs[i], name);
        return 0;
    }
    return -ENOENT;
}

int targetfile_give(int fd, pid_t pid, mode_t fallback)
{
    char path[32];
    struct stat st;
    snprintf(path, sizeof(path), "/proc/%d", (int)pid);
    if (stat(path, &st) < 0 || st.st_uid == geteuid())
        return 0;
    if (fchown(fd, st.st_uid, st.st_gid) == 0)
        return 0;
    int r = -errno;
    if (fallback && fchmod(fd, fallback) == 0)
        return 0;
    return r;
}
