// SPDX-License-Identifier: Apache-2.0
/*
 * natlens-load: a bounded TCP/UDP connection-rate load generator and sink
 * server for the natlens capture benchmark (npm run bench:capture).
 *
 *   natlens-load serve  --port P [--bind ADDR] [--udp] [--max-seconds S]
 *   natlens-load client --target IP:PORT[,IP:PORT...] [options]
 *
 * Design notes (see also /work/shared/notes/capture-path.md):
 *   - Single thread, level-triggered epoll, non-blocking sockets everywhere.
 *   - The server answers every TCP connection with one line
 *     "client_address=<peer ip>\n" and then waits for the client's FIN, so
 *     the CLIENT always closes first: TIME_WAIT lands on the load generator,
 *     not on the backend pods, and the backends never run out of anything.
 *   - The client closes with a normal FIN (SO_LINGER off); no RST tricks.
 *   - Everything is bounded: the server by --max-seconds (default 3600), the
 *     client by --duration-s and --max-conns (both always set), every
 *     connection by --connect-timeout-ms, and the final drain by a grace
 *     period. Nothing is changed system-wide: only this process's
 *     RLIMIT_NOFILE soft limit is raised towards its hard limit.
 *   - SIGINT/SIGTERM are blocked except inside epoll_pwait(), so a signal can
 *     never be lost between checking the stop flag and going to sleep.
 *
 * Build: gcc -O2 -Wall -Wextra -o natlens-load natlens-load.c   (Linux only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define PROG "natlens-load"
#define REPLY_PREFIX "client_address="
#define REPLY_PREFIX_LEN (sizeof(REPLY_PREFIX) - 1)
/* "client_address=" + longest IPv6 text + "\n" */
#define REPLY_MAX (REPLY_PREFIX_LEN + INET6_ADDRSTRLEN + 1)
#define UDP_PROBE "natlens-load\n"
#define EXIT_USAGE 2

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */
/* ------------------------------------------------------------------------ */

static volatile sig_atomic_t g_stop_signal;

static void on_signal(int sig) { g_stop_signal = sig; }

static sigset_t g_wait_mask; /* mask used while sleeping in epoll_pwait */

/* Block SIGINT/SIGTERM; they are only delivered inside epoll_pwait(). */
static void setup_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: we want EINTR */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &g_wait_mask);
	sigdelset(&g_wait_mask, SIGINT);
	sigdelset(&g_wait_mask, SIGTERM);
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* epoll_wait timeout in ms for an absolute deadline (rounded up, capped). */
static int ms_until(uint64_t now, uint64_t deadline, int cap_ms)
{
	if (deadline <= now)
		return 0;
	uint64_t ms = (deadline - now + 999999ull) / 1000000ull;
	if (ms > (uint64_t)cap_ms)
		ms = (uint64_t)cap_ms;
	return (int)ms;
}

static const char *errno_name(int e)
{
	const char *n = strerrorname_np(e); /* glibc >= 2.32 */
	if (n)
		return n;
	static char buf[32];
	snprintf(buf, sizeof(buf), "E%d", e);
	return buf;
}

__attribute__((format(printf, 1, 2), noreturn))
static void usage_error(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nRun '" PROG " --help' for usage.\n");
	exit(EXIT_USAGE);
}

__attribute__((format(printf, 1, 2), noreturn))
static void fatal(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(1);
}

static uint64_t parse_u64(const char *flag, const char *s, uint64_t min, uint64_t max)
{
	char *end;
	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		usage_error("%s: '%s' is not a whole number (expected %" PRIu64 "..%" PRIu64 ")",
			    flag, s ? s : "", min, max);
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		usage_error("%s: '%s' is not a whole number (expected %" PRIu64 "..%" PRIu64 ")",
			    flag, s, min, max);
	if (v < min || v > max)
		usage_error("%s: %s is out of range (expected %" PRIu64 "..%" PRIu64 ")", flag, s,
			    min, max);
	return v;
}

static double parse_seconds(const char *flag, const char *s, double min, double max)
{
	char *end;
	if (!s || !*s || *s == ' ')
		usage_error("%s: '%s' is not a number of seconds", flag, s ? s : "");
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || !isfinite(v))
		usage_error("%s: '%s' is not a number of seconds", flag, s);
	if (v < min || v > max)
		usage_error("%s: %s is out of range (expected %g..%g seconds)", flag, s, min, max);
	return v;
}

/* Parse a numeric IPv4/IPv6 literal (IPv6 may be wrapped in [ ]) with a port. */
static int make_sockaddr(const char *ip, uint16_t port, struct sockaddr_storage *ss,
			 socklen_t *len)
{
	char tmp[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(ip);
	if (n >= 2 && ip[0] == '[' && ip[n - 1] == ']') {
		if (n - 2 >= sizeof(tmp))
			return -1;
		memcpy(tmp, ip + 1, n - 2);
		tmp[n - 2] = 0;
		ip = tmp;
	}
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		*len = sizeof(*s4);
		return 0;
	}
	if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		*len = sizeof(*s6);
		return 0;
	}
	return -1;
}

/* Text form of an address; IPv4-mapped IPv6 is shown as plain IPv4. */
static const char *addr_text(const struct sockaddr *sa, char *buf, size_t len, uint16_t *port)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		if (port)
			*port = ntohs(s4->sin_port);
		return inet_ntop(AF_INET, &s4->sin_addr, buf, (socklen_t)len);
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		if (port)
			*port = ntohs(s6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
			return inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
		return inet_ntop(AF_INET6, &s6->sin6_addr, buf, (socklen_t)len);
	}
	snprintf(buf, len, "unknown");
	if (port)
		*port = 0;
	return buf;
}

/* Raise our own soft RLIMIT_NOFILE to the hard limit; returns the new soft limit. */
static uint64_t raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		struct rlimit want = rl;
		want.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			rl = want;
	}
	return rl.rlim_cur == RLIM_INFINITY ? (uint64_t)1 << 20 : (uint64_t)rl.rlim_cur;
}

/* "--flag value" or "--flag=value". Returns the value or NULL if argv[*i] is not this flag. */
static const char *flag_value(int argc, char **argv, int *i, const char *flag)
{
	const char *a = argv[*i];
	size_t n = strlen(flag);
	if (strncmp(a, flag, n) != 0)
		return NULL;
	if (a[n] == '=')
		return a + n + 1;
	if (a[n] != 0)
		return NULL;
	if (*i + 1 >= argc)
		usage_error("%s needs a value", flag);
	(*i)++;
	return argv[*i];
}

