// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "tc-attach.h"
#include "natlens-maps.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

static void parse_link(struct nlmsghdr *nh, link_cb cb, void *ctx)
{
	struct ifinfomsg *ifi = NLMSG_DATA(nh);
	int len = (int)nh->nlmsg_len - NLMSG_LENGTH(sizeof(*ifi));
	struct link_info li = {0};

	if (len < 0)
		return;
	li.ifindex = ifi->ifi_index;
	li.type = ifi->ifi_type;
	li.flags = ifi->ifi_flags;
	for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == IFLA_IFNAME) {
			size_t n = RTA_PAYLOAD(a);

			if (n > sizeof(li.name) - 1)
				n = sizeof(li.name) - 1;
			memcpy(li.name, RTA_DATA(a), n);
			li.name[n] = '\0';
		}
	}
	cb(&li, nh->nlmsg_type == RTM_DELLINK, ctx);
}

/* Walks one datagram; returns 1 at NLMSG_DONE, -errno on NLMSG_ERROR. */
static int walk(char *buf, int n, link_cb cb, void *ctx)
{
	for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (unsigned)n); nh = NLMSG_NEXT(nh, n)) {
		if (nh->nlmsg_type == NLMSG_DONE)
			return 1;
		if (nh->nlmsg_type == NLMSG_ERROR) {
			struct nlmsgerr *e = NLMSG_DATA(nh);

			return e->error ? e->error : 1;
		}
		if (nh->nlmsg_type == RTM_NEWLINK || nh->nlmsg_type == RTM_DELLINK)
			parse_link(nh, cb, ctx);
	}
	return 0;
}

int rtnl_monitor_open(void)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

int rtnl_monitor_read(int fd, link_cb cb, void *ctx)
{
	static char buf[64 * 1024];

	for (;;) {
		int n = recv(fd, buf, sizeof(buf), 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		walk(buf, n, cb, ctx);
	}
}

int rtnl_dump_links(link_cb cb, void *ctx)
{
	struct {
		struct nlmsghdr nh;
		struct ifinfomsg ifi;
	} req = {
		.nh = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK,
			.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1 },
		.ifi = { .ifi_family = AF_UNSPEC },
	};
	static char buf[64 * 1024];
	int fd, ret = 0;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	if (send(fd, &req, sizeof(req), 0) < 0) {
		ret = -errno;
		goto out;
	}
	while (ret == 0) {
		int n = recv(fd, buf, sizeof(buf), 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			break;
		}
		ret = walk(buf, n, cb, ctx);
	}
	if (ret > 0)
		ret = 0;
out:
	close(fd);
	return ret;
}

int tc_attach(int ifindex, int fd_ingress, int fd_egress, const char **what)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
			    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = NL_TC_HANDLE, .priority = NL_TC_PRIO,
			    .flags = BPF_TC_F_REPLACE);
	int err;

	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST) {
		*what = "bpf_tc_hook_create(clsact)";
		return err;
	}
	hook.attach_point = BPF_TC_INGRESS;
	opts.prog_fd = fd_ingress;
	err = bpf_tc_attach(&hook, &opts);
	if (err) {
		*what = "bpf_tc_attach(ingress)";
		return err;
	}
	hook.attach_point = BPF_TC_EGRESS;
	opts.prog_fd = fd_egress;
	opts.prog_id = 0;
	err = bpf_tc_attach(&hook, &opts);
	if (err) {
		*what = "bpf_tc_attach(egress)";
		tc_detach(ifindex, true, false);
		return err;
	}
	return 0;
}

static bool is_natlens_prog(__u32 prog_id)
{
	struct bpf_prog_info info = {0};
	__u32 len = sizeof(info);
	bool ok = false;
	int fd = bpf_prog_get_fd_by_id(prog_id);

	if (fd < 0)
		return false;
	if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0)
		ok = !strcmp(info.name, "nl_ingress") || !strcmp(info.name, "nl_egress");
	close(fd);
	return ok;
}

int tc_detach(int ifindex, bool ingress, bool check_name)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
			    .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = NL_TC_HANDLE, .priority = NL_TC_PRIO);
	int err;

	if (check_name) {
		err = bpf_tc_query(&hook, &opts);
		if (err)
			return err == -ENOENT || err == -EINVAL ? 0 : err;
		if (!is_natlens_prog(opts.prog_id))
			return 0;
		/* bpf_tc_detach insists these are zero */
		opts.prog_id = 0;
		opts.prog_fd = 0;
		opts.flags = 0;
	}
	err = bpf_tc_detach(&hook, &opts);
	if (err == -ENOENT || err == -EINVAL)
		return 0; /* no clsact qdisc or no such filter */
	return err ? err : 1;
}
