// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * natlens.bpf.c - tc programs that report each new connection leaving an
 * interface together with its conntrack entry (pre- and post-NAT tuples),
 * and track attempts that enter but never leave (DROP, swept by the CLI).
 *
 * Why tc egress + a SWAPPED conntrack lookup: on egress the packet is already
 * NAT'd and its entry confirmed, and the swapped tuple is exactly the REPLY
 * tuple, so one lookup yields both views (see shared/notes/capture-path.md).
 *
 * PROXY protocol (nl_cfg.capture_proxy): a connection whose SYN was reported
 * is watched (proxy_watch) until its first segment with data leaves; if that
 * payload starts with "PROXY " or the v2 signature, its first bytes go out as
 * a PROXY record (struct nl_proxy) and the agent parses the header.
 *
 * Both programs are observers only: every path returns TC_ACT_OK and no
 * helper that rewrites or pulls the skb is used.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "natlens.h"
#include "natlens-maps.h"

#define TC_ACT_OK 0
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define NF_BPF_CT_OPTS_SZ 16
#define BPF_F_CURRENT_NETNS (-1)

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* conntrack kfuncs (net/netfilter/nf_conntrack_bpf.c); not in vmlinux.h. */
struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tup,
				  __u32 tup__sz, struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
void bpf_ct_release(struct nf_conn *ct) __ksym;

_Static_assert(sizeof(struct bpf_ct_opts) == NF_BPF_CT_OPTS_SZ, "bpf_ct_opts size");
_Static_assert(sizeof(struct nl_event) == NL_RECORD_SIZE, "nl_event size");
_Static_assert(sizeof(struct nl_stats) == NL_RECORD_SIZE, "nl_stats size");
_Static_assert(sizeof(struct nl_proxy) == NL_RECORD_SIZE, "nl_proxy size");
_Static_assert(sizeof(struct nl_cpu_loss) == NL_RECORD_SIZE, "nl_cpu_loss size");
_Static_assert(__builtin_offsetof(struct nl_proxy, data) + NL_PROXY_DATA_MAX == NL_RECORD_SIZE,
	       "nl_proxy data[] must end the record");
_Static_assert(NL_PROXY_DATA_MAX >= 16 + 36, "a v2 header's IPv6 addresses must fit");
_Static_assert(NL_CTR_PROXY_SEEN < NL_CTR_MAX, "counter index");
_Static_assert((NL_PROXY_HINT_SLOTS & (NL_PROXY_HINT_SLOTS - 1)) == 0, "hint slots: power of two");

/* The only .rodata variable; the CLI rewrites it (found via BTF) before load. */
const volatile struct nl_config nl_cfg = {
	.wakeup_bytes = 65536,
	.udp_idle_ns = 30ULL * 1000000000ULL,
	.capture_udp = 1,
	.track_attempts = 1,
	.capture_proxy = 1,
};

/* Keeps every type of the record contract in the object's BTF even if the
 * code stops using one: scripts/gen-layout.mjs generates the TS layout from it. */
struct nl_btf_anchor {
	struct nl_event event;
	struct nl_stats stats;
	struct nl_proxy proxy;
	struct nl_cpu_loss cpu_loss;
	struct nl_config config;
	enum nl_record_kind kind;
	enum nl_hook hook;
	enum nl_counter counter;
};
struct nl_btf_anchor *nl_btf_anchor_unused __attribute__((unused));

/* Records to user space. Written by both programs; drained by the CLI on a
 * timer (wake-ups are batched). Size set by the CLI before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* Loss/activity counters (enum nl_counter). Bumped by both programs;
 * summed over CPUs and reported by the CLI; never deleted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NL_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Ingress attempts not yet seen leaving or answered. Inserted/bumped by
 * nl_ingress; deleted by nl_egress (forwarded or answered locally); the CLI
 * marks entries reported (DROP) and deletes reported ones after 60 s. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU); /* per-CPU LRU lists: no global lock on the hot path */
	__uint(max_entries, NL_PENDING_MAX);
	__type(key, struct nl_flow_key);
	__type(value, struct nl_pending);
} pending_attempts SEC(".maps");

