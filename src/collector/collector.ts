/**
 * The collector: takes agents' batches, routes each hop to the collector that owns its endpoint,
 * stitches what it owns, stores raw hops, stitched connections and loss counters, and answers
 * `who`. A batch is acknowledged only once every hop of it is in a store (here, or at its owner):
 * an agent can then forget it. Stitched connections are derived from stored hops.
 */
import { EventEmitter } from 'node:events';
import { addrKey, formatAddr, toAddr16 } from './addr.js';
import { endpointOf, hopFromEvent } from './hop-from-event.js';
import type { Hop, LossSample } from './hop.js';
import { PeerRing, type Peer } from './peer-ring.js';
import { Stitcher, type StitcherOptions } from './stitcher.js';
import type { ClickHouseStore } from './store/clickhouse-store.js';
import { formatTimestamp } from '../agent/events.js';
import type { EventBatch, Hello, HopEvent, WhoRequest, WhoResponse, WhoRow, Completeness } from '../transport/proto.generated.js';
import { createCompleteness, createWhoResponse, createWhoRow } from '../transport/proto.generated.js';
import { CollectorStreamClient } from '../transport/stream-client.js';
import { QueryClient } from '../transport/query-client.js';
import { NatlensError } from '../util/errors.js';
import { parseTarget } from '../query/target.js';

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
}

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

export class Collector extends EventEmitter {
  readonly stitcher: Stitcher;
  private readonly nodeAddresses = new Map<string, string>();
  private hops: Hop[] = [];
  /** Resolves the accept() of each batch whose hops are in `hops`, once they are stored. */
  private waiters: Array<() => void> = [];
  private readonly loss = new Map<string, LossSample>();
  private pendingConnections: ReturnType<Stitcher['tick']> = [];
  private flushing: Promise<void> | null = null;
  private roomWaiters: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly forwarders = new Map<string, CollectorStreamClient>();
  private readonly batchIds = new Map<string, Map<bigint, Promise<void>>>();
  private readonly queryClients = new Map<string, QueryClient>();
  private storeFailures = 0;
  private closed = false;
  readonly counters = { batches: 0, duplicateBatches: 0, events: 0, forwardedEvents: 0, storedHops: 0, storedConnections: 0, storeErrors: 0 };

  constructor(readonly options: CollectorOptions) {
    super();
    this.stitcher = new Stitcher((a) => this.nodeAddresses.get(addrKey(a)), options.stitcher);
  }

  get id(): string {
    return this.options.ring.selfId;
  }

  start(): void {
    this.timer = setInterval(() => void this.flush().catch(() => {}), this.options.flushIntervalMs);
  }

  // ---- ingest (AgentSink) ----

  streamOpened(hello: Hello): void {
    for (const a of hello.nodeAddresses) this.nodeAddresses.set(addrKey(toAddr16(a)), hello.node);
  }

  async accept(stream: { hello: Hello; peer: string }, batch: EventBatch): Promise<void> {
    if (this.closed) throw new QueryError('collector is shutting down', GRPC_UNAVAILABLE);
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
    await Promise.all(done);
  }

