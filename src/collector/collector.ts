/**
 * The collector: takes agents' batches, routes each hop to the collector that owns its endpoint,
 * stitches what it owns, stores raw hops, stitched connections and loss counters, and answers
 * `who`. A batch is acknowledged only once every hop of it is in a store (here, or at its owner):
 * an agent can then forget it. Stitched connections are derived from stored hops.
 */
import { EventEmitter } from 'node:events';
import { addrFromKey, addrKey, formatAddr, parseAddr, toAddr16 } from './addr.js';
import { endpointOf, hopFromEvent } from './hop-from-event.js';
import type { Addr16, CaptureGapRecord, Hop, LossSample } from './hop.js';
import { hash64 } from './hop-id.js';
import { PeerRing, type Peer } from './peer-ring.js';
import { Stitcher, type StitcherOptions } from './stitcher.js';
import type { ClickHouseStore, StoreState, WhoRowData } from './store/clickhouse-store.js';
import type { HealthCheckRow, PodHistoryRow, ServiceHistoryRow } from './store/schema.js';
import { etpReport, mergeEtpPeriods, type ServiceStateRow } from './etp.js';
import { podTimeline, latestServiceStates, type PodState } from './k8s-history.js';
import { formatTimestamp } from '../agent/events.js';
import type { EtpRequest, EtpResponse, EventBatch, Hello, HopEvent, WhoRequest, WhoResponse, WhoRow, Completeness } from '../transport/proto.generated.js';
import { createCompleteness, createCpuLoss, createEtpResponse, createNodeGap, createWhoResponse, createWhoRow, type CpuLoss, type NodeGap } from '../transport/proto.generated.js';
import { CollectorStreamClient } from '../transport/stream-client.js';
import { QueryClient } from '../transport/query-client.js';
import type { TransportSecurity } from '../transport/tls.js';
import { NatlensError, describeError, quoteInput } from '../util/errors.js';
import { backoffDelay, type BackoffOptions } from '../util/backoff.js';
import { parseNamespacedName, parseTarget } from '../query/target.js';

const IPS_SRC_NAT = 0x10;

export interface CollectorOptions {
  ring: PeerRing;
  store: ClickHouseStore;
  stitcher: StitcherOptions;
  /** Store what was received at least this often. */
  flushIntervalMs: number;
  /** Hops buffered before accept() waits for the store (backpressure on agents). */
  maxBufferedHops: number;
  /** Store as soon as this many hops are buffered, without waiting for the interval. Default 20,000. */
  flushRows?: number;
  version: string;
  /** How this collector reaches its peers (forwarding, query fan-out): its own certificate, role collector. */
  peerSecurity?: TransportSecurity;
  /** Delays between store retries after a failure (flushes, restore). Default 250 ms doubling to 5 s, with jitter. */
  storeBackoff?: BackoffOptions;
  /** Restore after a restart (see recover()). */
  restore?: { maxHops?: number; graceMs?: number; dedupeMs?: number };
}

/** What /readyz reports: ready once the store is reachable, the stitcher restored, and writes succeed. */
export interface Readiness {
  ready: boolean;
  /** The store's connection state; 'failing' when connected but writes fail. */
  store: StoreState | 'failing';
  /** Why not ready ('' when ready). */
  reason: string;
  /** Failed store attempts in a row. */
  storeFailures: number;
  bufferedHops: number;
  maxBufferedHops: number;
}

/** One failed store attempt, as logged (rate-limited) by the collector command. */
export interface StoreRetry {
  store: string;
  /** Failed attempts in a row. */
  attempt: number;
  retryInMs: number;
  error: string;
  bufferedHops: number;
}

const DEFAULT_STORE_BACKOFF: BackoffOptions = { initialMs: 250, maxMs: 5000 };
/** Hops restored at most after a restart (the newest). */
const DEFAULT_RESTORE_MAX_HOPS = 500_000;
/** Agents reconnect with backoff up to 5 s: restored chains wait that much longer for their hops. */
const DEFAULT_RESTORE_GRACE_MS = 6000;
const DEFAULT_RESTORE_DEDUPE_MS = 120_000;
/** Failed restore attempts (with the store reached) before ingest goes on without it. */
const RESTORE_ATTEMPTS = 5;

/** An error with the gRPC status a query answer should carry. */
export class QueryError extends NatlensError {
  constructor(message: string, readonly grpcCode: number, options?: ErrorOptions) {
    super(message, options);
  }
}

const GRPC_INVALID_ARGUMENT = 3;
/** Resends only cover what was in flight when a stream broke: a few hundred batches at most. */
const MAX_BATCH_IDS_PER_AGENT = 20_000;
const MAX_AGENTS_TRACKED = 10_000;
const GRPC_UNAVAILABLE = 14;
const GRPC_NOT_FOUND = 5;
/** Gaps remembered as stored, so the copy every loss report repeats is not stored again. */
const MAX_GAPS_REMEMBERED = 10_000;