struct nl_syn_key {
	struct nl_flow_key flow;
	__u32 isn;
};

/* TCP SYNs already reported, so a retransmit yields no second CONN. Value =
 * the ct ORIGINAL tuple, so a retransmit can still clear the attempt it
 * re-created in pending_attempts. Inserted by nl_egress; LRU-evicted only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU); /* per-CPU LRU lists: no global lock on the hot path */
	__uint(max_entries, NL_DEDUP_MAX);
	__type(key, struct nl_syn_key);
	__type(value, struct nl_flow_key);
} tcp_seen SEC(".maps");

/* Egress UDP flows -> last packet ktime: one CONN per flow per idle period.
 * Inserted and refreshed by nl_egress; LRU-evicted only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU); /* per-CPU LRU lists: no global lock on the hot path */
	__uint(max_entries, NL_DEDUP_MAX);
	__type(key, struct nl_flow_key);
	__type(value, __u64);
} udp_seen SEC(".maps");

/* Ingress UDP flows that conntrack already knew (replies, established
 * flows) -> last packet ktime, so they are neither attempts nor looked up
 * per packet. Inserted and refreshed by nl_ingress; LRU-evicted only. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU); /* per-CPU LRU lists: no global lock on the hot path */
	__uint(max_entries, NL_DEDUP_MAX);
	__type(key, struct nl_flow_key);
	__type(value, __u64);
} udp_in_seen SEC(".maps");

/*
 * New TCP connections whose first data segment has not left yet, keyed by
 * the SYN's own tuple as it left (post-NAT; data segments carry the same).
 * Inserted by nl_egress when it reports the SYN (CONN emitted). Deleted by
 * nl_egress on the connection's first segment carrying data, FIN or RST
 * (PROXY record emitted or not), and by nl_ingress when a RST comes back
 * from the peer. Entries of connections that never show any of these are
 * LRU-evicted. The CLI never touches it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU); /* per-CPU LRU lists: no global lock on the hot path */
	__uint(max_entries, NL_PROXY_WATCH_MAX);
	__type(key, struct nl_flow_key);
	__type(value, struct nl_proxy_watch);
} proxy_watch SEC(".maps");

/*
 * Pre-filter in front of proxy_watch, so that egress data segments of
 * connections nobody watches keep the cheap path: slot = the ports mixed
 * (proxy_slot()), value = how many proxy_watch entries may have that slot.
 * Incremented (atomically) by nl_egress before it inserts a watch, decremented
 * by whoever deletes one. An LRU eviction leaves its count behind: that slot
 * then costs one proxy_watch lookup per segment, never a missed header.
 * An array lookup is inlined by the verifier (no helper call).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NL_PROXY_HINT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} proxy_hint SEC(".maps");

struct pkt {
	struct nl_flow_key key; /* the packet's own tuple */
	__u32 seq;              /* TCP sequence number, host order */
	__u32 payload_off;      /* TCP: offset of the payload from the Ethernet header */
	__u32 payload_len;      /* TCP: payload bytes in this skb (a GSO skb: all of its segments) */
	__u8 tcp_flags;
};

enum parse_result { PARSE_OK, PARSE_IGNORE, PARSE_TRUNCATED };

static __always_inline void ctr_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		(*v)++; /* per-CPU slot: no atomic needed */
}

