/**
 * Joins the hops of one connection captured on different nodes into one ConnectionRecord.
 *
 * Hop B follows hop A when the packet A's node sent is the packet B's node received: A's outgoing
 * wire tuple (its conntrack reply tuple, reversed) equals B's original tuple, on another node, with
 * the same TCP initial sequence number (kube-proxy NAT keeps it) and timestamps within a window.
 * Links are made in whatever order hops arrive; a chain is emitted as soon as it is known complete
 * (it ends on the endpoint's node and starts where the client's packet was first translated), or
 * after `holdMs` without news, as 'unstitched' with what is known and nothing guessed. Unstitched
 * chains stay linkable for `retentionMs`: a late hop updates the record (same connId, higher
 * version) and a chain absorbed into another is re-emitted as 'superseded'. Complete chains are
 * forgotten once emitted: nothing can join them. After a collector restart, restore() takes back
 * the stored hops of the last moments, so that chains pending in the killed process are not lost.
 */
import { addrEqual, tupleKey } from './addr.js';
import { hash64 } from './hop-id.js';
import type { Addr16, ConnectionRecord, Hop, WireTuple } from './hop.js';

/** Conntrack status bits (include/uapi/linux/netfilter/nf_conntrack_common.h). */
const IPS_SRC_NAT = 0x10;
const IPS_DST_NAT = 0x20;

export interface StitcherOptions {
  /** A chain not known complete is emitted this long after its last change. */
  holdMs: number;
  /** Largest |ts difference| between two linked hops (queueing + clock skew between nodes). */
  windowMs: number;
  /** Emitted chains stay linkable to late hops this long. */
  retentionMs: number;
  /** Bound on chains kept in memory (pending + retained); the oldest retained go first. */
  maxChains: number;
}

/**
 * What restore() needs besides the hops: see Stitcher.restore.
 */
export interface RestoreOptions {
  /** Restored hops older than this (ns) are context only: chains made of them alone are not emitted again. */
  contextBeforeNs: bigint;
  /** The stored record (highest version) of every conn_id that is hash64([hop.id]) of a restored hop. */
  stored: ReadonlyMap<bigint, ConnectionRecord>;
  /** Restored chains wait this long more than holdMs: agents reconnect, re-announce their nodes and resend meanwhile. */
  graceMs: number;
  /** Resent copies of restored hops are recognised (and skipped) this long. */
  dedupeMs: number;
}

/** What restore() found: chains rebuilt, of which already stored, never stored (pending again), context only. */
export interface RestoreResult {
  chains: number;
  stored: number;
  pending: number;
  contextOnly: number;
}

export const DEFAULT_STITCHER_OPTIONS: StitcherOptions = { holdMs: 2000, windowMs: 5000, retentionMs: 15_000, maxChains: 1_000_000 };

/** Which node an address belongs to: agents announce their nodes' addresses. */
export type NodeAddressBook = (a: Addr16) => string | undefined;

interface Link {
  hop: Hop;
  tsMs: number;
  inKey: string;
  outKey: string;
  chain: Chain;
  prev: Link | null;
  next: Link | null;
}

interface Chain {
  head: Link;
  connId: bigint | null;
  version: number;
  /** Arrival time (ms) of the last change. */
  changedAt: number;
  /** Emitted at (ms), or 0 while pending. */
  emittedAt: number;
  /** The last record emitted, to supersede if this chain is absorbed. */
  emitted: ConnectionRecord | null;
  dead: boolean;
}

export interface StitcherStats {
  hops: number;
  duplicates: number;
  links: number;
  ambiguous: number;
  emitted: number;
  reemitted: number;
  pending: number;
  retained: number;
  evicted: number;
  /** Records emitted, by status (a connection stored unstitched, then completed, counts in both). */
  complete: number;
  unstitched: number;
  superseded: number;
}

export class Stitcher {
  private readonly byIn = new Map<string, Link[]>();
  private readonly byOut = new Map<string, Link[]>();
  private readonly pending = new Set<Chain>();
  /** Emitted chains in emission order (for expiry). */
  private retained: Chain[] = [];
  private retainedHead = 0;
  private readonly out: ConnectionRecord[] = [];
  /** Ids of hops restored after a restart, until `restoredUntil` (ms): their resent copies are duplicates. */
  private restoredIds: Set<bigint> | null = null;
  private restoredUntil = 0;
  readonly counters = { hops: 0, duplicates: 0, links: 0, ambiguous: 0, emitted: 0, reemitted: 0, evicted: 0, restored: 0, complete: 0, unstitched: 0, superseded: 0 };

  constructor(
    private readonly nodeOf: NodeAddressBook,
    readonly options: StitcherOptions = DEFAULT_STITCHER_OPTIONS,
  ) {}

