// ProbeProcess reading a real pipe from a stand-in for natlens-probe that writes hostile bytes in
// odd-sized chunks: bad records are counted and skipped, never poison the records after them, and
// the process never dies of them. (The decoding itself is fuzzed in record-fuzz.test.ts.)
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { JsonLineEncoder } from '../../src/agent/json-line-encoder.js';
import { ProbeProcess } from '../../src/probe/probe-process.js';
import { decodeRecord, NL_RECORD_SIZE, RecordDecodeError, type ProbeRecord } from '../../src/probe/record-decoder.js';
import { NL_EVENT, NlRecordKind } from '../../src/probe/record-layout.generated.js';
import { rng } from '../support/fuzz.js';

const dir = mkdtempSync(join(tmpdir(), 'natlens-probe-stream-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// Writes the file named after --obj to stdout in chunks of 1..700 bytes (seeded), then exits 0.
const FAKE_PROBE = `#!${process.execPath}
const fs = require('node:fs');
const data = fs.readFileSync(process.argv[process.argv.indexOf('--obj') + 1]);
process.stderr.write(JSON.stringify({ event: 'ready', ifaces: [{ ifindex: 1, ifname: 'eth0' }] }) + '\\n');
let seed = 7, off = 0;
const next = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
(function write() {
  while (off < data.length) {
    const n = 1 + (next() % 700);
    const ok = process.stdout.write(data.subarray(off, off + n));
    off += n;
    if (!ok) return process.stdout.once('drain', write);
    if (next() % 4 === 0) return setImmediate(write);
  }
})();
`;
const fakeProbe = join(dir, 'fake-probe.cjs');
writeFileSync(fakeProbe, FAKE_PROBE);
chmodSync(fakeProbe, 0o755);

function record(kind: number, i: number, patch?: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(NL_RECORD_SIZE);
  b.writeBigUInt64LE(1_765_310_179_000_000_000n + BigInt(i), 0);
  b[NL_EVENT.hdr_kind.offset] = kind;
  b[NL_EVENT.hdr_family.offset] = 4;
  b[NL_EVENT.hdr_proto.offset] = 6;
  b[NL_EVENT.hdr_hook.offset] = 1;
  b.writeUInt32LE(i, NL_EVENT.hdr_tcp_isn.offset); // identifies the record
  patch?.(b);
  return b;
}

/** 3000 records, about one in seven bad in some way, then half a record. */
function hostileStream(): { bytes: Buffer; good: Buffer[]; badIndexes: number[]; total: number } {
  const r = rng(99);
  const records: Buffer[] = [];
  const good: Buffer[] = [];
  const badIndexes: number[] = [];
  const spoil: Array<(b: Buffer) => void> = [
    (b) => { b[NL_EVENT.hdr_kind.offset] = 77; },
    (b) => { b[NL_EVENT.hdr_family.offset] = 0; },
    (b) => { b[NL_EVENT.hdr_proto.offset] = 1; },
    (b) => { b[NL_EVENT.hdr_hook.offset] = 9; },
    (b) => { for (let k = 8; k < 12; k++) b[k] = Math.floor(r() * 256) | 0x80; },
  ];
  for (let i = 0; i < 3000; i++) {
    if (r() < 1 / 7) {
      badIndexes.push(i);
      records.push(record(NlRecordKind.CONN, i, spoil[Math.floor(r() * spoil.length)]));
    } else {
      const rec = record([NlRecordKind.CONN, NlRecordKind.END, NlRecordKind.DROP, NlRecordKind.CT_NEW][i % 4]!, i);
      records.push(rec);
      good.push(rec);
    }
  }
  return { bytes: Buffer.concat([...records, Buffer.alloc(50, 1)]), good, badIndexes, total: records.length };
}

async function runFake(bytes: Buffer, setup: (p: ProbeProcess) => void): Promise<{ probe: ProbeProcess; errors: Array<{ err: unknown; index: number }>; code: number | null }> {
  const file = join(dir, `stream-${Math.random().toString(36).slice(2)}.bin`);
  writeFileSync(file, bytes);
  const probe = new ProbeProcess({ mode: 'tc', binary: fakeProbe, object: file });
  const errors: Array<{ err: unknown; index: number }> = [];
  probe.on('decode-error', (err: unknown, index: number) => errors.push({ err, index }));
  setup(probe);
  await probe.start();
  const code = await probe.wait();
  return { probe, errors, code };
}

describe('ProbeProcess over a pipe of hostile records', () => {
  const { bytes, good, badIndexes, total } = hostileStream();

  it('object path: every good record comes out in order; bad ones and the cut-off tail are counted, naming field and record', async () => {
    const seen: ProbeRecord[] = [];
    const { probe, errors, code } = await runFake(bytes, (p) => p.on('record', (rec: ProbeRecord) => seen.push(rec)));
    expect(code).toBe(0);
    expect(seen.map((r) => (r.kind === 'stats' ? -1 : r.kind === 'proxy' ? -2 : r.tcpIsn))).toEqual(good.map((b) => b.readUInt32LE(NL_EVENT.hdr_tcp_isn.offset)));
    expect(seen).toEqual(good.map((b) => decodeRecord(b)));
    expect(probe.decodeErrors).toBe(badIndexes.length + 1);
    expect(errors.map((e) => e.index)).toEqual([...badIndexes, total]);
    for (const { err } of errors) expect(err).toBeInstanceOf(RecordDecodeError);
    expect(String((errors[0]!.err as Error).message)).toMatch(/^bad probe record: (kind|family|proto|hook) \(record byte \d+\): /);
    expect((errors.at(-1)!.err as Error).message).toBe(`bad probe record: the stream ended inside record ${total}: 50 of ${NL_RECORD_SIZE} bytes`);
  });

  it('byte path (flowSink, as `agent --stdout` runs): the same good records become JSON lines, the same bad ones are counted', async () => {
    const enc = new JsonLineEncoder('n1', () => 'eth0');
    const { probe, errors } = await runFake(bytes, (p) => { p.flowSink = (buf, off) => enc.encode(buf, off); });
    const lines = enc.take().toString().trim().split('\n').map((l) => JSON.parse(l) as { ts: string; type: string });
    expect(lines).toHaveLength(good.length);
    // Record i carries i in its timestamp's nanoseconds.
    expect(lines.map((l) => Number(l.ts.slice(20, 29)))).toEqual(good.map((b) => b.readUInt32LE(NL_EVENT.hdr_tcp_isn.offset)));
    expect(probe.decodeErrors).toBe(badIndexes.length + 1);
    expect(errors.map((e) => e.index)).toEqual([...badIndexes, total]);
  });
});
