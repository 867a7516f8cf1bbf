/* check.h - the assertions every tidal test uses.
 *
 * A test file defines `static void test_x(void)` functions, registers them in
 * main with RUN(test_x) and returns check_summary(). A failed CHECK prints
 * file:line, the expression and (for statuses) tidal_errmsg(), marks the
 * current test failed and returns from it. The last line printed is
 * "N passed, N failed", the form CI reads.
 */
#ifndef TIDAL_TESTS_CHECK_H
#define TIDAL_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/status.h"

static int check_passed_, check_failed_, check_cur_failed_;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_cur_failed_ = 1;                                                   \
            return;                                                                  \
        }                                                                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                          \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
            check_cur_failed_ = 1;                                                    \
            return;                                                                   \
        }                                                                             \
    } while (0)

/* Expect a tidal_status of `want` (TIDAL_OK for CHECK_OK). */
#define CHECK_STATUS(expr, want)                                                           \
    do {                                                                                   \
        tidal_status st_ = (expr);                                                         \
        if (st_ != (want)) {                                                               \
            fprintf(stderr, "%s:%d: %s returned %s (%s), want %s\n", __FILE__, __LINE__,   \
                    #expr, tidal_status_name(st_), tidal_errmsg(), tidal_status_name(want)); \
            check_cur_failed_ = 1;                                                         \
            return;                                                                        \
        }                                                                                  \
    } while (0)
#define CHECK_OK(expr) CHECK_STATUS(expr, TIDAL_OK)

#define RUN(fn)                                                                  \
    do {                                                                         \
        struct timespec t0_, t1_;                                                \
        clock_gettime(CLOCK_MONOTONIC, &t0_);                                    \
        check_cur_failed_ = 0;                                                   \
        tidal_clear();                                                           \
        fn();                                                                    \
        clock_gettime(CLOCK_MONOTONIC, &t1_);                                    \
        double s_ = (double)(t1_.tv_sec - t0_.tv_sec) + (t1_.tv_nsec - t0_.tv_nsec) * 1e-9; \
        if (check_cur_failed_) { check_failed_++; printf("FAIL %s (%.2fs)\n", #fn, s_); } \
        else { check_passed_++; printf("ok   %s (%.2fs)\n", #fn, s_); }          \
        fflush(stdout);                                                          \
    } while (0)

static inline int check_summary(void)
{
    printf("%d passed, %d failed\n", check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

#endif
