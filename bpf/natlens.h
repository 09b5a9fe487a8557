/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * natlens.h - the one shape that crosses the kernel/user boundary.
 *
 * Included by the BPF program (bpf/natlens.bpf.c), by the libbpf CLI
 * (native/natlens-probe.c), and read back from the object's BTF by
 * scripts/gen-layout.mjs to generate src/probe/record-layout.generated.ts.
 * Never hand-copy these offsets anywhere else.
 *
 * Every record the CLI writes to stdout is exactly NL_RECORD_SIZE bytes,
 * little-endian host order except where a field says "network order".
 */
#ifndef NATLENS_H
#define NATLENS_H

#define NL_RECORD_SIZE 128
#define NL_ADDR_LEN 16

/* What a record says. */
enum nl_record_kind {
	NL_KIND_CONN = 1,  /* first packet of a connection left an interface (tc egress), with its conntrack entry */
	NL_KIND_DROP = 2,  /* a connection attempt entered (tc ingress) and was neither forwarded nor answered */
	NL_KIND_END = 3,   /* conntrack destroyed the entry (ctnetlink DESTROY), with byte/packet counters */
	NL_KIND_STATS = 4, /* periodic counters; the body is struct nl_stats, not struct nl_event */
	NL_KIND_CT_NEW = 5, /* fallback capture: ctnetlink NEW event (no ISN, no interface) when tc + ct kfuncs are unavailable */
	NL_KIND_PROXY = 6,  /* the first data segment of a new TCP connection (tc egress) starts like a PROXY protocol header; body is struct nl_proxy */
	NL_KIND_CPU_LOSS = 7 /* cumulative ring-buffer loss of some CPUs; body is struct nl_cpu_loss (CLI only, never in the ring) */
};

/* Where the record was observed. */
enum nl_hook {
	NL_HOOK_TC_EGRESS = 1,
	NL_HOOK_TC_INGRESS = 2,
	NL_HOOK_CTNETLINK = 3
};

/* One direction of a conntrack entry. IPv4 addresses use the first 4 bytes of
 * the 16, the rest is zero. Ports are in network order, as on the wire. */
struct nl_tuple {
	__u8 src[NL_ADDR_LEN];
	__u8 dst[NL_ADDR_LEN];
	__be16 sport;
	__be16 dport;
};

/* Common 24-byte header of every record. */
struct nl_header {
	__u64 ts_ns;    /* CLOCK_REALTIME ns; the CLI converts from bpf_ktime_get_ns() */
	__u8 kind;      /* enum nl_record_kind */
	__u8 family;    /* 4 or 6 (0 in STATS) */
	__u8 proto;     /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
	__u8 hook;      /* enum nl_hook */
	__u32 ifindex;  /* interface the packet was seen on (0 for ctnetlink) */
	__u32 ct_status;/* conntrack status bits (IPS_*): IPS_SRC_NAT 0x10, IPS_DST_NAT 0x20 */
	__u32 tcp_isn;  /* TCP initial sequence number of the client's SYN (host order), 0 for UDP */
};

/* CONN / DROP / END / CT_NEW records. */
struct nl_event {
	struct nl_header hdr;   /* 0..23 */
	struct nl_tuple orig;   /* 24..59: conntrack ORIGINAL direction, the pre-NAT view (for DROP: the packet as it arrived) */
	struct nl_tuple reply;  /* 60..95: conntrack REPLY direction, the post-NAT view (zero for DROP) */
	__u64 packets_orig;     /* 96: END: packets client->server; DROP: attempts seen (SYN retransmits count) */
	__u64 bytes_orig;       /* 104: END: bytes client->server */
	__u64 packets_reply;    /* 112: END: packets server->client */
	__u64 bytes_reply;      /* 120: END: bytes server->client */
};

/* Payload bytes a PROXY record carries: what is left of NL_RECORD_SIZE after
 * the header (24), the tuple (36) and data_len (2). Always enough for a v2
 * header's addresses (16 + 12 for IPv4 = 28, 16 + 36 for IPv6 = 52; TLVs after
 * them are not needed) and for any v1 TCP4 line (at most 56 bytes with CRLF).
 * A v1 TCP6 line can be up to 104 bytes: a long one is cut off here, and the
 * agent counts it (proxy_truncated) instead of guessing the rest. */
#define NL_PROXY_DATA_MAX 66

/* PROXY records: the first payload bytes of a new TCP connection leaving an
 * interface, when they start with "PROXY " (v1) or the 12-byte v2 signature.
 * Parsing the header is the agent's job; the kernel only copies bytes. */