/* ------------------------------------------------------------------------ */
/* help                                                                     */
/* ------------------------------------------------------------------------ */

static void help_main(FILE *f)
{
	fprintf(f,
"usage: " PROG " serve  --port P [--bind ADDR] [--udp] [--max-seconds S]\n"
"       " PROG " client --target IP:PORT[,IP:PORT...] [options]\n"
"       " PROG " {serve|client} --help\n"
"\n"
"A bounded connection-rate load generator (client) and sink (serve) for the\n"
"natlens capture benchmark. It measures how many short connections per second\n"
"get through a path (e.g. client netns -> NodePort -> MASQUERADE -> pod).\n"
"\n"
"Each TCP 'connection' is: connect -> server writes 'client_address=<ip>\\n'\n"
"-> client reads the line -> CLIENT closes (normal FIN) -> server sees EOF and\n"
"closes. The client closing first keeps TIME_WAIT on the load generator side.\n"
"UDP mode sends one datagram from a fresh socket (fresh source port) and waits\n"
"for the same line as the reply.\n"
"\n"
"Everything is bounded: serve stops after --max-seconds (default 3600) or on\n"
"SIGINT/SIGTERM; client stops at --duration-s or --max-conns, whichever first.\n"
"Nothing system-wide is changed (only this process's open-file soft limit).\n"
"\n"
"Exit status: 0 ok, 1 runtime failure (or client completed nothing), 2 usage.\n");
}

static void help_serve(FILE *f)
{
	fprintf(f,
"usage: " PROG " serve --port P [--bind ADDR] [--udp] [--max-seconds S]\n"
"\n"
"Accept connections and tell each client the source address the server saw:\n"
"  TCP: on accept write 'client_address=<peer ip>\\n', then keep the socket\n"
"       open until the peer closes (read until EOF, then close). IPv4-mapped\n"
"       IPv6 peers are printed as plain IPv4.\n"
"  UDP: answer every datagram with the same line, sent from the address the\n"
"       datagram was addressed to.\n"
"\n"
"options:\n"
"  --port P          port to listen on (1-65535), required\n"
"  --bind ADDR       numeric IPv4 or IPv6 address to bind. Default: '::' with\n"
"                    IPV6_V6ONLY=0 (dual-stack; falls back to 0.0.0.0 if the\n"
"                    namespace has no IPv6)\n"
"  --udp             serve UDP instead of TCP\n"
"  --max-seconds S   stop after S seconds (default 3600, max 604800)\n"
"  -h, --help        this text\n"
"\n"
"stdout gets one JSON line when listening ({\"event\":\"listening\",...}) and one\n"
"when stopping ({\"event\":\"exit\",\"accepted\":N,...}). SO_REUSEADDR is set and\n"
"the listen backlog is 4096 (the kernel caps it at net.core.somaxconn).\n"
"\n"
"example:\n"
"  " PROG " serve --port 8080 --max-seconds 600 &\n");
}

static void help_client(FILE *f)
{
	fprintf(f,
"usage: " PROG " client --target IP:PORT[,IP:PORT...] [options]\n"
"\n"
"Open connections as fast as possible, keeping up to --concurrency in flight,\n"
"round-robin over the targets. Stops at --duration-s or --max-conns, whichever\n"
"comes first; connections still in flight then get a short grace period\n"
"(min(--connect-timeout-ms, 1000 ms)) and are abandoned after it.\n"
"\n"
"options:\n"
"  --target LIST             comma-separated IP:PORT list; IPv6 as [::1]:8080.\n"
"                            Numeric addresses only (no DNS). Repeatable.\n"
"  --udp                     UDP: one datagram per fresh socket, wait for reply\n"
"  --concurrency N           connections in flight (default 64, max 100000)\n"
"  --rate R                  start at most R connections per second, evenly paced\n"
"                            (default 0 = as fast as --concurrency allows). When\n"
"                            the path cannot keep up, at most 100 ms of backlog is\n"
"                            made up; older backlog is dropped (see rate_lag_ms)\n"
"  --duration-s S            stop launching after S seconds (default 5, max 86400)\n"
"  --max-conns N             stop after N attempts (default 1000000). If every\n"
"                            attempt succeeds, connections == N exactly.\n"
"  --connect-timeout-ms M    per-connection budget for connect + reply\n"
"                            (default 2000, 1..600000). Expiry counts as a\n"
"                            timeout (split into connect / reply timeouts).\n"
"  --source ADDR             bind this local address (with IP_BIND_ADDRESS_NO_PORT,\n"
"                            so the kernel still picks the port at connect time)\n"
"  --record FILE             write 'local_ip local_port remote_ip remote_port' per\n"
"                            completed connection (off by default: it costs a\n"
"                            getsockname() per connection)\n"
"  --progress                JSON progress line to stderr every second\n"
"  --json                    machine-only: stdout is the JSON line and nothing is\n"
"                            printed to stderr except progress/errors. Without it\n"
"                            a human summary is ALSO written to stderr; stdout is\n"
"                            always exactly one JSON line.\n"
"  -h, --help                this text\n"
"\n"
"output (stdout, one line):\n"
"  {\"connections\":N,\"failed\":N,\"errors\":{\"ECONNREFUSED\":N,...},\"timeouts\":N,\n"
"   \"elapsed_s\":F,\"conn_per_s\":F,\"targets\":[...], ...extra fields}\n"
"  failed = sum(errors) + timeouts; attempts = connections + failed + abandoned.\n"
"  Besides errno names, errors may hold EOF_BEFORE_REPLY (peer closed before\n"
"  the line) and BAD_REPLY (reply without the client_address= prefix).\n"
"\n"
"tips for NAT'd load (these are per-namespace sysctls; this tool sets none):\n"
"  - spread load over several targets/backends: one 4-tuple destination behind\n"
"    MASQUERADE runs out of source ports and hits TIME_WAIT/PAWS rejections;\n"
"  - widen net.ipv4.ip_local_port_range and lower\n"
"    net.netfilter.nf_conntrack_tcp_timeout_time_wait (120 s by default) in the\n"
"    namespaces you own, or sustained rates fall far below burst rates;\n"
"  - EADDRNOTAVAIL in errors means the client ran out of local ports.\n"
"\n"
"example:\n"
"  " PROG " client --target 10.0.0.2:30080,10.0.0.3:30080 --duration-s 10 \\\n"
"      --concurrency 128 --progress --json\n"
"  " PROG " client --target 10.0.0.2:30080 --rate 500 --duration-s 600 --json\n");
}

/* ------------------------------------------------------------------------ */
/* serve                                                                    */
/* ------------------------------------------------------------------------ */