/** Completeness.lost_per_cpu and .gaps for a window: where the kernel lost events, and when nodes were not captured. */
async function captureFaults(store: ClickHouseStore, sinceNs: bigint): Promise<{ lostPerCpu: CpuLoss[]; gaps: NodeGap[] }> {
  const [perCpu, gaps] = await Promise.all([store.lossPerCpuSince(sinceNs), store.captureGapsSince(sinceNs)]);
  return {
    lostPerCpu: perCpu.map((c) => createCpuLoss({ node: c.node, cpu: c.cpu, ringbufFull: BigInt(c.ringbufFull) })),
    gaps: gaps.map((g) => createNodeGap({ node: g.node, from: formatTimestamp(g.fromNs), to: formatTimestamp(g.toNs), cause: g.cause, reason: g.reason })),
  };
}

/** How far ahead of this collector's clock an agent's timestamps may be (clock skew between nodes). */
export const MAX_CLOCK_AHEAD_MS = 3_600_000;
/** Longest look-back a query may ask for: the longest TTL a store may have (10 years). */
export const MAX_SINCE_MS = 3650 * 86_400_000;
const NS_PER_MS = 1_000_000n;

/**
 * Why `batch` cannot be stored, naming the field, or null. Timestamps older than the store keeps
 * would vanish at insert after being acked, and far-future ones would never expire and split the
 * insert into a partition per day (ClickHouse refuses inserts that touch more than 100).
 */
export function implausibleTimestamp(batch: EventBatch, nowMs: number, ttlDays: number): string | null {
  const newest = BigInt(nowMs + MAX_CLOCK_AHEAD_MS) * NS_PER_MS;
  // Kept a minute short of the TTL: rows must still be inside it when the insert runs.
  const oldest = BigInt(nowMs - ttlDays * 86_400_000 + 60_000) * NS_PER_MS;
  const check = (tsNs: bigint, field: string): string | null => {
    if (tsNs > newest) {
      return `${field}: ${formatTimestamp(tsNs)} is ${describeAhead(tsNs - newest + BigInt(MAX_CLOCK_AHEAD_MS) * NS_PER_MS)} ahead of the collector's clock (at most ${MAX_CLOCK_AHEAD_MS / 60_000} minutes allowed): check the clocks of the agent's node and the collector`;
    }
    if (tsNs < oldest) return `${field}: ${formatTimestamp(tsNs)} is older than the store keeps (${ttlDays} days, --ttl-days)`;
    return null;
  };
  for (let i = 0; i < batch.events.length; i++) {
    const why = check(batch.events[i]!.tsNs, `batch.events[${i}].ts_ns`);
    if (why) return why;
  }
  const readings = batch.healthChecks ?? [];
  for (let i = 0; i < readings.length; i++) {
    const why = check(readings[i]!.tsNs, `batch.health_checks[${i}].ts_ns`);
    if (why) return why;
  }
  return null;
}

function describeAhead(ns: bigint): string {
  const minutes = Number(ns / 60_000_000_000n);
  return minutes >= 2880 ? `${Math.floor(minutes / 1440)} days` : minutes >= 120 ? `${Math.floor(minutes / 60)} hours` : `${minutes} minutes`;
}

/** A query's look-back, validated: since_ms 0 means the default hour. */
function sinceOf(sinceMs: bigint): number {
  if (sinceMs > BigInt(MAX_SINCE_MS)) throw new QueryError(`since_ms: ${sinceMs} is too far back, at most ${MAX_SINCE_MS} (3650 days) allowed`, GRPC_INVALID_ARGUMENT);
  return sinceMs > 0n ? Number(sinceMs) : 3_600_000;
}

interface ResolvedTarget {
  /** As the answer names it. */
  text: string;
  addrs: Addr16[];
  port?: number;
  /** The pod's recorded states (one pod, or whichever pods had the address). */
  timeline: PodState[];
  pod: string;
}

interface ServiceFront {
  namespace: string;
  name: string;
  portName: string;
  frontend: string;
  proxyLoadBalancer: boolean;
  /** When the recorded state took effect: older connections are not read against it. */
  sinceNs: bigint;
}
type ServiceDirectory = Map<string, ServiceFront>;

/** The addresses this collector owns (all of them when it runs alone). */
function ownedAddresses(addrs: Addr16[], ring: PeerRing): Addr16[] {
  return ring.scaledOut ? addrs.filter((a) => ring.isSelf(ring.ownerOf(a))) : addrs;
}

/** [from, to) windows during which a pod of the timeline was terminating. */
function terminatingWindows(timeline: readonly PodState[]): Array<[bigint, bigint]> {
  const out: Array<[bigint, bigint]> = [];
  const byPod = new Map<string, PodState[]>();
  for (const s of timeline) {
    const k = `${s.namespace}/${s.name}/${s.uid}`;
    byPod.set(k, [...(byPod.get(k) ?? []), s]);
  }
  for (const states of byPod.values()) {
    let from: bigint | null = null;
    for (const s of states) {
      if (s.terminating && !s.deleted && from === null) from = s.tsNs;
      else if ((!s.terminating || s.deleted) && from !== null) {
        out.push([from, s.tsNs]);
        from = null;
      }
    }
    if (from !== null) out.push([from, 1n << 62n]);
  }
  return out;
}

/** Pod address -> "namespace/name" of the pod that last had it in the timeline. */
function podNamer(timeline: readonly PodState[]): (ip: string) => string {
  const m = new Map<string, string>();
  for (const s of timeline) for (const ip of s.ips) m.set(ip, `${s.namespace}/${s.name}`);
  return (ip) => m.get(ip) ?? '';
}

