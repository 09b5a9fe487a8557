// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "util.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <bpf/libbpf.h>

bool g_stdout_gone;

void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p == '\t')
			fputs("\\t", f);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

void ev_warn(const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	if (g_stdout_gone)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fputs("{\"event\":\"warn\",\"msg\":", stderr);
	json_str(stderr, msg);
	fputs("}\n", stderr);
	fflush(stderr);
}

void ev_error(const char *what, int err, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;

	if (g_stdout_gone)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fputs("{\"event\":\"error\",\"what\":", stderr);
	json_str(stderr, what);
	fprintf(stderr, ",\"errno\":%d,\"msg\":", err);
	json_str(stderr, msg);
	fputs("}\n", stderr);
	fflush(stderr);
}

void ev_iface(const char *event, int ifindex, const char *ifname)
{
	if (g_stdout_gone)
		return;
	fprintf(stderr, "{\"event\":\"%s\",\"ifindex\":%d,\"ifname\":", event, ifindex);
	json_str(stderr, ifname);
	fputs("}\n", stderr);
	fflush(stderr);
}

const char *errstr(int err)
{
	static char buf[128];

	if (err < 0)
		err = -err;
	snprintf(buf, sizeof(buf), "%s (errno %d)", strerror(err), err);
	return buf;
}

/* ---- stdout record buffer ---- */

static char out_buf[256 * 1024];
static size_t out_len;

void out_flush(void)
{
	size_t off = 0;

	while (off < out_len && !g_stdout_gone) {
		ssize_t n = write(STDOUT_FILENO, out_buf + off, out_len - off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EPIPE)
				ev_error("write(stdout)", errno, "writing records failed: %s", errstr(errno));
			g_stdout_gone = true; /* parent gone (or stdout unusable): stop writing */
			break;
		}
		off += (size_t)n;
	}
	out_len = 0;
}

void out_put(const void *rec, size_t len)
{
	if (g_stdout_gone)
		return;
	if (out_len + len > sizeof(out_buf))
		out_flush();
	memcpy(out_buf + out_len, rec, len);
	out_len += len;
}

/* ---- clocks ---- */

uint64_t clock_ns(int clock_id)
{
	struct timespec ts;

	clock_gettime(clock_id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int64_t mono_to_real_offset(void)
{
	int64_t best = 0;
	uint64_t best_gap = UINT64_MAX;

	/* Bracket a REALTIME read between two MONOTONIC reads; keep the tightest. */
	for (int i = 0; i < 3; i++) {
		uint64_t m1 = clock_ns(CLOCK_MONOTONIC);
		uint64_t r = clock_ns(CLOCK_REALTIME);
		uint64_t m2 = clock_ns(CLOCK_MONOTONIC);

		if (m2 - m1 < best_gap) {
			best_gap = m2 - m1;
			best = (int64_t)r - (int64_t)(m1 + (m2 - m1) / 2);
		}
	}
	return best;
}

/* ---- libbpf logging ---- */

static bool log_verbose;
static char log_tail[4096];

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char line[1024];
	size_t n, have;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = '\0';
	if (log_verbose) {
		ev_warn("libbpf: %s", line);
		return 0;
	}
	if (level == LIBBPF_DEBUG || n == 0)
		return 0;
	/* Keep the newest text: drop the oldest half when full. */
	have = strlen(log_tail);
	if (have + n + 2 > sizeof(log_tail)) {
		size_t keep = have / 2;

		memmove(log_tail, log_tail + have - keep, keep + 1);
		have = keep;
		if (have + n + 2 > sizeof(log_tail))
			have = 0, log_tail[0] = '\0';
	}
	if (have)
		log_tail[have++] = '\n';
	memcpy(log_tail + have, line, n + 1);
	return 0;
}

void libbpf_logging(bool verbose)
{
	log_verbose = verbose;
	libbpf_set_print(libbpf_print);
}

const char *libbpf_last_log(void)
{
	return log_tail;
}

void libbpf_log_reset(void)
{
	log_tail[0] = '\0';
}
