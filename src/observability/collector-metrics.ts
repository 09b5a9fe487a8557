/**
 * The collector's metrics and readiness. Counters the collector and its stitcher keep are read at
 * scrape time; what they do not keep (streams per node, agents' loss reports, query and insert
 * latency) is observed by wrapping the sinks the gRPC server calls and by the store's insert hook,
 * so the ingest path itself is unchanged. Names: docs/observability.md.
 */
import { status as grpcStatus } from '@grpc/grpc-js';
import { Counter, Histogram, type Registry } from 'prom-client';
import type { Collector } from '../collector/collector.js';
import type { ClickHouseStore } from '../collector/store/clickhouse-store.js';
import type { AgentSink, AgentStream, QuerySink } from '../transport/stream-server.js';
import type { EventBatch, Hello } from '../transport/proto.generated.js';
import { NATLENS_VERSION } from '../util/paths.js';
import { describeError } from '../util/errors.js';
import type { Conditions } from './metrics-server.js';
import { one, readCounter, readGauge } from './registry.js';

const STITCH_OUTCOMES = ['complete', 'unstitched', 'superseded'] as const;
/** Nodes remembered with no stream open (their connected_agents series stays at 0) before the oldest are forgotten. */
const MAX_IDLE_NODES = 5000;

/** An agent's cumulative loss report, per node; a new agent id on the node (a restart) continues from the old totals. */
interface NodeLoss {
  agentId: string;
  base: Map<string, number>;
  current: Map<string, number>;
}

export class CollectorMetrics {
  private readonly streams = new Map<string, number>();
  private readonly loss = new Map<string, NodeLoss>();
  private readonly insertSeconds: Histogram<'table'>;
  private readonly storeErrors: Counter<'table'>;
  private readonly querySeconds: Histogram<'rpc' | 'status'>;
  /** The last insert or ping: ok, or why not. */
  private storeState: { ok: boolean; error: string } = { ok: true, error: '' };