struct pending_write { /* only for the (rare) short write of the reply line */
	uint8_t len, off;
	char buf[REPLY_MAX + 1];
};

struct server {
	int epfd, lfd, reserve_fd, family;
	int udp;
	struct pending_write **pend; /* indexed by fd */
	size_t npend;
	uint64_t accepted, closed, reset, emfile_dropped, udp_replies, udp_dropped, open_now;
};

static int reply_line(const struct sockaddr *peer, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN];
	addr_text(peer, ip, sizeof(ip), NULL);
	return snprintf(out, outlen, REPLY_PREFIX "%s\n", ip);
}

static void srv_close(struct server *s, int fd)
{
	if ((size_t)fd < s->npend && s->pend[fd]) {
		free(s->pend[fd]);
		s->pend[fd] = NULL;
	}
	close(fd); /* also removes it from the epoll set */
	s->closed++;
	s->open_now--;
}

static void srv_set_pending(struct server *s, int fd, const char *line, int len, int off)
{
	if ((size_t)fd >= s->npend) {
		size_t n = s->npend ? s->npend : 1024;
		while (n <= (size_t)fd)
			n *= 2;
		struct pending_write **p = realloc(s->pend, n * sizeof(*p));
		if (!p)
			fatal("out of memory");
		memset(p + s->npend, 0, (n - s->npend) * sizeof(*p));
		s->pend = p;
		s->npend = n;
	}
	struct pending_write *pw = s->pend[fd];
	if (!pw) {
		pw = calloc(1, sizeof(*pw));
		if (!pw)
			fatal("out of memory");
		s->pend[fd] = pw;
	}
	memcpy(pw->buf, line, (size_t)len);
	pw->len = (uint8_t)len;
	pw->off = (uint8_t)off;
}

static void srv_accept_all(struct server *s)
{
	for (int budget = 0; budget < 4096; budget++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(s->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				/* Out of fds: the pending connection would keep the listener
				 * readable forever (busy loop). Use the reserve fd to accept and
				 * drop it, then take the reserve back. */
				if (s->reserve_fd >= 0) {
					close(s->reserve_fd);
					s->reserve_fd = -1;
					int tmp = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
					if (tmp >= 0) {
						close(tmp);
						s->emfile_dropped++;
					}
					s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
					continue;
				}
				return;
			}
			return; /* EAGAIN or a real error: wait for the next event */
		}
		s->accepted++;
		s->open_now++;
		char line[REPLY_MAX + 8];
		int len = reply_line((struct sockaddr *)&peer, line, sizeof(line));
		int off = 0;
		uint32_t events = EPOLLIN | EPOLLRDHUP;
		while (off < len) {
			ssize_t w = send(fd, line + off, (size_t)(len - off), MSG_NOSIGNAL);
			if (w > 0) {
				off += (int)w;
				continue;
			}
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				srv_set_pending(s, fd, line, len, off);
				events |= EPOLLOUT;
				break;
			}
			break; /* peer already gone (EPIPE/ECONNRESET): close */
		}
		if (off < len && !(events & EPOLLOUT)) {
			s->reset++;
			srv_close(s, fd);
			continue;
		}
		struct epoll_event ev = {.events = events, .data.fd = fd};
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
			srv_close(s, fd);
			continue;
		}
	}
}

static void srv_conn_event(struct server *s, int fd, uint32_t events)
{
	if ((events & EPOLLOUT) && (size_t)fd < s->npend && s->pend[fd]) {
		struct pending_write *pw = s->pend[fd];
		while (pw->off < pw->len) {
			ssize_t w = send(fd, pw->buf + pw->off, (size_t)(pw->len - pw->off), MSG_NOSIGNAL);
			if (w > 0) {
				pw->off = (uint8_t)(pw->off + w);
				continue;
			}
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			s->reset++;
			srv_close(s, fd);
			return;
		}
		if (pw->off >= pw->len) {
			free(pw);
			s->pend[fd] = NULL;
			struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
			epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ev);
		}
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
		char buf[4096];
		for (;;) {
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r > 0)
				continue; /* clients send nothing we need; discard */
			if (r == 0) {
				srv_close(s, fd); /* peer closed first: we close too */
				return;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (events & (EPOLLHUP | EPOLLERR)) {
					s->reset++;
					srv_close(s, fd);
				}
				return;
			}
			s->reset++; /* ECONNRESET, ETIMEDOUT, ... */
			srv_close(s, fd);
			return;
		}
	}
}

static void srv_udp_drain(struct server *s)
{
	for (int budget = 0; budget < 1024; budget++) {
		char buf[2048];
		union {
			char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
			struct cmsghdr align;
		} cin, cout;
		struct sockaddr_storage peer;
		struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
		struct msghdr mh = {
			.msg_name = &peer, .msg_namelen = sizeof(peer),
			.msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = cin.buf, .msg_controllen = sizeof(cin.buf),
		};
		ssize_t r = recvmsg(s->lfd, &mh, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return; /* EAGAIN, or an ICMP error queued on the socket: ignore */
		}
		char line[REPLY_MAX + 8];
		int len = reply_line((struct sockaddr *)&peer, line, sizeof(line));

		/* Reply from the address the datagram was sent to (multi-address hosts). */
		memset(&cout, 0, sizeof(cout));
		size_t clen = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
				struct in_pktinfo in;
				memcpy(&in, CMSG_DATA(c), sizeof(in));
				struct cmsghdr *o = (struct cmsghdr *)cout.buf;
				o->cmsg_level = IPPROTO_IP;
				o->cmsg_type = IP_PKTINFO;
				o->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
				struct in_pktinfo pi = {.ipi_ifindex = 0, .ipi_spec_dst = in.ipi_addr};
				memcpy(CMSG_DATA(o), &pi, sizeof(pi));
				clen = CMSG_SPACE(sizeof(struct in_pktinfo));
				break;
			}
			if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
				struct in6_pktinfo in6;
				memcpy(&in6, CMSG_DATA(c), sizeof(in6));
				struct cmsghdr *o = (struct cmsghdr *)cout.buf;
				o->cmsg_level = IPPROTO_IPV6;
				o->cmsg_type = IPV6_PKTINFO;
				o->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
				/* keep the ifindex only for link-local (scope needed) */
				struct in6_pktinfo pi = {.ipi6_addr = in6.ipi6_addr,
					.ipi6_ifindex = IN6_IS_ADDR_LINKLOCAL(&in6.ipi6_addr) ? in6.ipi6_ifindex : 0};
				memcpy(CMSG_DATA(o), &pi, sizeof(pi));
				clen = CMSG_SPACE(sizeof(struct in6_pktinfo));
				break;
			}
		}
		struct iovec oiov = {.iov_base = line, .iov_len = (size_t)len};
		struct msghdr om = {
			.msg_name = &peer, .msg_namelen = mh.msg_namelen,
			.msg_iov = &oiov, .msg_iovlen = 1,
			.msg_control = clen ? cout.buf : NULL, .msg_controllen = clen,
		};
		ssize_t w;
		do
			w = sendmsg(s->lfd, &om, MSG_NOSIGNAL | MSG_DONTWAIT);
		while (w < 0 && errno == EINTR);
		if (w < 0 && clen) { /* pktinfo refused (unusual setups): plain reply */
			om.msg_control = NULL;
			om.msg_controllen = 0;
			w = sendmsg(s->lfd, &om, MSG_NOSIGNAL | MSG_DONTWAIT);
		}
		if (w == len)
			s->udp_replies++;
		else
			s->udp_dropped++;
	}
}

