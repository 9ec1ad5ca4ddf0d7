// ser_loadstat.h — what workers know of their data loaders, carried to the coordinator.
//
// The coordinator never talks to the loaders: its workers do. Each loader reply carries the
// loader's endpoint and its counters (proto/loader.proto: endpoint, served, bad_files,
// replacements); the worker's client keeps one record per loader (ser_dl_client_loaders) and
// the worker sends them as the text of each FORWARD_DONE, one line per loader:
//
//   loader tcp://127.0.0.1:5600 served=120 bad_files=2 replacements=5 step=59 age_ms=12
//
// The coordinator parses the lines (anything else is ignored: an old worker sends no text),
// merges them by endpoint into its table and shows it on the status port (`/status` data
// section). Ages travel instead of timestamps, so no two clocks are compared.
//
// defines:
//   SER_LOADSTAT_EP_LEN, SER_LOADSTAT_MAX
//   ser_loadstat
//   ser_loadstat_format(), ser_loadstat_parse(), ser_loadstat_merge()
#ifndef SER_LOADSTAT_H
#define SER_LOADSTAT_H

#include <stddef.h>
#include <stdint.h>

#define SER_LOADSTAT_EP_LEN 128  // an endpoint, NUL included (longer ones are cut)
#define SER_LOADSTAT_MAX 16      // loaders one table tells apart

typedef struct ser_loadstat {
    char endpoint[SER_LOADSTAT_EP_LEN];  // printable ASCII without spaces
    uint64_t served;        // shards the loader process has served (to every client)
    uint64_t bad_files;     // its distinct bad files, and loads that needed a replacement
    uint64_t replacements;
    int64_t step;      // the step of the last shard heard of from it (-1: none)
    int64_t heard_ms;  // ser_clock_now_ms() when it was last heard from
} ser_loadstat;

// Writes the records as lines (see above) into buf (n bytes, NUL-terminated; records that do
// not fit whole are left out), ages computed at now_ms. Returns the length written.
size_t ser_loadstat_format(char *buf, size_t n, const ser_loadstat *s, int ns, int64_t now_ms);
// Parses the lines of text into out (at most max records), heard_ms = now_ms - age_ms.
// Malformed lines, other lines and endpoints with odd characters are skipped; a negative age
// counts as 0. Returns the number of records.
int ser_loadstat_parse(const char *text, ser_loadstat *out, int max, int64_t now_ms);
// Merges rec into table (*n records, at most max): the record of the same endpoint takes the
// counters of whichever report was heard later and the larger step; a new endpoint is added
// while there is room. Returns its index, or -1 when the table is full.
int ser_loadstat_merge(ser_loadstat *table, int *n, int max, const ser_loadstat *rec);

#endif
