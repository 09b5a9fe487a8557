// Hostile bytes on the probe's stdout: random records, truncated records, unknown kinds, bad
// families/protocols/hooks, PROXY payloads of every shape, and records split at every offset of a
// pipe. Every decoding path (objects, JSON straight from bytes, HopEvent straight from bytes) either
// accepts a record and says the same thing, or rejects it with a RecordDecodeError naming the field;
// a bad record is counted and skipped and the records after it still come out. Seeded: see test/support/fuzz.ts.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { serializeEvent, toAgentEvent, toProxyEvent } from '../../src/agent/events.js';
import { hopEventFromRecord } from '../../src/agent/hop-event-encoder.js';
import { JsonLineEncoder } from '../../src/agent/json-line-encoder.js';
import { parseAddr, toAddr16 } from '../../src/collector/addr.js';
import { decodeRecord, NL_RECORD_SIZE, RecordDecodeError, type FlowRecord, type ProbeRecord, type ProxyRecord } from '../../src/probe/record-decoder.js';
import { NL_EVENT, NL_PROXY, NlRecordKind } from '../../src/probe/record-layout.generated.js';
import { RecordFramer } from '../../src/probe/record-stream.js';
import { validateHopEvent } from '../../src/transport/codec.js';
import { HopKind, type HopEvent } from '../../src/transport/proto.generated.js';
import { encodeProxyHeader, parseProxyHeader, PROXY_V1_PREFIX, PROXY_V2_SIGNATURE } from '../../src/util/proxy-protocol.js';
import { fuzzRuns } from '../support/fuzz.js';

const ifnames = (i: number): string | null => (i === 1 ? 'eth0' : i === 2 ? 'nl"odd\\name' : null);
const deliversLocally = (n: string | null): boolean => n === 'eth0';

/** A byte that is usually valid for the field and sometimes anything at all. */
const mostly = (valid: number[]): fc.Arbitrary<number> => fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...valid) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) });

/** What a PROXY record's captured payload may hold: real headers, their prefixes, near-misses, noise. */
const proxyPayload: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.record({
    version: fc.constantFrom(1 as const, 2 as const),
    v6: fc.boolean(),
    a: fc.uint8Array({ minLength: 16, maxLength: 16 }),
    b: fc.uint8Array({ minLength: 16, maxLength: 16 }),
    sport: fc.integer({ min: 0, max: 65535 }),
    dport: fc.integer({ min: 0, max: 65535 }),
  }).map(({ version, v6, a, b, sport, dport }) => {
    const text = (x: Uint8Array): string => (v6 ? [...Array(8).keys()].map((i) => ((x[2 * i]! << 8) | x[2 * i + 1]!).toString(16)).join(':') : `${x[0]}.${x[1]}.${x[2]}.${x[3]}`);
    return Uint8Array.from(encodeProxyHeader(version, { family: v6 ? 6 : 4, src: text(a), dst: text(b), sport, dport }));
  }),
  // v1 text with the many spellings of one address, and things that are almost addresses.
  fc.tuple(
    fc.constantFrom('TCP4', 'TCP6', 'UNKNOWN', 'UDP4', 'tcp4', ''),
    fc.constantFrom('198.51.100.79', '::FFFF:1.2.3.4', '64:ff9b::1.2.3.4', 'fe80::1%eth0', '0:0:0:0:0:0:0:1', '1.2.3', '256.1.1.1', '::', '"\\', '1::2::3'),
    fc.constantFrom('10.0.0.1', '2001:DB8::1', '::1', 'x'),
    fc.constantFrom('1', '65535', '65536', '-1', '01', ''),
  ).map(([p, s, d, port]) => Uint8Array.from(Buffer.from(`PROXY ${p} ${s} ${d} ${port} 80\r\n`, 'latin1'))),
  fc.uint8Array({ maxLength: 66 }).map((tail) => Uint8Array.from([...PROXY_V2_SIGNATURE, ...tail])),
  fc.uint8Array({ maxLength: 66 }).map((tail) => Uint8Array.from([...PROXY_V1_PREFIX, ...tail])),
  fc.uint8Array({ maxLength: 66 }),
);

