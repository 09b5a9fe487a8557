/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* tc-attach.h - link discovery over rtnetlink and clsact filter attach/detach. */
#ifndef NL_TC_ATTACH_H
#define NL_TC_ATTACH_H

#include <stdbool.h>
#include <net/if.h>

struct link_info {
	int ifindex;
	unsigned short type; /* ARPHRD_* */
	unsigned int flags;  /* IFF_* */
	char name[IF_NAMESIZE];
};

typedef void (*link_cb)(const struct link_info *li, bool deleted, void *ctx);

/* Non-blocking socket subscribed to RTMGRP_LINK; -errno on failure. */
int rtnl_monitor_open(void);
/* Drains the monitor socket. -ENOBUFS means events were lost: re-dump. */
int rtnl_monitor_read(int fd, link_cb cb, void *ctx);
/* Synchronous RTM_GETLINK dump of the current netns. */
int rtnl_dump_links(link_cb cb, void *ctx);

/* Attaches both programs with natlens's fixed handle/prio (replacing a
 * stale natlens filter). On failure *what names the failed call and
 * nothing stays attached. Returns 0 or -errno. */
int tc_attach(int ifindex, int fd_ingress, int fd_egress, const char **what);
/* Removes natlens's filter from one direction. With check_name, only if
 * the attached program is nl_ingress/nl_egress. 1 removed, 0 absent, -errno. */
int tc_detach(int ifindex, bool ingress, bool check_name);

#endif /* NL_TC_ATTACH_H */
