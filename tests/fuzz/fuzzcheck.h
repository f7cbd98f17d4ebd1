/* The invariant check every fuzz target makes: a broken invariant is reported in one line naming
 * the target, then abort() so libFuzzer keeps the input as a crash. Header-only: each target is
 * one translation unit, built without the others. */
#ifndef FUZZCHECK_H
#define FUZZCHECK_H

#include <errno.h> /* program_invocation_short_name: the target's name, as its binary is called */
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s: invariant broken: ", program_invocation_short_name);              \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