  private async ingestLocal(events: HopEvent[], node: string): Promise<void> {
    while (this.hops.length >= this.options.maxBufferedHops) await new Promise<void>((r) => this.roomWaiters.push(r));
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

  private takeLoss(report: NonNullable<EventBatch['loss']>, hello: Hello): void {
    const agentId = report.agentId || hello.agentId;
    const lost: Record<string, number> = {};
    for (const [stage, n] of Object.entries(report.lost)) lost[stage] = Number(n);
    this.loss.set(agentId, { tsNs: BigInt(Date.now()) * 1_000_000n, node: report.node || hello.node, agentId, lost, captured: Number(report.captured) });
  }

  private forwarder(peer: Peer): CollectorStreamClient {
    let c = this.forwarders.get(peer.id);
    if (!c) {
      c = new CollectorStreamClient({
        target: peer.address,
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
    const hops = this.hops;
    const waiters = this.waiters;
    this.hops = [];
    this.waiters = [];
    this.pendingConnections.push(...this.stitcher.tick(Date.now()));
    const connections = this.pendingConnections;
    this.pendingConnections = [];
    const loss = [...this.loss.values()];
    this.loss.clear();
    const { store } = this.options;
    try {
      if (hops.length) await store.insertHops(hops);
      this.counters.storedHops += hops.length;
    } catch (err) {
      // Keep everything and retry on the next tick; agents hold their unacked batches meanwhile.
      this.hops = hops.concat(this.hops);
      this.waiters = waiters.concat(this.waiters);
      this.pendingConnections = connections.concat(this.pendingConnections);
      this.keepLoss(loss);
      this.storeFailed(err as Error);
      return;
    }
    for (const w of waiters) w();
    this.wakeRoom();
    try {
      if (connections.length) await store.insertConnections(connections);
      this.counters.storedConnections += connections.length;
      if (loss.length) await store.insertLoss(loss);
      this.storeFailures = 0;
    } catch (err) {
      this.pendingConnections = connections.concat(this.pendingConnections);
      this.keepLoss(loss);
      this.storeFailed(err as Error);
    }
  }

  /** Puts back loss samples that were not stored, unless a newer one arrived meanwhile. */
  private keepLoss(samples: LossSample[]): void {
    for (const s of samples) if (!this.loss.has(s.agentId)) this.loss.set(s.agentId, s);
  }

  private storeFailed(err: Error): void {
    this.counters.storeErrors++;
    if (this.storeFailures++ % 20 === 0) this.emit('warn', `store: ${err.message}; retrying`);
  }

  private wakeRoom(): void {
    const ws = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of ws) w();
  }

  // ---- query (QuerySink) ----

  async who(req: WhoRequest): Promise<WhoResponse> {
    const target = parseTarget(req.target);
    if (typeof target === 'string') throw new QueryError(target, GRPC_INVALID_ARGUMENT);
    const sinceMs = req.sinceMs > 0n ? Number(req.sinceMs) : 3_600_000;
    const { ring } = this.options;
    if (req.forwarded || !ring.scaledOut) return this.whoLocal(target.addr, target.port, sinceMs);
    // Rows come from the collector owning the endpoint; every collector adds the loss it saw.
    const owner = ring.ownerOf(target.addr);
    const answers = await Promise.all(ring.peers.map((p) => (ring.isSelf(p)
      ? this.whoLocal(target.addr, target.port, sinceMs)
      : this.queryClient(p).who({ ...req, forwarded: true }).catch((e: Error) => {
        if (p.id === owner.id) throw new QueryError(`collector ${p.id} (${p.address}), which holds ${req.target}, did not answer: ${e.message}`, GRPC_UNAVAILABLE, { cause: e });
        return null;
      }))));
    const own = answers[ring.peers.indexOf(owner)]!;
    const complete = mergeCompleteness(answers.filter((a): a is WhoResponse => a !== null).map((a) => a.complete!));
    return createWhoResponse({ ...own, complete });
  }

  private queryClient(p: Peer): QueryClient {
    let c = this.queryClients.get(p.id);
    if (!c) this.queryClients.set(p.id, (c = new QueryClient(p.address)));
    return c;
  }

  private async whoLocal(endpoint: Uint8Array, port: number | undefined, sinceMs: number): Promise<WhoResponse> {
    const sinceNs = BigInt(Date.now() - sinceMs) * 1_000_000n;
    const { store } = this.options;
    const [answer, loss] = await Promise.all([store.who({ endpoint, port, sinceNs }), store.lossSince(sinceNs)]);
    const rows: WhoRow[] = answer.rows.map((r) => createWhoRow({
      client: r.client ?? '', seenAs: r.seenAs, connections: BigInt(r.connections), ingressNode: r.ingressNode,
      endpointNode: r.endpointNode, snat: r.snat, firstSeen: formatTimestamp(r.firstSeenNs), lastSeen: formatTimestamp(r.lastSeenNs),
      protocols: r.protocols, stitched: r.stitched,
    }));
    const lostByStage: Record<string, bigint> = {};
    for (const [k, v] of Object.entries(loss.byStage)) lostByStage[k] = BigInt(v);
    return createWhoResponse({
      target: port === undefined ? formatAddr(endpoint) : `${formatAddr(endpoint)}:${port}`,
      rows,
      since: formatTimestamp(sinceNs),
      complete: createCompleteness({
        eventsLost: BigInt(loss.total), lostByStage, unstitched: BigInt(answer.unstitched),
        nodesReporting: loss.nodes, collectors: [this.id],
      }),
    });
  }

  // ---- lifecycle ----

  stats() {
    return { ...this.counters, bufferedHops: this.hops.length, stitcher: this.stitcher.stats() };
  }

  /** Stops taking batches, stitches and stores everything held, closes peers. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
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
  for (const p of parts) {
    eventsLost += p.eventsLost;
    unstitched += p.unstitched;
    for (const [k, v] of Object.entries(p.lostByStage)) lostByStage[k] = (lostByStage[k] ?? 0n) + v;
    p.nodesReporting.forEach((n) => nodes.add(n));
    collectors.push(...p.collectors);
  }
  return createCompleteness({ eventsLost, lostByStage, unstitched, nodesReporting: [...nodes].sort(), collectors });
}
