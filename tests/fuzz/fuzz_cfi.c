/* libFuzzer target over the unwinder's own .eh_frame reader (cfi.c): one input is a whole ELF
 * file, taken as the agent takes the vdso (symfile_from_image on a malloc'd copy, so ASan sees
 * every byte read past it) and placed in a module as modules.c places a mapped file, then asked
 * for the CFI row of the addresses a walk asks about: each function the .eh_frame_hdr table
 * lists, one byte in, its last byte before the next, and the entry point. Checks: only the
 * errors cfi.h names; a row is one unwind.c can run (CFA from rsp or rbp, each register's rule
 * one of three, the return address not "same value"); a row is found only inside the function
 * cfi_find names, at or after its start. */
#include <elf.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "unwind/cfi.h"
#include "unwind/modules.h"
#include "fuzzcheck.h"

#define LOOKUPS 24 /* .eh_frame_hdr entries whose functions are asked about */

static void ask(struct module *mod, uint64_t vaddr)
{
    struct cfi_row row;
    uint64_t start, fde;
    int r = cfi_row_at(mod, vaddr, &row);

    CHECK(r == 0 || r == -ENOENT || r == -EOPNOTSUPP || r == -EINVAL, "cfi_row_at %d", r);
    if (r != 0)
        return;
    CHECK(row.cfa_reg == CFI_DWARF_RSP || row.cfa_reg == CFI_DWARF_RBP, "CFA register %u",
          row.cfa_reg);
    for (int i = 0; i < CFI_NREGS; i++)
        CHECK(row.how[i] == CFI_SAME || row.how[i] == CFI_UNDEF || row.how[i] == CFI_AT,
              "rule %u for register %d", row.how[i], i);
    CHECK(row.how[CFI_RA] != CFI_SAME, "return address left as it was");
    CHECK(cfi_find(mod, vaddr, &start, &fde) == 0 && start <= vaddr,
          "a row at %llx outside every listed function", (unsigned long long)vaddr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct module mod = {.path = "fuzz.so"};
    unsigned char *image = malloc(size ? size : 1);
    uint64_t lo, hi;

    CHECK(image, "out of memory");
    memcpy(image, data, size);
    if (symfile_from_image(image, size, &mod.file) < 0) /* takes image, even on failure */
        return 0;
    symfile_span(mod.file, &lo, &hi);
    mod.start = lo;
    mod.end = hi;
    if (modules_eh_table(&mod) == 0) {
        for (uint64_t i = 0; i < mod.eh_count && i < LOOKUPS; i++) {
            const unsigned char *e = symfile_data(mod.file, mod.eh_table + 8 * i, 12);
            int32_t start[3];
            if (!e)
                break;
            memcpy(start, e, sizeof(start)); /* this entry's start and FDE, the next's start */
            uint64_t s = mod.eh_hdr + (uint64_t)(int64_t)start[0];
            ask(&mod, s);
            ask(&mod, s + 1);
            if (i + 1 < mod.eh_count)
                ask(&mod, mod.eh_hdr + (uint64_t)(int64_t)start[2] - 1);
        }
    }
    if (size >= sizeof(Elf64_Ehdr)) {
        uint64_t entry;
        memcpy(&entry, data + offsetof(Elf64_Ehdr, e_entry), sizeof(entry));
        ask(&mod, entry);
    }
    ask(&mod, lo);
    symfile_free(mod.file);
    return 0;
}
