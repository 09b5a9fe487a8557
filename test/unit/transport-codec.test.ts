import { describe, expect, it } from 'vitest';
import {
  PROTOCOL_VERSION,
  ProtocolError,
  decodeAgentMessage,
  decodeCollectorMessage,
  decodeMessage,
  decodeWhoRequest,
  decodeWhoResponse,
  encodeAgentMessage,
  encodeCollectorMessage,
  encodeMessage,
  encodeWhoRequest,
  encodeWhoResponse,
  protoRoot,
} from '../../src/transport/codec.js';
import {
  HopKind,
  createHello,
  createHopEvent,
  type AgentMessage,
  type HopEvent,
  type Tuple,
} from '../../src/transport/proto.generated.js';

const v4 = (...b: number[]) => Uint8Array.from(b);
const v6 = (last: number) => Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);

function tuple(src: Uint8Array, dst: Uint8Array, sport = 51326, dport = 30080): Tuple {
  return { src, dst, sport, dport };
}

function conn(over: Partial<HopEvent> = {}): HopEvent {
  return createHopEvent({
    kind: HopKind.CONN,
    tsNs: 1_700_000_000_123_456_789n,
    ipProto: 6,
    orig: tuple(v4(198, 51, 100, 79), v4(198, 51, 100, 2)),
    reply: tuple(v4(10, 180, 1, 136), v4(10, 240, 0, 3), 8080, 51326),
    ctStatus: 0x1b0,
    tcpIsn: 0xdeadbeef,
    hasIsn: true,
    ifname: 'veth1',
    deliveredLocal: true,
    ...over,
  });
}

const hello = createHello({ protocolVersion: 1, node: 'node-a', agentId: 'agent-1', version: '0.1.0', nodeAddresses: [v4(10, 240, 0, 3), v6(3)] });

function batchMsg(events: HopEvent[], seq = 1n): AgentMessage {
  return { batch: { seq, events, loss: { lost: { ringbuf_full: 3n }, captured: 10n, node: '', agentId: '' } } };
}

/** Plain arrays of the byte fields so toEqual compares content, not Buffer vs Uint8Array. */
function norm(v: unknown): unknown {
  if (v instanceof Uint8Array) return Array.from(v);
  if (Array.isArray(v)) return v.map(norm);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, norm(x)]));
  return v;
}

function expectProtocolError(fn: () => unknown, pattern: RegExp, kind?: string): ProtocolError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ProtocolError);
  const pe = caught as ProtocolError;
  expect(pe.message).toMatch(pattern);
  if (kind !== undefined) expect(pe.kind).toBe(kind);
  return pe;
}

