import { describe, expect, it } from 'vitest';
import { RecordFramer } from '../../src/probe/record-stream.js';
import { NL_RECORD_SIZE } from '../../src/probe/record-decoder.js';

function records(n: number): Buffer {
  const b = Buffer.alloc(n * NL_RECORD_SIZE);
  for (let i = 0; i < n; i++) b.writeUInt32LE(i, i * NL_RECORD_SIZE); // record i starts with i
  return b;
}

describe('RecordFramer', () => {
  it('reassembles records split across arbitrary chunk boundaries, in order', () => {
    const all = records(50);
    // Chunk sizes that split records in every way: 1 byte, mid-record, exactly on boundaries, several at once.
    const sizes = [1, 127, 128, 129, 300, 64, 1000, 7];
    const framer = new RecordFramer();
    const seen: number[] = [];
    let off = 0;
    for (let i = 0; off < all.length; i++) {
      const n = Math.min(sizes[i % sizes.length]!, all.length - off);
      framer.push(all.subarray(off, off + n), (buf, at) => seen.push(buf.readUInt32LE(at)));
      off += n;
    }
    expect(seen).toEqual([...Array(50).keys()]);
    expect(framer.pendingBytes).toBe(0);
  });

  it('keeps a partial record until it completes, and does not alias the caller\'s chunk', () => {
    const framer = new RecordFramer();
    const one = records(1);
    const chunk = Buffer.from(one.subarray(0, 100));
    const seen: number[] = [];
    framer.push(chunk, () => seen.push(1));
    expect(seen).toEqual([]);
    expect(framer.pendingBytes).toBe(100);
    chunk.fill(0xff); // the stream may reuse its buffer
    framer.push(one.subarray(100), (buf, at) => seen.push(buf.readUInt32LE(at)));
    expect(seen).toEqual([0]);
  });
});
