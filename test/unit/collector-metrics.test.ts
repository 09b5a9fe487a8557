// The collector's metrics and readiness on a real Collector whose store can be made to fail:
// what the gRPC server's sinks see (streams per node, agents' loss reports, query statuses), the
// collector's counters read at scrape time, and readiness following the store.
import { describe, expect, it } from 'vitest';
import { Collector, QueryError } from '../../src/collector/collector.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import type { ClickHouseStore } from '../../src/collector/store/clickhouse-store.js';
import type { ConnectionRecord, Hop } from '../../src/collector/hop.js';
import { CollectorMetrics } from '../../src/observability/collector-metrics.js';
import { Conditions } from '../../src/observability/metrics-server.js';
import { newRegistry } from '../../src/observability/registry.js';
import {
  HopKind, createEventBatch, createHello, createHopEvent, createLossReport, createTuple, createWhoResponse, type EventBatch, type Hello,
} from '../../src/transport/proto.generated.js';
import type { AgentSink } from '../../src/transport/stream-server.js';
import { parsePrometheusText, samplesOf, valueOf } from '../support/prometheus-text.js';

/** The store calls the collector makes, in memory; `failing` makes every one of them throw. */
class MemoryStore {
  failing: Error | null = null;
  readonly hops: Hop[] = [];
  readonly connections: ConnectionRecord[] = [];
  onInsert: unknown;
  private check(): void {
    if (this.failing) throw this.failing;
  }
  async insertHops(h: Hop[]): Promise<void> { this.check(); this.hops.push(...h); }
  async insertConnections(c: ConnectionRecord[]): Promise<void> { this.check(); this.connections.push(...c); }
  async insertHealthChecks(): Promise<void> { this.check(); }
  async insertLoss(): Promise<void> { this.check(); }
  async insertCaptureGaps(): Promise<void> { this.check(); }
  async insertServiceHistory(): Promise<void> { this.check(); }
  async insertPodHistory(): Promise<void> { this.check(); }
  async ping(): Promise<void> { this.check(); }
  // Connected from the start, nothing stored before: the restore after a restart has nothing to do.
  readonly state = 'ready';
  readonly lastError = null;
  readonly ttlDays = 7;
  describe(): string { return 'memory'; }
  async whenConnected(): Promise<void> {}
  async latestHopNs(): Promise<bigint | null> { return null; }
}

const ip = (...b: number[]): Uint8Array => Uint8Array.from(b);
let port = 40000;
/** A NodePort connection's hop on its ingress node (not delivered locally: it stays unstitched alone). */
const hop = () => createHopEvent({
  kind: HopKind.CONN, tsNs: BigInt(Date.now()) * 1_000_000n, ipProto: 6, hasIsn: true, tcpIsn: 42,
  orig: createTuple({ src: ip(198, 51, 100, 7), sport: ++port, dst: ip(10, 0, 0, 2), dport: 30080 }),
  reply: createTuple({ src: ip(10, 244, 1, 5), sport: 8080, dst: ip(10, 0, 0, 2), dport: port }),
  ctStatus: 0x30,
});

function setup() {
  const store = new MemoryStore();
  const collector = new Collector({
    ring: new PeerRing('c1', []), store: store as unknown as ClickHouseStore, version: 'test', flushIntervalMs: 60_000, maxBufferedHops: 1000,
    storeBackoff: { initialMs: 1, maxMs: 1 }, // the test retries at once
    stitcher: { holdMs: 60_000, windowMs: 5000, retentionMs: 15_000, maxChains: 1000 },
  });
  const registry = newRegistry();
  collector.start(); // restores (nothing here): ready from then on
  const metrics = new CollectorMetrics(registry);
  metrics.observeCollector(collector);
  const sink: AgentSink = metrics.agentSink(collector);
  const scrape = async () => parsePrometheusText(await registry.metrics());
  return { store, collector, metrics, sink, scrape };
}