describe('transport codec round trips', () => {
  it('IPv4 and IPv6 events, bigint near 2^63 and 2^64, loss maps', () => {
    const events = [
      conn(),
      conn({
        tsNs: (1n << 63n) + 12345n,
        orig: tuple(v6(1), v6(2), 0, 65535),
        reply: tuple(v6(7), v6(8), 443, 1),
        packetsOrig: (1n << 64n) - 1n,
        bytesOrig: 9_007_199_254_740_993n, // 2^53 + 1: not representable as a double
        packetsReply: 0n,
        bytesReply: 4_294_967_296n,
        node: 'node-b',
      }),
      conn({ kind: HopKind.DROP, reply: undefined, ipProto: 17, packetsOrig: 4n, hasIsn: false, tcpIsn: 0 }),
      conn({ kind: HopKind.END, packetsOrig: 10n, bytesOrig: 1500n, packetsReply: 8n, bytesReply: 12_000n }),
    ];
    const msg = batchMsg(events, (1n << 63n) - 1n);
    msg.batch!.loss = { lost: { ringbuf_full: 3n, queue_overflow: (1n << 62n) + 1n, zero: 0n }, captured: 123_456_789_012n, node: 'n', agentId: 'a' };
    const back = decodeAgentMessage(encodeAgentMessage(msg));
    expect(norm(back)).toEqual(norm(msg));
    expect(typeof back.batch!.events[1]!.tsNs).toBe('bigint');
    expect(back.batch!.events[2]!.reply).toBeUndefined();
    expect(back.batch!.events[1]!.packetsOrig).toBe((1n << 64n) - 1n);
  });

  it('Hello, Welcome and Ack', () => {
    const h = decodeAgentMessage(encodeAgentMessage({ hello }));
    expect(norm(h)).toEqual(norm({ hello }));
    const w = { welcome: { protocolVersion: PROTOCOL_VERSION, collectorId: 'c1', maxBatchEvents: 5000 } };
    expect(decodeCollectorMessage(encodeCollectorMessage(w))).toEqual(w);
    const a = { ack: { seq: (1n << 64n) - 2n } };
    expect(decodeCollectorMessage(encodeCollectorMessage(a))).toEqual(a);
  });

  it('decoded messages carry every proto3 default', () => {
    const ev = conn({ ctStatus: 0, tcpIsn: 0, hasIsn: false, ifname: '', deliveredLocal: false });
    const back = decodeAgentMessage(encodeAgentMessage(batchMsg([ev])));
    const e = back.batch!.events[0]!;
    expect(e.packetsOrig).toBe(0n);
    expect(e.ifname).toBe('');
    expect(e.node).toBe('');
    expect(e.hasIsn).toBe(false);
    const empty = decodeMessage('LossReport', new Uint8Array(0));
    expect(empty).toEqual({ lost: {}, captured: 0n, node: '', agentId: '' });
  });

  it('WhoRequest and WhoResponse', () => {
    const req = { target: '10.180.1.136:8080', sinceMs: 3_600_000n, forwarded: true };
    expect(decodeWhoRequest(encodeWhoRequest(req))).toEqual(req);
    const res = {
      target: '10.180.1.136:8080',
      since: '2025-01-01T00:00:00.000000000Z',
      rows: [
        {
          client: '198.51.100.79',
          seenAs: '10.240.0.3',
          connections: 12n,
          ingressNode: 'node-a',
          endpointNode: 'node-b',
          snat: true,
          firstSeen: '2025-01-01T00:00:01.000000000Z',
          lastSeen: '2025-01-01T00:00:02.000000000Z',
          protocols: ['tcp'],
          stitched: true,
        },
      ],
      complete: { eventsLost: 2n, lostByStage: { ringbuf_full: 2n }, unstitched: 0n, nodesReporting: ['node-a', 'node-b'], collectors: ['c1'] },
    };
    expect(decodeWhoResponse(encodeWhoResponse(res))).toEqual(res);
  });

  it('is wire compatible with protobufjs itself (Long on the wire side)', () => {
    const buf = encodeMessage('Ack', { seq: (1n << 63n) + 5n });
    const raw = protoRoot.lookupType('natlens.v1.Ack').decode(buf) as unknown as { seq: { toString(): string } };
    expect(raw.seq.toString()).toBe(((1n << 63n) + 5n).toString());
  });
});

