// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * `natlens-probe features`: real, side-effect free probes of what the capture
 * paths need. Anything touching interfaces runs in a forked child inside a
 * throwaway network namespace, which vanishes with the child.
 */
#define _GNU_SOURCE
#include "natlens-probe.h"
#include "ctnetlink.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <zlib.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

struct result {
	bool ok;
	char detail[1024];
};

static void set(struct result *r, bool ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set(struct result *r, bool ok, const char *fmt, ...)
{
	va_list ap;

	r->ok = ok;
	va_start(ap, fmt);
	vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
	va_end(ap);
}

/* Flattens a multi-line libbpf log into its last ~600 chars for a detail string. */
static const char *log_tail(void)
{
	const char *s = libbpf_last_log();
	size_t n = strlen(s);

	return n > 600 ? s + n - 600 : s;
}

static void probe_btf(struct result *r)
{
	const char *path = "/sys/kernel/btf/vmlinux";
	struct btf *btf;

	if (access(path, R_OK) != 0) {
		set(r, false, "%s not readable: %s", path, errstr(errno));
		return;
	}
	btf = btf__parse(path, NULL);
	if (!btf) {
		set(r, false, "btf__parse(%s) failed: %s", path, errstr(errno));
		return;
	}
	set(r, true, "%s parsed: %u types", path, btf__type_cnt(btf));
	btf__free(btf);
}

static void probe_bpf_syscall(struct result *r)
{
	int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "nl_probe", 4, 4, 1, NULL);

	if (fd < 0) {
		set(r, false, "bpf(BPF_MAP_CREATE, array) failed: %s", errstr(errno));
		return;
	}
	close(fd);
	set(r, true, "created and closed a 1-entry array map");
}

static void probe_ringbuf(struct result *r)
{
	int ret = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, NULL);

	if (ret == 1)
		set(r, true, "BPF_MAP_TYPE_RINGBUF supported");
	else if (ret == 0)
		set(r, false, "BPF_MAP_TYPE_RINGBUF not supported by this kernel");
	else
		set(r, false, "libbpf_probe_bpf_map_type(RINGBUF) failed: %s", errstr(ret));
}

static void probe_ctnetlink(struct result *r)
{
	const char *what = "";
	int fd = ctnl_open(CTNL_GRP_NEW | CTNL_GRP_DESTROY, 0, &what);

	if (fd < 0) {
		set(r, false, "%s failed: %s", what, errstr(fd));
		return;
	}
	close(fd);
	set(r, true, "bound NETLINK_NETFILTER to NFNLGRP_CONNTRACK_NEW|DESTROY");
}

static void probe_kprobes(struct result *r)
{
	static const char *files[] = { "/sys/kernel/tracing/kprobe_events",
				       "/sys/kernel/debug/tracing/kprobe_events" };
	char line[256];
	gzFile gz;

	for (size_t i = 0; i < NL_ARRAY_SIZE(files); i++) {
		if (access(files[i], F_OK) == 0) {
			set(r, true, "%s exists", files[i]);
			return;
		}
	}
	gz = gzopen("/proc/config.gz", "rb");
	if (!gz) {
		set(r, false, "no kprobe_events in tracefs or debugfs (not mounted?) and no /proc/config.gz");
		return;
	}
	set(r, false, "no kprobe_events in tracefs/debugfs; CONFIG_KPROBES absent from /proc/config.gz");
	while (gzgets(gz, line, sizeof(line))) {
		if (!strncmp(line, "CONFIG_KPROBES=y", 16)) {
			set(r, true, "CONFIG_KPROBES=y (/proc/config.gz); tracefs not mounted");
			break;
		}
		if (strstr(line, "# CONFIG_KPROBES is not set")) {
			set(r, false, "CONFIG_KPROBES is not set (/proc/config.gz)");
			break;
		}
	}
	gzclose(gz);
}

