// The fast path (bytes -> JSON line) must say exactly what the object path says, for any record.
import { describe, expect, it } from 'vitest';
import { JsonLineEncoder } from '../../src/agent/json-line-encoder.js';
import { serializeEvent, toAgentEvent } from '../../src/agent/events.js';
import { decodeRecord, NL_RECORD_SIZE, RecordDecodeError, type FlowRecord } from '../../src/probe/record-decoder.js';

/** Deterministic PRNG (mulberry32) so a failure can be replayed. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomRecord(r: () => number): Buffer {
  const b = Buffer.alloc(NL_RECORD_SIZE);
  const u32 = (): number => Math.floor(r() * 0x1_0000_0000);
  b.writeUInt32LE(u32(), 0);
  b.writeUInt32LE(0x1800_0000 + Math.floor(r() * 0x100_0000), 4); // around now, crossing seconds
  b[8] = [1, 2, 3, 5][Math.floor(r() * 4)]!; // CONN, DROP, END, CT_NEW
  const family = r() < 0.5 ? 4 : 6;
  b[9] = family;
  b[10] = r() < 0.5 ? 6 : 17;
  b[11] = 1 + Math.floor(r() * 3);
  b.writeUInt32LE(Math.floor(r() * 4), 12); // ifindex 0..3 (3 unknown)
  b.writeUInt32LE(u32(), 16);
  b.writeUInt32LE(u32(), 20);
  for (const base of [24, 60]) {
    for (let i = 0; i < (family === 4 ? 4 : 16); i++) b[base + i] = r() < 0.3 ? 0 : Math.floor(r() * 256);
    for (let i = 0; i < (family === 4 ? 4 : 16); i++) b[base + 16 + i] = r() < 0.3 ? 0 : Math.floor(r() * 256);
    b.writeUInt16BE(Math.floor(r() * 65536), base + 32);
    b.writeUInt16BE(Math.floor(r() * 65536), base + 34);
  }
  for (let at = 96; at < 128; at += 8) {
    b.writeUInt32LE(u32(), at);
    b.writeUInt32LE(Math.floor(r() * 0x20_0000), at + 4); // below 2^53
  }
  return b;
}

const names = (i: number): string | null => (i === 1 ? 'eth0' : i === 2 ? 'nlv"odd\\name' : null);

describe('JsonLineEncoder', () => {
  it('encodes 20,000 random records exactly as serializeEvent(toAgentEvent(decodeRecord()))', () => {
    const r = rng(42);
    const enc = new JsonLineEncoder('node-"2"', names);
    const expected: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const rec = randomRecord(r);
      enc.encode(rec, 0);
      expected.push(serializeEvent(toAgentEvent(decodeRecord(rec) as FlowRecord, 'node-"2"', names)));
    }
    const lines = enc.take().toString('utf8').split('\n');
    expect(lines.pop()).toBe('');
    expect(lines.length).toBe(expected.length);
    for (let i = 0; i < lines.length; i++) if (lines[i] !== expected[i]) expect(lines[i]).toBe(expected[i]);
  });

  it('keeps the order of flow lines and appended lines, and starts afresh after take()', () => {
    const enc = new JsonLineEncoder('n', names);
    const rec = randomRecord(rng(1));
    enc.appendLine('{"type":"ready"}');
    enc.encode(rec, 0);
    enc.appendLine('{"type":"stats"}');
    const lines = enc.take().toString().trim().split('\n');
    expect(lines.map((l) => JSON.parse(l).type)).toEqual(['ready', expect.any(String), 'stats']);
    expect(enc.length).toBe(0);
  });

  it('rejects a bad record without writing part of it', () => {
    const enc = new JsonLineEncoder('n', names);
    const bad = randomRecord(rng(7));
    bad[9] = 5; // family 5
    expect(() => enc.encode(bad, 0)).toThrow(RecordDecodeError);
    expect(enc.length).toBe(0);
  });

  it('grows past its initial buffer without losing lines', () => {
    const enc = new JsonLineEncoder('n', names);
    const r = rng(3);
    for (let i = 0; i < 3000; i++) enc.encode(randomRecord(r), 0); // ~1 MB of JSON
    const lines = enc.take().toString().trim().split('\n');
    expect(lines).toHaveLength(3000);
    for (const l of lines) JSON.parse(l);
  });
});
