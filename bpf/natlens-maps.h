/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * natlens-maps.h - private layouts of the BPF maps that the CLI reads or
 * writes directly (pending_attempts). Shared by bpf/natlens.bpf.c and
 * the native/ CLI sources only; unlike natlens.h this never reaches TypeScript.
 */
#ifndef NATLENS_MAPS_H
#define NATLENS_MAPS_H

#ifndef __bpf__
#include <linux/types.h> /* BPF side gets these from vmlinux.h */
#endif
#include "natlens.h"

/* Attach identity of natlens's tc filters: fixed so a restarted agent
 * replaces (BPF_TC_F_REPLACE) rather than duplicates a crashed one's. */
#define NL_TC_HANDLE 0x4e4c
#define NL_TC_PRIO 0x4e4c

#define NL_PENDING_MAX 65536    /* entries of pending_attempts */
#define NL_DEDUP_MAX 65536      /* entries of each egress dedupe map */

/* PROXY header capture (nl_cfg.capture_proxy). A watched connection lives in
 * proxy_watch from its SYN until its first segment with data, FIN or RST,
 * usually one round trip, so the map stays tiny; LRU bounds the rest. */
#define NL_PROXY_WATCH_MAX 16384 /* entries of proxy_watch */
#define NL_PROXY_HINT_SLOTS 4096 /* counters of proxy_hint; a power of two */

/* A packet's 5-tuple as seen on the wire; IPv4 in the first 4 address bytes. */
struct nl_flow_key {
	__u8 family;    /* 4 or 6 */
	__u8 proto;     /* IPPROTO_TCP / IPPROTO_UDP */
	__u16 pad;      /* always zero: the key is hashed bytewise */
	__be16 sport;
	__be16 dport;
	__u8 src[NL_ADDR_LEN];
	__u8 dst[NL_ADDR_LEN];
};

/* pending_attempts value: an ingress attempt not yet forwarded or answered. */
struct nl_pending {
	__u64 first_ts;  /* bpf_ktime_get_ns() of the first attempt */
	__u64 last_ts;   /* ... of the latest retransmit */
	__u32 isn;       /* TCP ISN of the SYN (host order), 0 for UDP */
	__u32 ifindex;   /* interface the attempt arrived on */
	__u32 attempts;  /* packets seen for this attempt */
	__u32 reported;  /* set by the CLI once a DROP record was written */
};

/* proxy_watch value: a new TCP connection whose first data segment has not
 * left yet. Its first payload byte has sequence number isn + 1. */
struct nl_proxy_watch {
	__u32 isn;       /* TCP ISN of the SYN (host order) */
};

#endif /* NATLENS_MAPS_H */