/** A 128-byte record: random body, header fields mostly valid, u64 counters over their full range. */
const anyRecord: fc.Arbitrary<Buffer> = fc.record({
  body: fc.uint8Array({ minLength: NL_RECORD_SIZE, maxLength: NL_RECORD_SIZE }),
  kind: mostly([1, 2, 3, 4, 5, 6, 7]),
  family: mostly([4, 6]),
  proto: mostly([6, 17]),
  hook: mostly([1, 2, 3]),
  ifindex: fc.integer({ min: 0, max: 3 }),
  payload: fc.option(proxyPayload),
  dataLen: fc.integer({ min: 0, max: 65535 }),
  // Mostly plausible (ts before 2262, counters below 2^53), sometimes any u64.
  ts: fc.oneof({ weight: 9, arbitrary: fc.bigInt({ min: 0n, max: (1n << 63n) - 1n }) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
  counters: fc.array(fc.oneof({ weight: 19, arbitrary: fc.bigInt({ min: 0n, max: (1n << 53n) - 1n }) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }), { minLength: 4, maxLength: 4 }),
}).map((r) => {
  const b = Buffer.from(r.body);
  b.writeBigUInt64LE(r.ts, NL_EVENT.hdr_ts_ns.offset);
  if (r.kind !== NlRecordKind.PROXY) {
    [NL_EVENT.packets_orig, NL_EVENT.bytes_orig, NL_EVENT.packets_reply, NL_EVENT.bytes_reply].forEach((f, k) => b.writeBigUInt64LE(r.counters[k]!, f.offset));
  }
  b[NL_EVENT.hdr_kind.offset] = r.kind;
  b[NL_EVENT.hdr_family.offset] = r.family;
  b[NL_EVENT.hdr_proto.offset] = r.proto;
  b[NL_EVENT.hdr_hook.offset] = r.hook;
  b.writeUInt32LE(r.ifindex, NL_EVENT.hdr_ifindex.offset);
  if (r.kind === NlRecordKind.PROXY && r.payload) {
    const data = r.payload.subarray(0, NL_PROXY.data.size);
    b.fill(0, NL_PROXY.data.offset);
    b.set(data, NL_PROXY.data.offset);
    b.writeUInt16LE(Math.max(data.length, r.dataLen % 200), NL_PROXY.data_len.offset);
  }
  return b;
});

/** Runs `f`; a throw must be a RecordDecodeError (returned), anything else fails the property. */
function attempt<T>(f: () => T): { ok: true; value: T } | { ok: false; err: RecordDecodeError } {
  try {
    return { ok: true, value: f() };
  } catch (err) {
    if (!(err instanceof RecordDecodeError)) throw new Error(`expected RecordDecodeError, got ${String(err)}`, { cause: err });
    expect(err.message).toMatch(/^bad probe record: /);
    return { ok: false, err };
  }
}

/** Addresses as plain arrays of 16 bytes (Buffer and Uint8Array compare unequal otherwise). */
const a16 = (raw: Uint8Array): number[] => [...toAddr16(raw)];
const at16 = (text: string): number[] | null => {
  const a = parseAddr(text);
  return a && [...a];
};

const HOP_KIND: Record<string, HopKind> = { conn: HopKind.CONN, ct_new: HopKind.CONN, drop: HopKind.DROP, end: HopKind.END, proxy: HopKind.PROXY };

/** The hop event says what the decoded record says. */
function expectSameHop(ev: HopEvent, rec: FlowRecord | ProxyRecord): void {
  validateHopEvent(ev);
  expect(ev.kind).toBe(HOP_KIND[rec.kind]);
  expect(ev.tsNs).toBe(rec.tsNs);
  expect(ev.ipProto).toBe(rec.proto === 'tcp' ? 6 : 17);
  const orig = rec.kind === 'proxy' ? rec.tuple : rec.orig;
  expect(a16(ev.orig!.src)).toEqual(at16(orig.src));
  expect(a16(ev.orig!.dst)).toEqual(at16(orig.dst));
  expect([ev.orig!.sport, ev.orig!.dport]).toEqual([orig.sport, orig.dport]);
  if (rec.kind !== 'proxy') {
    expect(ev.ctStatus).toBe(rec.ctStatus);
    expect(ev.reply === undefined).toBe(rec.reply === null);
    if (rec.reply) expect(a16(ev.reply!.src)).toEqual(at16(rec.reply.src));
    expect(ev.hasIsn).toBe(rec.proto === 'tcp' && rec.hook !== 'ctnetlink');
    expect([ev.packetsOrig, ev.bytesOrig, ev.packetsReply, ev.bytesReply].map(Number)).toEqual([rec.packetsOrig, rec.bytesOrig, rec.packetsReply, rec.bytesReply]);
  }
}

describe('probe record decoding under hostile bytes', () => {
  it('every path agrees on every record: same content, or all reject with a RecordDecodeError naming the field', () => {
    const enc = new JsonLineEncoder('node-"1"', ifnames);
    const outcomes = { accepted: 0, rejected: 0 };
    fc.assert(
      fc.property(anyRecord, (buf) => {
        const obj = attempt(() => decodeRecord(buf, 0));
        const hop = attempt(() => hopEventFromRecord(buf, 0, ifnames, deliversLocally));
        outcomes[obj.ok ? 'accepted' : 'rejected']++;
        if (!obj.ok) {
          expect(obj.err.field).toMatch(/^(kind|family|proto|hook|ts_ns|packets_orig|bytes_orig|packets_reply|bytes_reply|cpu_count|ringbuf_full)$/);
          expect(obj.err.message).toContain(`(record byte ${obj.err.offset})`);
          expect(attempt(() => enc.encode(buf, 0)).ok).toBe(false);
          expect(enc.length).toBe(0); // nothing half-written
          expect(hop.ok).toBe(false);
          return;
        }
        const rec = obj.value as ProbeRecord;
        if (rec.kind === 'stats' || rec.kind === 'cpu_loss') return; // control records: the sinks never see them
        enc.encode(buf, 0);
        const text = enc.take().toString('utf8');
        if (rec.kind === 'proxy') {
          const ev = toProxyEvent(rec, 'node-"1"', ifnames);
          expect(text).toBe(ev ? `${serializeEvent(ev)}\n` : '');
          if (!ev) {
            expect(hop.ok).toBe(false);
            return;
          }
          JSON.parse(text);
          expect(hop.ok).toBe(true);
          if (!hop.ok) return;
          expectSameHop(hop.value, rec);
          // The header's client as bytes is the client the JSON line names.
          expect(a16(hop.value.reply!.src)).toEqual(at16(ev.proxy.src));
          expect(a16(hop.value.reply!.dst)).toEqual(at16(ev.proxy.dst));
          return;
        }
        expect(text).toBe(`${serializeEvent(toAgentEvent(rec, 'node-"1"', ifnames))}\n`);
        JSON.parse(text);
        expect(hop.ok).toBe(true);
        if (hop.ok) expectSameHop(hop.value, rec);
      }),
      fuzzRuns(20_000),
    );
    // Both sides were exercised (fast-check also runs the shrinker's cases: counts are at least the runs).
    expect(outcomes.accepted).toBeGreaterThan(5_000);
    expect(outcomes.rejected).toBeGreaterThan(2_000);
  });

  it('fully random bytes: only RecordDecodeError, never another exception', () => {
    const enc = new JsonLineEncoder('n', ifnames);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: NL_RECORD_SIZE, maxLength: NL_RECORD_SIZE }), (bytes) => {
        const buf = Buffer.from(bytes);
        attempt(() => decodeRecord(buf, 0));
        attempt(() => enc.encode(buf, 0));
        attempt(() => hopEventFromRecord(buf, 0, ifnames, deliversLocally));
        enc.take();
      }),
      fuzzRuns(20_000),
    );
  });

  it('a truncated record is rejected by every path, at every length', () => {
    const enc = new JsonLineEncoder('n', ifnames);
    fc.assert(
      fc.property(anyRecord, fc.integer({ min: 0, max: NL_RECORD_SIZE - 1 }), fc.integer({ min: 0, max: 200 }), (buf, len, base) => {
        const cut = Buffer.concat([Buffer.alloc(base), buf.subarray(0, len)]);
        for (const run of [() => decodeRecord(cut, base), () => enc.encode(cut, base), () => hopEventFromRecord(cut, base, ifnames, deliversLocally)]) {
          const r = attempt(run);
          expect(r.ok).toBe(false);
          if (!r.ok) expect(r.err.message).toContain(`truncated: ${len} of ${NL_RECORD_SIZE} bytes`);
        }
        expect(enc.length).toBe(0);
      }),
      fuzzRuns(2_000),
    );
  });

  it('names the field and its offset for each kind of bad header', () => {
    const good = Buffer.alloc(NL_RECORD_SIZE);
    Object.assign(good, { [NL_EVENT.hdr_kind.offset]: 1, [NL_EVENT.hdr_family.offset]: 4, [NL_EVENT.hdr_proto.offset]: 6, [NL_EVENT.hdr_hook.offset]: 1 });
    const cases: Array<[number, number, RegExp]> = [
      [NL_EVENT.hdr_kind.offset, 9, /^bad probe record: kind \(record byte 8\): unknown record kind 9/],
      [NL_EVENT.hdr_family.offset, 5, /^bad probe record: family \(record byte 9\): unknown address family 5 in conn record/],
      [NL_EVENT.hdr_proto.offset, 1, /^bad probe record: proto \(record byte 10\): unknown protocol 1 in conn record/],
      [NL_EVENT.hdr_hook.offset, 0, /^bad probe record: hook \(record byte 11\): unknown hook 0 in conn record/],
    ];
    for (const [at, value, message] of cases) {
      const b = Buffer.from(good);
      b[at] = value;
      expect(() => decodeRecord(b)).toThrow(message);
      expect(() => new JsonLineEncoder('n', ifnames).encode(b, 0)).toThrow(message);
      expect(() => hopEventFromRecord(b, 0, ifnames, deliversLocally)).toThrow(message);
    }
    const future = Buffer.from(good);
    future.writeBigUInt64LE(1n << 63n, NL_EVENT.hdr_ts_ns.offset);
    expect(() => decodeRecord(future)).toThrow(/^bad probe record: ts_ns \(record byte 0\): timestamp past 2\^63 ns \(year 2262\)/);
    const counter = Buffer.from(good);
    counter[NL_EVENT.hdr_kind.offset] = NlRecordKind.END;
    counter.writeBigUInt64LE(1n << 53n, NL_EVENT.bytes_reply.offset);
    for (const run of [() => decodeRecord(counter), () => new JsonLineEncoder('n', ifnames).encode(counter, 0), () => hopEventFromRecord(counter, 0, ifnames, deliversLocally)]) {
      expect(run).toThrow(/^bad probe record: bytes_reply \(record byte 120\): counter past 2\^53 in end record/);
    }
    counter.writeBigUInt64LE((1n << 53n) - 1n, NL_EVENT.bytes_reply.offset);
    expect(decodeRecord(counter)).toMatchObject({ kind: 'end', bytesReply: 2 ** 53 - 1 });
    const udpProxy = Buffer.from(good);
    udpProxy[NL_EVENT.hdr_kind.offset] = NlRecordKind.PROXY;
    udpProxy[NL_EVENT.hdr_proto.offset] = 17;
    expect(() => decodeRecord(udpProxy)).toThrow(/proto \(record byte 10\): protocol 17 in a proxy record/);
  });
});

