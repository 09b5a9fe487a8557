// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#include "ctnetlink.h"

#include <endian.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

int ctnl_open(unsigned int groups, int rcvbuf_bytes, const char **what)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	int fd, err;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0) {
		*what = "socket(NETLINK_NETFILTER)";
		return -errno;
	}
	/* FORCE ignores net.core.rmem_max (needs CAP_NET_ADMIN); fall back otherwise. */
	if (rcvbuf_bytes > 0 &&
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf_bytes, sizeof(rcvbuf_bytes)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_bytes, sizeof(rcvbuf_bytes));
	if (groups & CTNL_GRP_NEW)
		sa.nl_groups |= 1u << (NFNLGRP_CONNTRACK_NEW - 1);
	if (groups & CTNL_GRP_DESTROY)
		sa.nl_groups |= 1u << (NFNLGRP_CONNTRACK_DESTROY - 1);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = -errno;
		*what = "bind(NETLINK_NETFILTER, conntrack groups)";
		close(fd);
		return err;
	}
	return fd;
}

#define NLA_FOR_EACH(a, start, len)                                                       \
	for (struct nlattr *a = (struct nlattr *)(start); (len) >= (int)sizeof(*a) &&       \
	     a->nla_len >= sizeof(*a) && a->nla_len <= (unsigned)(len);                     \
	     (len) -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))

static inline void *nla_data(struct nlattr *a) { return (char *)a + NLA_HDRLEN; }
static inline int nla_len(struct nlattr *a) { return a->nla_len - NLA_HDRLEN; }
static inline int nla_type(struct nlattr *a) { return a->nla_type & NLA_TYPE_MASK; }

static uint64_t nla_be64(struct nlattr *a)
{
	uint64_t v = 0;

	if (nla_len(a) == 8)
		memcpy(&v, nla_data(a), 8), v = be64toh(v);
	else if (nla_len(a) == 4) {
		uint32_t w;

		memcpy(&w, nla_data(a), 4);
		v = be32toh(w);
	}
	return v;
}

static void copy_addr(__u8 *dst, struct nlattr *a, int want)
{
	if (nla_len(a) >= want)
		memcpy(dst, nla_data(a), want);
}

static void parse_tuple(struct nlattr *nest, struct nl_tuple *t, __u8 *proto)
{
	int len = nla_len(nest);

	NLA_FOR_EACH(a, nla_data(nest), len) {
		if (nla_type(a) == CTA_TUPLE_IP) {
			int l2 = nla_len(a);

			NLA_FOR_EACH(b, nla_data(a), l2) {
				switch (nla_type(b)) {
				case CTA_IP_V4_SRC: copy_addr(t->src, b, 4); break;
				case CTA_IP_V4_DST: copy_addr(t->dst, b, 4); break;
				case CTA_IP_V6_SRC: copy_addr(t->src, b, 16); break;
				case CTA_IP_V6_DST: copy_addr(t->dst, b, 16); break;
				}
			}
		} else if (nla_type(a) == CTA_TUPLE_PROTO) {
			int l2 = nla_len(a);

			NLA_FOR_EACH(b, nla_data(a), l2) {
				switch (nla_type(b)) {
				case CTA_PROTO_NUM:
					if (nla_len(b) >= 1)
						*proto = *(__u8 *)nla_data(b);
					break;
				case CTA_PROTO_SRC_PORT:
					if (nla_len(b) >= 2)
						memcpy(&t->sport, nla_data(b), 2); /* stays network order */
					break;
				case CTA_PROTO_DST_PORT:
					if (nla_len(b) >= 2)
						memcpy(&t->dport, nla_data(b), 2);
					break;
				}
			}
		}
	}
}

static void parse_counters(struct nlattr *nest, __u64 *packets, __u64 *bytes)
{
	int len = nla_len(nest);

	NLA_FOR_EACH(a, nla_data(nest), len) {
		if (nla_type(a) == CTA_COUNTERS_PACKETS)
			*packets = nla_be64(a);
		else if (nla_type(a) == CTA_COUNTERS_BYTES)
			*bytes = nla_be64(a);
	}
}

static void parse_msg(struct nlmsghdr *nh, ctnl_cb cb, void *ctx)
{
	struct nfgenmsg *nfg = NLMSG_DATA(nh);
	int len = (int)nh->nlmsg_len - NLMSG_LENGTH(sizeof(*nfg));
	int msg = nh->nlmsg_type & 0xff;
	struct nl_event ev = {0};
	__u8 proto = 0, rproto = 0;

	if ((nh->nlmsg_type >> 8) != NFNL_SUBSYS_CTNETLINK || len < 0)
		return;
	if (msg == IPCTNL_MSG_CT_NEW)
		ev.hdr.kind = NL_KIND_CT_NEW;
	else if (msg == IPCTNL_MSG_CT_DELETE)
		ev.hdr.kind = NL_KIND_END;
	else
		return;
	if (nfg->nfgen_family == AF_INET)
		ev.hdr.family = 4;
	else if (nfg->nfgen_family == AF_INET6)
		ev.hdr.family = 6;
	else
		return;

	NLA_FOR_EACH(a, (char *)nfg + NLMSG_ALIGN(sizeof(*nfg)), len) {
		switch (nla_type(a)) {
		case CTA_TUPLE_ORIG: parse_tuple(a, &ev.orig, &proto); break;
		case CTA_TUPLE_REPLY: parse_tuple(a, &ev.reply, &rproto); break;
		case CTA_STATUS:
			if (nla_len(a) >= 4)
				ev.hdr.ct_status = (__u32)nla_be64(a);
			break;
		case CTA_COUNTERS_ORIG: parse_counters(a, &ev.packets_orig, &ev.bytes_orig); break;
		case CTA_COUNTERS_REPLY: parse_counters(a, &ev.packets_reply, &ev.bytes_reply); break;
		}
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return;
	ev.hdr.proto = proto;
	ev.hdr.hook = NL_HOOK_CTNETLINK;
	ev.hdr.ts_ns = clock_ns(CLOCK_REALTIME);
	cb(&ev, ctx);
}

int ctnl_read(int fd, ctnl_cb cb, void *ctx)
{
	static char buf[256 * 1024];
	int lost = 0;

	for (;;) {
		int n = recv(fd, buf, sizeof(buf), 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) { /* kernel dropped events; the socket stays usable */
				lost++;
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return lost;
			return -errno;
		}
		for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, (unsigned)n);
		     nh = NLMSG_NEXT(nh, n))
			parse_msg(nh, cb, ctx);
	}
}