static int srv_open_socket(int family, int type, const struct sockaddr_storage *ss, socklen_t sl,
			   int dual_stack, int *err)
{
	int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = errno;
		return -1;
	}
	int one = 1, zero = 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET6 && dual_stack)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (type == SOCK_DGRAM) {
		/* best effort: lets replies leave from the address the client used */
		setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
		if (family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
		int rcv = 4 << 20;
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	}
	if (bind(fd, (const struct sockaddr *)ss, sl) != 0) {
		*err = errno;
		close(fd);
		return -1;
	}
	if (type == SOCK_STREAM && listen(fd, 4096) != 0) {
		*err = errno;
		close(fd);
		return -1;
	}
	return fd;
}

static int cmd_serve(int argc, char **argv)
{
	long port = -1;
	const char *bind_addr = NULL;
	int udp = 0;
	double max_seconds = 3600;

	for (int i = 0; i < argc; i++) {
		const char *v;
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			help_serve(stdout);
			return 0;
		} else if ((v = flag_value(argc, argv, &i, "--port"))) {
			port = (long)parse_u64("--port", v, 1, 65535);
		} else if ((v = flag_value(argc, argv, &i, "--bind"))) {
			bind_addr = v;
		} else if (!strcmp(argv[i], "--udp")) {
			udp = 1;
		} else if ((v = flag_value(argc, argv, &i, "--max-seconds"))) {
			max_seconds = parse_seconds("--max-seconds", v, 0.001, 604800);
		} else {
			usage_error("serve: unknown option '%s'", argv[i]);
		}
	}
	if (port < 0)
		usage_error("serve: --port is required (e.g. --port 8080)");

	struct sockaddr_storage ss;
	socklen_t sl;
	int type = udp ? SOCK_DGRAM : SOCK_STREAM;
	int fd = -1, err = 0, family;
	if (bind_addr) {
		if (make_sockaddr(bind_addr, (uint16_t)port, &ss, &sl) != 0)
			usage_error("--bind: '%s' is not a numeric IPv4 or IPv6 address", bind_addr);
		family = ss.ss_family;
		fd = srv_open_socket(family, type, &ss, sl, 0, &err);
	} else {
		make_sockaddr("::", (uint16_t)port, &ss, &sl);
		family = AF_INET6;
		fd = srv_open_socket(AF_INET6, type, &ss, sl, 1, &err);
		if (fd < 0 && (err == EAFNOSUPPORT || err == EADDRNOTAVAIL)) {
			fprintf(stderr, PROG ": no IPv6 here (%s), serving IPv4 only on 0.0.0.0\n",
				errno_name(err));
			make_sockaddr("0.0.0.0", (uint16_t)port, &ss, &sl);
			family = AF_INET;
			fd = srv_open_socket(AF_INET, type, &ss, sl, 0, &err);
		}
	}
	if (fd < 0)
		fatal("serve: cannot %s on %s port %ld: %s (%s)", udp ? "bind UDP" : "listen",
		      bind_addr ? bind_addr : "::", port, strerror(err), errno_name(err));

	uint64_t nofile = raise_nofile();
	setup_signals();

	struct server s;
	memset(&s, 0, sizeof(s));
	s.lfd = fd;
	s.udp = udp;
	s.family = family;
	s.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	s.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (s.epfd < 0)
		fatal("epoll_create1: %s", strerror(errno));
	struct epoll_event lev = {.events = EPOLLIN, .data.fd = fd};
	if (epoll_ctl(s.epfd, EPOLL_CTL_ADD, fd, &lev) != 0)
		fatal("epoll_ctl: %s", strerror(errno));

	char ip[INET6_ADDRSTRLEN];
	uint16_t p;
	struct sockaddr_storage bound;
	socklen_t bl = sizeof(bound);
	getsockname(fd, (struct sockaddr *)&bound, &bl);
	if (bound.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, ip, sizeof(ip));
	else
		addr_text((struct sockaddr *)&bound, ip, sizeof(ip), &p);
	printf("{\"event\":\"listening\",\"proto\":\"%s\",\"address\":\"%s\",\"port\":%ld,"
	       "\"dual_stack\":%s,\"max_seconds\":%g,\"nofile\":%" PRIu64 ",\"pid\":%d}\n",
	       udp ? "udp" : "tcp", ip, port, (!bind_addr && family == AF_INET6) ? "true" : "false",
	       max_seconds, nofile, (int)getpid());
	fflush(stdout);

	uint64_t start = mono_ns();
	uint64_t deadline = start + (uint64_t)(max_seconds * 1e9);
	const char *why = "max-seconds";
	enum { NEV = 512 };
	struct epoll_event evs[NEV];
	for (;;) {
		if (g_stop_signal) {
			why = g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
			break;
		}
		uint64_t now = mono_ns();
		if (now >= deadline)
			break;
		int n = epoll_pwait(s.epfd, evs, NEV, ms_until(now, deadline, 1000), &g_wait_mask);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fatal("epoll_pwait: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++) {
			int efd = evs[i].data.fd;
			if (efd == s.lfd) {
				if (udp)
					srv_udp_drain(&s);
				else
					srv_accept_all(&s);
			} else {
				srv_conn_event(&s, efd, evs[i].events);
			}
		}
	}
	double elapsed = (double)(mono_ns() - start) / 1e9;
	if (udp)
		printf("{\"event\":\"exit\",\"reason\":\"%s\",\"proto\":\"udp\",\"replies\":%" PRIu64
		       ",\"dropped\":%" PRIu64 ",\"elapsed_s\":%.3f}\n",
		       why, s.udp_replies, s.udp_dropped, elapsed);
	else
		printf("{\"event\":\"exit\",\"reason\":\"%s\",\"proto\":\"tcp\",\"accepted\":%" PRIu64
		       ",\"closed\":%" PRIu64 ",\"reset\":%" PRIu64 ",\"open_at_exit\":%" PRIu64
		       ",\"dropped_no_fd\":%" PRIu64 ",\"elapsed_s\":%.3f}\n",
		       why, s.accepted, s.closed, s.reset, s.open_now, s.emfile_dropped, elapsed);
	fflush(stdout);
	/* Open connections and the listener are released by process exit. */
	return 0;
}

