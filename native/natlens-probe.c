// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * natlens-probe - loads natlens.bpf.o, attaches it to a network namespace's
 * interfaces and streams fixed-size records (bpf/natlens.h) to stdout.
 *
 *   natlens-probe features [--obj PATH]
 *   natlens-probe run --obj PATH [--netns PATH] ...
 *   natlens-probe detach [--netns PATH]
 *
 * stdout carries binary records only; stderr carries JSON lines only.
 */
#define _GNU_SOURCE
#include "natlens-probe.h"
#include "capture-state.h"
#include "ctnetlink.h"
#include "tc-attach.h"
#include "util.h"
#include "natlens-maps.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <regex.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <net/if_arp.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#define DEFAULT_LOCK_DIR "/run/natlens"
#define CTNL_RCVBUF (32 * 1024 * 1024)
#define PENDING_FORGET_NS (60ULL * 1000000000ULL) /* reported attempts kept this long */

struct run_opts {
	const char *obj_path;
	const char *netns;
	const char *ifaces_re;
	const char *exclude_re;
	const char *lock_dir;
	bool mode_ctnetlink;
	bool no_udp, no_attempts, no_ct_end, no_proxy, verbose;
	unsigned long ring_kb, wakeup_kb, drain_ms, stats_ms, drop_after_ms;
};

struct iface {
	int ifindex;
	char name[IF_NAMESIZE];
	bool attached;
	bool failed; /* attach failed; retried only if the link is renamed */
	bool warned; /* non-Ethernet link already reported */
};

/* Everything the event loop touches. */
static struct {
	struct run_opts o;
	regex_t ifaces_re, exclude_re;
	bool have_ifaces_re, have_exclude_re;
	struct bpf_object *obj;
	int fd_ingress, fd_egress, fd_counters, fd_pending;
	struct ring_buffer *rb;
	int64_t mono_off;           /* CLOCK_REALTIME - CLOCK_MONOTONIC */
	__u64 ctr[NL_CTR_MAX];      /* user-space counters (added to kernel ones) */
	struct iface *ifs;
	size_t n_ifs, cap_ifs;
	int ncpus;
	__u64 *cpu_full, *cpu_full_sent; /* per-CPU NL_CTR_RINGBUF_FULL: latest reading, last written */
	int lock_fd;                /* the netns lock, which also holds the capture state */
	struct capture_state cs;    /* what the lock file says about this run */
	pid_t parent;               /* the agent that spawned us (a changed ppid means it died) */
} g = { .fd_ingress = -1, .fd_egress = -1, .fd_counters = -1, .fd_pending = -1, .lock_fd = -1 };

