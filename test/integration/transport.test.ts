// The agent -> collector transport over real gRPC on 127.0.0.1 (ports 0): delivery, reconnect and
// resend, overflow accounting, and how the server ends streams that break the contract.
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { ProtocolError, encodeAgentMessage, decodeCollectorMessage } from '../../src/transport/codec.js';
import { AgentServiceRawClient, QueryServiceClient, agentServiceRawDefinition, clientCredentials } from '../../src/transport/grpc-services.js';
import {
  HopKind,
  createHopEvent,
  type EventBatch,
  type Hello,
  type HopEvent,
  type LossReport,
  type WhoRequest,
  type WhoResponse,
} from '../../src/transport/proto.generated.js';
import { CollectorStreamClient } from '../../src/transport/stream-client.js';
import { startTransportServer, type AgentSink, type TransportServer } from '../../src/transport/stream-server.js';

const TS0 = 1_700_000_000_000_000_000n;

/** Event i: its identity (tsNs) is unique and independent of batches and seqs. */
function event(i: number, node = ''): HopEvent {
  return createHopEvent({
    kind: HopKind.CONN,
    tsNs: TS0 + BigInt(i),
    ipProto: 6,
    orig: { src: Uint8Array.of(198, 51, (i >>> 8) & 255, i & 255), dst: Uint8Array.of(198, 51, 100, 2), sport: i & 0xffff, dport: 30080 },
    reply: { src: Uint8Array.of(10, 180, 1, 136), dst: Uint8Array.of(10, 240, 0, 3), sport: 8080, dport: i & 0xffff },
    ctStatus: 0x1b0,
    tcpIsn: i >>> 0,
    hasIsn: true,
    node,
  });
}
const idOf = (ev: HopEvent): number => Number(ev.tsNs - TS0);

class RecordingSink implements AgentSink {
  readonly seen = new Map<number, number>();
  readonly losses: LossReport[] = [];
  readonly hellos: Hello[] = [];
  batches = 0;
  constructor(private readonly delayMs = 0) {}
  async accept(_stream: { hello: Hello; peer: string }, batch: EventBatch): Promise<void> {
    if (this.delayMs > 0) await sleep(this.delayMs);
    this.batches++;
    for (const ev of batch.events) this.seen.set(idOf(ev), (this.seen.get(idOf(ev)) ?? 0) + 1);
    if (batch.loss) this.losses.push(batch.loss);
  }
  streamOpened(hello: Hello): void {
    this.hellos.push(hello);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

const HELLO = { node: 'node-a', agentId: 'agent-1', version: 'test', nodeAddresses: [Uint8Array.of(10, 240, 0, 3)] };

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function server(opts: Partial<Parameters<typeof startTransportServer>[0]> & { agentSink: AgentSink }): Promise<TransportServer> {
  const s = await startTransportServer({ listen: '127.0.0.1:0', collectorId: 'c-test', ...opts });
  cleanups.push(() => s.close({ timeoutMs: 1000 }));
  return s;
}

function client(port: number, opts: Partial<ConstructorParameters<typeof CollectorStreamClient>[0]> = {}): CollectorStreamClient {
  const c = new CollectorStreamClient({ target: `127.0.0.1:${port}`, hello: HELLO, ...opts });
  cleanups.push(() => c.close({ drainTimeoutMs: 0 }));
  return c;
}

/** A raw stream: write whatever bytes, get the final status. */
function rawStream(port: number): { call: grpc.ClientDuplexStream<Buffer, Buffer>; status: Promise<grpc.StatusObject>; messages: Buffer[] } {
  const c = new AgentServiceRawClient(`127.0.0.1:${port}`, clientCredentials());
  cleanups.push(() => c.close());
  const call = c.Stream();
  const messages: Buffer[] = [];
  call.on('data', (b: Buffer) => messages.push(b));
  call.on('error', () => {});
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  const timeout = sleep(10_000).then(() => ({ code: -1, details: 'test timeout: no status', metadata: new grpc.Metadata() }) as unknown as grpc.StatusObject);
  return { call, status: Promise.race([status, timeout]), messages };
}

const helloMsg = (over: Partial<Hello> = {}) =>
  encodeAgentMessage({ hello: { protocolVersion: 1, forwardedBy: '', ...HELLO, ...over } }, { validate: false });

describe('transport: agent stream', () => {
  it('(a) 100k pushed events are all acked and all reach the sink', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink });
    const c = client(srv.port);
    const N = 100_000;
    for (let i = 0; i < N; i++) c.push(event(i));
    c.flush();
    await waitFor(() => c.stats().ackedEvents === N, 30_000, 'all events acked');
    const st = c.stats();
    expect(st.overflowEvents).toBe(0);
    expect(st.inflightEvents + st.queuedEvents).toBe(0);
    const missing = [];
    for (let i = 0; i < N; i++) if (!sink.seen.has(i)) missing.push(i);
    expect(missing).toEqual([]);
    expect(sink.seen.size).toBe(N);
    expect(sink.hellos[0]?.node).toBe('node-a');
    expect(await c.close({ drainTimeoutMs: 1000 })).toBe(0);
  });