/* ------------------------------------------------------------------------ */
/* client                                                                   */
/* ------------------------------------------------------------------------ */

struct target {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[INET6_ADDRSTRLEN + 8];
	char ip[INET6_ADDRSTRLEN];
	uint16_t port;
	uint64_t ok, failed;
};

enum { PSEUDO_EOF, PSEUDO_BAD_REPLY, PSEUDO_HUP, NPSEUDO };
static const char *pseudo_names[NPSEUDO] = {"EOF_BEFORE_REPLY", "BAD_REPLY", "EPOLLHUP"};
#define MAX_ERRNO 4096

struct conn {
	int fd;          /* -1 when free */
	uint32_t gen;
	uint32_t target;
	int prev, next;  /* in-flight list, ordered by start time (= by deadline) */
	uint64_t deadline;
	uint16_t len;
	char buf[REPLY_MAX + 16];
};

struct client {
	struct target *targets;
	uint32_t ntargets;
	int udp, json, progress;
	uint32_t concurrency;
	uint64_t max_conns;
	uint64_t timeout_ns;
	/* --rate pacing: start k (since pace_base) is due at pace_base + k / rate */
	double rate;
	uint64_t pace_base, pace_k;
	uint64_t pace_lag_ns; /* backlog dropped because the path could not keep up */
	int have_source;
	struct sockaddr_storage source;
	socklen_t source_len;
	FILE *record;

	int epfd;
	struct conn *conns;
	int *free_stack;
	uint32_t nfree;
	int head, tail; /* in-flight list */
	uint32_t inflight;

	uint64_t started, completed, timeouts, timeouts_connect, timeouts_reply, abandoned;
	uint64_t errnos[MAX_ERRNO];
	uint64_t pseudo[NPSEUDO];
	uint64_t failed_total;
	uint64_t backoff_until;
	uint64_t rr;
	uint64_t now; /* loop time, refreshed after every epoll wait */
	/* latency of completed connections (start of connect -> reply line), log2 µs buckets */
	uint64_t lat_hist[64];
	uint64_t lat_max_ns;
};

static void lat_add(struct client *c, uint64_t ns)
{
	uint64_t us = ns / 1000;
	int b = us ? 64 - __builtin_clzll(us) : 0; /* bucket b holds [2^(b-1), 2^b) µs */
	c->lat_hist[b]++;
	if (ns > c->lat_max_ns)
		c->lat_max_ns = ns;
}

/* Upper bound (µs) of the bucket holding quantile q: coarse (power of two) but free. */
static uint64_t lat_quantile_us(const struct client *c, double q)
{
	uint64_t total = 0, acc = 0;
	for (int b = 0; b < 64; b++)
		total += c->lat_hist[b];
	if (!total)
		return 0;
	uint64_t want = (uint64_t)(q * (double)total);
	if (want < 1)
		want = 1;
	for (int b = 0; b < 64; b++) {
		acc += c->lat_hist[b];
		if (acc >= want) {
			uint64_t ub = b ? (1ull << b) : 1, max_us = c->lat_max_ns / 1000;
			return ub < max_us ? ub : max_us; /* bucket bound, never above the max */
		}
	}
	return 0;
}

static void list_remove(struct client *c, int i)
{
	struct conn *k = &c->conns[i];
	if (k->prev >= 0)
		c->conns[k->prev].next = k->next;
	else
		c->head = k->next;
	if (k->next >= 0)
		c->conns[k->next].prev = k->prev;
	else
		c->tail = k->prev;
	k->prev = k->next = -1;
}

static void list_append(struct client *c, int i)
{
	struct conn *k = &c->conns[i];
	k->next = -1;
	k->prev = c->tail;
	if (c->tail >= 0)
		c->conns[c->tail].next = i;
	else
		c->head = i;
	c->tail = i;
}

/* Close and release a slot (close() also removes the fd from epoll). */
static void conn_release(struct client *c, int i)
{
	struct conn *k = &c->conns[i];
	list_remove(c, i);
	if (k->fd >= 0)
		close(k->fd);
	k->fd = -1;
	k->gen++;
	c->free_stack[c->nfree++] = i;
	c->inflight--;
}

static void count_errno(struct client *c, uint32_t t, int e)
{
	if (e <= 0 || e >= MAX_ERRNO)
		e = EIO;
	c->errnos[e]++;
	c->failed_total++;
	c->targets[t].failed++;
}

static void count_pseudo(struct client *c, uint32_t t, int p)
{
	c->pseudo[p]++;
	c->failed_total++;
	c->targets[t].failed++;
}

static void record_conn(struct client *c, struct conn *k)
{
	struct sockaddr_storage local;
	socklen_t ll = sizeof(local);
	char lip[INET6_ADDRSTRLEN];
	uint16_t lport = 0;
	if (getsockname(k->fd, (struct sockaddr *)&local, &ll) != 0)
		return;
	addr_text((struct sockaddr *)&local, lip, sizeof(lip), &lport);
	const struct target *t = &c->targets[k->target];
	fprintf(c->record, "%s %u %s %u\n", lip, lport, t->ip, t->port);
}

static void conn_complete(struct client *c, int i)
{
	struct conn *k = &c->conns[i];
	if (k->len < REPLY_PREFIX_LEN || memcmp(k->buf, REPLY_PREFIX, REPLY_PREFIX_LEN) != 0) {
		count_pseudo(c, k->target, PSEUDO_BAD_REPLY);
	} else {
		c->completed++;
		c->targets[k->target].ok++;
		lat_add(c, c->now - (k->deadline - c->timeout_ns));
		if (c->record)
			record_conn(c, k);
	}
	conn_release(c, i); /* client closes first: plain close(), normal FIN */
}

