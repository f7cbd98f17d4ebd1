/* Placing files where a target opens them (see targetfile.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "os/targetfile.h"

bool targetfile_same_ns(pid_t pid)
{
    char path[64];
    struct stat a, b;
    snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)pid);
    return stat("/proc/self/ns/mnt", &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
           a.st_dev == b.st_dev;
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