struct nl_proxy {
	struct nl_header hdr;   /* 0..23: kind = NL_KIND_PROXY, proto = IPPROTO_TCP, hook = NL_HOOK_TC_EGRESS,
				 * ifindex = interface the segment left by, ct_status = 0,
				 * tcp_isn = ISN of the connection's SYN (as in its CONN record) */
	struct nl_tuple pkt;    /* 24..59: the data segment's own tuple as it left (post-NAT): src = the
				 * address the pod sees as its peer (the proxy, or the node that SNAT'd it),
				 * dst = the pod */
	__u16 data_len;         /* 60: TCP payload bytes of that segment (clamped to 65535); data[] holds
				 * the first min(data_len, NL_PROXY_DATA_MAX), the rest of data[] is zero */
	__u8 data[NL_PROXY_DATA_MAX]; /* 62..127: the payload's first bytes, as on the wire */
};

/* Indexes of struct nl_stats.counter[]: every place an event can be lost. */
enum nl_counter {
	NL_CTR_RINGBUF_FULL = 0,   /* bpf_ringbuf_output() failed: record lost in the kernel */
	NL_CTR_CT_MISS = 1,        /* egress first packet whose conntrack entry was not found: not reported */
	NL_CTR_PENDING_FULL = 2,   /* ingress attempt could not be tracked (pending map update failed) */
	NL_CTR_PARSE_SKIP = 3,     /* packets too short / unsupported headers on a hooked interface */
	NL_CTR_NETLINK_LOST = 4,   /* ctnetlink ENOBUFS: conntrack events dropped by the kernel socket */
	NL_CTR_RECORDS_OUT = 5,    /* records written to stdout by the CLI (not counting STATS) */
	NL_CTR_CONN_SEEN = 6,      /* CONN records produced by the BPF program */
	NL_CTR_DROP_SEEN = 7,      /* DROP records produced by the CLI's pending sweep */
	NL_CTR_END_SEEN = 8,       /* END records produced from ctnetlink */
	NL_CTR_ATTACHED_IFACES = 9,/* interfaces currently attached (gauge) */
	NL_CTR_PROXY_WATCHED = 10, /* new TCP connections watched for a PROXY header in their first data segment */
	NL_CTR_PROXY_SEEN = 11,    /* PROXY records produced by the BPF program */
	NL_CTR_MAX = 13            /* fixed: struct nl_stats must stay NL_RECORD_SIZE bytes (24 + 13 * 8) */
};

/* STATS records: header (kind = NL_KIND_STATS) + cumulative counters, summed over CPUs. */
struct nl_stats {
	struct nl_header hdr;
	__u64 counter[NL_CTR_MAX];
};

/* CPUs one CPU_LOSS record covers: what is left of NL_RECORD_SIZE after the
 * header (24) and the CPU range (8), in u64 counters. */
#define NL_CPU_LOSS_SLOTS 12

/* CPU_LOSS records: NL_CTR_RINGBUF_FULL per CPU, cumulative, in chunks of
 * NL_CPU_LOSS_SLOTS CPUs. The CLI writes the chunks whose counts changed
 * right before the STATS record they belong to, from the same reading of the
 * per-CPU counters: after a STATS record, the latest count of every CPU sums
 * to its counter[NL_CTR_RINGBUF_FULL]. */
struct nl_cpu_loss {
	struct nl_header hdr;   /* 0..23: kind = NL_KIND_CPU_LOSS, ts_ns as in STATS, the rest zero */
	__u32 cpu_first;        /* 24: CPU number of ringbuf_full[0] */
	__u16 cpu_count;        /* 28: entries of ringbuf_full[] in use (1..NL_CPU_LOSS_SLOTS), the rest zero */
	__u16 cpu_total;        /* 30: possible CPUs; the chunks of a report cover 0..cpu_total-1 */
	__u64 ringbuf_full[NL_CPU_LOSS_SLOTS]; /* 32..127: records lost because the ring was full, per CPU */
};

/* Load-time settings, the program's only .rodata variable (const volatile nl_cfg).
 * The CLI rewrites them before load. */
struct nl_config {
	__u64 wakeup_bytes;     /* force a reader wake-up once this much data is waiting (batched wake-ups) */
	__u64 udp_idle_ns;      /* a UDP flow unseen for this long counts as a new connection */
	__u32 capture_udp;      /* 0 = TCP only */
	__u32 track_attempts;   /* 0 = no ingress attempt tracking (no DROP records) */
	__u32 capture_proxy;    /* 0 = no PROXY records; egress then parses TCP SYN/RST only */
	__u32 pad;              /* always zero */
};

#endif /* NATLENS_H */