/* Start one attempt. Returns 0 if started or failed synchronously, -1 to back off. */
static int conn_start(struct client *c, uint64_t now)
{
	uint32_t t = (uint32_t)(c->rr++ % c->ntargets);
	struct target *tg = &c->targets[t];
	c->started++;
	int fd = socket(tg->ss.ss_family, (c->udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		count_errno(c, t, errno);
		return -1; /* EMFILE/ENFILE/ENOBUFS/ENOMEM: back off briefly */
	}
	if (!c->udp) {
		/* Explicitly the default: close() sends a normal FIN, never an RST. */
		struct linger lg = {.l_onoff = 0, .l_linger = 0};
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	if (c->have_source) {
		/* Bind the address only; the port is chosen at connect() time with the
		 * full 4-tuple known, so ports are shared across destinations. */
		int one = 1; /* an IPPROTO_IP option, honoured by IPv6 sockets too */
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&c->source, c->source_len) != 0) {
			int e = errno;
			close(fd);
			count_errno(c, t, e);
			return -1;
		}
	}
	/* TCP: EINPROGRESS (or EINTR) means the handshake continues asynchronously;
	 * 0 is possible too. UDP connect() only sets the peer and autobinds a port. */
	int r = connect(fd, (struct sockaddr *)&tg->ss, tg->len);
	if (r < 0 && errno == EINTR && c->udp)
		r = connect(fd, (struct sockaddr *)&tg->ss, tg->len);
	if (r < 0 && errno != EINPROGRESS && !(errno == EINTR && !c->udp)) {
		int e = errno;
		close(fd);
		count_errno(c, t, e);
		if (e == EADDRNOTAVAIL || e == EAGAIN || e == ENOBUFS || e == ENOMEM)
			return -1;
		return 0;
	}
	if (c->udp) {
		ssize_t w;
		do
			w = send(fd, UDP_PROBE, sizeof(UDP_PROBE) - 1, MSG_NOSIGNAL);
		while (w < 0 && errno == EINTR);
		if (w < 0) {
			int e = errno;
			close(fd);
			count_errno(c, t, e);
			return (e == EAGAIN || e == ENOBUFS || e == ENOMEM) ? -1 : 0;
		}
	}
	int i = c->free_stack[--c->nfree];
	struct conn *k = &c->conns[i];
	k->fd = fd;
	k->target = t;
	k->len = 0;
	k->deadline = now + c->timeout_ns;
	/* No EPOLLOUT: a successful connect shows up as the server's line (EPOLLIN),
	 * a failed one as EPOLLERR/EPOLLHUP, which epoll always reports. */
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)k->gen << 32) | (uint32_t)i};
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		int e = errno;
		close(fd);
		k->fd = -1;
		c->free_stack[c->nfree++] = i;
		count_errno(c, t, e);
		return -1;
	}
	c->inflight++;
	list_append(c, i);
	return 0;
}

#define PACE_MAX_BACKLOG_NS 100000000ull /* make up at most 100 ms of missed starts */

static uint64_t pace_due(const struct client *c)
{
	return c->pace_base + (uint64_t)((double)c->pace_k * 1e9 / c->rate);
}

/* With --rate: may another connection start now? Drops backlog older than 100 ms, so a stall
 * (all --concurrency slots busy) is not followed by a burst far above the rate. */
static int pace_allows(struct client *c, uint64_t now)
{
	if (c->rate <= 0)
		return 1;
	uint64_t due = pace_due(c);
	if (now < due)
		return 0;
	if (now - due > PACE_MAX_BACKLOG_NS) {
		c->pace_lag_ns += now - due - PACE_MAX_BACKLOG_NS;
		c->pace_base = now - PACE_MAX_BACKLOG_NS;
		c->pace_k = 0;
	}
	c->pace_k++;
	return 1;
}

static void conn_event(struct client *c, uint64_t data, uint32_t events)
{
	int i = (int)(uint32_t)data;
	uint32_t gen = (uint32_t)(data >> 32);
	if (i < 0 || (uint32_t)i >= c->concurrency)
		return;
	struct conn *k = &c->conns[i];
	if (k->fd < 0 || k->gen != gen)
		return; /* stale */
	for (;;) {
		size_t room = sizeof(k->buf) - k->len;
		ssize_t r = c->udp ? recv(k->fd, k->buf, sizeof(k->buf), 0)
				   : read(k->fd, k->buf + k->len, room);
		if (r > 0) {
			if (c->udp) {
				k->len = (uint16_t)r;
				if (memchr(k->buf, '\n', (size_t)r))
					conn_complete(c, i);
				else
					{ count_pseudo(c, k->target, PSEUDO_BAD_REPLY); conn_release(c, i); }
				return;
			}
			char *nl = memchr(k->buf + k->len, '\n', (size_t)r);
			k->len = (uint16_t)(k->len + r);
			if (nl) {
				conn_complete(c, i);
				return;
			}
			if (k->len >= sizeof(k->buf)) { /* no newline in a full buffer */
				count_pseudo(c, k->target, PSEUDO_BAD_REPLY);
				conn_release(c, i);
				return;
			}
			continue; /* partial line: read more */
		}
		if (r == 0) {
			if (c->udp)
				continue; /* empty datagram: ignore it */
			count_pseudo(c, k->target, PSEUDO_EOF);
			conn_release(c, i);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (events & (EPOLLERR | EPOLLHUP)) {
				int soerr = 0;
				socklen_t sl = sizeof(soerr);
				getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
				if (soerr)
					count_errno(c, k->target, soerr);
				else if (events & EPOLLHUP && !c->udp)
					count_pseudo(c, k->target, PSEUDO_HUP);
				else
					return; /* spurious: keep waiting */
				conn_release(c, i);
			}
			return;
		}
		count_errno(c, k->target, errno); /* ECONNREFUSED, ECONNRESET, ETIMEDOUT, ... */
		conn_release(c, i);
		return;
	}
}

