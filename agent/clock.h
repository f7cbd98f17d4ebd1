/* Time stamps as the contract writes them: microseconds since the epoch, ISO 8601 UTC with
 * milliseconds ("2026-11-24T22:00:00.123Z"), and a monotonic clock for durations. */
#ifndef CLOCK_H
#define CLOCK_H

#include <stddef.h>
#include <stdint.h>

#define CLOCK_ISO_MAX 32

int64_t clock_realtime_us(void);
int64_t clock_monotonic_us(void);
void clock_iso8601(int64_t us, char *buf, size_t len);

#endif
