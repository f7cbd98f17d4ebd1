/* The source line of one instruction, from a code object's location table (co_linetable): the
 * format of CPython's Objects/locations.md (3.11-3.13) and InternalDocs/code_objects.md (3.14
 * on), unchanged from 3.11 through 3.15. Not a reader of target memory: callers hand it the
 * table's bytes; what "the instruction" is (prev_instr or instr_ptr) is the walker's business. */
#ifndef PYLINE_H
#define PYLINE_H

#include <stddef.h>
#include <stdint.h>

/* The line of code unit lasti (an index, not a byte offset) as PyCode_Addr2Line computes it:
 * 0 for an instruction without a line. -EBADMSG when the table is malformed or does not cover
 * lasti. */
int pyline_addr2line(const unsigned char *table, size_t n, int firstlineno, int64_t lasti,
                     int *ret);

#endif