  it('(b) survives a collector restart on the same port: every event lands in one of the two sinks', async () => {
    const sink1 = new RecordingSink(20);
    const srv1 = await startTransportServer({ listen: '127.0.0.1:0', collectorId: 'c1', agentSink: sink1 });
    cleanups.push(() => srv1.close({ timeoutMs: 500 }));
    const port = srv1.port;
    const c = client(port);
    const disconnects: string[] = [];
    c.on('disconnected', (reason: string) => disconnects.push(reason));
    const N = 60_000;
    let i = 0;
    // Push in slices while the collector goes away and comes back.
    const producer = (async () => {
      while (i < N) {
        for (const end = Math.min(N, i + 2000); i < end; i++) c.push(event(i));
        await sleep(20);
      }
    })();
    await waitFor(() => c.stats().ackedEvents > 5000, 10_000, 'first acks');
    await srv1.close({ timeoutMs: 0 }); // abrupt: batches in the sink are never acked
    await sleep(500);
    const sink2 = new RecordingSink();
    const srv2 = await server({ listen: `127.0.0.1:${port}`, collectorId: 'c2', agentSink: sink2 });
    expect(srv2.port).toBe(port);
    await producer;
    expect(await c.close({ drainTimeoutMs: 20_000 })).toBe(0);
    const st = c.stats();
    expect(st.reconnects).toBeGreaterThanOrEqual(1);
    expect(disconnects.length).toBeGreaterThanOrEqual(1);
    expect(st.overflowEvents).toBe(0);
    const missing = [];
    for (let k = 0; k < N; k++) if (!sink1.seen.has(k) && !sink2.seen.has(k)) missing.push(k);
    expect(missing).toEqual([]);
    expect(sink2.seen.size).toBeGreaterThan(0);
    expect(st.sentBatches).toBeGreaterThan(st.ackedBatches); // unacked batches were resent
  });

  it('(c) a slow sink with a tiny queue: overflow is counted exactly and reported upstream', async () => {
    const sink = new RecordingSink(50);
    const srv = await server({ agentSink: sink });
    const c = client(srv.port, { maxQueuedEvents: 300, maxBatchEvents: 100, flushIntervalMs: 10, lossProvider: () => ({ lost: { ringbuf_full: 7, queue_overflow: 1n }, captured: 999n }) });
    await new Promise<void>((r) => c.once('connected', () => r()));
    const N = 5000;
    for (let round = 0; round < 10; round++) {
      for (let k = 0; k < N / 10; k++) c.push(event(round * (N / 10) + k));
      await sleep(30);
    }
    c.flush();
    await waitFor(() => c.stats().inflightEvents + c.stats().queuedEvents === 0, 20_000, 'queue drained');
    const st = c.stats();
    expect(st.overflowEvents).toBeGreaterThan(0);
    expect(st.ackedEvents + st.overflowEvents).toBe(N);
    expect(sink.seen.size).toBe(st.ackedEvents);
    await waitFor(() => sink.losses.some((l) => l.lost.queue_overflow === BigInt(st.overflowEvents) + 1n), 5000, 'final loss report');
    const last = sink.losses.at(-1)!;
    expect(last.lost.ringbuf_full).toBe(7n);
    expect(last.lost.queue_overflow).toBe(BigInt(st.overflowEvents) + 1n); // merged with the provider's own stage
    expect(last.captured).toBe(999n);
  });

  it('(c) an overflow after every queued batch was written is still reported, by a loss-only batch, without flush()', async () => {
    // The sink holds every batch until released (a store that is away): the client's whole queue
    // is written before the overflow starts, so no queued batch can carry its count.
    let release!: () => void;
    const held = new Promise<void>((r) => { release = r; });
    const sink = new RecordingSink();
    const accept = sink.accept.bind(sink);
    sink.accept = async (stream, batch) => {
      await held;
      return accept(stream, batch);
    };
    const srv = await server({ agentSink: sink });
    const c = client(srv.port, { maxQueuedEvents: 200, maxBatchEvents: 50, flushIntervalMs: 10 });
    await new Promise<void>((r) => c.once('connected', () => r()));
    for (let k = 0; k < 200; k++) c.push(event(k));
    await waitFor(() => c.stats().inflightEvents === 200, 5000, 'the queue written');
    for (let k = 200; k < 260; k++) c.push(event(k));
    expect(c.stats().overflowEvents).toBe(60);
    await sleep(50);
    release();
    await waitFor(() => sink.losses.some((l) => l.lost.queue_overflow === 60n), 5000, 'the overflow reported');
    expect(sink.seen.size).toBe(200);
  });