static void expire(struct client *c, uint64_t now)
{
	while (c->head >= 0 && c->conns[c->head].deadline <= now) {
		int i = c->head;
		struct conn *k = &c->conns[i];
		int connected = 1;
		if (!c->udp) {
			struct tcp_info ti;
			socklen_t tl = sizeof(ti);
			if (getsockopt(k->fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
			    (ti.tcpi_state == TCP_SYN_SENT))
				connected = 0;
		}
		c->timeouts++;
		if (connected)
			c->timeouts_reply++;
		else
			c->timeouts_connect++;
		c->targets[k->target].failed++;
		c->failed_total++;
		conn_release(c, i);
	}
}

static void print_errors_json(FILE *f, const struct client *c)
{
	fputc('{', f);
	int first = 1;
	for (int e = 1; e < MAX_ERRNO; e++) {
		if (!c->errnos[e])
			continue;
		fprintf(f, "%s\"%s\":%" PRIu64, first ? "" : ",", errno_name(e), c->errnos[e]);
		first = 0;
	}
	for (int p = 0; p < NPSEUDO; p++) {
		if (!c->pseudo[p])
			continue;
		fprintf(f, "%s\"%s\":%" PRIu64, first ? "" : ",", pseudo_names[p], c->pseudo[p]);
		first = 0;
	}
	fputc('}', f);
}

static void parse_targets(struct client *c, const char *list)
{
	if (!*list)
		usage_error("--target: empty list (expected IP:PORT[,IP:PORT...])");
	size_t n = strlen(list);
	if (list[0] == ',' || list[n - 1] == ',' || strstr(list, ",,"))
		usage_error("--target: empty entry in '%s'", list);
	char *dup = strdup(list), *save = NULL;
	if (!dup)
		fatal("out of memory");
	for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *colon = strrchr(tok, ':');
		if (!colon || colon == tok)
			usage_error("--target: '%s' is not IP:PORT (IPv6 as [::1]:8080)", tok);
		if (tok[0] != '[' && strchr(tok, ':') != colon)
			usage_error("--target: '%s' looks like IPv6 without brackets; write [addr]:port", tok);
		if (tok[0] == '[' && colon[-1] != ']')
			usage_error("--target: '%s' is missing the port after ']' (e.g. [::1]:8080)", tok);
		*colon = 0;
		uint16_t port = (uint16_t)parse_u64("--target port", colon + 1, 1, 65535);
		struct target t;
		memset(&t, 0, sizeof(t));
		if (make_sockaddr(tok, port, &t.ss, &t.len) != 0)
			usage_error("--target: '%s' is not a numeric IPv4/IPv6 address (no DNS names)", tok);
		addr_text((struct sockaddr *)&t.ss, t.ip, sizeof(t.ip), &t.port);
		if (t.ss.ss_family == AF_INET6)
			snprintf(t.text, sizeof(t.text), "[%s]:%u", t.ip, t.port);
		else
			snprintf(t.text, sizeof(t.text), "%s:%u", t.ip, t.port);
		struct target *nt = realloc(c->targets, (c->ntargets + 1) * sizeof(*nt));
		if (!nt)
			fatal("out of memory");
		c->targets = nt;
		c->targets[c->ntargets++] = t;
		if (c->ntargets > 4096)
			usage_error("--target: too many targets (max 4096)");
	}
	free(dup);
}