  constructor(readonly registry: Registry) {
    this.insertSeconds = new Histogram({
      name: 'natlens_collector_store_insert_duration_seconds', help: 'Time one insert into a store table took (failed ones included).',
      labelNames: ['table'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [registry],
    });
    this.storeErrors = new Counter({
      name: 'natlens_collector_store_errors_total', help: 'Inserts that failed, by table (the collector keeps the rows and retries).',
      labelNames: ['table'], registers: [registry],
    });
    this.querySeconds = new Histogram({
      name: 'natlens_collector_query_duration_seconds', help: 'Time to answer a query, by RPC (Who, Etp) and gRPC status.',
      labelNames: ['rpc', 'status'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [registry],
    });
    readGauge(registry, 'natlens_collector_connected_agents', 'Agent streams open, by node (peer collectors forwarding: node "collector:ID").', ['node'],
      () => [...this.streams].map(([node, n]) => [{ node }, n] as const));
    readCounter(registry, 'natlens_collector_agent_events_lost_total', 'Events agents reported lost, by node and stage (from their loss reports).', ['node', 'stage'],
      () => [...this.loss].flatMap(([node, l]) => [...stagesOf(l)].filter(([stage]) => stage !== CAPTURED).map(([stage, n]) => [{ node, stage }, n] as const)));
    readCounter(registry, 'natlens_collector_agent_events_captured_total', 'Events agents reported captured, by node (from their loss reports).', ['node'],
      () => [...this.loss].map(([node, l]) => [{ node }, stagesOf(l).get(CAPTURED) ?? 0] as const));
    readGauge(registry, 'natlens_collector_store_up', '1 when the last store insert or ping succeeded, else 0.', [], () => one(this.storeState.ok ? 1 : 0));
  }

  /** Insert latency and errors, by table, from the store's hook. */
  observeStore(store: ClickHouseStore): void {
    store.onInsert = (table, seconds, failed) => {
      this.insertSeconds.observe({ table }, seconds);
      if (failed) this.storeErrors.inc({ table });
      this.storeState = failed ? { ok: false, error: `insert into ${table} failed` } : { ok: true, error: '' };
    };
  }

  /** The collector's and its stitcher's own counters, read at scrape time. */
  observeCollector(collector: Collector): void {
    const r = this.registry;
    const c = collector.counters;
    const stitch = () => collector.stitcher.stats();
    readGauge(r, 'natlens_collector_info', 'Always 1; labels say which collector (id among its peers) and version.', ['id', 'version'], () => [[{ id: collector.id, version: NATLENS_VERSION }, 1]]);
    readCounter(r, 'natlens_collector_batches_received_total', 'Batches taken from agents and peers (duplicates not included).', [], () => one(c.batches));
    readCounter(r, 'natlens_collector_duplicate_batches_total', 'Batches received again after a reconnect, already stored or being stored: skipped.', [], () => one(c.duplicateBatches));
    readCounter(r, 'natlens_collector_events_received_total', 'Events in the batches received.', [], () => one(c.events));
    readCounter(r, 'natlens_collector_events_forwarded_total', 'Events sent on to the peer collector that owns them.', [], () => one(c.forwardedEvents));
    readCounter(r, 'natlens_collector_hops_stored_total', 'Hops (one node\'s view of one connection) stored.', [], () => one(c.storedHops));
    readCounter(r, 'natlens_collector_connections_stored_total', 'Connection records stored (every outcome).', [], () => one(c.storedConnections));
    readCounter(r, 'natlens_collector_stitched_connections_total', 'Connection records the stitcher emitted, by outcome: complete, unstitched (a hop is missing), superseded (merged into another).', ['outcome'],
      () => { const s = stitch(); return STITCH_OUTCOMES.map((outcome) => [{ outcome }, s[outcome]] as const); });
    readCounter(r, 'natlens_collector_stitch_links_total', 'Hops linked to the hop of the node before them.', [], () => one(stitch().links));
    readCounter(r, 'natlens_collector_stitch_ambiguous_total', 'Links not made because several hops matched (never guessed).', [], () => one(stitch().ambiguous));
    readCounter(r, 'natlens_collector_stitch_evicted_total', 'Unstitched connections forgotten early because the stitcher was full.', [], () => one(stitch().evicted));
    readGauge(r, 'natlens_collector_stitch_pending', 'Connections waiting for a missing hop.', [], () => one(stitch().pending));
    readGauge(r, 'natlens_collector_hops_buffered', 'Hops received and not yet stored.', [], () => one(collector.stats().bufferedHops));
  }

  /** The collector as the gRPC server's AgentSink, counting streams per node and reading agents' loss reports. */
  agentSink(inner: AgentSink): AgentSink {
    return {
      accept: (stream: AgentStream, batch: EventBatch) => {
        // Same rule as the collector's: a forwarding peer's stream carries a report only when it names the node.
        if (batch.loss && (!stream.hello.forwardedBy || batch.loss.node)) {
          this.takeLoss(batch.loss.node || stream.hello.node, batch.loss.agentId || stream.hello.agentId, batch.loss.lost, batch.loss.captured);
        }
        return inner.accept(stream, batch);
      },
      streamOpened: (hello: Hello, stream: AgentStream) => {
        const node = nodeLabel(hello);
        this.streams.set(node, (this.streams.get(node) ?? 0) + 1);
        inner.streamOpened?.(hello, stream);
      },
      streamClosed: (hello: Hello, stream: AgentStream, reason: string) => {
        const node = nodeLabel(hello);
        this.streams.set(node, Math.max(0, (this.streams.get(node) ?? 1) - 1));
        this.forgetIdleNodes();
        inner.streamClosed?.(hello, stream, reason);
      },
    };
  }

  /** The collector as the gRPC server's QuerySink, timing every answer by RPC and status. */
  querySink(inner: QuerySink): QuerySink {
    const timed = <Req, Res>(rpc: string, answer: (req: Req) => Promise<Res>) => async (req: Req): Promise<Res> => {
      const end = this.querySeconds.startTimer({ rpc });
      try {
        const res = await answer(req);
        end({ status: 'OK' });
        return res;
      } catch (err) {
        end({ status: grpcStatusName(err) });
        throw err;
      }
    };
    return { who: timed('Who', (req) => inner.who(req)), etp: timed('Etp', (req) => inner.etp(req)) };
  }

  /**
   * Readiness 'store': the collector's own view (its last store attempt) and, because an idle
   * collector inserts nothing, a ping now and every `pingMs`. `ping` runs one now; `stop` ends them.
   */
  storeReadiness(readiness: Conditions, collector: Collector, store: Pick<ClickHouseStore, 'ping'>, pingMs = 10_000): { ping: () => Promise<void>; stop: () => void } {
    let inflight: Promise<void> | undefined;
    const run = async (): Promise<void> => {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          store.ping(),
          new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${pingMs} ms`)), pingMs); }),
        ]);
        this.storeState = { ok: true, error: '' };
      } catch (err) {
        this.storeState = { ok: false, error: `ping failed: ${describeError(err)}` };
      } finally {
        clearTimeout(timer);
      }
    };
    // One ping at a time: a slow store is not piled on.
    const ping = (): Promise<void> => (inflight ??= run().finally(() => { inflight = undefined; }));
    const interval = setInterval(() => void ping(), pingMs);
    interval.unref();
    void ping();
    readiness.set('store', () => {
      const unmet = collector.unmetConditions();
      if (!this.storeState.ok && unmet.length === 0) unmet.push(`store ${this.storeState.error}`);
      return unmet.length ? unmet.join('; ') : null;
    });
    return { ping, stop: () => clearInterval(interval) };
  }

  private takeLoss(node: string, agentId: string, lost: Record<string, bigint>, captured: bigint): void {
    let l = this.loss.get(node);
    if (!l) this.loss.set(node, (l = { agentId, base: new Map(), current: new Map() }));
    if (l.agentId !== agentId) {
      // Another agent on this node (restarted): its counts start from 0; keep the old ones.
      for (const [stage, n] of l.current) l.base.set(stage, (l.base.get(stage) ?? 0) + n);
      l.current = new Map();
      l.agentId = agentId;
    }
    const put = (stage: string, v: bigint): void => {
      // Reports are cumulative; a resent batch carries an older one.
      l.current.set(stage, Math.max(l.current.get(stage) ?? 0, Number(v)));
    };
    for (const [stage, n] of Object.entries(lost)) put(stage, n);
    put(CAPTURED, captured);
  }

  private forgetIdleNodes(): void {
    if (this.streams.size <= MAX_IDLE_NODES) return;
    for (const [node, n] of this.streams) {
      if (this.streams.size <= MAX_IDLE_NODES) break;
      if (n === 0) this.streams.delete(node);
    }
  }
}

/** Key of the captured count among a node's loss stages (not a stage name an agent can send: stages are snake_case). */
const CAPTURED = ' captured';

/** Base + current per stage (captured included, under CAPTURED). */
function stagesOf(l: NodeLoss): Map<string, number> {
  const out = new Map(l.base);
  for (const [stage, n] of l.current) out.set(stage, (out.get(stage) ?? 0) + n);
  return out;
}

function nodeLabel(hello: Hello): string {
  return hello.node || `collector:${hello.forwardedBy}`;
}

/** 'OK' or the gRPC status name the server will answer with (the error's grpcCode, else INTERNAL). */
function grpcStatusName(err: unknown): string {
  const code = (err as { grpcCode?: unknown } | null)?.grpcCode;
  const valid = typeof code === 'number' && Number.isInteger(code) && code > 0 && code <= 16;
  return grpcStatus[valid ? code : grpcStatus.INTERNAL] ?? 'INTERNAL';
}
