// Hostile agents and query clients against a real collector: the gRPC server of `natlens collector`
// on 127.0.0.1 with the real Collector and the embedded ClickHouse store (chdb, temp directory).
// Every hostile message ends its stream (or call) with a clear status naming the problem; the
// server keeps serving everyone else; and every batch acked before the hostile message is in the
// store: nothing accepted is lost. Random mutations of valid batches are seeded (test/support/fuzz.ts).
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../../src/collector/collector.js';
import { hopFromEvent } from '../../src/collector/hop-from-event.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import { ClickHouseStore } from '../../src/collector/store/clickhouse-store.js';
import { hopsTable } from '../../src/collector/store/schema.js';
import { decodeCollectorMessage, encodeAgentMessage, encodeMessage, encodeWhoRequest, encodeEtpRequest, parseAgentMessage, validateAgentMessage } from '../../src/transport/codec.js';
import { AgentServiceRawClient, clientCredentials, MAX_METADATA_BYTES, queryServiceRawDefinition, REJECTED_SEQ_TRAILER } from '../../src/transport/grpc-services.js';
import { createHopEvent, HopKind, type EventBatch, type Hello, type HopEvent } from '../../src/transport/proto.generated.js';
import { CollectorStreamClient } from '../../src/transport/stream-client.js';
import { startTransportServer, type TransportServer } from '../../src/transport/stream-server.js';
import { fuzzRuns } from '../support/fuzz.js';

const MAX_MESSAGE_BYTES = 256 * 1024;
const MAX_BATCH_EVENTS = 200;
const NODE = 'fuzz-node';

const root = mkdtempSync(join(tmpdir(), 'natlens-transport-fuzz-'));
let store: ClickHouseStore;
let collector: Collector;
let srv: TransportServer;
const closers: Array<() => unknown> = [];

beforeAll(async () => {
  store = await ClickHouseStore.open({ dataDir: join(root, 'data') });
  collector = new Collector({
    ring: new PeerRing('c1', []), store, version: 'test', flushIntervalMs: 20, maxBufferedHops: 100_000,
    stitcher: { holdMs: 100, windowMs: 5000, retentionMs: 1000, maxChains: 100_000 },
  });
  collector.start();
  srv = await startTransportServer({
    listen: '127.0.0.1:0', agentSink: collector, querySink: collector, collectorId: 'c1',
    maxBatchEvents: MAX_BATCH_EVENTS, maxMessageBytes: MAX_MESSAGE_BYTES, helloTimeoutMs: 5000,
  });
});

afterAll(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  await srv?.close({ timeoutMs: 1000 });
  await collector?.close();
  await store?.close();
  rmSync(root, { recursive: true, force: true });
});

// ---- events and their identity in the store --------------------------------------------------

let nextEvent = 0;
/** A valid CONN event, unique (its ts and client port), a minute old. */
function event(over: Partial<HopEvent> = {}): HopEvent {
  const i = nextEvent++;
  return createHopEvent({
    kind: HopKind.CONN,
    tsNs: BigInt(Date.now() - 60_000) * 1_000_000n + BigInt(i),
    ipProto: 6,
    orig: { src: Uint8Array.of(198, 51, 100, 79), dst: Uint8Array.of(10, 96, 0, 10), sport: 1024 + (i % 60_000), dport: 80 },
    reply: { src: Uint8Array.of(10, 180, (i >> 8) & 255, i & 255), dst: Uint8Array.of(10, 240, 0, 3), sport: 8080, dport: 1024 + (i % 60_000) },
    ctStatus: 0x1b0,
    tcpIsn: i,
    hasIsn: true,
    ifname: 'eth0',
    ...over,
  });
}

const hopIdOf = (ev: HopEvent, node = NODE): string => hopFromEvent(ev, node).id.toString();