  /** Takes one hop (only 'conn' hops take part in stitching). `nowMs` is arrival time. */
  ingest(hop: Hop, nowMs: number): void {
    this.add(hop, nowMs);
  }

  /** ingest(), returning the hop's link (null: not stitched, or a duplicate). */
  private add(hop: Hop, nowMs: number): Link | null {
    if (hop.kind !== 'conn' || !hop.reply) return null;
    const inKey = tupleKey(hop.proto, hop.orig);
    // A resent copy of a hop still indexed (its chain pending or unstitched), or restored after a
    // restart. Resends of batches already stored are skipped before they get here (EventBatch.batch_id).
    if (this.byIn.get(inKey)?.some((l) => l.hop.id === hop.id) || (this.restoredIds?.has(hop.id) && nowMs <= this.restoredUntil)) {
      this.counters.duplicates++;
      return null;
    }
    this.counters.hops++;
    const link: Link = {
      hop,
      tsMs: Number(hop.tsNs) / 1e6,
      inKey,
      outKey: tupleKey(hop.proto, outgoing(hop.reply)),
      chain: null as unknown as Chain,
      prev: null,
      next: null,
    };
    const chain: Chain = { head: link, connId: null, version: 0, changedAt: nowMs, emittedAt: 0, emitted: null, dead: false };
    link.chain = chain;
    this.pending.add(chain);

    const prev = this.pick(this.byOut.get(link.inKey), link, (c) => c.next === null);
    const next = this.pick(this.byIn.get(link.outKey), link, (c) => c.prev === null);
    push(this.byIn, link.inKey, link);
    push(this.byOut, link.outKey, link);
    if (prev) this.join(prev, link, nowMs);
    if (next) this.join(link, next, nowMs);
    return link;
  }

  /**
   * After a collector restart: takes back the stored hops of the last moments before it stopped
   * (chains pending then were lost with the process, though their hops were stored and acked).
   * Each chain they form keeps the identity of a record already stored for it (any conn_id is
   * hash64 of one of its hops' ids), so what is written again collapses by conn_id instead of
   * counting a connection twice. A chain is written again only when it is now more complete than
   * its stored record; one never stored waits for its missing hops (hold + grace) as usual; one made
   * only of context hops (older than contextBeforeNs: its record may name a hop not restored) is
   * not written. Resent copies of restored hops are skipped for dedupeMs.
   */
  restore(hops: readonly Hop[], nowMs: number, o: RestoreOptions): RestoreResult {
    const at = nowMs + o.graceMs;
    const links: Link[] = [];
    for (const h of hops) {
      const l = this.add(h, at);
      if (l) links.push(l);
    }
    this.counters.restored += links.length;
    this.restoredIds = new Set(hops.map((h) => h.id));
    this.restoredUntil = nowMs + o.dedupeMs;
    const chains = new Set<Chain>();
    for (const l of links) if (!l.chain.dead) chains.add(l.chain);
    const result: RestoreResult = { chains: chains.size, stored: 0, pending: 0, contextOnly: 0 };
    for (const chain of chains) {
      const how = this.adopt(chain, nowMs, o);
      if (how === 'stored') result.stored++;
      else if (how === 'pending') result.pending++;
      else result.contextOnly++;
    }
    return result;
  }

  /** Gives a restored chain the identity of its stored record(s); see restore(). */
  private adopt(chain: Chain, nowMs: number, o: RestoreOptions): 'stored' | 'pending' | 'context' {
    const stored: ConnectionRecord[] = [];
    let context = true;
    for (let l: Link | null = chain.head; l; l = l.next) {
      const rec = o.stored.get(hash64([l.hop.id]));
      if (rec) stored.push(rec);
      if (l.hop.tsNs >= o.contextBeforeNs) context = false;
    }
    if (stored.length === 0 && !context) return 'pending'; // never stored: pending, as any new chain
    // Stored under an id it keeps (the highest version, then the lowest id: the same choice every time).
    const live = stored.filter((r) => r.status !== 'superseded').sort((a, b) => b.version - a.version || (a.connId < b.connId ? -1 : 1));
    const kept = live[0];
    this.pending.delete(chain);
    chain.emittedAt = nowMs;
    if (kept) {
      chain.connId = kept.connId;
      chain.version = kept.version & 0xffff;
      chain.emitted = kept;
      // Records of parts now joined in this chain (a crash came between the join and its write).
      for (const r of live.slice(1)) {
        this.out.push({ ...r, version: recordVersion('superseded', 0, (r.version & 0xffff) + 1), status: 'superseded' });
        this.counters.reemitted++;
      }
      const now = this.toRecord(chain);
      const rank = (r: ConnectionRecord): number => (STATUS_RANK[r.status] << 8) | Math.min(r.hopNodes.length, 255);
      if (rank(now) > rank(kept)) {
        if (now.status !== 'complete') this.retained.push(chain);
        this.emit(chain, nowMs);
        return 'stored';
      }
    }
    // Stored as it is (or only as context): nothing to write; keep it linkable unless complete.
    if (kept?.status === 'complete' || (!kept && this.isComplete(chain))) {
      this.unindex(chain);
      chain.dead = true;
    } else {
      this.retained.push(chain);
    }
    return stored.length ? 'stored' : 'context';
  }

