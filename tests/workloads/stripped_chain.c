/* Test target for stripped code: loads the shared library named on its command line (the tests
 * build tests/workloads/stripped/libchain.c and strip it) and calls its chain_run for ever, from
 * main. Prints "ready" after the first call.
 * Usage: stripped_chain LIBRARY */
#include <dlfcn.h>
#include <stdio.h>

static volatile unsigned long sink;

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: stripped_chain LIBRARY\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "stripped_chain: %s\n", dlerror());
        return 1;
    }
    unsigned long (*run)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(lib, "chain_run");
    if (!run) {
        fprintf(stderr, "stripped_chain: %s\n", dlerror());
        return 1;
    }
    sink = run(sink);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        sink = run(sink) + 1;
}