describe('PROXY headers from hostile bytes', () => {
  it('parse to a header, none, incomplete or invalid, never an exception; headers name canonical addresses', () => {
    fc.assert(
      fc.property(fc.oneof(proxyPayload, fc.uint8Array({ maxLength: 200 })), (bytes) => {
        const r = parseProxyHeader(bytes);
        expect(['header', 'none', 'incomplete', 'invalid']).toContain(r.kind);
        if (r.kind !== 'header' || r.header.family === 0) return;
        const { src, dst, family } = r.header;
        for (const ip of [src, dst]) {
          const a = parseAddr(ip);
          expect(a, ip).not.toBeNull();
          // v1 and v2 spell an address the same way: no zone, no upper case, no dotted tail on IPv6.
          if (family === 6) expect(ip).toMatch(/^[0-9a-f:]+$/);
        }
      }),
      fuzzRuns(20_000),
    );
  });

  it('v1: spellings of one address give one text; zones are refused', () => {
    const v1 = (s: string, d = '::1') => parseProxyHeader(Buffer.from(`PROXY TCP6 ${s} ${d} 1 2\r\n`));
    expect(v1('::FFFF:1.2.3.4')).toMatchObject({ kind: 'header', header: { src: '::ffff:102:304' } });
    expect(v1('0:0:0:0:0:0:0:1')).toMatchObject({ kind: 'header', header: { src: '::1' } });
    expect(v1('2001:DB8::1')).toMatchObject({ kind: 'header', header: { src: '2001:db8::1' } });
    expect(v1('fe80::1%eth0')).toMatchObject({ kind: 'invalid', reason: expect.stringContaining('fe80::1%eth0') });
  });
});

