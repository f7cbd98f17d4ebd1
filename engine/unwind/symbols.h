/* One ELF file as the unwinder and symbolizer see it: its bytes (for unwind tables and code),
 * its PT_LOAD layout, its .eh_frame_hdr, function symbols (.symtab, .dynsym; for stripped code,
 * function starts from .eh_frame) and DWARF lines, with separate debug files found by build-id
 * (/usr/lib/debug, debuginfod's cache) or .gnu_debuglink. It knows nothing of where the file is
 * mapped in a process: callers pass ELF virtual addresses (ip minus load bias). */
#ifndef SYMBOLS_H
#define SYMBOLS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#define SYMBOLS_FILE_MAX (2ull << 30) /* larger files are not opened */
#define SYMBOLS_MAX_SYMS (4u << 20)   /* function symbols kept per file */
#define SYMBOLS_MADE_MAX (2u << 20)   /* bytes held per file for names made for unnamed code */

struct symfile;

/* Opens ROOT PATH (root: the target's "/proc/PID/root", or "") and checks it is the file dev/ino
 * (unchecked when ino is 0). Debug files are looked for under root first, then in our own /.
 * -ENOENT, -ESTALE (another file now has that name), -ENOEXEC (not a regular file, or not
 * 64-bit ELF), -EFBIG, -ENOMEM. */
int symfile_open(const char *root, const char *path, dev_t dev, ino_t ino, struct symfile **ret);
/* An ELF image already in memory (the vdso, so named "[vdso]"); takes ownership of the malloc'd
 * image. */
int symfile_from_image(unsigned char *image, size_t len, struct symfile **ret);
void symfile_free(struct symfile *f);
/* Makes the names of functions without a symbol from module_path's basename, less a
 * " (deleted)", instead of the opened path's: for a file opened through /proc/PID/map_files.
 * Call before the first symfile_func. */
void symfile_set_module_name(struct symfile *f, const char *module_path);

/* Load bias of a mapping that starts at map_start with file offset map_offset. -ENOENT when
 * no PT_LOAD holds that offset. */
int symfile_bias(const struct symfile *f, uint64_t map_start, uint64_t map_offset,
                 uint64_t *ret_bias);
/* Lowest and end virtual address of the PT_LOAD segments. */
void symfile_span(const struct symfile *f, uint64_t *lo, uint64_t *hi);
/* The file bytes backing [vaddr, vaddr + len), or NULL when not all of them come from the file. */
const unsigned char *symfile_data(const struct symfile *f, uint64_t vaddr, size_t len);
/* The .eh_frame_hdr binary search table: its own address and its entry count. -ENOENT if
 * there is none or its encoding is not the usual one (datarel sdata4 pairs). */
int symfile_eh_table(struct symfile *f, uint64_t *ret_hdr_vaddr, uint64_t *ret_table_vaddr,
                     uint64_t *ret_count);
/* Name of the function holding vaddr, NULL if none; valid while f lives. From a symbol
 * (.symtab, the debug file's, .dynsym) whose size covers vaddr; else, for stripped code, from the
 * .eh_frame FDE covering vaddr: an unsized symbol at the FDE's start, or the module's name and
 * the function's start as perf prints them, "liblzma.so.5+0x1c2a0" (NULL once the file's made
 * names reach SYMBOLS_MADE_MAX); else an unsized symbol below vaddr with no known function
 * between. So two functions never share a name and one function never has two. The first call
 * loads the file's symbol table: the "symbols" cache statistics count lookups that found it
 * loaded (hits) and loads (misses); currsize is the number of tables loaded in the process. */
const char *symfile_func(struct symfile *f, uint64_t vaddr);
/* Source file and line of vaddr from DWARF; -ENOENT when unknown. Strings live as long as f. */
int symfile_line(struct symfile *f, uint64_t vaddr, const char **ret_file, int *ret_line);
/* First line of the function holding vaddr (DWARF decl_line of its DW_TAG_subprogram; for
 * inlined code, the function it was inlined into), 0 when unknown. Cached per symbol, so only
 * the first lookup in each function walks the DWARF scopes. */
int symfile_func_line(struct symfile *f, uint64_t vaddr);

#endif