export class Collector extends EventEmitter {
  readonly stitcher: Stitcher;
  private readonly nodeAddresses = new Map<string, string>();
  private hops: Hop[] = [];
  /** Resolves the accept() of each batch whose hops are in `hops`, once they are stored. */
  private waiters: Array<() => void> = [];
  private readonly loss = new Map<string, LossSample>();
  /** Gaps reported and not yet stored, and the keys of those stored (agent|from|to, oldest first). */
  private gaps: CaptureGapRecord[] = [];
  private readonly gapsStored = new Set<string>();
  private health: HealthCheckRow[] = [];
  /** Kubernetes history (from the collector's watch), stored with the next flush. */
  private serviceHistory: ServiceHistoryRow[] = [];
  private podHistory: PodHistoryRow[] = [];
  private pendingConnections: ReturnType<Stitcher['tick']> = [];
  private flushing: Promise<void> | null = null;
  private roomWaiters: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly forwarders = new Map<string, CollectorStreamClient>();
  private readonly batchIds = new Map<string, Map<bigint, Promise<void>>>();
  private readonly queryClients = new Map<string, QueryClient>();
  private storeFailures = 0;
  /** No store attempt before this (ms): backing off after a failure. */
  private retryAt = 0;
  private lastStoreError: Error | null = null;
  /** Hops taken by the flush in progress: they count against maxBufferedHops until stored. */
  private flushingHops = 0;
  /** Resolves once the stitcher holds what was pending before a restart (or the collector closes). */
  private recovery: Promise<void> = Promise.resolve();
  private recovered = false;
  private wakeRecovery: (() => void) | null = null;
  private closed = false;
  readonly counters = { batches: 0, duplicateBatches: 0, events: 0, forwardedEvents: 0, storedHops: 0, storedConnections: 0, storeErrors: 0, restoredHops: 0 };

  constructor(readonly options: CollectorOptions) {
    super();
    this.stitcher = new Stitcher((a) => this.nodeAddresses.get(addrKey(a)), options.stitcher);
  }

  get id(): string {
    return this.options.ring.selfId;
  }

  start(): void {
    this.timer = setInterval(() => void this.flush().catch(() => {}), this.options.flushIntervalMs);
    this.recovery = this.recoverWithRetry();
  }

  /** For /readyz: see Readiness. */
  readiness(): Readiness {
    const { store } = this.options;
    const base = { storeFailures: this.storeFailures, bufferedHops: this.hops.length + this.flushingHops, maxBufferedHops: this.options.maxBufferedHops };
    const why = (e: Error | null): string => (e ? `: ${describeError(e)}` : '');
    if (store.state !== 'ready') return { ...base, ready: false, store: store.state, reason: `store ${store.describe()} is ${store.state}${why(store.lastError)}` };
    if (this.storeFailures > 0) return { ...base, ready: false, store: 'failing', reason: `store ${store.describe()} fails${why(this.lastStoreError)}` };
    if (!this.recovered) return { ...base, ready: false, store: 'ready', reason: 'restoring what was pending before the restart' };
    return { ...base, ready: true, store: 'ready', reason: '' };
  }

  /** Resolves once what was pending before a restart is back in the stitcher (or the collector closed). */
  whenRestored(): Promise<void> {
    return this.recovery;
  }