static const struct bpf_insn ret0[] = {
	{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
	{ .code = BPF_JMP | BPF_EXIT },
};

/* Loads and attaches a no-op fentry program to bpf_fentry_test1 (a kernel
 * test stub nobody calls), then drops it. */
static void probe_fentry(struct result *r)
{
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_FENTRY);
	struct btf *btf = btf__load_vmlinux_btf();
	int id, fd, link;

	if (!btf) {
		set(r, false, "cannot load vmlinux BTF: %s", errstr(errno));
		return;
	}
	id = btf__find_by_name_kind(btf, "bpf_fentry_test1", BTF_KIND_FUNC);
	btf__free(btf);
	if (id < 0) {
		set(r, false, "bpf_fentry_test1 not in vmlinux BTF; fentry not probed");
		return;
	}
	opts.attach_btf_id = id;
	fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "nl_fentry", "GPL", ret0, NL_ARRAY_SIZE(ret0), &opts);
	if (fd < 0) {
		set(r, false, "bpf(BPF_PROG_LOAD, fentry bpf_fentry_test1) failed: %s", errstr(errno));
		return;
	}
	link = bpf_raw_tracepoint_open(NULL, fd);
	if (link < 0)
		set(r, false, "fentry program loaded but attach failed: %s", errstr(errno));
	else
		set(r, true, "fentry program loaded and attached to bpf_fentry_test1");
	if (link >= 0)
		close(link);
	close(fd);
}

static int lo_up(void)
{
	struct ifreq ifr = {0};
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int ret = 0;

	if (s < 0)
		return -errno;
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		ret = -errno;
	} else {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			ret = -errno;
	}
	close(s);
	return ret;
}

static void probe_clsact_child(struct result *r)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = 1, .priority = 1);
	int fd, err, ifindex;

	if ((err = lo_up()) < 0) {
		set(r, false, "bringing lo up in the probe netns failed: %s", errstr(err));
		return;
	}
	ifindex = if_nametoindex("lo");
	fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "nl_probe", "GPL", ret0, NL_ARRAY_SIZE(ret0), NULL);
	if (fd < 0) {
		set(r, false, "bpf(BPF_PROG_LOAD, sched_cls) failed: %s", errstr(errno));
		return;
	}
	hook.ifindex = ifindex;
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST) {
		set(r, false, "bpf_tc_hook_create(clsact on lo) failed: %s", errstr(err));
		goto out;
	}
	opts.prog_fd = fd;
	err = bpf_tc_attach(&hook, &opts);
	if (err) {
		set(r, false, "bpf_tc_attach(ingress on lo) failed: %s", errstr(err));
		goto out;
	}
	set(r, true, "clsact qdisc + sched_cls filter attached on lo in a throwaway netns");
out:
	close(fd);
}

static void probe_ct_kfuncs_child(struct result *r, const char *obj_path)
{
	struct bpf_object *obj;
	int err;

	libbpf_log_reset();
	obj = bpf_object__open_file(obj_path, NULL);
	if (!obj) {
		set(r, false, "bpf_object__open_file(%s) failed: %s; %s", obj_path, errstr(errno), log_tail());
		return;
	}
	err = bpf_object__load(obj);
	if (err)
		set(r, false, "loading %s (uses bpf_skb_ct_lookup/bpf_ct_release) failed: %s; %s",
		    obj_path, errstr(err), log_tail());
	else
		set(r, true, "%s loaded: bpf_skb_ct_lookup and bpf_ct_release resolved and verified", obj_path);
	bpf_object__close(obj);
}

/* Runs clsact and ct_kfuncs in a child inside a fresh netns; results come
 * back over a pipe as two raw struct result. */