  /** Emits what is ready; call periodically. Returns records to store (new, updated, superseded). */
  tick(nowMs: number): ConnectionRecord[] {
    for (const chain of this.pending) {
      if (chain.dead) {
        this.pending.delete(chain);
        continue;
      }
      if (this.isComplete(chain) || nowMs - chain.changedAt >= this.options.holdMs) this.emit(chain, nowMs);
    }
    this.expire(nowMs);
    if (this.restoredIds && nowMs > this.restoredUntil) this.restoredIds = null;
    return this.out.splice(0, this.out.length);
  }

  /** Emits everything pending now (shutdown). */
  flush(nowMs: number): ConnectionRecord[] {
    for (const chain of this.pending) if (!chain.dead) this.emit(chain, nowMs);
    this.pending.clear();
    return this.out.splice(0, this.out.length);
  }

  stats(): StitcherStats {
    return { ...this.counters, pending: this.pending.size, retained: this.retained.length - this.retainedHead };
  }

  /** The one candidate that can be linked to `link`, or null (none, or several: never guess). */
  private pick(cands: Link[] | undefined, link: Link, free: (c: Link) => boolean): Link | null {
    if (!cands) return null;
    const { hop } = link;
    let best: Link | null = null;
    let bestIsnMatch = false;
    let count = 0;
    for (const c of cands) {
      if (c.hop.node === hop.node || !free(c) || c.chain === link.chain) continue;
      if (Math.abs(c.tsMs - link.tsMs) > this.options.windowMs) continue;
      const isnKnown = c.hop.isn !== null && hop.isn !== null;
      if (isnKnown && c.hop.isn !== hop.isn) continue;
      // An ISN match outranks candidates only matched by tuple and time.
      if (isnKnown && !bestIsnMatch) {
        best = c;
        bestIsnMatch = true;
        count = 1;
      } else if (isnKnown === bestIsnMatch) {
        count++;
        if (!best || Math.abs(c.tsMs - link.tsMs) < Math.abs(best.tsMs - link.tsMs)) best = c;
      }
    }
    if (count > 1) {
      this.counters.ambiguous++;
      return null;
    }
    return best;
  }

  private join(a: Link, b: Link, nowMs: number): void {
    a.next = b;
    b.prev = a;
    this.counters.links++;
    const keep = a.chain;
    const absorbed = b.chain;
    if (keep === absorbed) return;
    // Keep the identity of whichever chain was emitted first.
    const [winner, loser] = absorbed.emittedAt !== 0 && (keep.emittedAt === 0 || absorbed.emittedAt < keep.emittedAt) ? [absorbed, keep] : [keep, absorbed];
    winner.head = keep.head;
    for (let l: Link | null = winner.head; l; l = l.next) l.chain = winner;
    winner.changedAt = nowMs;
    if (loser.emitted && loser.connId !== winner.connId) {
      this.out.push({ ...loser.emitted, version: recordVersion('superseded', 0, loser.version + 1), status: 'superseded' });
      this.counters.reemitted++;
      this.counters.superseded++;
    }
    loser.dead = true;
    this.pending.delete(loser);
    this.pending.add(winner);
  }

  /** Ends on the endpoint's node and starts where the client's packet was first seen. */
  private isComplete(chain: Chain): boolean {
    let last = chain.head;
    while (last.next) last = last.next;
    const root = chain.head.hop;
    if (!last.hop.deliveredLocal || !this.rootIsOrigin(root)) return false;
    // A lone endpoint hop that did no DNAT may still be joined by the hop of the node the packet
    // came from (a pod on another node calling a ClusterIP or a pod): it waits, up to holdMs.
    return chain.head.next !== null || (root.ctStatus & IPS_DST_NAT) !== 0 || this.nodeOf(root.orig.src) === root.node;
  }

  /**
   * The first hop saw the real client unless its source is another node's address: every node's
   * egress is captured, so that node's own hop (its SNAT, or the packet it originated) is missing.
   */
  private rootIsOrigin(root: Hop): boolean {
    const owner = this.nodeOf(root.orig.src);
    return owner === undefined || owner === root.node;
  }