const hello = (node: string, agentId: string): Hello => createHello({ protocolVersion: 1, node, agentId, version: 't' });
/** accept() resolves once the batch is stored: flush the collector meanwhile. */
async function deliver(s: ReturnType<typeof setup>, h: Hello, batch: EventBatch): Promise<void> {
  await s.collector.whenRestored();
  const accepted = s.sink.accept({ hello: h, peer: 'test' }, batch);
  await s.collector.flush();
  await accepted;
}

describe('collector metrics', () => {
  it('counts open agent streams per node, keeping a node at 0 once its streams closed', async () => {
    const s = setup();
    const a = hello('node2', 'a1');
    s.sink.streamOpened!(a, { hello: a, peer: 'p' });
    s.sink.streamOpened!(hello('node2', 'a2'), { hello: hello('node2', 'a2'), peer: 'p' });
    s.sink.streamOpened!(hello('node3', 'b1'), { hello: hello('node3', 'b1'), peer: 'p' });
    const peer = createHello({ protocolVersion: 1, node: '', agentId: 'collector/c2', forwardedBy: 'c2' });
    s.sink.streamOpened!(peer, { hello: peer, peer: 'p' });
    let e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_connected_agents', { node: 'node2' })).toBe(2);
    expect(valueOf(e, 'natlens_collector_connected_agents', { node: 'node3' })).toBe(1);
    expect(valueOf(e, 'natlens_collector_connected_agents', { node: 'collector:c2' })).toBe(1);
    s.sink.streamClosed!(a, { hello: a, peer: 'p' }, 'ok');
    s.sink.streamClosed!(hello('node3', 'b1'), { hello: hello('node3', 'b1'), peer: 'p' }, 'ok');
    e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_connected_agents', { node: 'node2' })).toBe(1);
    expect(valueOf(e, 'natlens_collector_connected_agents', { node: 'node3' })).toBe(0);
  });

  it('exposes agents\' loss reports by node and stage, continuing across an agent restart and ignoring older resends', async () => {
    const s = setup();
    const a = hello('node2', 'agent-a');
    await deliver(s, a, createEventBatch({ seq: 1n, events: [hop()], loss: createLossReport({ lost: { ringbuf_full: 3n, queue_overflow: 1n }, captured: 10n }) }));
    let e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_agent_events_lost_total', { node: 'node2', stage: 'ringbuf_full' })).toBe(3);
    expect(valueOf(e, 'natlens_collector_agent_events_lost_total', { node: 'node2', stage: 'queue_overflow' })).toBe(1);
    expect(valueOf(e, 'natlens_collector_agent_events_captured_total', { node: 'node2' })).toBe(10);
    // the agent restarted (new id): its counts start from 0 again; the node's totals carry on
    const b = hello('node2', 'agent-b');
    await deliver(s, b, createEventBatch({ seq: 1n, events: [hop()], loss: createLossReport({ lost: { ringbuf_full: 2n }, captured: 4n }) }));
    // a resend of an older batch of agent b carries older counts
    await deliver(s, b, createEventBatch({ seq: 2n, events: [hop()], loss: createLossReport({ lost: { ringbuf_full: 1n }, captured: 3n }) }));
    e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_agent_events_lost_total', { node: 'node2', stage: 'ringbuf_full' })).toBe(5);
    expect(valueOf(e, 'natlens_collector_agent_events_lost_total', { node: 'node2', stage: 'queue_overflow' })).toBe(1);
    expect(valueOf(e, 'natlens_collector_agent_events_captured_total', { node: 'node2' })).toBe(14);
    expect(samplesOf(e, 'natlens_collector_agent_events_lost_total').map((x) => x.labels.stage).sort()).toEqual(['queue_overflow', 'ringbuf_full']);
  });

  it('reads the collector\'s and the stitcher\'s counters at scrape time', async () => {
    const s = setup();
    const a = hello('node2', 'agent-a');
    await deliver(s, a, createEventBatch({ seq: 1n, batchId: 7n, events: [hop(), hop(), hop()] }));
    await deliver(s, a, createEventBatch({ seq: 2n, batchId: 7n, events: [hop(), hop(), hop()] })); // a resend: same batch id
    let e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_batches_received_total')).toBe(1);
    expect(valueOf(e, 'natlens_collector_duplicate_batches_total')).toBe(1);
    expect(valueOf(e, 'natlens_collector_events_received_total')).toBe(3);
    expect(valueOf(e, 'natlens_collector_hops_stored_total')).toBe(3);
    expect(s.store.hops).toHaveLength(3);
    expect(valueOf(e, 'natlens_collector_stitch_pending')).toBe(3);
    expect(valueOf(e, 'natlens_collector_stitched_connections_total', { outcome: 'unstitched' })).toBe(0);
    await s.collector.close(); // emits what is pending: three lone ingress hops, unstitched
    e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_stitched_connections_total', { outcome: 'unstitched' })).toBe(3);
    expect(valueOf(e, 'natlens_collector_stitched_connections_total', { outcome: 'complete' })).toBe(0);
    expect(valueOf(e, 'natlens_collector_connections_stored_total')).toBe(3);
    expect(s.store.connections.map((c) => c.status)).toEqual(['unstitched', 'unstitched', 'unstitched']);
  });

  it('is not ready while the store fails, naming the error, and ready again once it stores', async () => {
    const s = setup();
    const readiness = new Conditions();
    const pings = s.metrics.storeReadiness(readiness, s.collector, s.store as unknown as ClickHouseStore, 60_000);
    try {
      await s.collector.whenRestored();
      await pings.ping();
      expect(readiness.unmet()).toEqual({});
      s.store.failing = new Error('connect ECONNREFUSED 127.0.0.1:8123');
      const accepted = s.sink.accept({ hello: hello('node2', 'a'), peer: 'p' }, createEventBatch({ seq: 1n, events: [hop()] }));
      await s.collector.flush();
      expect(readiness.unmet().store).toMatch(/^store memory fails: connect ECONNREFUSED 127\.0\.0\.1:8123/);
      expect(valueOf(await s.scrape(), 'natlens_collector_hops_buffered')).toBe(1);
      s.store.failing = null;
      await s.collector.flush();
      await accepted;
      expect(readiness.unmet()).toEqual({});
      // idle, the store goes away: the ping notices
      s.store.failing = new Error('the engine is gone');
      await pings.ping();
      expect(readiness.unmet().store).toBe('store ping failed: the engine is gone');
      expect(valueOf(await s.scrape(), 'natlens_collector_store_up')).toBe(0);
      s.store.failing = null;
      await pings.ping();
      expect(readiness.unmet()).toEqual({});
      expect(valueOf(await s.scrape(), 'natlens_collector_store_up')).toBe(1);
      await s.collector.close();
      expect(readiness.unmet().store).toBe('shutting down');
    } finally {
      pings.stop();
    }
  });

  it('times queries by RPC and the gRPC status they end with', async () => {
    const s = setup();
    const q = s.metrics.querySink({
      who: async () => createWhoResponse({ target: 'x' }),
      etp: async (req) => {
        if (req.service === 'boom') throw new Error('store exploded');
        throw new QueryError('no Service', 5);
      },
    });
    await q.who({ target: '10.0.0.1', sinceMs: 0n, forwarded: false });
    await q.who({ target: '10.0.0.1', sinceMs: 0n, forwarded: false });
    await expect(q.etp({ service: 'a/b', sinceMs: 0n, forwarded: false })).rejects.toThrow('no Service');
    await expect(q.etp({ service: 'boom', sinceMs: 0n, forwarded: false })).rejects.toThrow('store exploded');
    const e = await s.scrape();
    expect(valueOf(e, 'natlens_collector_query_duration_seconds_count', { rpc: 'Who', status: 'OK' })).toBe(2);
    expect(valueOf(e, 'natlens_collector_query_duration_seconds_count', { rpc: 'Etp', status: 'NOT_FOUND' })).toBe(1);
    expect(valueOf(e, 'natlens_collector_query_duration_seconds_count', { rpc: 'Etp', status: 'INTERNAL' })).toBe(1);
  });
});