  it('backpressure: the server stops reading at maxInflightBatchesPerStream, the client at maxInflightBatches', async () => {
    let concurrent = 0;
    let maxConcurrent = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const seen = new Set<number>();
    const srv = await server({
      maxInflightBatchesPerStream: 16,
      agentSink: {
        accept: async (_s, batch) => {
          maxConcurrent = Math.max(maxConcurrent, ++concurrent);
          await gate;
          for (const ev of batch.events) seen.add(idOf(ev));
          concurrent--;
        },
      },
    });
    const c = client(srv.port, { maxBatchEvents: 10, maxInflightBatches: 64 });
    for (let k = 0; k < 1000; k++) c.push(event(k));
    c.flush();
    await waitFor(() => c.stats().inflightEvents === 640, 5000, 'client in-flight bound reached');
    await sleep(200);
    expect(maxConcurrent).toBe(16);
    expect(c.stats().inflightEvents).toBe(640);
    expect(c.stats().queuedEvents).toBe(360);
    release();
    await waitFor(() => c.stats().ackedEvents === 1000, 10_000, 'all acked');
    expect(seen.size).toBe(1000);
  });

  it('(d) a Hello of protocol version 2 is refused with FAILED_PRECONDITION', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink });
    const r = rawStream(srv.port);
    r.call.write(helloMsg({ protocolVersion: 2 }));
    const st = await r.status;
    expect(st.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(st.details).toMatch(/hello\.protocol_version: unsupported protocol version 2 \(this build speaks 1\)/);
    expect(sink.hellos).toHaveLength(0);

    const r2 = rawStream(srv.port);
    r2.call.write(encodeAgentMessage({ batch: { seq: 1n, events: [event(1)] } }));
    const st2 = await r2.status;
    expect(st2.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(st2.details).toMatch(/first message must be a Hello/);
  });

  it('(e) an oversized message gets RESOURCE_EXHAUSTED and the server keeps serving', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink, maxMessageBytes: 64 * 1024 });
    const good = client(srv.port);
    await good.send([event(1)]);
    const r = rawStream(srv.port);
    r.call.write(helloMsg());
    const huge = Array.from({ length: 2000 }, (_, k) => event(10_000 + k)); // ~150 KB
    r.call.write(encodeAgentMessage({ batch: { seq: 1n, events: huge } }));
    const st = await r.status;
    expect(st.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(sink.seen.has(10_000)).toBe(false);
    // The same server still serves the established stream and new ones.
    await good.send([event(2)]);
    const other = client(srv.port);
    await other.send([event(3)]);
    expect([1, 2, 3].every((k) => sink.seen.has(k))).toBe(true);
  });

  it('(f) garbage on the stream ends it with INVALID_ARGUMENT; acked batches stay stored', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink });
    const r = rawStream(srv.port);
    r.call.write(helloMsg());
    r.call.write(encodeAgentMessage({ batch: { seq: 1n, events: [event(5)] } }));
    await waitFor(() => r.messages.length >= 2, 5000, 'welcome and ack');
    expect(decodeCollectorMessage(r.messages[1]!).ack?.seq).toBe(1n);
    r.call.write(Buffer.from('this is not a protobuf message \xff\xff\xff\xff', 'latin1'));
    const st = await r.status;
    expect(st.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(st.details).toMatch(/malformed AgentMessage/);
    expect(sink.seen.get(5)).toBe(1);

    const r2 = rawStream(srv.port);
    r2.call.write(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
    const st2 = await r2.status;
    expect(st2.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(st2.details).toMatch(/first message must be a Hello: malformed AgentMessage/);

    // Well-formed but breaking the contract: the status names the field.
    const r3 = rawStream(srv.port);
    r3.call.write(helloMsg());
    const bad = event(6);
    bad.orig = { ...bad.orig!, src: Uint8Array.of(1, 2, 3) };
    r3.call.write(encodeAgentMessage({ batch: { seq: 1n, events: [event(7), bad] } }, { validate: false }));
    const st3 = await r3.status;
    expect(st3.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(st3.details).toMatch(/batch\.events\[1\]\.orig\.src: address must be 4 \(IPv4\) or 16 \(IPv6\) bytes, got 3/);
    expect(st3.metadata.get('natlens-rejected-seq')).toEqual(['1']);
  });

  it('a forwarding collector: send() resolves on ack, and a refused batch is dropped, not resent forever', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink });
    const fwd = client(srv.port, { hello: { node: '', agentId: 'collector/c2', version: 'test', nodeAddresses: [], forwardedBy: 'c2' } });
    await fwd.send([event(1, 'node-x'), event(2, 'node-y')]);
    expect(sink.seen.has(1) && sink.seen.has(2)).toBe(true);
    // No node on a forwarded event: the collector refuses that batch (and only that one).
    await expect(fwd.send([event(3)])).rejects.toThrow(ProtocolError);
    await fwd.send([event(4, 'node-z')]);
    expect(sink.seen.has(3)).toBe(false);
    expect(sink.seen.has(4)).toBe(true);
    expect(fwd.stats().rejectedEvents).toBe(1);
    await expect(fwd.send([createHopEvent({ kind: HopKind.CONN, ipProto: 1 })])).rejects.toThrow(/ip_proto/);
  });

  it('invalid pushed events are dropped and counted, with an error event; a silent collector times out the Welcome', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink });
    const c = client(srv.port);
    const errors: Error[] = [];
    c.on('error', (e: Error) => errors.push(e));
    c.push(createHopEvent({ kind: HopKind.CONN, ipProto: 6 })); // no tuples
    c.push(event(1));
    c.flush();
    await waitFor(() => c.stats().ackedEvents === 1, 5000, 'valid event acked');
    expect(c.stats().rejectedEvents).toBe(1);
    expect(errors[0]?.message).toMatch(/event\.orig: missing/);
    await waitFor(() => sink.losses.some((l) => l.lost.invalid_event === 1n), 5000, 'invalid_event reported');

    // A server that accepts the stream and never answers.
    const mute = new grpc.Server();
    mute.addService(agentServiceRawDefinition, { Stream: () => {} });
    const port = await new Promise<number>((resolve, reject) => mute.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    cleanups.push(() => mute.forceShutdown());
    const m = client(port, { welcomeTimeoutMs: 200 });
    const reason = await new Promise<string>((resolve) => m.once('disconnected', (r: string) => resolve(r)));
    expect(reason).toMatch(/no Welcome within 200 ms/);
    expect(m.stats().connected).toBe(false);
  });

  it('close() rejects pending send()s and reports what was never acked', async () => {
    const sink = new RecordingSink();
    const srv = await server({ agentSink: sink });
    const port = srv.port;
    await srv.close({ timeoutMs: 200 });
    const c = client(port, { reconnectBackoff: { initialMs: 20, maxMs: 50 } });
    const p = c.send([event(1), event(2)]);
    for (let k = 10; k < 15; k++) c.push(event(k));
    const unacked = await c.close({ drainTimeoutMs: 200 });
    expect(unacked).toBe(7);
    await expect(p).rejects.toThrow(/closed with 7 events unacked/);
  });
});