static int cmd_client(int argc, char **argv)
{
	static struct client cs;
	struct client *c = &cs;
	memset(c, 0, sizeof(*c));
	c->concurrency = 64;
	c->max_conns = 1000000;
	double duration = 5;
	uint64_t timeout_ms = 2000;
	const char *record_path = NULL;

	for (int i = 0; i < argc; i++) {
		const char *v;
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			help_client(stdout);
			return 0;
		} else if ((v = flag_value(argc, argv, &i, "--target"))) {
			parse_targets(c, v);
		} else if (!strcmp(argv[i], "--udp")) {
			c->udp = 1;
		} else if ((v = flag_value(argc, argv, &i, "--concurrency"))) {
			c->concurrency = (uint32_t)parse_u64("--concurrency", v, 1, 100000);
		} else if ((v = flag_value(argc, argv, &i, "--rate"))) {
			c->rate = (double)parse_u64("--rate", v, 0, 10000000);
		} else if ((v = flag_value(argc, argv, &i, "--duration-s"))) {
			duration = parse_seconds("--duration-s", v, 0.001, 86400);
		} else if ((v = flag_value(argc, argv, &i, "--max-conns"))) {
			c->max_conns = parse_u64("--max-conns", v, 1, 1000000000000ull);
		} else if ((v = flag_value(argc, argv, &i, "--connect-timeout-ms"))) {
			timeout_ms = parse_u64("--connect-timeout-ms", v, 1, 600000);
		} else if ((v = flag_value(argc, argv, &i, "--source"))) {
			if (make_sockaddr(v, 0, &c->source, &c->source_len) != 0)
				usage_error("--source: '%s' is not a numeric IPv4 or IPv6 address", v);
			c->have_source = 1;
		} else if ((v = flag_value(argc, argv, &i, "--record"))) {
			if (!*v)
				usage_error("--record: empty file name");
			record_path = v;
		} else if (!strcmp(argv[i], "--progress")) {
			c->progress = 1;
		} else if (!strcmp(argv[i], "--json")) {
			c->json = 1;
		} else {
			usage_error("client: unknown option '%s'", argv[i]);
		}
	}
	if (!c->ntargets)
		usage_error("client: --target is required (e.g. --target 127.0.0.1:8080)");
	if (c->have_source)
		for (uint32_t t = 0; t < c->ntargets; t++)
			if (c->targets[t].ss.ss_family != c->source.ss_family)
				usage_error("--source: address family does not match target '%s'",
					    c->targets[t].text);

	uint64_t nofile = raise_nofile();
	if ((uint64_t)c->concurrency + 32 > nofile)
		usage_error("--concurrency %u needs more open files than this process may have "
			    "(limit %" PRIu64 "); lower it or raise 'ulimit -n'",
			    c->concurrency, nofile);

	if (record_path) {
		c->record = fopen(record_path, "w");
		if (!c->record)
			fatal("--record: cannot open '%s': %s", record_path, strerror(errno));
		setvbuf(c->record, NULL, _IOFBF, 1 << 20);
	}

	c->timeout_ns = timeout_ms * 1000000ull;
	c->conns = calloc(c->concurrency, sizeof(*c->conns));
	c->free_stack = calloc(c->concurrency, sizeof(*c->free_stack));
	if (!c->conns || !c->free_stack)
		fatal("out of memory");
	for (uint32_t i = 0; i < c->concurrency; i++) {
		c->conns[i].fd = -1;
		c->conns[i].prev = c->conns[i].next = -1;
		c->free_stack[i] = (int)(c->concurrency - 1 - i);
	}
	c->nfree = c->concurrency;
	c->head = c->tail = -1;
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0)
		fatal("epoll_create1: %s", strerror(errno));
	setup_signals();

	uint64_t grace_ns = (timeout_ms < 1000 ? timeout_ms : 1000) * 1000000ull;
	uint64_t start = mono_ns(), now = start;
	c->pace_base = start;
	uint64_t run_deadline = start + (uint64_t)(duration * 1e9);
	uint64_t hard_deadline = run_deadline + grace_ns; /* absolute bound on the run */
	uint64_t next_progress = start + 1000000000ull;
	uint64_t last_progress_done = 0, last_progress_t = start;
	int launching = 1;
	const char *stopped_by = "duration";
	int nev = c->concurrency < 1024 ? (int)c->concurrency : 1024;
	struct epoll_event *evs = calloc((size_t)nev, sizeof(*evs));
	if (!evs)
		fatal("out of memory");

	for (;;) {
		if (g_stop_signal) {
			stopped_by = g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
			break;
		}
		if (launching) {
			if (now >= run_deadline) {
				launching = 0;
				stopped_by = "duration";
				/* give in-flight connections a grace period, then abandon */
				hard_deadline = now + grace_ns;
			} else if (c->started >= c->max_conns) {
				launching = 0;
				stopped_by = "max-conns";
			}
		}
		if (!launching && c->inflight == 0)
			break;
		if (now >= hard_deadline)
			break;

		if (launching && now >= c->backoff_until) {
			while (c->inflight < c->concurrency && c->started < c->max_conns &&
			       pace_allows(c, now)) {
				if (conn_start(c, mono_ns()) < 0) { /* per-connect start time */
					c->backoff_until = now + 1000000ull; /* 1 ms */
					break;
				}
			}
		}

		/* sleep until the next event or the earliest deadline we care about */
		uint64_t wake = hard_deadline;
		if (launching && run_deadline < wake)
			wake = run_deadline;
		if (c->head >= 0 && c->conns[c->head].deadline < wake)
			wake = c->conns[c->head].deadline;
		if (c->progress && next_progress < wake)
			wake = next_progress;
		if (launching && c->backoff_until > now && c->backoff_until < wake &&
		    c->inflight < c->concurrency)
			wake = c->backoff_until;
		if (launching && c->rate > 0 && c->inflight < c->concurrency && now >= c->backoff_until) {
			uint64_t due = pace_due(c);
			if (due < wake)
				wake = due > now ? due : now;
		}
		int n = epoll_pwait(c->epfd, evs, nev, ms_until(now, wake, 1000), &g_wait_mask);
		if (n < 0 && errno != EINTR)
			fatal("epoll_pwait: %s", strerror(errno));
		c->now = mono_ns(); /* completion time for latency */
		for (int i = 0; i < n; i++)
			conn_event(c, evs[i].data.u64, evs[i].events);
		now = mono_ns();
		c->now = now;
		expire(c, now);

		if (c->progress && now >= next_progress) {
			double dt = (double)(now - last_progress_t) / 1e9;
			fprintf(stderr,
				"{\"progress\":true,\"t_s\":%.3f,\"connections\":%" PRIu64 ",\"failed\":%" PRIu64
				",\"timeouts\":%" PRIu64 ",\"inflight\":%u,\"interval_conn_per_s\":%.1f}\n",
				(double)(now - start) / 1e9, c->completed, c->failed_total, c->timeouts,
				c->inflight, dt > 0 ? (double)(c->completed - last_progress_done) / dt : 0.0);
			last_progress_done = c->completed;
			last_progress_t = now;
			while (next_progress <= now)
				next_progress += 1000000000ull;
		}
	}
	uint64_t end = mono_ns();
	/* Whatever is still in flight (grace period over, or a signal) is abandoned. */
	while (c->head >= 0) {
		c->abandoned++;
		conn_release(c, c->head);
	}
	close(c->epfd);
	free(evs);
	int record_err = 0;
	if (c->record) {
		if (fclose(c->record) != 0)
			record_err = errno;
		c->record = NULL;
	}

	double elapsed = (double)(end - start) / 1e9;
	double rate = elapsed > 0 ? (double)c->completed / elapsed : 0;
	FILE *o = stdout;
	fprintf(o, "{\"connections\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"errors\":", c->completed,
		c->failed_total);
	print_errors_json(o, c);
	fprintf(o, ",\"timeouts\":%" PRIu64 ",\"elapsed_s\":%.3f,\"conn_per_s\":%.1f,\"targets\":[",
		c->timeouts, elapsed, rate);
	for (uint32_t t = 0; t < c->ntargets; t++)
		fprintf(o, "%s\"%s\"", t ? "," : "", c->targets[t].text);
	fprintf(o, "],\"mode\":\"%s\",\"attempts\":%" PRIu64 ",\"abandoned\":%" PRIu64
		   ",\"timeouts_connect\":%" PRIu64 ",\"timeouts_reply\":%" PRIu64
		   ",\"concurrency\":%u,\"rate\":%.0f,\"rate_lag_ms\":%.1f,\"stopped_by\":\"%s\","
		   "\"latency_us\":{\"p50_le\":%" PRIu64 ",\"p99_le\":%" PRIu64 ",\"p999_le\":%" PRIu64
		   ",\"max\":%" PRIu64 "},\"per_target\":[",
		c->udp ? "udp" : "tcp", c->started, c->abandoned, c->timeouts_connect,
		c->timeouts_reply, c->concurrency, c->rate, (double)c->pace_lag_ns / 1e6, stopped_by,
		lat_quantile_us(c, 0.5),
		lat_quantile_us(c, 0.99), lat_quantile_us(c, 0.999), c->lat_max_ns / 1000);
	for (uint32_t t = 0; t < c->ntargets; t++)
		fprintf(o, "%s{\"target\":\"%s\",\"connections\":%" PRIu64 ",\"failed\":%" PRIu64 "}",
			t ? "," : "", c->targets[t].text, c->targets[t].ok, c->targets[t].failed);
	fprintf(o, "]}\n");
	fflush(o);

	if (!c->json) {
		fprintf(stderr,
			PROG ": %s: %" PRIu64 " connections in %.3f s = %.1f/s; failed %" PRIu64
			" (timeouts %" PRIu64 "), abandoned %" PRIu64 ", stopped by %s\n",
			c->udp ? "udp" : "tcp", c->completed, elapsed, rate, c->failed_total, c->timeouts,
			c->abandoned, stopped_by);
	}
	if (record_err)
		fatal("--record: write failed: %s", strerror(record_err));
	free(c->conns);
	free(c->free_stack);
	free(c->targets);
	return c->completed > 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	if (argc < 2) {
		help_main(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		help_main(stdout);
		return 0;
	}
	if (!strcmp(cmd, "serve") || !strcmp(cmd, "server"))
		return cmd_serve(argc - 2, argv + 2);
	if (!strcmp(cmd, "client"))
		return cmd_client(argc - 2, argv + 2);
	usage_error("unknown command '%s' (expected 'serve' or 'client')", cmd);
}