  private emit(chain: Chain, nowMs: number): void {
    this.pending.delete(chain);
    const rec = this.toRecord(chain);
    const first = chain.emittedAt === 0;
    chain.version++;
    rec.version = recordVersion(rec.status, rec.hopNodes.length, chain.version);
    chain.emitted = rec;
    if (first) {
      chain.emittedAt = nowMs;
      this.counters.emitted++;
    } else {
      this.counters.reemitted++;
    }
    this.counters[rec.status]++;
    if (rec.status === 'complete') {
      // It cannot grow (its first hop saw the client, its last the pod): forget it now.
      this.unindex(chain);
      chain.dead = true;
    } else if (first) {
      this.retained.push(chain);
    }
    this.out.push(rec);
  }

  private toRecord(chain: Chain): ConnectionRecord {
    const hops: Hop[] = [];
    for (let l: Link | null = chain.head; l; l = l.next) hops.push(l.hop);
    const root = hops[0]!;
    const last = hops[hops.length - 1]!;
    const reply = last.reply!;
    const terminal = last.deliveredLocal;
    const origin = this.rootIsOrigin(root);
    if (chain.connId === null) chain.connId = hash64([(terminal ? last : root).id]);
    let tsNs = root.tsNs;
    let lastTsNs = root.tsNs;
    let snatSeen = false;
    for (const h of hops) {
      if (h.tsNs < tsNs) tsNs = h.tsNs;
      if (h.tsNs > lastTsNs) lastTsNs = h.tsNs;
      if (h.ctStatus & IPS_SRC_NAT) snatSeen = true;
    }
    const client = origin ? root.orig.src : null;
    return {
      connId: chain.connId,
      version: 0,
      tsNs,
      lastTsNs,
      proto: root.proto,
      family: root.family,
      endpoint: reply.src,
      endpointPort: reply.sport,
      service: root.orig.dst,
      servicePort: root.orig.dport,
      client,
      clientPort: origin ? root.orig.sport : 0,
      // Where the endpoint sends its replies: the source it saw.
      seenAs: reply.dst,
      seenAsPort: reply.dport,
      ingressNode: origin ? root.node : (this.nodeOf(root.orig.src) ?? ''),
      endpointNode: terminal ? last.node : '',
      snat: client ? !addrEqual(client, reply.dst) : snatSeen || this.nodeOf(root.orig.src) !== undefined,
      status: terminal && origin ? 'complete' : 'unstitched',
      hopNodes: hops.map((h) => h.node),
      isn: root.isn,
    };
  }

  private unindex(chain: Chain): void {
    for (let l: Link | null = chain.head; l; l = l.next) {
      if (l.inKey === '') continue;
      remove(this.byIn, l.inKey, l);
      remove(this.byOut, l.outKey, l);
      l.inKey = l.outKey = '';
    }
  }

  /** Forgets unstitched chains past retention (and the oldest, beyond maxChains). */
  private expire(nowMs: number): void {
    const horizon = nowMs - this.options.retentionMs;
    while (this.retainedHead < this.retained.length) {
      const chain = this.retained[this.retainedHead]!;
      const over = this.retained.length - this.retainedHead + this.pending.size > this.options.maxChains;
      if (!chain.dead && chain.emittedAt > horizon && !over) break;
      if (over && !chain.dead && chain.emittedAt > horizon) this.counters.evicted++;
      this.retainedHead++;
      if (chain.dead) continue;
      chain.dead = true;
      this.unindex(chain);
    }
    if (this.retainedHead > 4096 && this.retainedHead * 2 > this.retained.length) {
      this.retained = this.retained.slice(this.retainedHead);
      this.retainedHead = 0;
    }
  }
}

const STATUS_RANK = { unstitched: 1, complete: 2, superseded: 3 } as const;

/** See ConnectionRecord.version. */
export function recordVersion(status: ConnectionRecord['status'], hops: number, emission: number): number {
  return ((STATUS_RANK[status] << 24) | (Math.min(hops, 255) << 16) | Math.min(emission, 0xffff)) >>> 0;
}

/** The tuple of the packet a hop's node sent on: its conntrack reply tuple, reversed. */
export function outgoing(reply: WireTuple): WireTuple {
  return { src: reply.dst, sport: reply.dport, dst: reply.src, dport: reply.sport };
}

function push(map: Map<string, Link[]>, key: string, link: Link): void {
  const list = map.get(key);
  if (list) list.push(link);
  else map.set(key, [link]);
}

function remove(map: Map<string, Link[]>, key: string, link: Link): void {
  const list = map.get(key);
  if (!list) return;
  const i = list.indexOf(link);
  if (i >= 0) list.splice(i, 1);
  if (list.length === 0) map.delete(key);
}