static void probe_in_netns(struct result *clsact, struct result *ctk, const char *obj_path)
{
	struct result res[2];
	int p[2], status;
	pid_t pid;
	ssize_t n;

	if (pipe(p) < 0) {
		set(clsact, false, "pipe() failed: %s", errstr(errno));
		*ctk = *clsact;
		return;
	}
	pid = fork();
	if (pid < 0) {
		set(clsact, false, "fork() failed: %s", errstr(errno));
		*ctk = *clsact;
		close(p[0]);
		close(p[1]);
		return;
	}
	if (pid == 0) {
		close(p[0]);
		memset(res, 0, sizeof(res));
		if (unshare(CLONE_NEWNET) < 0) {
			set(&res[0], false, "unshare(CLONE_NEWNET) failed: %s", errstr(errno));
			res[1] = res[0];
		} else {
			probe_clsact_child(&res[0]);
			if (obj_path)
				probe_ct_kfuncs_child(&res[1], obj_path);
			else
				set(&res[1], false, "not probed: no object (pass --obj PATH/natlens.bpf.o)");
		}
		n = write(p[1], res, sizeof(res));
		_exit(n == (ssize_t)sizeof(res) ? 0 : 1);
	}
	close(p[1]);
	n = read(p[0], res, sizeof(res));
	close(p[0]);
	waitpid(pid, &status, 0);
	if (n != (ssize_t)sizeof(res)) {
		set(clsact, false, "probe child died before reporting (wait status 0x%x)", status);
		*ctk = *clsact;
		return;
	}
	*clsact = res[0];
	*ctk = res[1];
}

static void print_result(const char *name, const struct result *r, bool last)
{
	printf("\"%s\":{\"ok\":%s,\"detail\":", name, r->ok ? "true" : "false");
	json_str(stdout, r->detail);
	printf("}%s", last ? "" : ",");
}

static void features_usage(FILE *f)
{
	fprintf(f,
		"usage: natlens-probe features [--obj PATH] [--verbose]\n"
		"\n"
		"Probes, without side effects, what natlens's capture paths need and prints\n"
		"one JSON object: {\"btf\":{\"ok\":B,\"detail\":S}, \"bpf_syscall\", \"clsact\",\n"
		"\"ringbuf\", \"ct_kfuncs\", \"ctnetlink_events\", \"kprobes\", \"fentry\"}.\n"
		"clsact and ct_kfuncs run in a forked child inside a throwaway network namespace.\n"
		"\n"
		"  --obj PATH   natlens.bpf.o to load for the ct_kfuncs probe\n"
		"               (default: natlens.bpf.o next to this binary)\n"
		"  --verbose    print libbpf's messages as warn events on stderr\n"
		"\n"
		"Capture needs btf+bpf_syscall+clsact+ringbuf+ct_kfuncs for --mode tc;\n"
		"ctnetlink_events alone is enough for --mode ctnetlink.\n");
}

int cmd_features(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "obj", required_argument, NULL, 'o' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct result btf, sys, clsact, rb, ctk, ctnl, kp, fe;
	char default_obj[4096];
	const char *obj = NULL;
	bool verbose = false;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'o': obj = optarg; break;
		case 'v': verbose = true; break;
		case 'h': features_usage(stdout); return EXIT_OK;
		default:
			ev_error("usage", EINVAL, "unknown option or missing argument: %s", argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		ev_error("usage", EINVAL, "unexpected argument: %s", argv[optind]);
		return EXIT_USAGE;
	}
	if (!obj && exe_sibling("natlens.bpf.o", default_obj, sizeof(default_obj)) == 0 &&
	    access(default_obj, R_OK) == 0)
		obj = default_obj;
	libbpf_logging(verbose);

	probe_btf(&btf);
	probe_bpf_syscall(&sys);
	probe_ringbuf(&rb);
	probe_in_netns(&clsact, &ctk, obj);
	probe_ctnetlink(&ctnl);
	probe_kprobes(&kp);
	probe_fentry(&fe);

	putchar('{');
	print_result("btf", &btf, false);
	print_result("bpf_syscall", &sys, false);
	print_result("clsact", &clsact, false);
	print_result("ringbuf", &rb, false);
	print_result("ct_kfuncs", &ctk, false);
	print_result("ctnetlink_events", &ctnl, false);
	print_result("kprobes", &kp, false);
	print_result("fentry", &fe, true);
	puts("}");
	return 0;
}
