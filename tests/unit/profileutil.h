/* What the C unit tests of CPU profiles read back from a profile they made: a function's share.
 * Header-only, after <cmocka.h> (it asserts). Not the writers' tests (test_profile.c). */
#ifndef PROFILEUTIL_H
#define PROFILEUTIL_H

#include <stdint.h>
#include <string.h>
#include "formats/profile.h"

#define PROFILEUTIL_TOP_MAX 32

/* func's self samples over all of p's samples (0 when func is not among the top functions). */
static inline double profileutil_self_share(const struct profile *p, const char *func)
{
    struct profile_top top[PROFILEUTIL_TOP_MAX];
    uint64_t total = profile_samples(p);
    size_t n;

    assert_int_equal(profile_top(p, PROFILEUTIL_TOP_MAX, top, &n), 0);
    assert_true(total > 0);
    for (size_t i = 0; i < n; i++)
        if (strcmp(top[i].func, func) == 0)
            return (double)top[i].self_samples / (double)total;
    return 0;
}

#endif