describe('transport codec validation', () => {
  const decodeEvents = (events: HopEvent[], opts = {}) =>
    decodeAgentMessage(encodeAgentMessage(batchMsg(events), { validate: false }), opts);

  it('address length must be 4 or 16', () => {
    const pe = expectProtocolError(
      () => decodeEvents([conn(), conn({ orig: tuple(v4(1, 2, 3, 4, 5), v4(1, 2, 3, 4)) })]),
      /batch\.events\[1\]\.orig\.src: address must be 4 \(IPv4\) or 16 \(IPv6\) bytes, got 5/,
    );
    expect(pe.field).toBe('batch.events[1].orig.src');
    expectProtocolError(() => decodeEvents([conn({ reply: tuple(v4(1, 2, 3, 4), new Uint8Array(0)) })]), /reply\.dst: .*got 0/);
    expectProtocolError(
      () => decodeAgentMessage(encodeAgentMessage({ hello: { ...hello, nodeAddresses: [v4(1, 2, 3)] } }, { validate: false })),
      /hello\.node_addresses\[0\]: address must be/,
    );
  });

  it('ip_proto must be 6 or 17', () => {
    expectProtocolError(() => decodeEvents([conn({ ipProto: 1 })]), /batch\.events\[0\]\.ip_proto: must be 6 \(TCP\) or 17 \(UDP\), got 1/);
  });

  it('unknown or unspecified HopKind', () => {
    expectProtocolError(() => decodeEvents([conn({ kind: 9 as HopKind })]), /events\[0\]\.kind: unknown HopKind 9/);
    expectProtocolError(() => decodeEvents([conn({ kind: HopKind.UNSPECIFIED })]), /events\[0\]\.kind: HopKind is UNSPECIFIED/);
  });

  it('orig is required; reply is required on CONN and END', () => {
    expectProtocolError(() => decodeEvents([conn({ orig: undefined })]), /events\[0\]\.orig: missing/);
    expectProtocolError(() => decodeEvents([conn({ reply: undefined })]), /events\[0\]\.reply: missing \(required on CONN hops\)/);
    expectProtocolError(() => decodeEvents([conn({ kind: HopKind.END, reply: undefined })]), /required on END hops/);
    expect(decodeEvents([conn({ kind: HopKind.DROP, reply: undefined })]).batch!.events).toHaveLength(1);
  });

  it('ports above 65535', () => {
    expectProtocolError(() => decodeEvents([conn({ orig: tuple(v4(1, 1, 1, 1), v4(2, 2, 2, 2), 65536, 80) })]), /orig\.sport: port must be an integer 0\.\.65535, got 65536/);
    expectProtocolError(() => decodeEvents([conn({ reply: tuple(v4(1, 1, 1, 1), v4(2, 2, 2, 2), 80, 70000) })]), /reply\.dport: .*70000/);
  });

  it('batch larger than the configured maximum', () => {
    const events = Array.from({ length: 11 }, () => conn());
    expectProtocolError(() => decodeEvents(events, { maxBatchEvents: 10 }), /batch\.events: batch of 11 events exceeds the maximum of 10/, 'too_large');
    expect(decodeEvents(events, { maxBatchEvents: 11 }).batch!.events).toHaveLength(11);
  });

  it('protocol_version other than 1 in Hello', () => {
    const buf = encodeAgentMessage({ hello: { ...hello, protocolVersion: 2 } }, { validate: false });
    expectProtocolError(() => decodeAgentMessage(buf), /hello\.protocol_version: unsupported protocol version 2 \(this build speaks 1\)/, 'unsupported_version');
    expectProtocolError(() => encodeAgentMessage({ hello: { ...hello, protocolVersion: 2 } }), /unsupported protocol version 2/);
  });

  it('empty messages, zero seq, missing names', () => {
    expectProtocolError(() => decodeAgentMessage(new Uint8Array(0)), /empty AgentMessage/);
    expectProtocolError(() => decodeCollectorMessage(new Uint8Array(0)), /empty CollectorMessage/);
    expectProtocolError(() => decodeAgentMessage(encodeAgentMessage(batchMsg([conn()], 0n), { validate: false })), /batch\.seq: must be >= 1/);
    expectProtocolError(() => decodeAgentMessage(encodeAgentMessage({ hello: { ...hello, node: '' } }, { validate: false })), /hello\.node: missing/);
  });

  it('encoding rejects values the wire cannot carry', () => {
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ tsNs: -1n })])), /events\[0\]\.tsNs: -1n is out of range/);
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ tsNs: 1n << 64n })])), /out of range for a unsigned|out of range/);
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ tsNs: 1.5 as unknown as bigint })])), /expected a 64-bit integer/);
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ ctStatus: -1 })])), /ct_status: expected a uint32/);
  });

  it('2,000 random, truncated and bit-flipped buffers give only ProtocolError', () => {
    let seed = 0x9e3779b9;
    const rand = () => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 4294967296;
    };
    const good = [
      encodeAgentMessage(batchMsg([conn(), conn({ orig: tuple(v6(1), v6(2)), reply: tuple(v6(3), v6(4)) }), conn({ kind: HopKind.DROP, reply: undefined })])),
      encodeAgentMessage({ hello }),
      encodeCollectorMessage({ ack: { seq: 77n } }),
      encodeCollectorMessage({ welcome: { protocolVersion: 1, collectorId: 'c', maxBatchEvents: 10 } }),
    ];
    const decoders = [
      (b: Uint8Array) => decodeAgentMessage(b, { maxBatchEvents: 100 }),
      (b: Uint8Array) => decodeCollectorMessage(b),
      (b: Uint8Array) => decodeWhoRequest(b),
      (b: Uint8Array) => decodeWhoResponse(b),
    ];
    let accepted = 0;
    let rejected = 0;
    for (let i = 0; i < 2000; i++) {
      let buf: Uint8Array;
      const src = good[i % good.length]!;
      switch (i % 3) {
        case 0: // random bytes
          buf = Uint8Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256));
          break;
        case 1: // truncated
          buf = src.subarray(0, Math.floor(rand() * src.length));
          break;
        default: {
          // 1-4 bit flips
          buf = Uint8Array.from(src);
          const flips = 1 + Math.floor(rand() * 4);
          for (let f = 0; f < flips; f++) {
            const at = Math.floor(rand() * buf.length);
            buf[at] = (buf[at] ?? 0) ^ (1 << Math.floor(rand() * 8));
          }
        }
      }
      for (const decode of decoders) {
        try {
          decode(buf);
          accepted++;
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw new Error(`buffer ${i} (${Buffer.from(buf).toString('hex')}) threw ${String(err)}`);
          rejected++;
        }
      }
    }
    expect(accepted + rejected).toBe(8000);
    expect(rejected).toBeGreaterThan(1000);
  });
});