int exe_sibling(const char *name, char *out, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n < 0)
		return -errno;
	exe[n] = '\0';
	if ((size_t)snprintf(out, len, "%s/%s", dirname(exe), name) >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* ---------------------------------------------------------------- setup */

static int enter_netns(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		ev_error("open(netns)", errno, "cannot open network namespace %s: %s", path, errstr(errno));
		return -1;
	}
	if (setns(fd, CLONE_NEWNET) < 0) {
		ev_error("setns(CLONE_NEWNET)", errno, "cannot enter network namespace %s: %s", path,
			 errstr(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static char g_lock_path[PATH_MAX];

/* Releases the lock. The file stays: it tells the next holder how this one
 * ended and until when it captured (capture-state.h). Files of namespaces that
 * are gone do not pile up: the kernel reuses netns inode numbers, and the next
 * namespace with that number overwrites the file. */
static void release_lock(int fd)
{
	if (fd >= 0)
		close(fd);
}

/* One agent per netns: flock on a file named after the netns inode.
 * Returns the lock fd (kept open for life), -1 on error, -2 if held. With
 * `prev`, fills it with the state the previous holder left (CS_NONE if none). */
static int take_lock(const char *dir, struct capture_state *prev)
{
	char path[PATH_MAX], pid[32] = "";
	struct stat st;
	int fd, n;

	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		ev_error("mkdir(lock-dir)", errno, "cannot create lock dir %s: %s", dir, errstr(errno));
		return -1;
	}
	if (stat("/proc/self/ns/net", &st) < 0) {
		ev_error("stat(/proc/self/ns/net)", errno, "cannot identify the netns: %s", errstr(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/netns-%lu-%lu.lock", dir, (unsigned long)st.st_dev,
		 (unsigned long)st.st_ino);
retry:
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		ev_error("open(lock)", errno, "cannot open lock file %s: %s", path, errstr(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int err = errno;

		n = pread(fd, pid, sizeof(pid) - 1, 0);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		if (err == EWOULDBLOCK) {
			fprintf(stderr, "{\"event\":\"error\",\"what\":\"flock\",\"errno\":%d,\"msg\":", err);
			json_str(stderr, "another natlens-probe already captures this network namespace");
			fputs(",\"lock\":", stderr);
			json_str(stderr, path);
			fprintf(stderr, ",\"pid\":%ld}\n", strtol(pid, NULL, 10));
			close(fd);
			return -2;
		}
		ev_error("flock", err, "cannot lock %s: %s", path, errstr(err));
		close(fd);
		return -1;
	}
	/* The holder unlinks the file when it exits (so locks of gone namespaces do not pile
	 * up); if that happened between our open and flock, we locked an orphan: retry. */
	{
		struct stat held, named;

		if (fstat(fd, &held) == 0 && (stat(path, &named) < 0 || named.st_ino != held.st_ino)) {
			close(fd);
			goto retry;
		}
	}
	snprintf(g_lock_path, sizeof(g_lock_path), "%s", path);
	if (prev && cs_read(fd, prev) < 0)
		*prev = (struct capture_state){ 0 };
	return fd;
}

/* Warns once: a heartbeat that cannot be written only costs the next agent its gap report. */
static void state_save(void)
{
	static bool warned;
	int err = cs_write(g.lock_fd, &g.cs);

	if (err && !warned) {
		ev_warn("cannot write the capture state into %s: %s", g_lock_path, errstr(err));
		warned = true;
	}
}

/* Takes over the namespace's capture state: the previous holder's heartbeat is
 * kept until this run captures, so a run that dies before capturing does not
 * hide the gap it inherited. */
static void state_begin(const struct capture_state *prev)
{
	g.cs = (struct capture_state){ .pid = getpid(), .state = CS_STARTING,
				       .netns_cookie = cs_netns_cookie() };
	cs_boot_id(g.cs.boot_id, sizeof(g.cs.boot_id));
	if (prev->state != CS_NONE && cs_same_namespace(prev, &g.cs))
		g.cs.heartbeat_ns = prev->heartbeat_ns;
	state_save();
}

/* Capture is live: reports the time nobody captured this namespace, if the
 * state says it was captured before, then starts the heartbeat. */
static void state_capturing(const struct capture_state *prev)
{
	__u64 now = clock_ns(CLOCK_REALTIME);

	if (g.cs.heartbeat_ns && g.cs.heartbeat_ns <= now) {
		const char *cause = "crashed", *why;
		char reason[256];

		switch (prev->state) {
		case CS_STOPPED: cause = "stopped"; why = "was stopped"; break;
		case CS_FAILED: cause = "failed"; why = "stopped on an error"; break;
		case CS_AGENT_GONE: why = "lost its agent (the agent ended unexpectedly; the probe detached)"; break;
		case CS_STARTING: why = "ended before it started capturing (killed or crashed)"; break;
		default: why = "ended without detaching (killed or crashed)"; break;
		}
		snprintf(reason, sizeof(reason), "the previous natlens-probe (pid %ld) %s", prev->pid, why);
		fprintf(stderr, "{\"event\":\"gap\",\"from_ns\":\"%llu\",\"to_ns\":\"%llu\",\"cause\":\"%s\","
			"\"previous_pid\":%ld,\"previous_state\":\"%s\",\"reason\":",
			(unsigned long long)g.cs.heartbeat_ns, (unsigned long long)now, cause, prev->pid,
			cs_state_name(prev->state));
		json_str(stderr, reason);
		fputs("}\n", stderr);
	}
	g.cs.state = CS_RUNNING;
	g.cs.started_ns = now;
	g.cs.heartbeat_ns = now;
	state_save();
}

/* The run is over and its filters are detached. */
static void state_end(int ret, bool stopped_by_signal)
{
	if (g.cs.state == CS_RUNNING)
		g.cs.heartbeat_ns = clock_ns(CLOCK_REALTIME);
	if (g_stdout_gone || getppid() != g.parent)
		g.cs.state = CS_AGENT_GONE;
	else if (ret == EXIT_OK && stopped_by_signal)
		g.cs.state = CS_STOPPED;
	else
		g.cs.state = CS_FAILED;
	state_save();
}

/* Rewrites nl_cfg inside the .rodata initial image; its offset comes from
 * the DATASEC so the CLI never assumes the variable's position. */
static int set_config(struct bpf_object *obj, const struct nl_config *cfg)
{
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vs;
	const struct btf_type *sec;
	struct bpf_map *map, *rodata = NULL;
	const void *init;
	size_t size;
	long off = -1;
	char *buf;
	int id;

	if (!btf)
		return -ENOENT;
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0)
		return -ENOENT;
	sec = btf__type_by_id(btf, id);
	vs = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++) {
		const struct btf_type *var = btf__type_by_id(btf, vs[i].type);

		if (!strcmp(btf__name_by_offset(btf, var->name_off), "nl_cfg")) {
			if (vs[i].size != sizeof(*cfg))
				return -EMSGSIZE;
			off = vs[i].offset;
		}
	}
	bpf_object__for_each_map(map, obj) {
		const char *name = bpf_map__name(map);
		size_t n = strlen(name);

		if (bpf_map__is_internal(map) && n >= 7 && !strcmp(name + n - 7, ".rodata"))
			rodata = map;
	}
	if (off < 0 || !rodata)
		return -ENOENT;
	init = bpf_map__initial_value(rodata, &size);
	if (!init || off + sizeof(*cfg) > size)
		return -ERANGE;
	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, init, size);
	memcpy(buf + off, cfg, sizeof(*cfg));
	id = bpf_map__set_initial_value(rodata, buf, size);
	free(buf);
	return id;
}

static int load_bpf(void)
{
	struct nl_config cfg = {
		.wakeup_bytes = (__u64)g.o.wakeup_kb * 1024,
		.udp_idle_ns = 30ULL * 1000000000ULL,
		.capture_udp = !g.o.no_udp,
		.track_attempts = !g.o.no_attempts,
		.capture_proxy = !g.o.no_proxy,
	};
	struct bpf_program *pin, *peg;
	struct bpf_map *events;
	int err;

	g.obj = bpf_object__open_file(g.o.obj_path, NULL);
	if (!g.obj) {
		err = errno;
		ev_error("bpf_object__open_file", err, "cannot open %s: %s; %s", g.o.obj_path, errstr(err),
			 libbpf_last_log());
		return -1;
	}
	events = bpf_object__find_map_by_name(g.obj, "events");
	if (!events) {
		ev_error("bpf_object__find_map_by_name", ENOENT, "%s has no 'events' map", g.o.obj_path);
		return -1;
	}
	err = bpf_map__set_max_entries(events, g.o.ring_kb * 1024);
	if (err) {
		ev_error("bpf_map__set_max_entries(events)", -err, "ring size %lu KiB rejected: %s",
			 g.o.ring_kb, errstr(err));
		return -1;
	}
	err = set_config(g.obj, &cfg);
	if (err) {
		ev_error("set_config(.rodata nl_cfg)", -err, "cannot rewrite nl_cfg in %s: %s", g.o.obj_path,
			 errstr(err));
		return -1;
	}
	libbpf_log_reset();
	err = bpf_object__load(g.obj);
	if (err) {
		ev_error("bpf_object__load", -err, "loading %s failed: %s; libbpf: %s", g.o.obj_path,
			 errstr(err), libbpf_last_log());
		return -1;
	}
	pin = bpf_object__find_program_by_name(g.obj, "nl_ingress");
	peg = bpf_object__find_program_by_name(g.obj, "nl_egress");
	if (!pin || !peg) {
		ev_error("bpf_object__find_program_by_name", ENOENT, "%s lacks nl_ingress/nl_egress",
			 g.o.obj_path);
		return -1;
	}
	g.fd_ingress = bpf_program__fd(pin);
	g.fd_egress = bpf_program__fd(peg);
	g.fd_counters = bpf_object__find_map_fd_by_name(g.obj, "counters");
	g.fd_pending = bpf_object__find_map_fd_by_name(g.obj, "pending_attempts");
	if (g.fd_counters < 0 || g.fd_pending < 0) {
		ev_error("bpf_object__find_map_fd_by_name", ENOENT, "%s lacks counters/pending_attempts",
			 g.o.obj_path);
		return -1;
	}
	return 0;
}

/* --------------------------------------------------------------- records */

/* Every ring record is NL_RECORD_SIZE bytes and starts with struct nl_header
 * (CONN: struct nl_event, PROXY: struct nl_proxy); the body passes through
 * unchanged, only the header's timestamp becomes CLOCK_REALTIME. */
_Static_assert(sizeof(struct nl_event) == NL_RECORD_SIZE, "nl_event size");
_Static_assert(sizeof(struct nl_proxy) == NL_RECORD_SIZE, "nl_proxy size");
_Static_assert(offsetof(struct nl_event, hdr) == 0 && offsetof(struct nl_proxy, hdr) == 0,
	       "records start with their header");

static int on_ring_record(void *ctx, void *data, size_t size)
{
	union {
		struct nl_header hdr;
		struct nl_event ev;
		struct nl_proxy proxy;
		unsigned char bytes[NL_RECORD_SIZE];
	} rec;

	(void)ctx;
	if (size != sizeof(rec.bytes))
		return 0; /* object/CLI mismatch; never emit a torn record */
	memcpy(rec.bytes, data, sizeof(rec.bytes));
	rec.hdr.ts_ns += g.mono_off;
	out_put(rec.bytes, sizeof(rec.bytes));
	g.ctr[NL_CTR_RECORDS_OUT]++;
	return 0;
}

static void on_ct_event(const struct nl_event *ev, void *ctx)
{
	(void)ctx;
	out_put(ev, sizeof(*ev));
	g.ctr[NL_CTR_RECORDS_OUT]++;
	if (ev->hdr.kind == NL_KIND_END)
		g.ctr[NL_CTR_END_SEEN]++;
}

static size_t attached_count(void)
{
	size_t n = 0;

	for (size_t i = 0; i < g.n_ifs; i++)
		n += g.ifs[i].attached;
	return n;
}

_Static_assert(sizeof(struct nl_cpu_loss) == NL_RECORD_SIZE, "nl_cpu_loss size");

/* CPU_LOSS records for the chunks of CPUs whose ring-buffer loss moved since
 * the last ones written; they precede the STATS record read with them. */
static void emit_cpu_loss(__u64 ts_ns)
{
	for (int first = 0; first < g.ncpus; first += NL_CPU_LOSS_SLOTS) {
		int count = g.ncpus - first < NL_CPU_LOSS_SLOTS ? g.ncpus - first : NL_CPU_LOSS_SLOTS;
		struct nl_cpu_loss rec = { .hdr = { .kind = NL_KIND_CPU_LOSS, .ts_ns = ts_ns },
					   .cpu_first = first, .cpu_count = count, .cpu_total = g.ncpus };

		if (!memcmp(&g.cpu_full[first], &g.cpu_full_sent[first], count * sizeof(__u64)))
			continue;
		memcpy(rec.ringbuf_full, &g.cpu_full[first], count * sizeof(__u64));
		memcpy(&g.cpu_full_sent[first], &g.cpu_full[first], count * sizeof(__u64));
		out_put(&rec, sizeof(rec));
	}
}

static void emit_stats(void)
{
	struct nl_stats st = { .hdr = { .kind = NL_KIND_STATS } };
	__u64 percpu[g.ncpus > 0 ? g.ncpus : 1];
	bool per_cpu = false;

	for (__u32 i = 0; i < NL_CTR_MAX; i++) {
		st.counter[i] = g.ctr[i];
		if (g.fd_counters >= 0 && g.ncpus > 0 && bpf_map_lookup_elem(g.fd_counters, &i, percpu) == 0) {
			for (int c = 0; c < g.ncpus; c++)
				st.counter[i] += percpu[c];
			/* Only the kernel counts ring-buffer loss (g.ctr's slot stays 0), so
			 * these per-CPU counts sum to the STATS counter. */
			if (i == NL_CTR_RINGBUF_FULL && g.cpu_full) {
				memcpy(g.cpu_full, percpu, g.ncpus * sizeof(__u64));
				per_cpu = true;
			}
		}
	}
	st.counter[NL_CTR_ATTACHED_IFACES] = attached_count();
	st.hdr.ts_ns = clock_ns(CLOCK_REALTIME);
	if (per_cpu)
		emit_cpu_loss(st.hdr.ts_ns);
	out_put(&st, sizeof(st));
	/* The heartbeat: the namespace was captured at least until now. */
	if (g.cs.state == CS_RUNNING) {
		g.cs.heartbeat_ns = st.hdr.ts_ns;
		state_save();
	}
}

/* Reports attempts that were neither forwarded nor answered within
 * drop_after of the first attempt; keeps them marked so retransmits yield no second DROP. */
static void sweep_pending(void)
{
	__u64 now = clock_ns(CLOCK_MONOTONIC);
	__u64 drop_after = (__u64)g.o.drop_after_ms * 1000000ULL;
	struct nl_flow_key key, next, *stale = NULL;
	size_t n_stale = 0, cap_stale = 0;
	struct nl_pending v;
	void *prev = NULL;

	while (bpf_map_get_next_key(g.fd_pending, prev, &next) == 0) {
		key = next;
		prev = &key;
		if (bpf_map_lookup_elem(g.fd_pending, &key, &v) != 0)
			continue; /* deleted by the program meanwhile */
		if (v.reported) {
			if (now > v.last_ts && now - v.last_ts >= PENDING_FORGET_NS) {
				if (n_stale == cap_stale) {
					size_t cap = cap_stale ? cap_stale * 2 : 64;
					void *p = realloc(stale, cap * sizeof(*stale));

					if (!p)
						continue;
					stale = p;
					cap_stale = cap;
				}
				stale[n_stale++] = key;
			}
			continue;
		}
		/* Measured from the first attempt: a blocked client retries every
		 * second for a long time, and the operator wants to know now. */
		if (now <= v.first_ts || now - v.first_ts < drop_after)
			continue;
		/* BPF_EXIST: if egress removed it meanwhile, the attempt went through. */
		v.reported = 1;
		if (bpf_map_update_elem(g.fd_pending, &key, &v, BPF_EXIST) != 0)
			continue;

		struct nl_event ev = { .hdr = {
			.ts_ns = v.first_ts + g.mono_off,
			.kind = NL_KIND_DROP,
			.family = key.family,
			.proto = key.proto,
			.hook = NL_HOOK_TC_INGRESS,
			.ifindex = v.ifindex,
			.tcp_isn = v.isn,
		} };
		memcpy(ev.orig.src, key.src, NL_ADDR_LEN);
		memcpy(ev.orig.dst, key.dst, NL_ADDR_LEN);
		ev.orig.sport = key.sport;
		ev.orig.dport = key.dport;
		ev.packets_orig = v.attempts;
		out_put(&ev, sizeof(ev));
		g.ctr[NL_CTR_RECORDS_OUT]++;
		g.ctr[NL_CTR_DROP_SEEN]++;
	}
	/* Deleting while iterating would restart get_next_key from the top. */
	for (size_t i = 0; i < n_stale; i++)
		bpf_map_delete_elem(g.fd_pending, &stale[i]);
	free(stale);
}

/* ------------------------------------------------------------ interfaces */

static struct iface *iface_find(int ifindex)
{
	for (size_t i = 0; i < g.n_ifs; i++)
		if (g.ifs[i].ifindex == ifindex)
			return &g.ifs[i];
	return NULL;
}

static struct iface *iface_add(int ifindex)
{
	if (g.n_ifs == g.cap_ifs) {
		size_t cap = g.cap_ifs ? g.cap_ifs * 2 : 16;
		void *p = realloc(g.ifs, cap * sizeof(*g.ifs));

		if (!p)
			return NULL;
		g.ifs = p;
		g.cap_ifs = cap;
	}
	g.ifs[g.n_ifs] = (struct iface){ .ifindex = ifindex };
	return &g.ifs[g.n_ifs++];
}

static bool name_selected(const char *name)
{
	if (!strcmp(name, "lo"))
		return false;
	if (g.have_ifaces_re && regexec(&g.ifaces_re, name, 0, NULL, 0) != 0)
		return false;
	if (g.have_exclude_re && regexec(&g.exclude_re, name, 0, NULL, 0) == 0)
		return false;
	return true;
}

static void iface_detach(struct iface *it, bool announce)
{
	int a = tc_detach(it->ifindex, true, false);
	int b = tc_detach(it->ifindex, false, false);

	if (announce && (a < 0 || b < 0))
		ev_error("bpf_tc_detach", -(a < 0 ? a : b), "detaching from %s (ifindex %d) failed: %s",
			 it->name, it->ifindex, errstr(a < 0 ? a : b));
	it->attached = false;
	if (announce)
		ev_iface("detached", it->ifindex, it->name);
}

/* Shared by the initial dump and RTM_NEWLINK/DELLINK notifications. */
static void on_link(const struct link_info *li, bool deleted, void *ctx)
{
	bool announce = *(bool *)ctx; /* false during the initial dump (ready lists them) */
	struct iface *it = iface_find(li->ifindex);
	const char *what = "";
	int err;

	if (deleted) {
		if (it) {
			if (it->attached)
				ev_iface("detached", it->ifindex, it->name); /* filters died with the link */
			*it = g.ifs[--g.n_ifs];
		}
		return;
	}
	if (!it && !(it = iface_add(li->ifindex)))
		return;
	if (strcmp(it->name, li->name)) { /* new or renamed: re-evaluate */
		snprintf(it->name, sizeof(it->name), "%s", li->name);
		it->failed = false;
	}
	if (!name_selected(it->name)) {
		if (it->attached)
			iface_detach(it, true);
		return;
	}
	if (it->attached || it->failed)
		return;
	if (li->type != ARPHRD_ETHER) {
		/* The parser assumes a 14-byte Ethernet header. */
		if (!it->warned)
			ev_warn("skipping %s (ifindex %d): link type %u is not Ethernet", it->name,
				it->ifindex, li->type);
		it->warned = true;
		return;
	}
	err = tc_attach(it->ifindex, g.fd_ingress, g.fd_egress, &what);
	if (err) {
		it->failed = true;
		ev_error(what, -err, "attaching to %s (ifindex %d) failed: %s", it->name, it->ifindex,
			 errstr(err));
		return;
	}
	it->attached = true;
	if (announce)
		ev_iface("attached", it->ifindex, it->name);
}

static void detach_all(bool announce)
{
	for (size_t i = 0; i < g.n_ifs; i++)
		if (g.ifs[i].attached)
			iface_detach(&g.ifs[i], announce);
}

/* ------------------------------------------------------------------- run */

static void run_usage(FILE *f)
{
	fprintf(f,
		"usage: natlens-probe run --obj PATH [options]\n"
		"\n"
		"Captures new connections (with their pre- and post-NAT tuples), dropped\n"
		"attempts, conntrack ends and PROXY protocol headers opening new TCP\n"
		"connections in one network namespace, writing fixed-size\n"
		"records (bpf/natlens.h, 128 bytes) to stdout and JSON lines to stderr.\n"
		"Runs until SIGINT/SIGTERM (or its parent dies), then detaches its filters.\n"
		"\n"
		"  --obj PATH          natlens.bpf.o (required for --mode tc)\n"
		"  --netns PATH        enter this netns first (e.g. /run/netns/NAME, /proc/PID/ns/net)\n"
		"  --ifaces REGEX      attach only to matching interfaces (default: all but lo)\n"
		"  --exclude REGEX     never attach to matching interfaces\n"
		"  --mode tc|ctnetlink tc (default): BPF on clsact + conntrack kfuncs;\n"
		"                      ctnetlink: no BPF, CT_NEW records from conntrack events\n"
		"  --no-udp            TCP only\n"
		"  --no-attempts       no ingress attempt tracking (no DROP records)\n"
		"  --no-ct-end         no END records (no ctnetlink DESTROY subscription)\n"
		"  --no-proxy-protocol no PROXY records (first data segments of new TCP\n"
		"                      connections are not checked for a PROXY header)\n"
		"  --ring-kb N         ring buffer size in KiB, power of two >= 4 (default 8192)\n"
		"  --wakeup-kb N       wake the reader once N KiB are waiting (default 64)\n"
		"  --drain-ms N        drain the ring and flush stdout every N ms (default 5)\n"
		"  --stats-ms N        emit a STATS record every N ms (default 1000)\n"
		"  --drop-after-ms N   report an attempt unanswered for N ms as DROP (default 1000)\n"
		"  --lock-dir DIR      per-netns lock files, which keep the capture state\n"
		"                      (default " DEFAULT_LOCK_DIR ")\n"
		"  --verbose           forward libbpf messages as warn events\n"
		"\n"
		"stderr events: ready {mode, ifaces:[{ifindex,ifname}]}, attached/detached\n"
		"{ifindex, ifname}, warn {msg}, error {what, errno, msg}, and before ready,\n"
		"when the namespace was captured before: gap {from_ns, to_ns (strings),\n"
		"cause: crashed|stopped|failed, previous_pid, previous_state, reason}.\n"
		"Exit codes: 0 clean, 1 runtime failure, 2 usage, 3 netns already locked.\n");
}

/* getopt's own messages are silenced (opterr = 0): stderr is JSON lines. */
static const char *unknown_opt(char **argv)
{
	static char msg[256];

	snprintf(msg, sizeof(msg), "unknown option or missing argument: %s", argv[optind - 1]);
	return msg;
}

static bool parse_ulong(const char *s, unsigned long *out, unsigned long min, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static int parse_run_args(int argc, char **argv)
{
	enum { O_OBJ = 256, O_NETNS, O_IFACES, O_EXCLUDE, O_MODE, O_NOUDP, O_NOATT, O_NOEND, O_NOPROXY, O_RING,
	       O_WAKE, O_DRAIN, O_STATS, O_DROP, O_LOCK, O_VERBOSE, O_HELP };
	static const struct option longopts[] = {
		{ "obj", required_argument, NULL, O_OBJ },
		{ "netns", required_argument, NULL, O_NETNS },
		{ "ifaces", required_argument, NULL, O_IFACES },
		{ "exclude", required_argument, NULL, O_EXCLUDE },
		{ "mode", required_argument, NULL, O_MODE },
		{ "no-udp", no_argument, NULL, O_NOUDP },
		{ "no-attempts", no_argument, NULL, O_NOATT },
		{ "no-ct-end", no_argument, NULL, O_NOEND },
		{ "no-proxy-protocol", no_argument, NULL, O_NOPROXY },
		{ "ring-kb", required_argument, NULL, O_RING },
		{ "wakeup-kb", required_argument, NULL, O_WAKE },
		{ "drain-ms", required_argument, NULL, O_DRAIN },
		{ "stats-ms", required_argument, NULL, O_STATS },
		{ "drop-after-ms", required_argument, NULL, O_DROP },
		{ "lock-dir", required_argument, NULL, O_LOCK },
		{ "verbose", no_argument, NULL, O_VERBOSE },
		{ "help", no_argument, NULL, O_HELP },
		{ 0 },
	};
	struct run_opts *o = &g.o;
	const char *bad = NULL;
	int c;

	*o = (struct run_opts){ .lock_dir = DEFAULT_LOCK_DIR, .ring_kb = 8192, .wakeup_kb = 64,
				.drain_ms = 5, .stats_ms = 1000, .drop_after_ms = 1000 };
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case O_OBJ: o->obj_path = optarg; break;
		case O_NETNS: o->netns = optarg; break;
		case O_IFACES: o->ifaces_re = optarg; break;
		case O_EXCLUDE: o->exclude_re = optarg; break;
		case O_MODE:
			if (!strcmp(optarg, "tc"))
				o->mode_ctnetlink = false;
			else if (!strcmp(optarg, "ctnetlink"))
				o->mode_ctnetlink = true;
			else
				bad = "--mode must be tc or ctnetlink";
			break;
		case O_NOUDP: o->no_udp = true; break;
		case O_NOATT: o->no_attempts = true; break;
		case O_NOEND: o->no_ct_end = true; break;
		case O_NOPROXY: o->no_proxy = true; break;
		case O_RING:
			if (!parse_ulong(optarg, &o->ring_kb, 4, 1UL << 22) || (o->ring_kb & (o->ring_kb - 1)))
				bad = "--ring-kb must be a power of two between 4 and 4194304";
			break;
		case O_WAKE:
			if (!parse_ulong(optarg, &o->wakeup_kb, 0, 1UL << 22))
				bad = "--wakeup-kb must be a number of KiB";
			break;
		case O_DRAIN:
			if (!parse_ulong(optarg, &o->drain_ms, 1, 60000))
				bad = "--drain-ms must be 1..60000";
			break;
		case O_STATS:
			if (!parse_ulong(optarg, &o->stats_ms, 10, 3600000))
				bad = "--stats-ms must be 10..3600000";
			break;
		case O_DROP:
			if (!parse_ulong(optarg, &o->drop_after_ms, 4, 3600000))
				bad = "--drop-after-ms must be 4..3600000";
			break;
		case O_LOCK: o->lock_dir = optarg; break;
		case O_VERBOSE: o->verbose = true; break;
		case O_HELP: run_usage(stdout); exit(EXIT_OK);
		default: bad = unknown_opt(argv); break;
		}
		if (bad)
			break;
	}
	if (!bad && optind < argc)
		bad = "unexpected argument";
	if (!bad && !o->mode_ctnetlink && !o->obj_path)
		bad = "--obj is required in --mode tc";
	if (!bad && o->ifaces_re && regcomp(&g.ifaces_re, o->ifaces_re, REG_EXTENDED | REG_NOSUB))
		bad = "--ifaces is not a valid extended regex";
	g.have_ifaces_re = !bad && o->ifaces_re;
	if (!bad && o->exclude_re && regcomp(&g.exclude_re, o->exclude_re, REG_EXTENDED | REG_NOSUB))
		bad = "--exclude is not a valid extended regex";
	g.have_exclude_re = !bad && o->exclude_re;
	if (bad) {
		ev_error("usage", EINVAL, "%s", bad);
		if (isatty(STDERR_FILENO)) /* stderr stays JSON-only for the agent */
			run_usage(stderr);
		return -1;
	}
	return 0;
}

static void enable_ct_acct(void)
{
	const char *path = "/proc/sys/net/netfilter/nf_conntrack_acct";
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "1\n", 2) != 2)
		ev_warn("cannot enable %s (END records will carry zero counters): %s", path,
			errstr(errno));
	if (fd >= 0)
		close(fd);
}

