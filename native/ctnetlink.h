/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ctnetlink.h - raw NETLINK_NETFILTER conntrack event reader (no libnetfilter). */
#ifndef NL_CTNETLINK_H
#define NL_CTNETLINK_H

#include <stdbool.h>
#include <stdint.h>
#include "util.h"
#include "natlens.h"

#define CTNL_GRP_NEW 1u      /* bit for NFNLGRP_CONNTRACK_NEW */
#define CTNL_GRP_DESTROY 2u  /* bit for NFNLGRP_CONNTRACK_DESTROY */

/* Non-blocking socket bound to the chosen groups, with a forced large
 * receive buffer (conntrack -E loses events under load without it).
 * Returns fd or -errno; *what names the failed call. */
int ctnl_open(unsigned int groups, int rcvbuf_bytes, const char **what);

/* Called with kind NL_KIND_CT_NEW or NL_KIND_END, ts_ns = CLOCK_REALTIME now;
 * only TCP and UDP entries are passed on. */
typedef void (*ctnl_cb)(const struct nl_event *ev, void *ctx);

/* Drains the socket. Returns the number of ENOBUFS overruns seen (events
 * lost by the kernel), or -errno on a hard error. */
int ctnl_read(int fd, ctnl_cb cb, void *ctx);

#endif /* NL_CTNETLINK_H */