/** Which of these hop ids are in the hops table. */
async function stored(ids: string[]): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await store.select<{ id: string }>('test', hopsTable, `SELECT DISTINCT toString(hop_id) AS id FROM ${store.tableName(hopsTable)} WHERE toString(hop_id) IN {ids:Array(String)}`, { ids });
  return new Set(rows.map((r) => r.id));
}

async function expectStored(events: HopEvent[], node = NODE): Promise<void> {
  const ids = events.map((e) => hopIdOf(e, node));
  const have = await stored(ids);
  expect(ids.filter((id) => !have.has(id)), 'acked events missing from the store').toEqual([]);
}

// ---- raw streams --------------------------------------------------------------------------------

interface Raw {
  call: grpc.ClientDuplexStream<Buffer, Buffer>;
  status: Promise<grpc.StatusObject>;
  messages: Buffer[];
}

let rawClient: InstanceType<typeof AgentServiceRawClient> | undefined;
function rawStream(): Raw {
  rawClient ??= new AgentServiceRawClient(`127.0.0.1:${srv.port}`, clientCredentials(), { 'grpc.max_send_message_length': 64 << 20 });
  const call = rawClient.Stream();
  const messages: Buffer[] = [];
  call.on('data', (b: Buffer) => messages.push(b));
  call.on('error', () => {});
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  return { call, status, messages };
}
closers.push(() => rawClient?.close());

let agents = 0;
const HELLO: Hello = { protocolVersion: 1, node: NODE, agentId: 'fuzz-agent', version: 'test', nodeAddresses: [Uint8Array.of(10, 240, 0, 3)], forwardedBy: '' };
const helloMsg = (over: Partial<Hello> = {}): Buffer => encodeAgentMessage({ hello: { ...HELLO, agentId: `fuzz-agent-${++agents}`, ...over } }, { validate: false });
const batchMsg = (seq: bigint, events: HopEvent[], over: Partial<EventBatch> = {}): Buffer =>
  encodeAgentMessage({ batch: { seq, events, batchId: 0n, healthChecks: [], ...over } }, { validate: false });

async function until<T>(f: () => T | undefined, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits for the next collector message or the end of the stream. */
async function nextOutcome(r: Raw, seen: number, timeoutMs = 15_000): Promise<{ ack?: bigint; status?: grpc.StatusObject }> {
  let st: grpc.StatusObject | undefined;
  void r.status.then((s) => { st = s; });
  return until(() => {
    if (r.messages.length > seen) return { ack: decodeCollectorMessage(r.messages[seen]!).ack?.seq };
    if (st) return { status: st };
    return undefined;
  }, timeoutMs, 'an ack or a status');
}

/** A stream past its Hello with one batch (3 events) acked: what a hostile message must not undo. */
async function ackedStream(): Promise<{ r: Raw; acked: HopEvent[] }> {
  const r = rawStream();
  r.call.write(helloMsg());
  const acked = [event(), event(), event()];
  r.call.write(batchMsg(1n, acked));
  await until(() => (r.messages.length >= 2 ? true : undefined), 15_000, 'Welcome and Ack 1');
  expect(decodeCollectorMessage(r.messages[0]!).welcome?.protocolVersion).toBe(1);
  expect(decodeCollectorMessage(r.messages[1]!).ack?.seq).toBe(1n);
  return { r, acked };
}

/** A well-behaved agent on its own stream: it must keep being served. */
let good: CollectorStreamClient | undefined;
async function goodAgentStillServed(): Promise<void> {
  good ??= new CollectorStreamClient({ target: `127.0.0.1:${srv.port}`, hello: { node: 'good-node', agentId: 'good-agent', version: 'test', nodeAddresses: [] } });
  const ev = event();
  await good.send([ev]);
  await expectStored([ev], 'good-node');
}
closers.push(() => good?.close({ drainTimeoutMs: 0 }));

// ---- protobuf by hand, for what the encoder refuses to write -------------------------------------

const varint = (n: number | bigint): number[] => {
  let v = BigInt(n);
  const out: number[] = [];
  do {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v ? b | 0x80 : b);
  } while (v);
  return out;
};
const field = (num: number, wire: number, body: number[] | Buffer): number[] =>
  wire === 2 ? [...varint((num << 3) | 2), ...varint(body.length), ...body] : [...varint((num << 3) | wire), ...body];