static int epoll_add(int ep, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void print_ready(void)
{
	bool first = true;

	fprintf(stderr, "{\"event\":\"ready\",\"mode\":\"%s\",\"ifaces\":[",
		g.o.mode_ctnetlink ? "ctnetlink" : "tc");
	for (size_t i = 0; i < g.n_ifs; i++) {
		if (!g.ifs[i].attached)
			continue;
		fprintf(stderr, "%s{\"ifindex\":%d,\"ifname\":", first ? "" : ",", g.ifs[i].ifindex);
		json_str(stderr, g.ifs[i].name);
		fputc('}', stderr);
		first = false;
	}
	fputs("]}\n", stderr);
	fflush(stderr);
}

static int cmd_run(int argc, char **argv)
{
	int rtnl_fd = -1, ctnl_fd = -1, sig_fd = -1, ep = -1, lock_fd, ret = EXIT_RUNTIME, err;
	__u64 next_sweep, next_stats, sweep_ns, stats_ns;
	__u64 next_drain, drain_ns;
	unsigned int ct_groups = 0;
	const char *what = "";
	bool announce = false, stopped_by_signal = false;
	struct capture_state prev;
	sigset_t mask;

	/* Die with the agent that spawned us, before anything can leak. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	g.parent = getppid();
	if (parse_run_args(argc, argv) < 0)
		return EXIT_USAGE;
	if (g.o.netns && enter_netns(g.o.netns) < 0)
		return EXIT_RUNTIME;
	lock_fd = take_lock(g.o.lock_dir, &prev);
	if (lock_fd == -2)
		return EXIT_LOCKED;
	if (lock_fd < 0)
		return EXIT_RUNTIME;
	g.lock_fd = lock_fd;
	state_begin(&prev);

	/* Signals become fd events so cleanup runs in the loop, never in a handler. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN); /* EPIPE on stdout ends the run quietly */
	sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (sig_fd < 0 || ep < 0 || epoll_add(ep, sig_fd) < 0) {
		ev_error("signalfd/epoll_create1", errno, "event loop setup failed: %s", errstr(errno));
		goto out;
	}
	libbpf_logging(g.o.verbose);
	g.ncpus = libbpf_num_possible_cpus();
	g.mono_off = mono_to_real_offset();
	if (g.ncpus > 0) {
		g.cpu_full = calloc(g.ncpus, sizeof(__u64));
		g.cpu_full_sent = calloc(g.ncpus, sizeof(__u64));
		if (!g.cpu_full || !g.cpu_full_sent) {
			ev_error("calloc", ENOMEM, "no memory for %d per-CPU counters", g.ncpus);
			goto out;
		}
	}

	if (!g.o.mode_ctnetlink) {
		if (load_bpf() < 0)
			goto out;
		g.rb = ring_buffer__new(bpf_object__find_map_fd_by_name(g.obj, "events"), on_ring_record,
					NULL, NULL);
		if (!g.rb) {
			ev_error("ring_buffer__new", errno, "cannot map the events ring: %s", errstr(errno));
			goto out;
		}
		if (epoll_add(ep, ring_buffer__epoll_fd(g.rb)) < 0) {
			ev_error("epoll_ctl(ringbuf)", errno, "%s", errstr(errno));
			goto out;
		}
	}

	if (!g.o.no_ct_end) {
		enable_ct_acct();
		ct_groups |= CTNL_GRP_DESTROY;
	}
	if (g.o.mode_ctnetlink)
		ct_groups |= CTNL_GRP_NEW;
	if (ct_groups) {
		ctnl_fd = ctnl_open(ct_groups, CTNL_RCVBUF, &what);
		if (ctnl_fd < 0) {
			ev_error(what, -ctnl_fd, "conntrack events unavailable: %s", errstr(ctnl_fd));
			goto out;
		}
		/* Not in epoll: a wake-up per conntrack event would cost more than the event.
		 * The 32 MiB socket buffer holds many drain intervals; it is read on the tick. */
	}

	if (!g.o.mode_ctnetlink) {
		/* Subscribe before the dump so no link appears unseen in between. */
		rtnl_fd = rtnl_monitor_open();
		if (rtnl_fd < 0) {
			ev_error("socket(NETLINK_ROUTE, RTMGRP_LINK)", -rtnl_fd, "link watch failed: %s",
				 errstr(rtnl_fd));
			goto out;
		}
		epoll_add(ep, rtnl_fd);
		err = rtnl_dump_links(on_link, &announce);
		if (err) {
			ev_error("rtnetlink RTM_GETLINK dump", -err, "listing links failed: %s", errstr(err));
			goto out;
		}
		announce = true;
	}
	state_capturing(&prev);
	print_ready();

	sweep_ns = (__u64)g.o.drop_after_ms * 1000000ULL / 4;
	drain_ns = (__u64)g.o.drain_ms * 1000000ULL;
	stats_ns = (__u64)g.o.stats_ms * 1000000ULL;
	next_sweep = clock_ns(CLOCK_MONOTONIC) + sweep_ns;
	next_stats = clock_ns(CLOCK_MONOTONIC) + stats_ns;
	next_drain = clock_ns(CLOCK_MONOTONIC) + drain_ns;
	for (;;) {
		struct epoll_event evs[8];
		bool stop = false, ring_woke = false;
		__u64 now = clock_ns(CLOCK_MONOTONIC);
		int timeout_ms = now >= next_drain ? 0 : (int)((next_drain - now + 999999) / 1000000);
		int n = epoll_wait(ep, evs, NL_ARRAY_SIZE(evs), timeout_ms);

		if (n < 0 && errno != EINTR) {
			ev_error("epoll_wait", errno, "%s", errstr(errno));
			goto out;
		}
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;

			if (fd == sig_fd) {
				stop = true;
			} else if (fd == rtnl_fd) {
				if (rtnl_monitor_read(rtnl_fd, on_link, &announce) == -ENOBUFS) {
					ev_warn("rtnetlink link events overran; re-listing links");
					rtnl_dump_links(on_link, &announce);
				}
			} else {
				ring_woke = true; /* the ring buffer passed its wake-up threshold */
			}
		}
		now = clock_ns(CLOCK_MONOTONIC);
		/* Drain on the tick (records written with BPF_RB_NO_WAKEUP are only seen by
		 * consuming on a timer), or early when the ring asks. Output is flushed only
		 * here, so the reader gets one write per tick instead of one per wake-up. */
		if (!ring_woke && !stop && now < next_drain)
			continue;
		next_drain = now + drain_ns;
		if (ctnl_fd >= 0) {
			err = ctnl_read(ctnl_fd, on_ct_event, NULL);
			if (err > 0)
				g.ctr[NL_CTR_NETLINK_LOST] += err;
			else if (err < 0)
				ev_error("recv(ctnetlink)", -err, "%s", errstr(err));
		}
		if (g.rb)
			ring_buffer__consume(g.rb);
		if (g.fd_pending >= 0 && !g.o.no_attempts && now >= next_sweep) {
			sweep_pending();
			next_sweep = now + sweep_ns;
		}
		if (now >= next_stats) {
			g.mono_off = mono_to_real_offset(); /* follow wall-clock steps */
			emit_stats();
			next_stats = now + stats_ns;
		}
		out_flush();
		if (g_stdout_gone) {
			ret = EXIT_OK; /* reader gone: clean up quietly */
			break;
		}
		if (stop) {
			ret = EXIT_OK;
			stopped_by_signal = true;
			break;
		}
	}
out:
	if (g.rb)
		ring_buffer__consume(g.rb);
	out_flush();
	detach_all(true);
	/* Final counters, so a reader always ends with the complete loss figures. */
	if (!g_stdout_gone) {
		emit_stats();
		out_flush();
	}
	ring_buffer__free(g.rb);
	bpf_object__close(g.obj);
	if (ctnl_fd >= 0)
		close(ctnl_fd);
	if (rtnl_fd >= 0)
		close(rtnl_fd);
	if (sig_fd >= 0)
		close(sig_fd);
	if (ep >= 0)
		close(ep);
	state_end(ret, stopped_by_signal);
	release_lock(lock_fd);
	free(g.cpu_full);
	free(g.cpu_full_sent);
	return ret;
}