/* Reads `len` bytes at `off`: straight from the linear packet data when they
 * are there (the common case; a helper call per header cost more than the
 * rest of the program, measured with kernel.bpf_stats_enabled), else through
 * bpf_skb_load_bytes, which also reads non-linear skbs. Never modifies the packet. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *dst, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off <= 128 && data + off + len <= data_end) {
		__builtin_memcpy(dst, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, dst, len);
}

static __always_inline __u32 proxy_slot(__be16 sport, __be16 dport)
{
	return ((__u32)sport ^ (__u32)dport) & (NL_PROXY_HINT_SLOTS - 1);
}

/* Whether a proxy_watch entry may exist for these ports (see proxy_hint). */
static __always_inline bool proxy_hinted(__be16 sport, __be16 dport)
{
	__u32 slot = proxy_slot(sport, dport);
	__u32 *n = bpf_map_lookup_elem(&proxy_hint, &slot);

	return n && *n;
}

/* Whether a TCP segment that is neither SYN nor RST needs parsing: only when
 * PROXY capture is on and its connection may be watched. th = the TCP header. */
static __always_inline bool proxy_candidate(const __u8 *th)
{
	__be16 sport, dport;

	if (!nl_cfg.capture_proxy)
		return false;
	__builtin_memcpy(&sport, &th[0], 2);
	__builtin_memcpy(&dport, &th[2], 2);
	return proxy_hinted(sport, dport);
}

/* Parses the packet's tuple. TCP packets whose flags include none of
 * `tcp_flags_wanted` are ignored before anything is copied: most packets are
 * neither SYN nor RST, and this runs on every packet of every interface.
 * With `watch` (egress), such a packet is still parsed when proxy_hint says
 * its connection may be waiting for its first data segment. UDP is parsed
 * only with `udp`. */
