/* What the agent may do to other processes: its effective capabilities, the three it is meant to
 * run with, and the sentence that says why tracing a process was refused (a debugger holding it,
 * a missing capability, Yama). Reads /proc only; it grants and drops nothing. */
#ifndef PRIVS_H
#define PRIVS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PRIVS_CAP_DAC_READ_SEARCH 2
#define PRIVS_CAP_SYS_PTRACE 19
#define PRIVS_CAP_SYS_ADMIN 21
#define PRIVS_CAP_PERFMON 38

/* The agent's effective capability set (CapEff of /proc/self/status); 0 when unreadable. */
uint64_t privs_capabilities(void);
/* Calls fn with the name of each capability the agent is meant to have (CAP_PERFMON,
 * CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) that caps lacks. */
void privs_missing(uint64_t caps, void (*fn)(const char *name, void *userdata), void *userdata);
/* The process tracing pid, when it is not the agent (any of its threads): its pid, its name in
 * name (len bytes). Returns 0 when nobody else traces pid or its status cannot be read. */
pid_t privs_tracer(pid_t pid, char *name, size_t len);
/* Why the kernel refused to let the agent trace pid (EPERM), as a clause to follow "not permitted
 * to trace process N: ": the debugger that holds it, or what the agent lacks. */
void privs_ptrace_denied(pid_t pid, char *buf, size_t len);

#endif
