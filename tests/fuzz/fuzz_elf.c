/* libFuzzer target over the ELF/DWARF reader of the unwinder and symbolizer (symbols.c): one
 * input is a whole file, as a target may map it. It is opened twice, as the agent opens a
 * target's module (symfile_open on a file, with the debug file search) and as it takes the vdso
 * (symfile_from_image on a malloc'd copy, where ASan sees every byte read past the image), then
 * asked what modules.c, unwind.c and stacks.c ask: load bias, span, code and .eh_frame_hdr
 * bytes, function names, source lines and function lines at a few addresses. Not a test of
 * libunwind's CFI interpreter (fuzz_perf drives that from a stack copy). */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unwind/symbols.h"
#include "fuzzcheck.h"

#define EH_LOOKUPS 16 /* .eh_frame_hdr entries whose functions are looked up */
#define ADDRS_MAX 32  /* addresses asked about per input */
#define NAME_MAX_LEN (1 << 20)
#define MAP_START 0x7f0000000000ull /* where the "target" maps the file */

static char dir[] = "/tmp/fuzz_elf.XXXXXX";
static char path[sizeof(dir) + 16];

static void remove_dir(void)
{
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* A real directory, not a memfd: the debug file search looks next to the module. */
    CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof(path), "%s/module.so", dir);
    atexit(remove_dir);
    return 0;
}

static void write_file(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    CHECK(fd >= 0 && write(fd, data, size) == (ssize_t)size && close(fd) == 0, "%s: %s", path,
          strerror(errno));
}

static void check_open_error(const char *what, int r)
{
    CHECK(r == -ENOEXEC || r == -ENOMEM || r == -EFBIG, "%s: %d (%s)", what, r, strerror(-r));
}

/* The addresses worth asking about: the span's ends and middle, the entry point, and the
 * functions the .eh_frame_hdr table starts, each also one byte in. */
static size_t pick_addrs(struct symfile *f, const uint8_t *data, size_t size, uint64_t *addrs)
{
    uint64_t lo, hi, hdr, table, count;
    size_t n = 0;

    symfile_span(f, &lo, &hi);
    CHECK(lo <= hi, "span %llx-%llx", (unsigned long long)lo, (unsigned long long)hi);
    addrs[n++] = lo;
    addrs[n++] = hi ? hi - 1 : 0;
    addrs[n++] = lo + (hi - lo) / 2;
    if (size >= sizeof(Elf64_Ehdr)) {
        uint64_t entry;
        memcpy(&entry, data + offsetof(Elf64_Ehdr, e_entry), sizeof(entry));
        addrs[n++] = entry;
    }
    if (symfile_eh_table(f, &hdr, &table, &count) == 0) {
        CHECK(count > 0 && table == hdr + 12, "eh table %llx at %llx, %llu entries",
              (unsigned long long)table, (unsigned long long)hdr, (unsigned long long)count);
        for (uint64_t i = 0; i < count && i < EH_LOOKUPS && n + 2 <= ADDRS_MAX; i++) {
            const unsigned char *e = symfile_data(f, table + 8 * i, 8);
            int32_t start;
            if (!e)
                break;
            memcpy(&start, e, 4);
            addrs[n++] = hdr + (uint64_t)(int64_t)start;
            addrs[n++] = hdr + (uint64_t)(int64_t)start + 1;
        }
    }
    return n;
}

/* What one symfile answers at addrs; image/image_len: where its bytes are, when known. */
static void query(struct symfile *f, const uint64_t *addrs, size_t n, const unsigned char *image,
                  size_t image_len, const char **names)
{
    static const uint64_t offsets[] = {0, 0x1000, 0x201000};
    uint64_t bias;

    for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++)
        if (symfile_bias(f, MAP_START + offsets[i], offsets[i], &bias) == 0)
            (void)symfile_data(f, MAP_START + offsets[i] - bias, 8);
    for (size_t i = 0; i < n; i++) {
        static const size_t lens[] = {1, 8, 16, 4096};
        const char *name, *again, *file;
        int line, fline;

        for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
            const unsigned char *p = symfile_data(f, addrs[i], lens[k]);
            if (p && image)
                CHECK(p >= image && (size_t)(p - image) <= image_len &&
                          lens[k] <= image_len - (size_t)(p - image),
                      "symfile_data(%llx, %zu) outside the image", (unsigned long long)addrs[i],
                      lens[k]);
        }
        name = symfile_func(f, addrs[i]);
        if (name)
            CHECK(strnlen(name, NAME_MAX_LEN) < NAME_MAX_LEN && *name,
                  "empty or unterminated name");
        again = symfile_func(f, addrs[i]);
        CHECK(again == name, "a second lookup found another symbol");
        names[i] = name;
        if (symfile_line(f, addrs[i], &file, &line) == 0)
            CHECK(file && strnlen(file, NAME_MAX_LEN) < NAME_MAX_LEN && line >= 0, "line %d of %s",
                  line, file ? "a file" : "no file");
        fline = symfile_func_line(f, addrs[i]);
        CHECK(fline >= 0, "function line %d", fline);
        CHECK(symfile_func_line(f, addrs[i]) == fline, "function line not cached as found");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *names_file[ADDRS_MAX], *names_image[ADDRS_MAX];
    uint64_t addrs[ADDRS_MAX];
    struct symfile *file = NULL, *img = NULL;
    unsigned char *image;
    size_t n;
    int r_file, r_img;

    write_file(data, size);
    r_file = symfile_open("", path, 0, 0, &file);
    if (r_file < 0)
        check_open_error("symfile_open", r_file);
    image = malloc(size ? size : 1);
    CHECK(image, "out of memory");
    memcpy(image, data, size);
    r_img = symfile_from_image(image, size, &img); /* takes image, even on failure */
    if (r_img < 0) {
        check_open_error("symfile_from_image", r_img);
        image = NULL;
    }
    /* One parser behind both: they agree on whether this is an ELF file at all. */
    if (size >= sizeof(Elf64_Ehdr))
        CHECK((r_file == 0) == (r_img == 0), "symfile_open %d, symfile_from_image %d", r_file,
              r_img);
    if (img) {
        symfile_set_module_name(img, path); /* names made for unnamed code agree with file's */
        n = pick_addrs(img, data, size, addrs);
        query(img, addrs, n, image, size, names_image);
        if (file) {
            query(file, addrs, n, NULL, 0, names_file);
            /* Only a debug file could add names, and nothing here has one. */
            for (size_t i = 0; i < n; i++)
                CHECK(!names_file[i] == !names_image[i] &&
                          (!names_file[i] || strcmp(names_file[i], names_image[i]) == 0),
                      "file and image disagree at %llx", (unsigned long long)addrs[i]);
        }
    }
    symfile_free(file);
    symfile_free(img);
    return 0;
}