/* ---------------------------------------------------------------- detach */

static void detach_usage(FILE *f)
{
	fprintf(f,
		"usage: natlens-probe detach [--netns PATH] [--lock-dir DIR] [--force]\n"
		"\n"
		"Removes natlens's tc filters (handle 0x4e4c, prio 0x4e4c, programs nl_ingress/\n"
		"nl_egress) from every interface of the netns, e.g. after an agent was\n"
		"SIGKILLed. clsact qdiscs and other filters are left alone. Prints\n"
		"{\"removed\":N}. Refuses (exit 3) while a live natlens-probe holds the netns\n"
		"lock, unless --force.\n");
}

struct detach_ctx {
	int removed;
	int failed;
};

static void on_link_detach(const struct link_info *li, bool deleted, void *ctx)
{
	struct detach_ctx *d = ctx;

	if (deleted)
		return;
	for (int dir = 0; dir < 2; dir++) {
		int r = tc_detach(li->ifindex, dir == 0, true);

		if (r > 0) {
			d->removed++;
		} else if (r < 0) {
			d->failed++;
			ev_error("bpf_tc_detach", -r, "removing natlens %s filter from %s (ifindex %d) failed: %s",
				 dir == 0 ? "ingress" : "egress", li->name, li->ifindex, errstr(r));
		}
	}
}