describe('transport: query service', () => {
  it('(g) Who round trip and error mapping', async () => {
    const seenReqs: WhoRequest[] = [];
    const srv = await server({
      agentSink: new RecordingSink(),
      querySink: {
        who: async (req: WhoRequest): Promise<WhoResponse> => {
          seenReqs.push(req);
          if (req.target === 'missing') throw Object.assign(new Error('no such pod'), { grpcCode: grpc.status.NOT_FOUND });
          if (req.target === 'boom') throw new Error('store exploded');
          return {
            target: req.target,
            since: '2025-01-01T00:00:00Z',
            rows: [{ client: '198.51.100.79', seenAs: '10.240.0.3', connections: 3n, ingressNode: 'a', endpointNode: 'b', snat: true, firstSeen: 'f', lastSeen: 'l', protocols: ['tcp'], stitched: true }],
            complete: { eventsLost: 1n, lostByStage: { ringbuf_full: 1n }, unstitched: 0n, nodesReporting: ['a', 'b'], collectors: ['c-test'] },
          };
        },
      },
    });
    const qc = new QueryServiceClient(`127.0.0.1:${srv.port}`, clientCredentials());
    cleanups.push(() => qc.close());
    const who = (target: string) =>
      new Promise<WhoResponse>((resolve, reject) =>
        qc.Who({ target, sinceMs: 60_000n, forwarded: false }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res!))),
      );
    const res = await who('10.180.1.136:8080');
    expect(res.rows[0]?.connections).toBe(3n);
    expect(res.complete?.lostByStage).toEqual({ ringbuf_full: 1n });
    expect(seenReqs[0]?.sinceMs).toBe(60_000n);
    await expect(who('missing')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND, details: 'no such pod' });
    await expect(who('boom')).rejects.toMatchObject({ code: grpc.status.INTERNAL, details: 'store exploded' });
  });
});
