/* Test target for the allocation profile, meant to be linked -static (so nothing can be injected
 * into it with dlopen): the main thread loops freeing and allocating blocks of mixed sizes (24 to
 * 4064 bytes, never 512) in a pool of 64, through malloc, calloc, realloc, posix_memalign and
 * aligned_alloc; every --leak-every N pairs (default 4096) it calls leak_here(), which keeps one
 * 512-byte block for good (up to 64 MiB, then it stops leaking). A second thread answers each
 * byte read from stdin with "pairs=N leaked=M" (pairs: malloc/free pairs so far). Prints
 * "ready pid=N" once running; runs until killed or until stdin is closed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL 64
#define LEAK_SIZE 512
#define LEAK_MAX ((64u << 20) / LEAK_SIZE)

static void *pool[POOL];
static void *leaked_list; /* each leaked block holds the previous one */
static volatile uint64_t pairs, leaked;

__attribute__((noinline, noclone)) static void leak_here(void)
{
    void **b = malloc(LEAK_SIZE);

    if (!b)
        return;
    memset(b, 0x5a, LEAK_SIZE);
    *b = leaked_list;
    leaked_list = b;
    leaked++;
    __asm__ volatile("" ::: "memory"); /* keeps the frame: no tail call */
}

static void *reporter(void *arg)
{
    char c;

    (void)arg;
    while (read(0, &c, 1) == 1) {
        printf("pairs=%llu leaked=%llu\n", (unsigned long long)pairs, (unsigned long long)leaked);
        fflush(stdout);
    }
    exit(0);
}

/* Sizes 24 + 16k: a cheap generator, different from run to run of the loop only. */
static size_t next_size(uint32_t *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    size_t s = 24 + 16 * ((*seed >> 16) % 252);
    return s == LEAK_SIZE ? s + 16 : s;
}

int main(int argc, char **argv)
{
    unsigned long leak_every = 4096;
    uint32_t seed = 1;
    pthread_t t;

    if (argc == 3 && strcmp(argv[1], "--leak-every") == 0) {
        char *end;
        leak_every = strtoul(argv[2], &end, 10);
        if (*end || end == argv[2] || leak_every == 0 || leak_every > 1000000000ul) {
            fprintf(stderr, "allocs_static: --leak-every wants 1..1e9\n");
            return 2;
        }
    } else if (argc != 1) {
        fprintf(stderr, "usage: allocs_static [--leak-every N]\n");
        return 2;
    }
    if (pthread_create(&t, NULL, reporter, NULL) != 0) {
        fprintf(stderr, "allocs_static: pthread_create failed\n");
        return 1;
    }
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    for (uint64_t i = 0;; i++) {
        size_t k = (size_t)(i * 7 % POOL), size = next_size(&seed);
        void *q = NULL;

        switch (i % 16) {
        case 3:
            pool[k] = realloc(pool[k], size); /* the free and the malloc of this pair */
            break;
        case 7:
            free(pool[k]);
            pool[k] = calloc(1, size);
            break;
        case 11:
            free(pool[k]);
            pool[k] = posix_memalign(&q, 64, size) == 0 ? q : NULL;
            break;
        case 13:
            free(pool[k]);
            size = (size + 31) & ~(size_t)31;
            pool[k] = aligned_alloc(32, size == LEAK_SIZE ? size + 32 : size);
            break;
        default:
            free(pool[k]);
            pool[k] = malloc(size);
            break;
        }
        if (pool[k])
            *(volatile char *)pool[k] = 1;
        if (i % leak_every == 0 && leaked < LEAK_MAX)
            leak_here();
        pairs++;
    }
}
