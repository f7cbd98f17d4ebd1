/* Test target for the allocation hooks, built -no-pie: its code takes the addresses of malloc
 * and free, so the linker gives both a canonical PLT entry in the executable. That entry is then
 * what &malloc is everywhere in the process (dlsym and other modules' address references
 * included), while calls still reach libc's malloc through GOT slots. Debian's
 * /usr/bin/python3.11 has this shape.
 * Prints "ready pid=P". Each line "run N K SIZE" on stdin makes it allocate N blocks of SIZE
 * bytes with direct calls, N through the pointer and N with strdup (libc's call), then free all
 * but the first K of them (alternately through free and the pointer); it answers "allocs=A frees=F
 * same=S errors=E": A and F what it just did, S 1 while the pointers still equal malloc and free as
 * the program and dlsym see them, E blocks found altered. "free" frees the blocks kept so far and
 * answers "frees=F". Ends when stdin closes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BLOCKS 100000

static void *(*volatile alloc_fn)(size_t) = malloc;
static void (*volatile free_fn)(void *) = free;
static void *kept[MAX_BLOCKS];
static long nkept;

static int same(void)
{
    return alloc_fn == malloc && free_fn == free &&
           dlsym(RTLD_DEFAULT, "malloc") == (void *)alloc_fn &&
           dlsym(RTLD_DEFAULT, "free") == (void *)free_fn;
}

static void run(long n, long keep, size_t size)
{
    static void *blocks[3 * MAX_BLOCKS];
    static char text[65536];
    long errors = 0, allocs = 0, frees = 0;

    memset(text, 'x', size - 1);
    text[size - 1] = '\0';
    for (long i = 0; i < 3 * n; i++) {
        blocks[i] = i < n ? malloc(size) : i < 2 * n ? alloc_fn(size) : strdup(text);
        if (!blocks[i]) {
            errors++;
            continue;
        }
        allocs++;
        memset(blocks[i], (int)(i & 0xff), size);
    }
    for (long i = 0; i < 3 * n; i++) {
        if (!blocks[i])
            continue;
        if (((unsigned char *)blocks[i])[size - 1] != (unsigned char)(i & 0xff))
            errors++;
        if (i < keep && nkept < MAX_BLOCKS) {
            kept[nkept++] = blocks[i];
            continue;
        }
        if (i % 2)
            free(blocks[i]);
        else
            free_fn(blocks[i]);
        frees++;
    }
    printf("allocs=%ld frees=%ld same=%d errors=%ld\n", allocs, frees, same(), errors);
    fflush(stdout);
}

int main(void)
{
    char line[128];

    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        long n = 0, keep = 0, size = 0;

        if (strcmp(line, "free\n") == 0) {
            long frees = nkept;

            while (nkept > 0)
                free(kept[--nkept]);
            printf("frees=%ld\n", frees);
        } else if (sscanf(line, "run %ld %ld %ld", &n, &keep, &size) == 3 && n > 0 &&
                   n <= MAX_BLOCKS && keep >= 0 && keep <= 3 * n && size > 0 && size <= 65536) {
            run(n, keep, (size_t)size);
        } else {
            printf("error\n");
        }
        fflush(stdout);
    }
    return 0;
}
