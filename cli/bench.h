/* bench.h - `tidal bench <what>`: benchmarks that run tidal and a peer in the
 * same invocation and end with one JSON line (figures, `peer`, `ratio`).
 *
 * Each entry point takes the arguments after `tidal bench <what>` (argv[0] is
 * "<what>") and returns the process exit status (0 ok, 1 failure, 2 usage).
 */
#ifndef TIDAL_CLI_BENCH_H
#define TIDAL_CLI_BENCH_H

/* Seconds on the monotonic clock; this process's peak resident set in MB. */
double bench_now_s(void);
double bench_peak_rss_mb(void);

int bench_bus_main(int argc, char **argv);
int bench_train_main(int argc, char **argv);
int bench_generate_main(int argc, char **argv);
int bench_tokenize_main(int argc, char **argv);

#endif
