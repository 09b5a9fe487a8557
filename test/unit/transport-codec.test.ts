import { describe, expect, it } from 'vitest';
import protobuf from 'protobufjs';
import {
  HAND_CODED_FIELDS,
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
  parseAgentMessage,
  protoRoot,
  validateEventBatch,
} from '../../src/transport/codec.js';
import {
  HopKind,
  createHello,
  createHopEvent,
  type HealthCheckReading,
  type AgentMessage,
  type EventBatch,
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
  return { batch: { seq, events, loss: { lost: { ringbuf_full: 3n }, captured: 10n, node: '', agentId: '', ringbufFullPerCpu: {}, gaps: [] }, batchId: 42n, healthChecks: [] } };
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
      // PROXY: field 16 is the first with a two-byte tag (0x80 0x01).
      conn({ kind: HopKind.PROXY, proxyVersion: 2 }),
    ];
    const msg = batchMsg(events, (1n << 63n) - 1n);
    msg.batch!.healthChecks = [
      { tsNs: 1n << 62n, namespace: 'default', service: 'loadbalancer', port: 32122, statusCode: 503, localEndpoints: 0, error: '', node: '' },
      { tsNs: 5n, namespace: 'default', service: 'loadbalancer', port: 32122, statusCode: 0, localEndpoints: -1, error: 'connect ECONNREFUSED', node: 'node3' },
    ];
    msg.batch!.loss = {
      lost: { ringbuf_full: 3n, queue_overflow: (1n << 62n) + 1n, zero: 0n }, captured: 123_456_789_012n, node: 'n', agentId: 'a',
      ringbufFullPerCpu: { 0: 2n, 7: 1n },
      gaps: [{ fromNs: 1_765_310_179_032_329_216n, toNs: 1_765_310_185_000_000_001n, cause: 'crashed', reason: 'the previous natlens-probe (pid 4242) ended without detaching', previousPid: 4242 }],
    };
    // The wire carries any uint64; the contract (validation) bounds timestamps and counters further.
    const wire = encodeAgentMessage(msg, { validate: false });
    const back = parseAgentMessage(wire);
    expect(norm(back)).toEqual(norm(msg));
    expect(() => decodeAgentMessage(wire)).toThrow(/batch\.events\[1\]\.ts_ns: expected nanoseconds since 1970 up to 2\^63-1 \(year 2262\), got 9223372036854788153n/);
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
    expect(empty).toEqual({ lost: {}, captured: 0n, node: '', agentId: '', ringbufFullPerCpu: {}, gaps: [] });
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
          clientSource: 'proxy-protocol-v2',
          proxy: '10.240.0.2',
          service: 'default/loadbalancer',
          servicePort: 'http',
          dialled: '10.240.0.4:30081',
          frontend: 'NodePort',
          whileTerminating: 3n,
          pod: 'default/source-ip-app',
        },
      ],
      complete: {
        eventsLost: 2n, lostByStage: { ringbuf_full: 2n }, unstitched: 0n, nodesReporting: ['node-a', 'node-b'], collectors: ['c1'],
        lostPerCpu: [{ node: 'node-a', cpu: 1, ringbufFull: 2n }],
        gaps: [{ node: 'node-b', from: '2025-01-01T00:00:00.500000000Z', to: '2025-01-01T00:00:03.000000000Z', cause: 'stopped', reason: 'the previous natlens-probe (pid 7) was stopped' }],
      },
      pod: 'default/source-ip-app',
      node: 'node1',
    };
    expect(decodeWhoResponse(encodeWhoResponse(res))).toEqual(res);
  });

  it('is wire compatible with protobufjs itself (Long on the wire side)', () => {
    const buf = encodeMessage('Ack', { seq: (1n << 63n) + 5n });
    const raw = protoRoot.lookupType('natlens.v1.Ack').decode(buf) as unknown as { seq: { toString(): string } };
    expect(raw.seq.toString()).toBe(((1n << 63n) + 5n).toString());
  });
});