static __always_inline enum parse_result parse(struct __sk_buff *skb, struct pkt *p, __u8 tcp_flags_wanted,
					       bool udp, bool watch)
{
	__u8 th[14]; /* TCP: ports, seq, data offset, flags */
	__u32 l4_off;
	__u32 l4_len; /* from the IP header: L4 header + payload; 0 if unknown (jumbo / BIG TCP) */
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (load(skb, ETH_HLEN, &ip, sizeof(ip)))
			return PARSE_TRUNCATED;
		if (ip.ihl < 5)
			return PARSE_TRUNCATED;
		if (ip.frag_off & bpf_htons(0x1fff)) /* non-first fragment: no L4 header */
			return PARSE_IGNORE;
		proto = ip.protocol;
		l4_off = ETH_HLEN + ip.ihl * 4;
		l4_len = bpf_ntohs(ip.tot_len);
		l4_len = l4_len > ip.ihl * 4 ? l4_len - ip.ihl * 4 : 0;
		if (proto == IPPROTO_TCP) {
			if (load(skb, l4_off, th, sizeof(th)))
				return PARSE_TRUNCATED;
			if (!(th[13] & tcp_flags_wanted) && !(watch && proxy_candidate(th)))
				return PARSE_IGNORE;
		} else if (proto != IPPROTO_UDP || !udp) {
			return PARSE_IGNORE;
		}
		p->key.family = 4;
		__builtin_memcpy(p->key.src, &ip.saddr, 4);
		__builtin_memcpy(p->key.dst, &ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (load(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return PARSE_TRUNCATED;
		proto = ip6.nexthdr; /* extension headers are not followed */
		l4_off = ETH_HLEN + sizeof(ip6);
		l4_len = bpf_ntohs(ip6.payload_len);
		if (proto == IPPROTO_TCP) {
			if (load(skb, l4_off, th, sizeof(th)))
				return PARSE_TRUNCATED;
			if (!(th[13] & tcp_flags_wanted) && !(watch && proxy_candidate(th)))
				return PARSE_IGNORE;
		} else if (proto != IPPROTO_UDP || !udp) {
			return PARSE_IGNORE;
		}
		p->key.family = 6;
		__builtin_memcpy(p->key.src, &ip6.saddr, 16);
		__builtin_memcpy(p->key.dst, &ip6.daddr, 16);
	} else {
		return PARSE_IGNORE;
	}

	if (proto == IPPROTO_TCP) {
		__u32 thlen = (th[12] >> 4) * 4;
		__u32 avail;

		__builtin_memcpy(&p->key.sport, &th[0], 2);
		__builtin_memcpy(&p->key.dport, &th[2], 2);
		p->seq = ((__u32)th[4] << 24) | ((__u32)th[5] << 16) | ((__u32)th[6] << 8) | th[7];
		p->tcp_flags = th[13];
		/* Payload: what the IP header says, but never past the skb (the
		 * IP length is 0 for BIG TCP / jumbograms: then the skb decides). */
		p->payload_off = l4_off + thlen;
		avail = skb->len > p->payload_off ? skb->len - p->payload_off : 0;
		if (thlen < 20) {
			avail = 0; /* malformed data offset: no payload we could locate */
		} else if (l4_len) {
			__u32 ip_payload = l4_len > thlen ? l4_len - thlen : 0;

			if (ip_payload < avail)
				avail = ip_payload;
		}
		p->payload_len = avail;
	} else {
		__be16 ports[2];

		if (load(skb, l4_off, ports, sizeof(ports)))
			return PARSE_TRUNCATED;
		p->key.sport = ports[0];
		p->key.dport = ports[1];
	}
	p->key.proto = proto;
	return PARSE_OK;
}

static __always_inline bool is_syn(const struct pkt *p)
{
	return p->key.proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void flow_swap(struct nl_flow_key *out, const struct nl_flow_key *in)
{
	out->family = in->family;
	out->proto = in->proto;
	out->pad = 0;
	out->sport = in->dport;
	out->dport = in->sport;
	__builtin_memcpy(out->src, in->dst, NL_ADDR_LEN);
	__builtin_memcpy(out->dst, in->src, NL_ADDR_LEN);
}

static __always_inline void pending_forget(const struct nl_flow_key *k)
{
	if (nl_cfg.track_attempts)
		bpf_map_delete_elem(&pending_attempts, k);
}

/* Copies one conntrack direction; IPv4 keeps only the first 4 address bytes
 * so the result matches nl_flow_key / nl_tuple's zero-padded form. */
static __always_inline void ct_tuple_copy(struct nl_tuple *out, const struct nf_conntrack_tuple *t,
					  __u8 family)
{
	if (family == 4) {
		__builtin_memcpy(out->src, &t->src.u3.all[0], 4);
		__builtin_memcpy(out->dst, &t->dst.u3.all[0], 4);
	} else {
		__builtin_memcpy(out->src, &t->src.u3.all[0], 16);
		__builtin_memcpy(out->dst, &t->dst.u3.all[0], 16);
	}
	out->sport = t->src.u.all;
	out->dport = t->dst.u.all;
}

static __always_inline void tuple_to_flow(struct nl_flow_key *k, const struct nl_tuple *t,
					  __u8 family, __u8 proto)
{
	k->family = family;
	k->proto = proto;
	k->pad = 0;
	k->sport = t->sport;
	k->dport = t->dport;
	__builtin_memcpy(k->src, t->src, NL_ADDR_LEN);
	__builtin_memcpy(k->dst, t->dst, NL_ADDR_LEN);
}

static __always_inline void fill_sock_tuple(struct bpf_sock_tuple *t, const struct nl_flow_key *k)
{
	/* k is already the tuple to look up; caller passes the swapped one */
	if (k->family == 4) {
		__builtin_memcpy(&t->ipv4.saddr, k->src, 4);
		__builtin_memcpy(&t->ipv4.daddr, k->dst, 4);
		t->ipv4.sport = k->sport;
		t->ipv4.dport = k->dport;
	} else {
		__builtin_memcpy(t->ipv6.saddr, k->src, 16);
		__builtin_memcpy(t->ipv6.daddr, k->dst, 16);
		t->ipv6.sport = k->sport;
		t->ipv6.dport = k->dport;
	}
}

static __always_inline __u32 tuple_size(__u8 family)
{
	struct bpf_sock_tuple t;

	return family == 4 ? sizeof(t.ipv4) : sizeof(t.ipv6);
}

/* Batched wake-ups: the reader drains on a timer, so only force a wake-up
 * once enough data waits (a wake-up per record costs ~1.5 us). */
static __always_inline __u64 wakeup_flags(__u32 size)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	return avail + size >= nl_cfg.wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline int emit(void *rec, __u32 size)
{
	if (bpf_ringbuf_output(&events, rec, size, wakeup_flags(size))) {
		ctr_inc(NL_CTR_RINGBUF_FULL);
		return -1;
	}
	return 0;
}

/*
 * Looks up the packet's conntrack entry by its swapped tuple and, if the
 * packet travels in the ORIGINAL direction, emits a CONN record.
 * Returns 0 if emitted (orig_out = ct ORIGINAL tuple as a flow key).
 */
static __always_inline int conn_report(struct __sk_buff *skb, const struct pkt *p,
				       struct nl_flow_key *orig_out)
{
	struct bpf_ct_opts opts = {};
	struct bpf_sock_tuple tup = {};
	struct nl_flow_key swapped;
	struct nl_event ev = {};
	struct nf_conn *ct;
	__u8 family = p->key.family;
	__u8 proto = p->key.proto;

	flow_swap(&swapped, &p->key);
	fill_sock_tuple(&tup, &swapped);
	opts.netns_id = BPF_F_CURRENT_NETNS;
	opts.l4proto = proto;
	ct = bpf_skb_ct_lookup(skb, &tup, tuple_size(family), &opts, NF_BPF_CT_OPTS_SZ);
	if (!ct) {
		/* Untracked (e.g. bridged without br_netfilter, or no netfilter
		 * rule in this netns yet): it still left unchanged, so the ingress
		 * attempt with the same tuple is not a drop. */
		ctr_inc(NL_CTR_CT_MISS);
		pending_forget(&p->key);
		return -1;
	}
	/* The swapped tuple hashed as ORIGINAL: this packet is a reply. */
	if (opts.dir == IP_CT_DIR_ORIGINAL) {
		bpf_ct_release(ct);
		return -1;
	}

	ev.hdr.kind = NL_KIND_CONN;
	ev.hdr.hook = NL_HOOK_TC_EGRESS;
	ev.hdr.family = family;
	ev.hdr.proto = proto;
	ev.hdr.ifindex = skb->ifindex;
	ev.hdr.ct_status = (__u32)ct->status;
	ev.hdr.tcp_isn = proto == IPPROTO_TCP ? p->seq : 0;
	ct_tuple_copy(&ev.orig, &ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple, family);
	ct_tuple_copy(&ev.reply, &ct->tuplehash[IP_CT_DIR_REPLY].tuple, family);
	bpf_ct_release(ct);
	ev.hdr.ts_ns = bpf_ktime_get_ns();

	/* Forwarded or translated: the ingress attempt is no longer pending,
	 * even if the record itself is lost below. */
	tuple_to_flow(orig_out, &ev.orig, family, proto);
	pending_forget(orig_out);

	if (emit(&ev, sizeof(ev)))
		return -1;
	ctr_inc(NL_CTR_CONN_SEEN);
	return 0;
}

/* ------------------------------------------------------------- PROXY */

/* Starts watching a connection whose SYN was just reported. The slot is
 * counted before the entry becomes visible, so a reader never sees an entry
 * behind a zero count. */
static __always_inline void proxy_watch_add(const struct nl_flow_key *k, __u32 isn)
{
	struct nl_proxy_watch v = { .isn = isn }, *old;
	__u32 slot = proxy_slot(k->sport, k->dport);
	__u32 *n = bpf_map_lookup_elem(&proxy_hint, &slot);

	if (!n)
		return;
	for (int i = 0; i < 2; i++) {
		__sync_fetch_and_add(n, 1);
		if (bpf_map_update_elem(&proxy_watch, k, &v, BPF_NOEXIST) == 0) {
			ctr_inc(NL_CTR_PROXY_WATCHED);
			return;
		}
		__sync_fetch_and_add(n, (__u32)-1);
		/* The tuple is reused while the old connection's entry still waits:
		 * take it over in place (its count stays). If it vanished
		 * meanwhile, try the insert once more. */
		old = bpf_map_lookup_elem(&proxy_watch, k);
		if (old) {
			old->isn = isn;
			ctr_inc(NL_CTR_PROXY_WATCHED);
			return;
		}
	}
}

/* Stops watching; true if this call removed the entry (exactly one caller
 * wins when CPUs race on the same connection). */
static __always_inline bool proxy_forget(const struct nl_flow_key *k)
{
	__u32 slot = proxy_slot(k->sport, k->dport);
	__u32 *n = bpf_map_lookup_elem(&proxy_hint, &slot);

	if (!n || !*n)
		return false;
	if (bpf_map_delete_elem(&proxy_watch, k))
		return false;
	__sync_fetch_and_add(n, (__u32)-1);
	return true;
}

#define V2_SIG_AT(i, c) ((i) >= n || head[i] == (c))

/* The first data segment of a watched connection: if its payload starts
 * like a PROXY header, copy its first bytes into a PROXY record. At least
 * 6 payload bytes are needed to tell ("PROXY " / the v2 signature's first 6);
 * a header split after fewer bytes is not recognised. */
static __always_inline void proxy_report(struct __sk_buff *skb, const struct pkt *p, __u32 isn)
{
	__u32 len = p->payload_len;
	__u8 head[12] = {};
	struct nl_proxy *rec;
	bool v1, v2;
	__u32 n, cap;

	if (len < 6)
		return;
	n = len >= sizeof(head) ? sizeof(head) : len;
	if (bpf_skb_load_bytes(skb, p->payload_off, head, n))
		return;
	v1 = head[0] == 'P' && head[1] == 'R' && head[2] == 'O' && head[3] == 'X' && head[4] == 'Y' &&
	     head[5] == ' ';
	/* v2: \r\n\r\n\0\r\nQUIT\n; a first segment shorter than 12 bytes only has to agree. */
	v2 = V2_SIG_AT(0, 0x0d) && V2_SIG_AT(1, 0x0a) && V2_SIG_AT(2, 0x0d) && V2_SIG_AT(3, 0x0a) &&
	     V2_SIG_AT(4, 0x00) && V2_SIG_AT(5, 0x0d) && V2_SIG_AT(6, 0x0a) && V2_SIG_AT(7, 0x51) &&
	     V2_SIG_AT(8, 0x55) && V2_SIG_AT(9, 0x49) && V2_SIG_AT(10, 0x54) && V2_SIG_AT(11, 0x0a);
	if (!v1 && !v2)
		return;

	/* Built in place in the ring (no 128-byte stack copy next to conn_report's). */
	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec) {
		ctr_inc(NL_CTR_RINGBUF_FULL);
		return;
	}
	__builtin_memset(rec, 0, sizeof(*rec));
	rec->hdr.kind = NL_KIND_PROXY;
	rec->hdr.hook = NL_HOOK_TC_EGRESS;
	rec->hdr.family = p->key.family;
	rec->hdr.proto = IPPROTO_TCP;
	rec->hdr.ifindex = skb->ifindex;
	rec->hdr.tcp_isn = isn;
	__builtin_memcpy(rec->pkt.src, p->key.src, NL_ADDR_LEN);
	__builtin_memcpy(rec->pkt.dst, p->key.dst, NL_ADDR_LEN);
	rec->pkt.sport = p->key.sport;
	rec->pkt.dport = p->key.dport;
	rec->data_len = len > 0xffff ? 0xffff : len;
	cap = len >= NL_PROXY_DATA_MAX ? NL_PROXY_DATA_MAX : len;
	if (bpf_skb_load_bytes(skb, p->payload_off, rec->data, cap)) {
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		return;
	}
	rec->hdr.ts_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(rec, wakeup_flags(sizeof(*rec)));
	ctr_inc(NL_CTR_PROXY_SEEN);
}

/*
 * A TCP segment that is not a SYN, leaving: if its connection is watched
 * and this is its first segment with data, FIN or RST, stop watching and,
 * for data at the stream's first byte (seq = ISN + 1), look for a header.
 * The handshake's final ACK (no payload) keeps the watch.
 * Cost: segments whose proxy_hint slot is zero stop at parse() (one
 * inlined array load); the others pay one proxy_watch lookup.
 */
static __always_inline void proxy_check(struct __sk_buff *skb, const struct pkt *p)
{
	struct nl_proxy_watch *w;
	__u32 isn;

	if (!nl_cfg.capture_proxy || !proxy_hinted(p->key.sport, p->key.dport))
		return;
	w = bpf_map_lookup_elem(&proxy_watch, &p->key);
	if (!w)
		return;
	if (p->payload_len == 0 && !(p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		return;
	isn = w->isn;
	if (!proxy_forget(&p->key))
		return; /* another CPU took this connection's first segment */
	if (p->payload_len == 0 || (p->tcp_flags & TCP_FLAG_RST) || p->seq != isn + 1)
		return;
	proxy_report(skb, p, isn);
}

/* ------------------------------------------------------------ egress */

static __always_inline void tcp_egress(struct __sk_buff *skb, const struct pkt *p)
{
	struct nl_flow_key orig, swapped;
	struct nl_syn_key sk = {};
	struct nl_flow_key *seen;

	if (!is_syn(p)) {
		/* SYN-ACK / RST: the attempt with the mirrored tuple was answered here. */
		if (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST)) {
			flow_swap(&swapped, &p->key);
			pending_forget(&swapped);
		}
		if (!(p->tcp_flags & TCP_FLAG_SYN))
			proxy_check(skb, p);
		return;
	}

	sk.flow = p->key;
	sk.isn = p->seq;
	seen = bpf_map_lookup_elem(&tcp_seen, &sk);
	if (seen) {
		/* Retransmit of a reported SYN: it re-entered pending on ingress. */
		pending_forget(seen);
		return;
	}
	if (conn_report(skb, p, &orig) == 0) {
		bpf_map_update_elem(&tcp_seen, &sk, &orig, BPF_ANY);
		if (nl_cfg.capture_proxy)
			proxy_watch_add(&p->key, p->seq);
	}
}

static __always_inline void udp_egress(struct __sk_buff *skb, const struct pkt *p)
{
	struct nl_flow_key orig, swapped;
	__u64 now = bpf_ktime_get_ns();
	__u64 *last;

	flow_swap(&swapped, &p->key);
	pending_forget(&swapped); /* a reply leaving answers the mirrored attempt */

	last = bpf_map_lookup_elem(&udp_seen, &p->key);
	if (last && now - *last <= nl_cfg.udp_idle_ns) {
		*last = now;
		return;
	}
	bpf_map_update_elem(&udp_seen, &p->key, &now, BPF_ANY);
	conn_report(skb, p, &orig);
}

/* parse() that counts truncated packets: the only parse failure that may hide a connection. */
static __always_inline bool parse_counted(struct __sk_buff *skb, struct pkt *p, __u8 tcp_flags_wanted,
					  bool udp, bool watch)
{
	int r = parse(skb, p, tcp_flags_wanted, udp, watch);

	if (r == PARSE_TRUNCATED)
		ctr_inc(NL_CTR_PARSE_SKIP);
	return r == PARSE_OK;
}

SEC("tc")
int nl_egress(struct __sk_buff *skb)
{
	struct pkt p = {};

	/* Egress cares about SYN (new connection, or SYN-ACK answering an attempt) and RST,
	 * plus the next segments of connections watched for a PROXY header. */
	if (!parse_counted(skb, &p, TCP_FLAG_SYN | TCP_FLAG_RST, nl_cfg.capture_udp, true))
		return TC_ACT_OK;
	if (p.key.proto == IPPROTO_TCP)
		tcp_egress(skb, &p);
	else
		udp_egress(skb, &p);
	return TC_ACT_OK;
}

static __always_inline void pending_track(struct __sk_buff *skb, const struct pkt *p)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 isn = p->key.proto == IPPROTO_TCP ? p->seq : 0;
	struct nl_pending *v, fresh = {};
	long err;

	v = bpf_map_lookup_elem(&pending_attempts, &p->key);
	if (v && v->isn == isn) {
		v->last_ts = now;
		__sync_fetch_and_add(&v->attempts, 1);
		return;
	}
	/* Missing, or the tuple was reused by a new TCP attempt (other ISN). */
	fresh.first_ts = now;
	fresh.last_ts = now;
	fresh.isn = isn;
	fresh.ifindex = skb->ifindex;
	fresh.attempts = 1;
	err = bpf_map_update_elem(&pending_attempts, &p->key, &fresh, v ? BPF_ANY : BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: raced with another CPU */)
		ctr_inc(NL_CTR_PENDING_FULL);
}

/* A UDP packet is an attempt only if conntrack does not know its flow yet
 * (tc ingress runs before PREROUTING creates the entry); replies and
 * established flows are remembered in udp_in_seen to skip the lookup. */
static __always_inline void udp_ingress(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_ct_opts opts = {};
	struct bpf_sock_tuple tup = {};
	__u64 now = bpf_ktime_get_ns();
	struct nl_pending *v;
	struct nf_conn *ct;
	__u64 *last;

	v = bpf_map_lookup_elem(&pending_attempts, &p->key);
	if (v) {
		v->last_ts = now;
		__sync_fetch_and_add(&v->attempts, 1);
		return;
	}
	last = bpf_map_lookup_elem(&udp_in_seen, &p->key);
	if (last && now - *last <= nl_cfg.udp_idle_ns) {
		*last = now;
		return;
	}
	fill_sock_tuple(&tup, &p->key);
	opts.netns_id = BPF_F_CURRENT_NETNS;
	opts.l4proto = IPPROTO_UDP;
	ct = bpf_skb_ct_lookup(skb, &tup, tuple_size(p->key.family), &opts, NF_BPF_CT_OPTS_SZ);
	if (ct) {
		bpf_ct_release(ct);
		bpf_map_update_elem(&udp_in_seen, &p->key, &now, BPF_ANY);
		return;
	}
	pending_track(skb, p);
}

SEC("tc")
int nl_ingress(struct __sk_buff *skb)
{
	struct nl_flow_key swapped;
	struct pkt p = {};

	if (!nl_cfg.track_attempts && !nl_cfg.capture_proxy)
		return TC_ACT_OK;
	/* SYN: attempts. RST (PROXY capture only, rare): a peer refusing or
	 * resetting a watched connection before its first data segment. */
	if (!parse_counted(skb, &p, TCP_FLAG_SYN | (nl_cfg.capture_proxy ? TCP_FLAG_RST : 0),
			   nl_cfg.capture_udp && nl_cfg.track_attempts, false))
		return TC_ACT_OK;
	if (p.key.proto == IPPROTO_UDP) {
		udp_ingress(skb, &p);
	} else if (is_syn(&p)) {
		if (nl_cfg.track_attempts)
			pending_track(skb, &p);
	} else if (p.tcp_flags & TCP_FLAG_RST) {
		flow_swap(&swapped, &p.key);
		proxy_forget(&swapped);
	}
	return TC_ACT_OK;
}