static int cmd_detach(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "netns", required_argument, NULL, 'n' },
		{ "lock-dir", required_argument, NULL, 'l' },
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *netns = NULL, *lock_dir = DEFAULT_LOCK_DIR;
	struct detach_ctx d = { 0 };
	bool force = false;
	int c, lock_fd = -1, err;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': netns = optarg; break;
		case 'l': lock_dir = optarg; break;
		case 'f': force = true; break;
		case 'h': detach_usage(stdout); return EXIT_OK;
		default:
			ev_error("usage", EINVAL, "%s", unknown_opt(argv));
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		ev_error("usage", EINVAL, "unexpected argument: %s", argv[optind]);
		return EXIT_USAGE;
	}
	libbpf_logging(false);
	if (netns && enter_netns(netns) < 0)
		return EXIT_RUNTIME;
	if (!force) {
		lock_fd = take_lock(lock_dir, NULL);
		if (lock_fd == -2)
			return EXIT_LOCKED;
		if (lock_fd < 0)
			return EXIT_RUNTIME;
	}
	err = rtnl_dump_links(on_link_detach, &d);
	release_lock(lock_fd);
	if (err) {
		ev_error("rtnetlink RTM_GETLINK dump", -err, "listing links failed: %s", errstr(err));
		return EXIT_RUNTIME;
	}
	printf("{\"removed\":%d}\n", d.removed);
	return d.failed ? EXIT_RUNTIME : EXIT_OK;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: natlens-probe COMMAND [options]   (COMMAND --help for details)\n"
		"\n"
		"  features   probe kernel support; prints one JSON object\n"
		"  run        capture one network namespace; binary records on stdout\n"
		"  detach     remove natlens filters left behind by a killed agent\n");
}

int main(int argc, char **argv)
{
	opterr = 0;
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "features"))
		return cmd_features(argc - 1, argv + 1);
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "detach"))
		return cmd_detach(argc - 1, argv + 1);
	ev_error("usage", EINVAL, "unknown command '%s'", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
