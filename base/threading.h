/* threading.h - how many OpenMP threads a role process uses, and how they wait.
 *
 * A role (controller, trainer, rollout worker) shares its machine with other
 * roles more often than not. Two things decide whether it runs well there:
 *
 * - The wait policy. libgomp's default spins an idle thread for about 3 ms
 *   after each parallel region, taking a core from every other process; on a
 *   shared machine that made a job started role by role 7x slower than the
 *   same job under `tidal run`. OMP_WAIT_POLICY=passive makes idle
 *   threads sleep at once. libgomp reads the variable only when it is loaded,
 *   so a process that finds it unset sets it and re-executes itself
 *   (/proc/self/exe with the same argv) before it starts a thread or connects
 *   to the bus. A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone.
 * - The thread count. Chosen once, here, from the cores this process may use
 *   (sched_getaffinity: a cpuset or taskset; and a cgroup's cpu.max quota) and
 *   what it is told runs beside it: `--threads N`, `--share K` (K busy
 *   processes split the cores), OMP_NUM_THREADS, or the role's default. The
 *   count goes into OMP_NUM_THREADS for the same re-execution, so every
 *   thread's OpenMP runtime and OpenBLAS start with it.
 *
 * `tidal run` asks threading_choose too and passes the answer to each role as
 * --threads, so there is one place that decides. docs/architecture.md
 * ("Threads of a role") has the defaults and the measurements behind them.
 */
#ifndef TIDAL_BASE_THREADING_H
#define TIDAL_BASE_THREADING_H

#include <stdbool.h>

/* The cores this process may run on. */
typedef struct threading_cores {
    int cores;         /* usable: the affinity mask's count, capped by the cgroup quota; >= 1 */
    int online;        /* the machine's online cores */
    const char *limit; /* what made cores < online: "affinity", "cgroup cpu.max"; NULL when none */
} threading_cores;

/* The cores this process may use now. Never fails: what cannot be read
 * counts as no limit, and the answer is at least 1. */
threading_cores threading_cores_now(void);

/* What a role is told and what it finds, for threading_choose. */
typedef struct threading_ask {
    int threads;             /* --threads N (0: not given) */
    int share;               /* --share K: K busy processes split the cores (0: not given) */
    int beside;              /* without --share: how many workers the caller knows split the cores
                              * (tidal run: its own); 0 or 1: this one alone */
    bool one_thread;         /* the role's default is one thread (the controller runs no model) */
    const char *env_threads; /* OMP_NUM_THREADS as the user set it; NULL when unset */
    threading_cores cores;
} threading_ask;

typedef struct threading_choice {
    int threads;   /* >= 1 */
    char why[200]; /* for the log line: "--threads 2", "2 cores shared by 2 (--share 2)", ... */
} threading_choice;

/* The one rule: --threads N; else --share K: cores / K (at least 1); else a
 * usable OMP_NUM_THREADS (its first number, 1 .. 4096); else one thread for
 * a one_thread role; else cores / beside (at least 1), all cores when alone. */
threading_choice threading_choose(const threading_ask *a);

/* How this process's OpenMP threads wait, after threading_settle. */
typedef struct threading_policy {
    char wait[96];     /* "OMP_WAIT_POLICY=passive", "GOMP_SPINCOUNT=1000", or "OMP_WAIT_POLICY unset" */
    bool set_by_tidal; /* this process set it (and re-executed) */
    char note[256];    /* empty, or why the choice could not be applied (a failed re-exec) */
} threading_policy;

/* Make this process run with OMP_NUM_THREADS=threads and, unless the user
 * set OMP_WAIT_POLICY or GOMP_SPINCOUNT, OMP_WAIT_POLICY=passive. When the
 * environment already says so, returns at once. Otherwise sets the variables
 * and re-executes /proc/self/exe with this process's argv (from
 * /proc/self/cmdline) and does not return; the re-executed process returns
 * from its own call with *p saying what was set. An environment marker
 * (TIDAL_THREADING_SET) makes sure this happens at most once. Call it before
 * any thread is started or descriptor opened that must not be lost, and
 * after threading_user_env_threads. A failed re-exec is no error: p->note
 * says why, and the process goes on as it is. */
void threading_settle(int threads, threading_policy *p);

/* OMP_NUM_THREADS as the user set it: NULL when it is unset or when it holds
 * the value threading_settle set before re-executing (so a re-executed role
 * decides as it did the first time). */
const char *threading_user_env_threads(void);

#endif
