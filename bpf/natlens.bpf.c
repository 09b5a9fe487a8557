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

/* The only .rodata variable; the CLI rewrites it (found via BTF) before load. */
const volatile struct nl_config nl_cfg = {
	.wakeup_bytes = 65536,
	.udp_idle_ns = 30ULL * 1000000000ULL,
	.capture_udp = 1,
	.track_attempts = 1,
};

/* Keeps every type of the record contract in the object's BTF even if the
 * code stops using one: scripts/gen-layout.mjs generates the TS layout from it. */
struct nl_btf_anchor {
	struct nl_event event;
	struct nl_stats stats;
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

struct pkt {
	struct nl_flow_key key; /* the packet's own tuple */
	__u32 seq;              /* TCP sequence number, host order */
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

/* Parses the packet's tuple. TCP packets whose flags include none of
 * `tcp_flags_wanted` are ignored before anything is copied: most packets are
 * neither SYN nor RST, and this runs on every packet of every interface. */
static __always_inline enum parse_result parse(struct __sk_buff *skb, struct pkt *p, __u8 tcp_flags_wanted)
{
	__u8 th[14]; /* TCP: ports, seq, data offset, flags */
	__u32 l4_off;
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
		if (proto == IPPROTO_TCP) {
			if (load(skb, l4_off, th, sizeof(th)))
				return PARSE_TRUNCATED;
			if (!(th[13] & tcp_flags_wanted))
				return PARSE_IGNORE;
		} else if (proto != IPPROTO_UDP || !nl_cfg.capture_udp) {
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
		if (proto == IPPROTO_TCP) {
			if (load(skb, l4_off, th, sizeof(th)))
				return PARSE_TRUNCATED;
			if (!(th[13] & tcp_flags_wanted))
				return PARSE_IGNORE;
		} else if (proto != IPPROTO_UDP || !nl_cfg.capture_udp) {
			return PARSE_IGNORE;
		}
		p->key.family = 6;
		__builtin_memcpy(p->key.src, &ip6.saddr, 16);
		__builtin_memcpy(p->key.dst, &ip6.daddr, 16);
	} else {
		return PARSE_IGNORE;
	}

	if (proto == IPPROTO_TCP) {
		__builtin_memcpy(&p->key.sport, &th[0], 2);
		__builtin_memcpy(&p->key.dport, &th[2], 2);
		p->seq = ((__u32)th[4] << 24) | ((__u32)th[5] << 16) | ((__u32)th[6] << 8) | th[7];
		p->tcp_flags = th[13];
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
static __always_inline int emit(void *rec, __u32 size)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 flags = avail + size >= nl_cfg.wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_output(&events, rec, size, flags)) {
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
	if (conn_report(skb, p, &orig) == 0)
		bpf_map_update_elem(&tcp_seen, &sk, &orig, BPF_ANY);
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
static __always_inline bool parse_counted(struct __sk_buff *skb, struct pkt *p, __u8 tcp_flags_wanted)
{
	int r = parse(skb, p, tcp_flags_wanted);

	if (r == PARSE_TRUNCATED)
		ctr_inc(NL_CTR_PARSE_SKIP);
	return r == PARSE_OK;
}

SEC("tc")
int nl_egress(struct __sk_buff *skb)
{
	struct pkt p = {};

	/* Egress cares about SYN (new connection, or SYN-ACK answering an attempt) and RST. */
	if (!parse_counted(skb, &p, TCP_FLAG_SYN | TCP_FLAG_RST))
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
	struct pkt p = {};

	if (!nl_cfg.track_attempts)
		return TC_ACT_OK;
	if (!parse_counted(skb, &p, TCP_FLAG_SYN))
		return TC_ACT_OK;
	if (is_syn(&p))
		pending_track(skb, &p);
	else if (p.key.proto == IPPROTO_UDP)
		udp_ingress(skb, &p);
	return TC_ACT_OK;
}
