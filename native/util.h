/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* util.h - stderr JSON events, the stdout record buffer, clocks, libbpf logs. */
#ifndef NL_UTIL_H
#define NL_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/types.h>

#define NL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Writes s as a JSON string literal (with quotes). */
void json_str(FILE *f, const char *s);

/* stderr JSON lines; every line has an "event" field. */
void ev_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* err is a positive errno (0 if none); msg should say which call on what. */
void ev_error(const char *what, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void ev_iface(const char *event, int ifindex, const char *ifname);

/* Set once stdout returns EPIPE: the reader is gone; stay quiet and exit. */
extern bool g_stdout_gone;

/* Records go through this buffer to fd 1; a full buffer blocks in write(),
 * which is the intended backpressure on a slow reader. */
void out_put(const void *rec, size_t len);
void out_flush(void);

uint64_t clock_ns(int clock_id);
/* CLOCK_REALTIME - CLOCK_MONOTONIC, sampled so the pair is as close as possible. */
int64_t mono_to_real_offset(void);

/* libbpf messages: routed as warn events with --verbose, otherwise kept so a
 * failure can quote them (e.g. the verifier log tail). */
void libbpf_logging(bool verbose);
const char *libbpf_last_log(void);
void libbpf_log_reset(void);

/* strerror() with errno value, e.g. "Operation not permitted (errno 1)". */
const char *errstr(int err);

#endif /* NL_UTIL_H */