describe('hand-coded hot path (AgentMessage, EventBatch, HopEvent, Tuple)', () => {
  it('covers exactly the fields the descriptor declares', () => {
    for (const [name, fields] of Object.entries(HAND_CODED_FIELDS)) {
      const t = protoRoot.lookupType(`natlens.v1.${name}`);
      const declared = t.fieldsArray.map((f) => `${f.name}=${f.id}:${f.repeated ? 'repeated ' : ''}${f.type}`);
      expect(declared, `natlens.v1.${name} changed: update the hand-coded path in codec.ts`).toEqual(fields);
    }
  });

  let seed = 12345;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => rnd(256));
  const u64 = (): bigint => [0n, 1n, 127n, 128n, 300n, 0xffffffffn, 0x100000000n, (1n << 53n) + 1n, (1n << 63n) + 7n, (1n << 64n) - 1n][rnd(10)]!;
  const u32 = () => [0, 1, 127, 128, 16384, 0x7fffffff, 0xffffffff][rnd(7)]!;
  const str = () => ['', 'eth0', 'veth1a2b3c', 'naïve-ünïcode', 'x'.repeat(70), '节点'][rnd(6)]!;
  function randomEvent(): HopEvent {
    const fam = rnd(2) ? 4 : 16;
    const t = (): Tuple => ({ src: bytes(fam), dst: bytes(fam), sport: rnd(65536), dport: rnd(65536) });
    const kind = ([HopKind.CONN, HopKind.DROP, HopKind.END, HopKind.PROXY] as HopKind[])[rnd(4)]!;
    return createHopEvent({
      kind,
      tsNs: u64(),
      ipProto: rnd(2) || kind === HopKind.PROXY ? 6 : 17,
      orig: t(),
      reply: kind === HopKind.DROP && rnd(2) ? undefined : t(),
      ctStatus: u32(),
      tcpIsn: u32(),
      hasIsn: rnd(2) === 1,
      ifname: str(),
      deliveredLocal: rnd(2) === 1,
      packetsOrig: u64(),
      bytesOrig: u64(),
      packetsReply: u64(),
      bytesReply: u64(),
      node: str(),
      proxyVersion: kind === HopKind.PROXY ? 1 + rnd(2) : 0,
    });
  }
  const randomReading = (): HealthCheckReading => ({
    tsNs: u64(), namespace: 'ns-' + str(), service: 'svc' + str(), port: 1 + rnd(65535), statusCode: [0, 200, 503][rnd(3)]!,
    localEndpoints: rnd(3) - 1, error: str(), node: str(),
  });

  it('agrees with protobufjs both ways on 300 random batches', () => {
    for (let i = 0; i < 300; i++) {
      const events = Array.from({ length: rnd(8) }, randomEvent);
      const msg: AgentMessage = { batch: { seq: u64() || 1n, events, loss: rnd(2) ? { lost: { a: u64(), b: 0n }, captured: u64(), node: str(), agentId: str(), ringbufFullPerCpu: rnd(2) ? { 1: u64() } : {}, gaps: [] } : undefined, batchId: u64(), healthChecks: Array.from({ length: rnd(3) }, randomReading) } };
      // Wire agreement over the whole uint64 range: structure only, the contract's bounds are tested apart.
      const fast = encodeAgentMessage(msg, { validate: false });
      const viaPbjs = decodeMessage('AgentMessage', fast);
      expect(norm(viaPbjs)).toEqual(norm(msg));
      const pbjsBytes = encodeMessage('AgentMessage', msg);
      expect(norm(parseAgentMessage(pbjsBytes))).toEqual(norm(msg));
      expect(fast.length).toBe(pbjsBytes.length);
    }
  });

  it('skips fields it does not know (a newer peer) and keeps the rest', () => {
    const ev = conn();
    const W = protobuf.Writer;
    const known = encodeMessage('HopEvent', ev);
    const withUnknown = Buffer.concat([
      known,
      Buffer.from([0xa0, 0x06, 0x05]), // field 100, varint 5
      Buffer.from([0xaa, 0x06, 0x02, 0x61, 0x62]), // field 101, 2 bytes
      Buffer.from([0xb5, 0x06, 1, 2, 3, 4]), // field 102, fixed32
      Buffer.from([0xb9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]), // field 103, fixed64
    ]);
    const batch = W.create().uint32(0x08).uint64(9).uint32(0x12).bytes(withUnknown).uint32(0xf8).uint32(1).finish(); // + field 31, varint
    const msg = W.create().uint32(0x12).bytes(batch).finish();
    const back = decodeAgentMessage(msg);
    expect(back.batch!.seq).toBe(9n);
    expect(norm(back.batch!.events[0])).toEqual(norm(ev));
  });

  it('decoded addresses are copies, not views pinning the received message', () => {
    const buf = encodeAgentMessage(batchMsg([conn()]));
    const back = parseAgentMessage(buf);
    const src = back.batch!.events[0]!.orig!.src;
    expect(src.buffer).not.toBe(buf.buffer);
    expect(Array.from(src)).toEqual([198, 51, 100, 79]);
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

  it('loss reports: per-CPU keys are CPU numbers, gaps run forwards and name a known cause', () => {
    const withLoss = (loss: Partial<NonNullable<EventBatch['loss']>>) => {
      const msg = batchMsg([conn()]);
      msg.batch!.loss = { ...msg.batch!.loss!, ...loss };
      return () => decodeAgentMessage(encodeAgentMessage(msg, { validate: false }));
    };
    const gap = { fromNs: 10n, toNs: 20n, cause: 'crashed', reason: 'killed', previousPid: 1 };
    expect(withLoss({ ringbufFullPerCpu: { 3: 5n }, gaps: [gap] })().batch!.loss).toMatchObject({ ringbufFullPerCpu: { 3: 5n }, gaps: [gap] });
    expectProtocolError(withLoss({ gaps: [{ ...gap, fromNs: 21n }] }), /batch\.loss\.gaps\[0\]: from_ns 21 is after to_ns 20/);
    expectProtocolError(withLoss({ gaps: [{ ...gap, cause: 'bored' }] }), /batch\.loss\.gaps\[0\]\.cause: must be crashed, stopped or failed, got "bored"/);
    expectProtocolError(withLoss({ gaps: Array.from({ length: 65 }, () => gap) }), /batch\.loss\.gaps: 65 gaps, more than 64/, 'too_large');
    expectProtocolError(() => validateEventBatch({ ...batchMsg([]).batch!, loss: { ...batchMsg([]).batch!.loss!, ringbufFullPerCpu: { cpu0: 1n } } }),
      /batch\.loss\.ringbuf_full_per_cpu\["cpu0"\]: the key must be a CPU number/);
  });

  it('batch larger than the configured maximum', () => {
    const events = Array.from({ length: 11 }, () => conn());
    expectProtocolError(() => decodeEvents(events, { maxBatchEvents: 10 }), /batch\.events: batch of 11 or more events exceeds the maximum of 10/, 'too_large');
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

  it('bounds beyond the wire types: what the store can keep and what a real peer sends', () => {
    const decode = (msg: AgentMessage) => () => decodeAgentMessage(encodeAgentMessage(msg, { validate: false }));
    expectProtocolError(decode(batchMsg([conn({ tsNs: 1n << 63n })])), /batch\.events\[0\]\.ts_ns: expected nanoseconds since 1970 up to 2\^63-1/);
    decodeAgentMessage(encodeAgentMessage(batchMsg([conn({ tsNs: (1n << 63n) - 1n, packetsOrig: 2n ** 53n - 1n })])));
    expectProtocolError(decode(batchMsg([conn({ packetsReply: 2n ** 53n })])), /batch\.events\[0\]\.packets_reply: expected a counter below 2\^53, got 9007199254740992n/);
    expectProtocolError(decode(batchMsg([conn({ ifname: 'x'.repeat(65) })])), /batch\.events\[0\]\.ifname: 65 characters, at most 64 allowed/);
    expectProtocolError(decode(batchMsg([conn({ node: 'n'.repeat(254) })])), /batch\.events\[0\]\.node: 254 characters, at most 253 allowed/);
    expectProtocolError(decode({ hello: { ...hello, node: 'a\tb' } }), /hello\.node: "a\\tb" contains a control character/);
    expectProtocolError(decode({ hello: { ...hello, agentId: 'a'.repeat(300) } }), /hello\.agent_id: 300 characters, at most 253 allowed/);
    expectProtocolError(decode({ hello: { ...hello, version: 'v'.repeat(129) } }), /hello\.version: 129 characters, at most 128 allowed/);
    expectProtocolError(decode({ hello: { ...hello, nodeAddresses: Array.from({ length: 1025 }, () => v4(1, 2, 3, 4)) } }), /hello\.node_addresses: 1025 addresses, at most 1024 allowed/);
    const loss = (over: object) => ({ batch: { ...batchMsg([]).batch!, loss: { lost: {}, captured: 0n, node: '', agentId: '', ...over } } });
    expectProtocolError(decode(loss({ lost: Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`s${i}`, 1n])) })), /batch\.loss\.lost: 257 stages, at most 256 allowed/);
    expectProtocolError(decode(loss({ lost: { ['s'.repeat(65)]: 1n } })), /batch\.loss\.lost\["s+"\]: stage name: 65 characters, at most 64 allowed/);
    expectProtocolError(decode(loss({ captured: 1n << 60n })), /batch\.loss\.captured: expected a counter below 2\^53/);
    expectProtocolError(decode(loss({ node: 'x\u0000' })), /batch\.loss\.node: .*control character/);
  });

  it('encoding rejects values the wire cannot carry', () => {
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ tsNs: -1n })])), /batch\.events\[0\]\.ts_ns: expected nanoseconds since 1970 up to 2\^63-1 \(year 2262\), got -1n/);
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ tsNs: 1n << 64n })])), /ts_ns: expected nanoseconds/);
    expectProtocolError(() => encodeAgentMessage(batchMsg([conn({ bytesReply: 1.5 as unknown as bigint })])), /bytes_reply: expected a counter below 2\^53/);
    expectProtocolError(() => encodeMessage('Ack', { seq: -1n }), /Ack\.seq: -1n is out of range for an unsigned 64-bit field/);
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