describe('the probe stream: records split across pipe chunks, bad ones among them', () => {
  /** What the stream must yield for `records`: each record decoded on its own, or its error. */
  const expected = (records: Buffer[]) => records.map((r) => {
    try {
      return { ok: true, text: JSON.stringify(decodeRecord(r), (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)) };
    } catch (err) {
      expect(err).toBeInstanceOf(RecordDecodeError);
      return { ok: false, text: (err as Error).message };
    }
  });

  function run(stream: Buffer, cuts: number[]) {
    const framer = new RecordFramer();
    const out: Array<{ ok: boolean; text: string }> = [];
    let prev = 0;
    for (const at of [...cuts, stream.length]) {
      framer.push(stream.subarray(prev, at), (buf, off) => {
        try {
          out.push({ ok: true, text: JSON.stringify(decodeRecord(buf, off), (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)) });
        } catch (err) {
          if (!(err instanceof RecordDecodeError)) throw err;
          out.push({ ok: false, text: err.message });
        }
      });
      prev = at;
    }
    return { out, pending: framer.pendingBytes };
  }

  it('any records, any chunking: every record comes out once, in order; bad ones are rejected and skipped', () => {
    fc.assert(
      fc.property(
        fc.array(anyRecord, { minLength: 1, maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        fc.integer({ min: 0, max: NL_RECORD_SIZE - 1 }),
        (records, rawCuts, tailLen) => {
          const stream = Buffer.concat([...records, Buffer.alloc(tailLen, 0xee)]);
          const cuts = [...new Set(rawCuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const { out, pending } = run(stream, cuts);
          expect(out).toEqual(expected(records));
          expect(pending).toBe(tailLen); // a partial record at the end is held, never decoded
        },
      ),
      fuzzRuns(2_000),
    );
  });

  it('good, bad, good split at every offset (and at every pair of offsets around the bad one)', () => {
    const good = Buffer.alloc(NL_RECORD_SIZE);
    good[NL_EVENT.hdr_kind.offset] = 1;
    good[NL_EVENT.hdr_family.offset] = 4;
    good[NL_EVENT.hdr_proto.offset] = 6;
    good[NL_EVENT.hdr_hook.offset] = 1;
    const good2 = Buffer.from(good);
    good2[NL_EVENT.hdr_kind.offset] = 3;
    const bad = Buffer.from(good);
    bad[NL_EVENT.hdr_family.offset] = 7;
    const records = [good, bad, good2];
    const stream = Buffer.concat(records);
    const want = expected(records);
    expect(want.map((w) => w.ok)).toEqual([true, false, true]);
    for (let at = 0; at <= stream.length; at++) expect(run(stream, [at]).out).toEqual(want);
    for (let a = NL_RECORD_SIZE - 8; a < 2 * NL_RECORD_SIZE + 8; a++) {
      for (let b = a; b < 2 * NL_RECORD_SIZE + 8; b += 3) expect(run(stream, [a, b]).out).toEqual(want);
    }
  });
});