  /** recover(), retried with backoff until it succeeds or the collector closes. */
  private async recoverWithRetry(): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        await this.options.store.whenConnected();
        await this.recover();
        this.recovered = true;
        return;
      } catch (err) {
        if (this.closed || this.options.store.state === 'failed') return;
        // Ingest waits for the restore: never forever. Without it, chains pending before the
        // restart may be stored unstitched; nothing acknowledged is lost.
        if (attempt + 1 >= RESTORE_ATTEMPTS) {
          this.emit('warn', `restore after restart failed ${attempt + 1} times, going on without it (connections pending before the restart may be stored unstitched): ${describeError(err)}`);
          this.recovered = true;
          return;
        }
        const delay = backoffDelay(attempt, this.options.storeBackoff ?? DEFAULT_STORE_BACKOFF);
        this.emit('warn', `restore after restart: ${describeError(err)}; retrying in ${delay} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, delay);
          this.wakeRecovery = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wakeRecovery = null;
      }
    }
  }

  /**
   * After a restart: the chains the stitcher held when the process ended were lost with it, though
   * their hops were stored and acknowledged. The hops stored in the last hold + retention + window
   * before the newest one (plus 2 windows of context) go back into the stitcher, which keeps the ids
   * of records already stored (Stitcher.restore); agents' resends of them are skipped.
   */
  private async recover(): Promise<void> {
    const { store } = this.options;
    const st = this.stitcher.options;
    const r = this.options.restore ?? {};
    const latest = await store.latestHopNs();
    if (latest === null) {
      this.emit('restored', { hops: 0, storedRecords: 0, chains: { chains: 0, stored: 0, pending: 0, contextOnly: 0 } });
      return;
    }
    const ms = 1_000_000n;
    const fromNs = latest - BigInt(st.holdMs + st.retentionMs + st.windowMs) * ms;
    let contextNs = fromNs - BigInt(2 * st.windowMs) * ms;
    const maxHops = r.maxHops ?? DEFAULT_RESTORE_MAX_HOPS;
    const hops = (await store.recentConnHops(contextNs, maxHops)).reverse();
    // Cut short by maxHops: chains at the cut may miss hops, so the oldest 2 windows are context.
    if (hops.length >= maxHops) {
      contextNs = hops[0]!.tsNs + BigInt(2 * st.windowMs) * ms;
      this.emit('warn', `restore after restart: only the newest ${maxHops} hops were restored`);
    }
    for (const hop of hops) if (hop.reply && hop.ctStatus & IPS_SRC_NAT) this.nodeAddresses.set(addrKey(hop.reply.dst), hop.node);
    const stored = await store.connectionsByIds(new Set(hops.map((h) => hash64([h.id]))), contextNs - BigInt(2 * st.windowMs) * ms);
    const chains = this.stitcher.restore(hops, Date.now(), {
      contextBeforeNs: contextNs > fromNs ? contextNs : fromNs,
      stored,
      graceMs: r.graceMs ?? DEFAULT_RESTORE_GRACE_MS,
      dedupeMs: r.dedupeMs ?? DEFAULT_RESTORE_DEDUPE_MS,
    });
    this.counters.restoredHops = hops.length;
    // chains.pending: connections whose record died with the previous process (now written again).
    this.emit('restored', { hops: hops.length, storedRecords: stored.size, chains });
  }

  // ---- ingest (AgentSink) ----

  streamOpened(hello: Hello): void {
    for (const a of hello.nodeAddresses) this.nodeAddresses.set(addrKey(toAddr16(a)), hello.node);
  }

  async accept(stream: { hello: Hello; peer: string }, batch: EventBatch): Promise<void> {
    if (this.closed) throw new QueryError('collector is shutting down', GRPC_UNAVAILABLE);
    // Refused whole (INVALID_ARGUMENT: the agent drops it and counts it) rather than acked and lost.
    const implausible = implausibleTimestamp(batch, Date.now(), this.options.store.ttlDays ?? 7);
    if (implausible) throw new QueryError(implausible, GRPC_INVALID_ARGUMENT);
    const { hello } = stream;
    // A resend of a batch this collector stored (its ack was lost with the stream) or is storing.
    if (batch.batchId !== 0n) {
      const agent = this.batchesOf(hello.agentId);
      const known = agent.get(batch.batchId);
      if (known) {
        this.counters.duplicateBatches++;
        return known;
      }
      const storing = this.acceptNew(hello, batch);
      agent.set(batch.batchId, storing);
      if (agent.size > MAX_BATCH_IDS_PER_AGENT) agent.delete(agent.keys().next().value!);
      storing.catch(() => agent.delete(batch.batchId));
      return storing;
    }
    return this.acceptNew(hello, batch);
  }

  /** Batch ids seen per agent (insertion order = age), the oldest agents forgotten first. */
  private batchesOf(agentId: string): Map<bigint, Promise<void>> {
    let m = this.batchIds.get(agentId);
    if (m) {
      this.batchIds.delete(agentId); // keep recently active agents last
    } else {
      m = new Map();
      if (this.batchIds.size >= MAX_AGENTS_TRACKED) this.batchIds.delete(this.batchIds.keys().next().value!);
    }
    this.batchIds.set(agentId, m);
    return m;
  }

  private async acceptNew(hello: Hello, batch: EventBatch): Promise<void> {
    this.counters.batches++;
    this.counters.events += batch.events.length;
    // A forwarding collector's own stream carries no agent's counters unless it names the node.
    if (batch.loss && (!hello.forwardedBy || batch.loss.node)) this.takeLoss(batch.loss, hello);
    for (const h of batch.healthChecks ?? []) {
      this.health.push({
        tsNs: h.tsNs, node: h.node || hello.node, namespace: h.namespace, service: h.service, port: h.port,
        statusCode: h.statusCode, localEndpoints: h.localEndpoints, error: h.error,
      });
    }
    const local: HopEvent[] = [];
    const remote = new Map<string, { peer: Peer; events: HopEvent[] }>();
    const { ring } = this.options;
    for (const ev of batch.events) {
      // Forwarded batches are ours by construction; never forward twice.
      const owner = hello.forwardedBy || !ring.scaledOut ? null : ring.ownerOf(endpointOf(ev));
      if (!owner || ring.isSelf(owner)) {
        local.push(ev);
        continue;
      }
      let r = remote.get(owner.id);
      if (!r) remote.set(owner.id, (r = { peer: owner, events: [] }));
      r.events.push(ev.node ? ev : { ...ev, node: hello.node });
    }
    const done: Promise<void>[] = [];
    for (const { peer, events } of remote.values()) {
      this.counters.forwardedEvents += events.length;
      done.push(this.forwarder(peer).send(events));
    }
    if (local.length) done.push(this.ingestLocal(local, hello.node));
    // Loss counters and health readings alone are acknowledged once stored too: a loss-only batch
    // acked and then lost in a crash would not be sent again.
    else if (batch.loss || batch.healthChecks?.length) done.push(new Promise<void>((resolve) => this.waiters.push(resolve)));
    await Promise.all(done);
  }

  private async ingestLocal(events: HopEvent[], node: string): Promise<void> {
    // Restored chains first: resent hops are then recognised as such.
    if (!this.recovered) await this.recovery;
    if (!this.recovered) throw new QueryError('collector is shutting down', GRPC_UNAVAILABLE);
    // Bounded memory while the store is slow or away: accept() waits, the transport stops reading,
    // HTTP/2 flow control pushes back on the agents, whose queues are bounded in turn.
    while (this.hops.length + this.flushingHops >= this.options.maxBufferedHops) {
      if (this.closed) throw new QueryError('collector is shutting down', GRPC_UNAVAILABLE);
      await new Promise<void>((r) => this.roomWaiters.push(r));
    }
    const now = Date.now();
    for (const ev of events) {
      const hop = hopFromEvent(ev, node);
      // SNAT rewrites to an address of the translating node: learn it (covers nodes whose agent
      // talks to another collector).
      if (hop.reply && hop.ctStatus & IPS_SRC_NAT) this.nodeAddresses.set(addrKey(hop.reply.dst), hop.node);
      this.hops.push(hop);
      this.stitcher.ingest(hop, now);
    }
    const stored = new Promise<void>((resolve) => this.waiters.push(resolve));
    // Acks wait for the store: a full buffer goes now rather than at the next tick.
    if (this.hops.length >= (this.options.flushRows ?? 20_000)) void this.flush().catch(() => {});
    return stored;
  }

  /** A Service's state changed (or was first seen): stored with the next flush. */
  recordServiceHistory(row: ServiceHistoryRow): void {
    this.serviceHistory.push(row);
  }

  /** A Pod's addresses, node or conditions changed: stored with the next flush. */
  recordPodHistory(row: PodHistoryRow): void {
    this.podHistory.push(row);
  }

  private takeLoss(report: NonNullable<EventBatch['loss']>, hello: Hello): void {
    const agentId = report.agentId || hello.agentId;
    const lost: Record<string, number> = {};
    for (const [stage, n] of Object.entries(report.lost)) lost[stage] = Number(n);
    const ringbufFullPerCpu: Record<string, number> = {};
    for (const [cpu, n] of Object.entries(report.ringbufFullPerCpu ?? {})) ringbufFullPerCpu[cpu] = Number(n);
    const node = report.node || hello.node;
    this.loss.set(agentId, { tsNs: BigInt(Date.now()) * 1_000_000n, node, agentId, lost, captured: Number(report.captured), ringbufFullPerCpu });
    for (const g of report.gaps ?? []) {
      const key = `${agentId}|${g.fromNs}|${g.toNs}`;
      if (this.gapsStored.has(key)) continue;
      this.gapsStored.add(key);
      if (this.gapsStored.size > MAX_GAPS_REMEMBERED) this.gapsStored.delete(this.gapsStored.values().next().value!);
      this.gaps.push({ node, agentId, fromNs: g.fromNs, toNs: g.toNs, cause: g.cause, reason: g.reason, previousPid: g.previousPid });
    }
  }

  private forwarder(peer: Peer): CollectorStreamClient {
    let c = this.forwarders.get(peer.id);
    if (!c) {
      c = new CollectorStreamClient({
        target: peer.address,
        security: this.options.peerSecurity,
        hello: { node: '', agentId: `collector/${this.id}`, version: this.options.version, nodeAddresses: [], forwardedBy: this.id },
      });
      c.on('disconnected', (reason: unknown) => this.emit('warn', `peer ${peer.id} (${peer.address}) unreachable: ${String(reason)}; holding its events`));
      this.forwarders.set(peer.id, c);
    }
    return c;
  }

  /** Writes buffered hops, ready connections and loss samples; acknowledges the batches they came in. */
  flush(): Promise<void> {
    if (!this.flushing) {
      this.flushing = this.doFlush().finally(() => {
        this.flushing = null;
        // What arrived during a slow insert goes at once.
        if (this.hops.length >= (this.options.flushRows ?? 20_000)) void this.flush().catch(() => {});
      });
    }
    return this.flushing;
  }

  private async doFlush(): Promise<void> {
    // Backing off after a failure (closing tries once more regardless); a store still connecting
    // reports its own retries.
    if (Date.now() < this.retryAt && !this.closed) return;
    if (this.options.store.state === 'connecting') return;
    const hops = this.hops;
    const waiters = this.waiters;
    this.hops = [];
    this.waiters = [];
    this.pendingConnections.push(...this.stitcher.tick(Date.now()));
    const connections = this.pendingConnections;
    this.pendingConnections = [];
    const loss = [...this.loss.values()];
    this.loss.clear();
    const gaps = this.gaps;
    this.gaps = [];
    const health = this.health;
    this.health = [];
    const services = this.serviceHistory;
    const pods = this.podHistory;
    this.serviceHistory = [];
    this.podHistory = [];
    const { store } = this.options;
    this.flushingHops = hops.length;
    try {
      // Everything a batch carried is stored before it is acknowledged: its hops, health readings
      // and the loss counters it reported (so that a crash after the ack cannot lose them).
      if (hops.length) await store.insertHops(hops);
      this.counters.storedHops += hops.length;
      await store.insertHealthChecks(health);
      if (loss.length) await store.insertLoss(loss);
      await store.insertCaptureGaps(gaps);
    } catch (err) {
      this.flushingHops = 0;
      // Keep everything and retry after a backoff; agents hold their unacked batches meanwhile.
      this.hops = hops.concat(this.hops);
      this.health = health.concat(this.health);
      this.waiters = waiters.concat(this.waiters);
      this.pendingConnections = connections.concat(this.pendingConnections);
      this.serviceHistory = services.concat(this.serviceHistory);
      this.podHistory = pods.concat(this.podHistory);
      this.keepLoss(loss);
      this.gaps = gaps.concat(this.gaps);
      this.storeFailed(err as Error);
      return;
    }
    this.flushingHops = 0;
    for (const w of waiters) w();
    this.wakeRoom();
    try {
      if (connections.length) await store.insertConnections(connections);
      this.counters.storedConnections += connections.length;
      await store.insertServiceHistory(services);
      await store.insertPodHistory(pods);
      this.storeRecovered();
    } catch (err) {
      this.pendingConnections = connections.concat(this.pendingConnections);
      this.serviceHistory = services.concat(this.serviceHistory);
      this.podHistory = pods.concat(this.podHistory);
      this.storeFailed(err as Error);
    }
  }

  /** Puts back loss samples that were not stored, unless a newer one arrived meanwhile. */
  private keepLoss(samples: LossSample[]): void {
    for (const s of samples) if (!this.loss.has(s.agentId)) this.loss.set(s.agentId, s);
  }

  /** Backs off (exponentially, with jitter) and reports the failure ('store-retry'). */
  private storeFailed(err: Error): void {
    this.counters.storeErrors++;
    const retryInMs = backoffDelay(this.storeFailures++, this.options.storeBackoff ?? DEFAULT_STORE_BACKOFF);
    this.retryAt = Date.now() + retryInMs;
    this.lastStoreError = err;
    const retry: StoreRetry = {
      store: this.options.store.describe(), attempt: this.storeFailures, retryInMs, error: describeError(err), bufferedHops: this.hops.length,
    };
    this.emit('store-retry', retry);
  }

  private storeRecovered(): void {
    if (this.storeFailures === 0) return;
    this.emit('store-recovered', { store: this.options.store.describe(), failures: this.storeFailures });
    this.storeFailures = 0;
    this.retryAt = 0;
    this.lastStoreError = null;
  }

  private wakeRoom(): void {
    const ws = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of ws) w();
  }

  // ---- query (QuerySink) ----

  async who(req: WhoRequest): Promise<WhoResponse> {
    const sinceMs = sinceOf(req.sinceMs);
    const sinceNs = BigInt(Date.now() - sinceMs) * 1_000_000n;
    const target = await this.resolveTarget(req.target, sinceNs);
    const { ring } = this.options;
    if (req.forwarded || !ring.scaledOut) return this.whoLocal(target, sinceNs);
    // Rows come from the collectors owning the pod's addresses; every collector adds the loss it saw.
    const owners = new Set(target.addrs.map((a) => ring.ownerOf(a).id));
    const answers = await Promise.all(ring.peers.map((p) => (ring.isSelf(p)
      ? this.whoLocal(target, sinceNs)
      : this.queryClient(p).who({ ...req, forwarded: true }).catch((e: Error) => {
        if (owners.has(p.id)) throw new QueryError(`collector ${p.id} (${p.address}), which holds ${req.target}, did not answer: ${e.message}`, GRPC_UNAVAILABLE, { cause: e });
        return null;
      }))));
    const own = answers.filter((a, i): a is WhoResponse => a !== null && owners.has(ring.peers[i]!.id));
    const complete = mergeCompleteness(answers.filter((a): a is WhoResponse => a !== null).map((a) => a.complete!));
    const rows = own.flatMap((a) => a.rows).sort((a, b) => Number(b.connections - a.connections));
    return createWhoResponse({ ...own[0]!, rows, complete });
  }

  /** IP[:PORT] or NAMESPACE/POD -> the addresses to look up and what is known of the pod. */
  private async resolveTarget(text: string, sinceNs: bigint): Promise<ResolvedTarget> {
    const parsed = parseTarget(text);
    if (typeof parsed === 'string') throw new QueryError(parsed, GRPC_INVALID_ARGUMENT);
    const { store } = this.options;
    if ('pod' in parsed) {
      const timeline = await podTimeline(store, { namespace: parsed.namespace, name: parsed.pod, sinceNs });
      const addrs = [...new Set(timeline.flatMap((p) => p.ips))].map((ip) => parseAddr(ip)).filter((a): a is Addr16 => a !== null);
      if (addrs.length === 0) {
        throw new QueryError(`no pod ${parsed.namespace}/${parsed.pod} with an address was seen since ${formatTimestamp(sinceNs)} (is the collector watching Kubernetes? try its IP)`, GRPC_NOT_FOUND);
      }
      return { text: `${parsed.namespace}/${parsed.pod}`, addrs, timeline, pod: `${parsed.namespace}/${parsed.pod}` };
    }
    const ip = formatAddr(parsed.addr);
    const timeline = await podTimeline(store, { ip, sinceNs });
    const latest = timeline[timeline.length - 1];
    return {
      text: parsed.port === undefined ? ip : `${ip.includes(':') ? `[${ip}]` : ip}:${parsed.port}`,
      addrs: [parsed.addr],
      port: parsed.port,
      timeline,
      pod: latest ? `${latest.namespace}/${latest.name}` : '',
    };
  }

  private queryClient(p: Peer): QueryClient {
    let c = this.queryClients.get(p.id);
    if (!c) this.queryClients.set(p.id, (c = new QueryClient(p.address, undefined, { security: this.options.peerSecurity })));
    return c;
  }

  private async whoLocal(target: ResolvedTarget, sinceNs: bigint): Promise<WhoResponse> {
    const { store } = this.options;
    const { ring } = this.options;
    const own = ownedAddresses(target.addrs, ring);
    const [answer, loss, services, faults] = await Promise.all([
      own.length ? store.who({ endpoint: own, port: target.port, sinceNs, terminating: terminatingWindows(target.timeline) }) : Promise.resolve({ rows: [], unstitched: 0 }),
      store.lossSince(sinceNs),
      latestServiceStates(store, sinceNs),
      captureFaults(store, sinceNs),
    ]);
    const directory = this.serviceDirectory(services);
    const podOf = podNamer(target.timeline);
    const rows: WhoRow[] = answer.rows.map((r) => this.whoRow(r, directory, podOf));
    const lostByStage: Record<string, bigint> = {};
    for (const [k, v] of Object.entries(loss.byStage)) lostByStage[k] = BigInt(v);
    const latest = target.timeline[target.timeline.length - 1];
    return createWhoResponse({
      target: target.text,
      rows,
      since: formatTimestamp(sinceNs),
      pod: target.pod,
      node: latest?.node ?? '',
      complete: createCompleteness({
        eventsLost: BigInt(loss.total), lostByStage, unstitched: BigInt(answer.unstitched),
        nodesReporting: loss.nodes, collectors: [this.id], ...faults,
      }),
    });
  }

  private whoRow(r: WhoRowData, directory: ServiceDirectory, podOf: (ip: string) => string): WhoRow {
    // A Service's TCP and UDP ports may share a number (and a nodePort): the protocol tells them apart.
    const svc = directory.get(`${r.dialled}|${r.dialledPort}|${r.protocols[0] ?? 'tcp'}`);
    let client = r.client ?? '';
    let clientSource = 'kernel';
    let proxy = '';
    if (r.proxyClient !== null && r.proxyVersion > 0) {
      proxy = client;
      client = r.proxyClient;
      clientSource = `proxy-protocol-v${r.proxyVersion}`;
    } else if (svc?.proxyLoadBalancer && svc.frontend === 'NodePort' && r.firstSeenNs >= svc.sinceNs && client !== '' && !this.isNodeAddress(client)) {
      // The Service's load balancer proxies (ipMode Proxy) and sent no header: the caller we see is
      // the proxy, and nothing carries the real client.
      proxy = client;
      clientSource = 'proxy-not-carried';
    }
    const dialled = r.dialled.includes(':') ? `[${r.dialled}]:${r.dialledPort}` : `${r.dialled}:${r.dialledPort}`;
    return createWhoRow({
      client, seenAs: r.seenAs, connections: BigInt(r.connections), ingressNode: r.ingressNode,
      endpointNode: r.endpointNode, snat: r.snat, firstSeen: formatTimestamp(r.firstSeenNs), lastSeen: formatTimestamp(r.lastSeenNs),
      protocols: r.protocols, stitched: r.stitched, clientSource, proxy,
      service: svc ? `${svc.namespace}/${svc.name}` : '', servicePort: svc?.portName ?? '', frontend: svc?.frontend ?? '',
      dialled, whileTerminating: BigInt(r.whileTerminating), pod: podOf(r.endpoint),
    });
  }

  private isNodeAddress(ip: string): boolean {
    const a = parseAddr(ip);
    return a !== null && this.nodeAddresses.has(addrKey(a));
  }

  /** Node name -> its addresses, as agents announced them (Hello) or SNAT revealed them. */
  nodeAddressMap(): Map<string, string[]> {
    const m = new Map<string, string[]>();
    for (const [key, node] of this.nodeAddresses) {
      const list = m.get(node) ?? [];
      list.push(formatAddr(addrFromKey(key)));
      m.set(node, list);
    }
    return m;
  }

  /** address|port -> the Service it fronts, from the latest recorded state of every Service. */
  private serviceDirectory(states: Array<{ namespace: string; name: string; state: ServiceStateRow }>): ServiceDirectory {
    const dir: ServiceDirectory = new Map();
    const nodes = this.nodeAddressMap();
    for (const { namespace, name, state } of states) {
      const proxyLoadBalancer = state.loadBalancerIngress.some((i) => i.ipMode === 'Proxy');
      for (const p of state.ports) {
        const portName = p.name || String(p.port);
        const proto = (p.protocol ?? 'TCP').toLowerCase();
        const put = (ip: string, port: number, frontend: string): void => {
          const a = parseAddr(ip);
          if (a) dir.set(`${formatAddr(a)}|${port}|${proto}`, { namespace, name, portName, frontend, proxyLoadBalancer, sinceNs: state.tsNs });
        };
        for (const ip of state.clusterIps) put(ip, p.port, 'ClusterIP');
        for (const i of state.loadBalancerIngress) put(i.ip, p.port, 'LoadBalancer');
        if (p.nodePort) for (const ips of nodes.values()) for (const ip of ips) put(ip, p.nodePort, 'NodePort');
      }
    }
    return dir;
  }

  async etp(req: EtpRequest): Promise<EtpResponse> {
    const svc = parseNamespacedName(req.service);
    if (!svc) throw new QueryError(`${quoteInput(req.service)} is not NAMESPACE/SERVICE (e.g. default/loadbalancer)`, GRPC_INVALID_ARGUMENT);
    const { namespace, name } = svc;
    const sinceMs = sinceOf(req.sinceMs);
    const sinceNs = BigInt(Date.now() - sinceMs) * 1_000_000n;
    const local = await this.etpLocal(namespace, name, sinceNs);
    const { ring } = this.options;
    if (req.forwarded || !ring.scaledOut) return local;
    const answers = await Promise.all(ring.peers.map((p) => (ring.isSelf(p)
      ? local
      : this.queryClient(p).etp({ ...req, forwarded: true }).catch((e: Error) => {
        throw new QueryError(`collector ${p.id} (${p.address}) did not answer: ${e.message}`, GRPC_UNAVAILABLE, { cause: e });
      }))));
    const periods = mergeEtpPeriods(answers.map((a) => a.periods));
    if (periods === null) throw new QueryError(`collectors disagree on ${namespace}/${name}'s policy history; ask again once their Kubernetes watches have caught up`, GRPC_UNAVAILABLE);
    return createEtpResponse({ ...local, periods, complete: mergeCompleteness(answers.map((a) => a.complete!)) });
  }

  private async etpLocal(namespace: string, name: string, sinceNs: bigint): Promise<EtpResponse> {
    const { store } = this.options;
    const [report, loss, faults] = await Promise.all([
      etpReport(store, { namespace, name, sinceNs, nowNs: BigInt(Date.now()) * 1_000_000n, nodeAddresses: this.nodeAddressMap() }),
      store.lossSince(sinceNs),
      captureFaults(store, sinceNs),
    ]);
    if (!report.known) {
      throw new QueryError(`no Service ${namespace}/${name} was recorded since ${formatTimestamp(sinceNs)} (is the collector watching Kubernetes? see natlens collector --help)`, GRPC_NOT_FOUND);
    }
    const lostByStage: Record<string, bigint> = {};
    for (const [k, v] of Object.entries(loss.byStage)) lostByStage[k] = BigInt(v);
    return createEtpResponse({
      service: `${namespace}/${name}`,
      since: formatTimestamp(sinceNs),
      periods: report.periods,
      complete: createCompleteness({ eventsLost: BigInt(loss.total), lostByStage, unstitched: 0n, nodesReporting: loss.nodes, collectors: [this.id], ...faults }),
    });
  }

  // ---- lifecycle ----

  /** Why this collector cannot take batches now, for /readyz (empty: it can). */
  unmetConditions(): string[] {
    if (this.closed) return ['shutting down'];
    const r = this.readiness();
    return r.ready ? [] : [r.reason];
  }

  stats() {
    const r = this.readiness();
    return { ...this.counters, bufferedHops: r.bufferedHops, store: r.store, ready: r.ready, stitcher: this.stitcher.stats() };
  }

  /** Stops taking batches, stitches and stores everything held, closes peers. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.wakeRecovery?.();
    this.wakeRoom(); // batches waiting for room end unacknowledged: agents resend them
    await this.flush();
    this.pendingConnections.push(...this.stitcher.flush(Date.now()));
    await this.flush();
    await Promise.all([...this.forwarders.values()].map((f) => f.close({ drainTimeoutMs: 5000 })));
    for (const q of this.queryClients.values()) q.close();
  }
}

function mergeCompleteness(parts: Completeness[]): Completeness {
  const lostByStage: Record<string, bigint> = {};
  let eventsLost = 0n;
  let unstitched = 0n;
  const nodes = new Set<string>();
  const collectors: string[] = [];
  // An agent that moved to another collector reported to both: per-CPU counts add up (each
  // collector holds its own stretch of the agent's counters), a gap is the same gap.
  const perCpu = new Map<string, CpuLoss>();
  const gaps = new Map<string, NodeGap>();
  for (const p of parts) {
    eventsLost += p.eventsLost;
    unstitched += p.unstitched;
    for (const [k, v] of Object.entries(p.lostByStage)) lostByStage[k] = (lostByStage[k] ?? 0n) + v;
    p.nodesReporting.forEach((n) => nodes.add(n));
    collectors.push(...p.collectors);
    for (const c of p.lostPerCpu ?? []) {
      const k = `${c.node}|${c.cpu}`;
      const had = perCpu.get(k);
      perCpu.set(k, createCpuLoss({ ...c, ringbufFull: (had?.ringbufFull ?? 0n) + c.ringbufFull }));
    }
    for (const g of p.gaps ?? []) gaps.set(`${g.node}|${g.from}|${g.to}`, g);
  }
  const lostPerCpu = [...perCpu.values()].sort((a, b) => a.node.localeCompare(b.node) || a.cpu - b.cpu);
  const gapList = [...gaps.values()].sort((a, b) => a.from.localeCompare(b.from) || a.node.localeCompare(b.node));
  return createCompleteness({ eventsLost, lostByStage, unstitched, nodesReporting: [...nodes].sort(), collectors, lostPerCpu, gaps: gapList });
}