const agentBatch = (batchBody: number[]): Buffer => Buffer.from(field(2, 2, batchBody));
/** One HopEvent's bytes inside an EventBatch(seq) inside an AgentMessage. */
const rawEventBatch = (seq: bigint, eventBody: number[] | Buffer): Buffer => agentBatch([...field(1, 0, varint(seq)), ...field(2, 2, eventBody)]);
/** The valid encoding of `ev` as a HopEvent (without the batch around it). */
function eventBytes(ev: HopEvent): Buffer {
  const msg = batchMsg(1n, [ev]);
  const parsed = parseAgentMessage(msg);
  expect(parsed.batch?.events).toHaveLength(1);
  return encodeMessage('HopEvent', ev);
}

// ---- the hostile messages --------------------------------------------------------------------

interface Case {
  name: string;
  /** Written after the Hello and the acked batch 1 (unless `fresh`: on a new stream, first). */
  send: () => Buffer | Buffer[];
  fresh?: boolean;
  code: grpc.status;
  details: RegExp;
  /** The batch seq the status blames (trailer natlens-rejected-seq). */
  rejectedSeq?: string;
}

const CASES: Case[] = [
  { name: 'garbage bytes', send: () => Buffer.from('GET / HTTP/1.1\r\n\xff\xfe\xfd', 'latin1'), code: grpc.status.INVALID_ARGUMENT, details: /malformed AgentMessage \(\d+ bytes\)/ },
  { name: 'garbage as the first message', fresh: true, send: () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), code: grpc.status.INVALID_ARGUMENT, details: /^first message must be a Hello: malformed AgentMessage/ },
  { name: 'truncated batch', send: () => batchMsg(2n, [event(), event()]).subarray(0, 40), code: grpc.status.INVALID_ARGUMENT, details: /malformed AgentMessage.*(runs past the end|truncated)/ },
  { name: 'truncated Hello', fresh: true, send: () => helloMsg().subarray(0, 9), code: grpc.status.INVALID_ARGUMENT, details: /first message must be a Hello: malformed/ },
  { name: 'empty message', send: () => Buffer.alloc(0), code: grpc.status.INVALID_ARGUMENT, details: /empty AgentMessage/ },
  { name: 'wrong wire type for the batch field', send: () => Buffer.from([0x10, 0x01]), code: grpc.status.INVALID_ARGUMENT, details: /empty AgentMessage/ },
  { name: 'group wire types (deprecated, nested deep)', send: () => Buffer.from([...Array(5000).fill(0x0b), 0x08, 0x01]), code: grpc.status.INVALID_ARGUMENT, details: /unsupported wire type 3/ },
  { name: 'a Hello whose unknown fields nest groups 100k deep', fresh: true, send: () => agentHello(Buffer.from(Array(100_000).fill(0x5b))), code: grpc.status.INVALID_ARGUMENT, details: /first message must be a Hello: malformed/ },
  { name: 'Hello of protocol version 2', fresh: true, send: () => helloMsg({ protocolVersion: 2 }), code: grpc.status.FAILED_PRECONDITION, details: /hello\.protocol_version: unsupported protocol version 2 \(this build speaks 1\)/ },
  { name: 'batch before Hello', fresh: true, send: () => batchMsg(1n, [event()]), code: grpc.status.FAILED_PRECONDITION, details: /first message must be a Hello, got a batch/ },
  { name: 'Hello twice', send: () => helloMsg(), code: grpc.status.INVALID_ARGUMENT, details: /Hello sent twice on one stream/ },
  { name: 'Hello without agent id', fresh: true, send: () => helloMsg({ agentId: '' }), code: grpc.status.INVALID_ARGUMENT, details: /hello\.agent_id: missing agent id/ },
  { name: 'Hello with a 3-byte node address', fresh: true, send: () => helloMsg({ nodeAddresses: [Uint8Array.of(1, 2, 3)] }), code: grpc.status.INVALID_ARGUMENT, details: /hello\.node_addresses\[0\]: address must be 4 \(IPv4\) or 16 \(IPv6\) bytes, got 3/ },
  { name: 'Hello with a 100 KB node name', fresh: true, send: () => helloMsg({ node: 'n'.repeat(100_000) }), code: grpc.status.INVALID_ARGUMENT, details: /hello\.node: .*at most 253/ },
  { name: 'Hello with a NUL in the node name', fresh: true, send: () => helloMsg({ node: 'node\u0000x' }), code: grpc.status.INVALID_ARGUMENT, details: /hello\.node: .*control character/ },
  { name: 'Hello with 20k node addresses', fresh: true, send: () => helloMsg({ nodeAddresses: Array.from({ length: 20_000 }, () => Uint8Array.of(10, 0, 0, 1)) }), code: grpc.status.INVALID_ARGUMENT, details: /hello\.node_addresses: .*at most/ },
  { name: 'wrong seq', send: () => batchMsg(5n, [event()]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.seq: expected 2, got 5/ },
  { name: 'seq 0', send: () => batchMsg(0n, [event()]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.seq: must be >= 1, got 0n/, rejectedSeq: '0' },
  { name: 'oversized message', send: () => batchMsg(2n, [event({ ifname: 'x'.repeat(MAX_MESSAGE_BYTES) })]), code: grpc.status.RESOURCE_EXHAUSTED, details: /Received message larger than max \(\d+ vs 262144\)/ },
  { name: 'too many events', send: () => batchMsg(2n, Array.from({ length: MAX_BATCH_EVENTS + 1 }, () => event())), code: grpc.status.RESOURCE_EXHAUSTED, details: /batch\.events: batch of 201 or more events exceeds the maximum of 200/, rejectedSeq: '2' },
  { name: 'too many empty events', send: () => agentBatch([...field(1, 0, varint(2)), ...Array.from({ length: 5000 }, () => [0x12, 0x00]).flat()]), code: grpc.status.RESOURCE_EXHAUSTED, details: /exceeds the maximum of 200/, rejectedSeq: '2' },
  { name: 'a 3-byte address', send: () => batchMsg(2n, [event(), event({ orig: { src: Uint8Array.of(1, 2, 3), dst: Uint8Array.of(1, 2, 3, 4), sport: 1, dport: 2 } })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[1\]\.orig\.src: address must be 4 \(IPv4\) or 16 \(IPv6\) bytes, got 3/, rejectedSeq: '2' },
  { name: 'a 17-byte address', send: () => batchMsg(2n, [event({ reply: { src: new Uint8Array(17), dst: new Uint8Array(16), sport: 1, dport: 2 } })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.reply\.src: .*got 17/, rejectedSeq: '2' },
  { name: 'port 70000', send: () => rawEventBatch(2n, Buffer.concat([eventBytes(event()), Buffer.from(field(4, 2, [...field(1, 2, [1, 2, 3, 4]), ...field(2, 2, [1, 2, 3, 4]), ...field(3, 0, varint(70_000))]))])), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.orig\.sport: port must be an integer 0\.\.65535, got 70000/, rejectedSeq: '2' },
  { name: 'HopKind 99', send: () => batchMsg(2n, [event({ kind: 99 as HopKind })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.kind: unknown HopKind 99/, rejectedSeq: '2' },
  { name: 'HopKind -1 (int32 on the wire)', send: () => rawEventBatch(2n, Buffer.concat([eventBytes(event()), Buffer.from(field(1, 0, varint(0xffffffffffffffffn)))])), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.kind: unknown HopKind/, rejectedSeq: '2' },
  { name: 'ip_proto 1', send: () => batchMsg(2n, [event({ ipProto: 1 })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.ip_proto: must be 6 \(TCP\) or 17 \(UDP\), got 1/, rejectedSeq: '2' },
  { name: 'a CONN without reply', send: () => batchMsg(2n, [event({ reply: undefined })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.reply: missing \(required on CONN hops\)/, rejectedSeq: '2' },
  { name: 'a 200 KB interface name', send: () => batchMsg(2n, [event({ ifname: 'x'.repeat(200_000) })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.ifname: .*at most/, rejectedSeq: '2' },
  { name: 'invalid UTF-8 in the interface name', send: () => rawEventBatch(2n, Buffer.concat([eventBytes(event()), Buffer.from(field(9, 2, [0xc3, 0x28]))])), code: grpc.status.INVALID_ARGUMENT, details: /invalid UTF-8 in a string at byte \d+/ },
  { name: 'ts_ns beyond 2262 (not a DateTime64)', send: () => batchMsg(2n, [event({ tsNs: (1n << 64n) - 1n })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.ts_ns: /, rejectedSeq: '2' },
  { name: 'ts_ns a year ahead of the collector', send: () => batchMsg(2n, [event(), event({ tsNs: BigInt(Date.now() + 365 * 86_400_000) * 1_000_000n })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[1\]\.ts_ns: .*ahead of the collector's clock/, rejectedSeq: '2' },
  { name: 'ts_ns in 1970', send: () => batchMsg(2n, [event({ tsNs: 1_000_000_000n })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.ts_ns: 1970-01-01T00:00:01\.000000000Z is older than the store keeps/, rejectedSeq: '2' },
  { name: 'events spread over 200 days', send: () => batchMsg(2n, Array.from({ length: 200 }, (_, d) => event({ tsNs: BigInt(Date.now() - d * 86_400_000) * 1_000_000n }))), code: grpc.status.INVALID_ARGUMENT, details: /ts_ns: .*older than the store keeps/, rejectedSeq: '2' },
  { name: 'a byte counter of 2^64-1', send: () => batchMsg(2n, [event({ kind: HopKind.END, bytesOrig: (1n << 64n) - 1n })]), code: grpc.status.INVALID_ARGUMENT, details: /batch\.events\[0\]\.bytes_orig: .*2\^53/, rejectedSeq: '2' },
  { name: 'a loss report with 10k stages', send: () => batchMsg(2n, [], { loss: { lost: Object.fromEntries(Array.from({ length: 10_000 }, (_, k) => [`s${k}`, 1n])), captured: 0n, node: '', agentId: '' } }), code: grpc.status.INVALID_ARGUMENT, details: /batch\.loss\.lost: .*at most/, rejectedSeq: '2' },
  { name: 'a loss counter of 2^63', send: () => batchMsg(2n, [], { loss: { lost: { ringbuf_full: 1n << 63n }, captured: 0n, node: '', agentId: '' } }), code: grpc.status.INVALID_ARGUMENT, details: /batch\.loss\.lost\["ringbuf_full"\]: .*2\^53/, rejectedSeq: '2' },
  { name: 'a health check far in the future', send: () => batchMsg(2n, [], { healthChecks: [{ tsNs: (1n << 63n) - 1n, namespace: 'default', service: 'lb', port: 30000, statusCode: 200, localEndpoints: 1, error: '', node: '' }] }), code: grpc.status.INVALID_ARGUMENT, details: /batch\.health_checks\[0\]\.ts_ns: /, rejectedSeq: '2' },
  { name: 'a health check with a 100 KB Service name', send: () => batchMsg(2n, [], { healthChecks: [{ tsNs: BigInt(Date.now()) * 1_000_000n, namespace: 'default', service: 's'.repeat(100_000), port: 30000, statusCode: 200, localEndpoints: 1, error: '', node: '' }] }), code: grpc.status.INVALID_ARGUMENT, details: /batch\.health_checks\[0\]\.service: .*at most/, rejectedSeq: '2' },
];

/** An AgentMessage whose Hello is valid and then carries `extra` bytes (unknown fields). */
function agentHello(extra: Buffer): Buffer {
  const hello = encodeMessage('Hello', { ...HELLO, agentId: `fuzz-agent-${++agents}` });
  return Buffer.from(field(1, 2, Buffer.concat([hello, extra])));
}

describe('AgentService.Stream against hostile agents (real collector and store)', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s: clear status, server keeps serving, acked batches stay stored', async (_name, c) => {
    let r: Raw;
    let acked: HopEvent[] = [];
    if (c.fresh) r = rawStream();
    else ({ r, acked } = await ackedStream());
    for (const m of [c.send()].flat()) r.call.write(m);
    const st = await r.status;
    expect({ code: grpc.status[st.code], details: st.details }).toMatchObject({ code: grpc.status[c.code], details: expect.stringMatching(c.details) });
    expect(st.details.length).toBeLessThan(1000);
    expect(st.metadata.get(REJECTED_SEQ_TRAILER)).toEqual(c.rejectedSeq === undefined ? [] : [c.rejectedSeq]);
    await expectStored(acked);
    await goodAgentStillServed();
  });

  it('unknown fields at every level are skipped: the batch is stored', async () => {
    const { r, acked } = await ackedStream();
    const ev = event();
    const unknown = Buffer.from([...field(99, 2, Buffer.from('future')), ...field(100, 0, varint(7)), ...field(101, 5, [1, 2, 3, 4]), ...field(102, 1, [1, 2, 3, 4, 5, 6, 7, 8])]);
    const msg = agentBatch([...field(1, 0, varint(2)), ...field(2, 2, Buffer.concat([eventBytes(ev), unknown])), ...unknown]);
    r.call.write(Buffer.concat([msg, unknown]));
    expect(await nextOutcome(r, 2)).toEqual({ ack: 2n });
    await expectStored([...acked, ev]);
    r.call.end();
    expect((await r.status).code).toBe(grpc.status.OK);
  });

  it('random mutations of valid batches: acked and stored, or refused with a clear status; never INTERNAL', async () => {
    const accepted: HopEvent[] = [];
    const refusals = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(
          fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
          fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
          fc.record({ op: fc.constant('cut' as const), at: fc.nat() }),
          fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
          fc.record({ op: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 12 }) }),
        ), { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 4 }),
        async (ops, n) => {
          const r = rawStream();
          r.call.write(helloMsg());
          const events = Array.from({ length: n }, (_, k) => event(k === 1 ? { kind: HopKind.END, packetsOrig: 3n, bytesOrig: 180n } : k === 2 ? { kind: HopKind.DROP, reply: undefined, packetsOrig: 2n } : {}));
          let bytes = Buffer.from(batchMsg(1n, events, { loss: { lost: { ringbuf_full: 1n }, captured: 10n, node: '', agentId: '' } }));
          for (const m of ops) {
            const at = m.at % (bytes.length + 1);
            if (m.op === 'flip' && at < bytes.length) bytes[at]! ^= 1 << m.bit;
            else if (m.op === 'set' && at < bytes.length) bytes[at] = m.value;
            else if (m.op === 'cut') bytes = bytes.subarray(0, at);
            else if (m.op === 'insert') bytes = Buffer.concat([bytes.subarray(0, at), m.bytes, bytes.subarray(at)]);
            else if (m.op === 'delete') bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + m.n)]);
          }
          r.call.write(bytes);
          const out = await nextOutcome(r, 1, 5000);
          if (out.ack !== undefined) {
            expect(out.ack).toBe(1n);
            const msg = parseAgentMessage(bytes, { maxBatchEvents: MAX_BATCH_EVENTS });
            validateAgentMessage(msg, { maxBatchEvents: MAX_BATCH_EVENTS });
            accepted.push(...msg.batch!.events.map((ev) => ({ ...ev, node: ev.node || NODE })));
            r.call.end();
          } else {
            const st = out.status!;
            expect([grpc.status.INVALID_ARGUMENT, grpc.status.RESOURCE_EXHAUSTED, grpc.status.FAILED_PRECONDITION], `${grpc.status[st.code]}: ${st.details}`).toContain(st.code);
            expect(st.details).toMatch(/^(batch|hello|body|malformed AgentMessage|first message must be a Hello)/);
            expect(st.details.length).toBeLessThan(1000);
            const kind = st.details.replace(/\d+/g, 'N').slice(0, 60);
            refusals.set(kind, (refusals.get(kind) ?? 0) + 1);
          }
          await r.status;
        },
      ),
      // A stuck store shows as a timeout: report the first failure with its seed rather than shrink for minutes.
      { ...fuzzRuns(150), endOnFailure: true },
    );
    // Every batch the collector acked is in the store, whatever its bytes were.
    const ids = accepted.map((ev) => hopIdOf(ev, ev.node));
    const have = await stored(ids);
    expect(ids.filter((id) => !have.has(id))).toEqual([]);
    expect(accepted.length).toBeGreaterThan(0);
    expect(refusals.size).toBeGreaterThan(3);
    await goodAgentStillServed();
  });

  it('many streams at once that never say Hello do not stop the good agent', async () => {
    const idle = Array.from({ length: 50 }, () => rawStream());
    await goodAgentStillServed();
    for (const r of idle) r.call.cancel();
  });

  it('metadata beyond MAX_METADATA_BYTES is refused (the call is reset); smaller metadata is served', async () => {
    const call = (bytes: number): Promise<{ st: grpc.StatusObject; welcomed: boolean }> => {
      const md = new grpc.Metadata();
      md.set('x-junk', 'j'.repeat(bytes));
      const c = new AgentServiceRawClient(`127.0.0.1:${srv.port}`, clientCredentials());
      const s = c.Stream(md);
      let welcomed = false;
      s.on('error', () => {});
      s.on('data', () => {
        welcomed = true;
        s.end();
      });
      s.write(helloMsg());
      return new Promise((resolve) => s.on('status', (st) => {
        c.close();
        resolve({ st, welcomed });
      }));
    };
    const big = await call(MAX_METADATA_BYTES + 1000);
    expect(big.welcomed).toBe(false);
    expect(big.st.code, big.st.details).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const fits = await call(MAX_METADATA_BYTES / 2);
    expect(fits).toMatchObject({ welcomed: true, st: { code: grpc.status.OK } });
    await goodAgentStillServed();
  });
});

// ---- QueryService ------------------------------------------------------------------------------

const QueryRawClient = grpc.makeGenericClientConstructor(queryServiceRawDefinition, 'QueryService') as unknown as new (
  address: string, creds: grpc.ChannelCredentials, options?: grpc.ChannelOptions,
) => grpc.Client & Record<'Who' | 'Etp', (req: Buffer, md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Buffer>) => void>;

let queryClient: InstanceType<typeof QueryRawClient> | undefined;
closers.push(() => queryClient?.close());
function query(method: 'Who' | 'Etp', body: Buffer): Promise<{ code: grpc.status; details: string }> {
  queryClient ??= new QueryRawClient(`127.0.0.1:${srv.port}`, clientCredentials(), { 'grpc.max_send_message_length': 64 << 20 });
  return new Promise((resolve) => {
    queryClient![method](body, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err) => {
      resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: '' });
    });
  });
}

describe('QueryService.Who and .Etp against hostile requests', () => {
  const who = (target: string, sinceMs = 60_000n) => query('Who', encodeWhoRequest({ target, sinceMs, forwarded: false }));
  const etp = (service: string, sinceMs = 60_000n) => query('Etp', encodeEtpRequest({ service, sinceMs, forwarded: false }));

  it.each([
    ['garbage bytes', () => query('Who', Buffer.from([0xff, 0xff, 0xff])), grpc.status.INVALID_ARGUMENT, /malformed WhoRequest \(3 bytes\)/],
    ['truncated', () => query('Who', encodeWhoRequest({ target: '10.0.0.1', sinceMs: 0n, forwarded: false }).subarray(0, 5)), grpc.status.INVALID_ARGUMENT, /malformed WhoRequest/],
    ['oversized', () => query('Who', encodeWhoRequest({ target: 'x'.repeat(MAX_MESSAGE_BYTES + 10), sinceMs: 0n, forwarded: false })), grpc.status.RESOURCE_EXHAUSTED, /larger than max/],
    ['a 200 KB target', () => who('1'.repeat(200_000)), grpc.status.INVALID_ARGUMENT, /target is too long/],
    ['SQL in the target', () => who("10.0.0.1') OR 1=1 --"), grpc.status.INVALID_ARGUMENT, /is not an IP address/],
    ['a NUL in the target', () => who('default/pod\u0000x'), grpc.status.INVALID_ARGUMENT, /is not NAMESPACE\/POD/],
    ['a placeholder as the target', () => who('{ip:String}'), grpc.status.INVALID_ARGUMENT, /is not an IP address/],
    ['a zone in the target', () => who('fe80::1%eth0'), grpc.status.INVALID_ARGUMENT, /is not an IP address/],
    ['since_ms of 2^64-1', () => who('10.0.0.1', (1n << 64n) - 1n), grpc.status.INVALID_ARGUMENT, /since_ms: .*at most/],
    ['etp: garbage bytes', () => query('Etp', Buffer.from([0x0a, 0x05, 0x41])), grpc.status.INVALID_ARGUMENT, /malformed EtpRequest/],
    ['etp: a 200 KB service', () => etp('a/'.repeat(100_000)), grpc.status.INVALID_ARGUMENT, /is not NAMESPACE\/SERVICE/],
    ["etp: '; DROP TABLE", () => etp("default/x'; DROP TABLE natlens.hops; --"), grpc.status.INVALID_ARGUMENT, /is not NAMESPACE\/SERVICE/],
    ['etp: since_ms of 2^63', () => etp('default/web', 1n << 63n), grpc.status.INVALID_ARGUMENT, /since_ms: .*at most/],
  ] as const)('%s', async (_name, run, code, details) => {
    const res = await run();
    expect({ code: grpc.status[res.code], details: res.details }).toMatchObject({ code: grpc.status[code], details: expect.stringMatching(details) });
    expect(res.details.length).toBeLessThan(1000);
    // Still answering.
    expect((await who('10.1.2.3')).code).toBe(grpc.status.OK);
  });

  it('random request bytes: an answer, INVALID_ARGUMENT or NOT_FOUND with a message; never INTERNAL', async () => {
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('Who' as const, 'Etp' as const),
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
          fc.record({ target: fc.string({ unit: 'binary', maxLength: 80 }), sinceMs: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) })
            .map(({ target, sinceMs }) => encodeWhoRequest({ target, sinceMs, forwarded: false })),
        ),
        async (method, body) => {
          const res = await query(method, body);
          expect([grpc.status.OK, grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND], `${grpc.status[res.code]}: ${res.details}`).toContain(res.code);
          if (res.code !== grpc.status.OK) expect(res.details.length).toBeGreaterThan(10);
          seen.set(grpc.status[res.code]!, (seen.get(grpc.status[res.code]!) ?? 0) + 1);
        },
      ),
      fuzzRuns(300),
    );
    expect(seen.get('INVALID_ARGUMENT')).toBeGreaterThan(0);
  });
});
