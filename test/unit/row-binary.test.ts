// RowBinary golden bytes, one type at a time, against ClickHouse's documented wire format.
import { describe, expect, it } from 'vitest';
import { RowBinaryWriter } from '../../src/collector/store/row-binary.js';
import { T, connectionsTable, encodeRows } from '../../src/collector/store/schema.js';
import type { ConnectionRecord } from '../../src/collector/hop.js';

function bytes(f: (w: RowBinaryWriter) => void, capacity?: number): number[] {
  const w = new RowBinaryWriter(capacity);
  f(w);
  return [...w.bytes()];
}

const mapped = (a: number, b: number, c: number, d: number) => new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]);

describe('RowBinaryWriter', () => {
  it('writes fixed-width integers little-endian', () => {
    expect(bytes((w) => w.uint8(0xab))).toEqual([0xab]);
    // Int8 -2: two's complement
    expect(bytes((w) => w.int8(-2))).toEqual([0xfe]);
    // UInt16 0x1234 -> 34 12
    expect(bytes((w) => w.uint16(0x1234))).toEqual([0x34, 0x12]);
    // UInt32 0x01020304 -> 04 03 02 01
    expect(bytes((w) => w.uint32(0x01020304))).toEqual([0x04, 0x03, 0x02, 0x01]);
    expect(bytes((w) => w.uint32(0xffffffff))).toEqual([0xff, 0xff, 0xff, 0xff]);
  });

  it('writes UInt64 from a number (two 32-bit halves) and from a bigint identically', () => {
    // 2^32 + 5: low half 5, high half 1
    const expected = [0x05, 0, 0, 0, 0x01, 0, 0, 0];
    expect(bytes((w) => w.uint64(2 ** 32 + 5))).toEqual(expected);
    expect(bytes((w) => w.uint64Big(2n ** 32n + 5n))).toEqual(expected);
    // 2^53 - 1, the largest exact number: 0x001fffffffffffff
    expect(bytes((w) => w.uint64(Number.MAX_SAFE_INTEGER))).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x00]);
    // UInt64 max
    expect(bytes((w) => w.uint64Big(2n ** 64n - 1n))).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  });

  it('writes DateTime64(9) as Int64 nanoseconds since the epoch', () => {
    // 1700000000.123456789 s = 1700000000123456789 ns = 0x17979cfe_3d85cd15
    expect(bytes((w) => w.dateTime64ns(1_700_000_000_123_456_789n))).toEqual([0x15, 0xcd, 0x85, 0x3d, 0xfe, 0x9c, 0x97, 0x17]);
    // before the epoch: -1 ns
    expect(bytes((w) => w.dateTime64ns(-1n))).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  });

  it('writes IPv6 as its 16 bytes in network order (not reversed like integers)', () => {
    // ::ffff:10.0.0.1
    expect(bytes((w) => w.ipv6(mapped(10, 0, 0, 1)))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
    // 2001:db8::1
    const v6 = new Uint8Array(16);
    v6.set([0x20, 0x01, 0x0d, 0xb8]);
    v6[15] = 1;
    expect(bytes((w) => w.ipv6(v6))).toEqual([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  });

  it('writes Bool as one byte and Enum8 as its Int8 code', () => {
    expect(bytes((w) => { w.bool(true); w.bool(false); })).toEqual([1, 0]);
    const kind = T.Enum8({ conn: 1, drop: 2, end: 3 });
    expect(kind.sql).toBe("Enum8('conn' = 1, 'drop' = 2, 'end' = 3)");
    expect(bytes((w) => kind.write(w, 'drop'))).toEqual([2]);
    expect(() => bytes((w) => kind.write(w, 'nope' as 'conn'))).toThrow(RangeError);
  });

  it('writes String and LowCardinality(String) as LEB128 byte length + UTF-8', () => {
    // "" -> just the length 0
    expect(bytes((w) => w.string(''))).toEqual([0]);
    // "ab" -> 02 'a' 'b'
    expect(bytes((w) => w.string('ab'))).toEqual([2, 0x61, 0x62]);
    // "é" is 2 UTF-8 bytes: c3 a9; "€" is 3: e2 82 ac
    expect(bytes((w) => w.string('é€'))).toEqual([5, 0xc3, 0xa9, 0xe2, 0x82, 0xac]);
    // ASCII first, then not: the short-ASCII fast path backs out and the UTF-8 path rewrites it
    expect(bytes((w) => w.string('ab€'))).toEqual([5, 0x61, 0x62, 0xe2, 0x82, 0xac]);
    // NUL is an ordinary byte in ClickHouse strings
    expect(bytes((w) => w.string('a\u0000'))).toEqual([2, 0x61, 0x00]);
    expect(bytes((w) => T.LowCardinalityString.write(w, 'ab'))).toEqual([2, 0x61, 0x62]);
  });

  it('writes LEB128 lengths of 128 and more in several bytes', () => {
    // 127 -> 7f; 128 -> 80 01; 300 -> ac 02
    expect(bytes((w) => w.varUInt(127))).toEqual([0x7f]);
    expect(bytes((w) => w.varUInt(128))).toEqual([0x80, 0x01]);
    expect(bytes((w) => w.varUInt(300))).toEqual([0xac, 0x02]);
    // 127 ASCII chars: the longest with a one-byte length
    expect(bytes((w) => w.string('y'.repeat(127))).slice(0, 2)).toEqual([0x7f, 0x79]);
    const s = 'x'.repeat(200);
    const b = bytes((w) => w.string(s));
    expect(b.slice(0, 2)).toEqual([0xc8, 0x01]); // 200
    expect(b.length).toBe(202);
  });

  it('writes Nullable as a marker byte (1 = NULL, nothing follows) before the value', () => {
    const n = T.Nullable(T.UInt32);
    expect(n.sql).toBe('Nullable(UInt32)');
    expect(bytes((w) => n.write(w, null))).toEqual([1]);
    expect(bytes((w) => n.write(w, 7))).toEqual([0, 7, 0, 0, 0]);
  });

  it('writes Array as a LEB128 count, then the items', () => {
    const a = T.Array(T.LowCardinalityString);
    expect(a.sql).toBe('Array(LowCardinality(String))');
    expect(bytes((w) => a.write(w, []))).toEqual([0]);
    // ['a', 'bc'] -> count 2, then 01 'a', 02 'b' 'c'
    expect(bytes((w) => a.write(w, ['a', 'bc']))).toEqual([2, 1, 0x61, 2, 0x62, 0x63]);
    expect(bytes((w) => T.Array(T.UInt16).write(w, [80, 443]))).toEqual([2, 80, 0, 0xbb, 0x01]);
  });

  it('refuses out-of-range values instead of wrapping them', () => {
    expect(() => bytes((w) => w.uint16(65536))).toThrow(RangeError);
    expect(() => bytes((w) => w.uint16(-1))).toThrow(RangeError);
    expect(() => bytes((w) => w.uint8(1.5))).toThrow(RangeError);
    expect(() => bytes((w) => w.uint32(2 ** 32))).toThrow(RangeError);
    expect(() => bytes((w) => w.uint64(-1))).toThrow(RangeError);
    expect(() => bytes((w) => w.uint64(2 ** 53))).toThrow(RangeError);
    expect(() => bytes((w) => w.uint64Big(-1n))).toThrow(RangeError);
    expect(() => bytes((w) => w.int64Big(2n ** 63n))).toThrow(RangeError);
    expect(() => bytes((w) => w.ipv6(new Uint8Array(4)))).toThrow(RangeError);
  });

  it('grows past its initial capacity, keeping what was written, and resets for reuse', () => {
    const w = new RowBinaryWriter(16);
    for (let i = 0; i < 1000; i++) w.uint32(i);
    expect(w.length).toBe(4000);
    const b = w.bytes();
    expect(b.readUInt32LE(0)).toBe(0);
    expect(b.readUInt32LE(3996)).toBe(999);
    w.reset();
    w.uint8(9);
    expect([...w.bytes()]).toEqual([9]);
  });
});

describe('encodeRows', () => {
  const rec: ConnectionRecord = {
    connId: 1n, version: 2, tsNs: 3n, lastTsNs: 4n, proto: 'udp', family: 4,
    endpoint: mapped(10, 0, 0, 1), endpointPort: 80, service: mapped(10, 96, 0, 1), servicePort: 8080,
    client: null, clientPort: 5, seenAs: mapped(10, 0, 0, 2), seenAsPort: 6,
    ingressNode: 'a', endpointNode: '', snat: true, status: 'unstitched', hopNodes: ['a'], isn: null,
  };

  it('writes a ConnectionRecord column by column, in declaration order', () => {
    const w = new RowBinaryWriter();
    encodeRows(connectionsTable, [rec], w);
    const ip = (a: number, b: number, c: number, d: number) => [...mapped(a, b, c, d)];
    expect([...w.bytes()]).toEqual([
      1, 0, 0, 0, 0, 0, 0, 0, // conn_id UInt64
      2, 0, 0, 0, // version UInt32
      3, 0, 0, 0, 0, 0, 0, 0, // ts
      4, 0, 0, 0, 0, 0, 0, 0, // last_ts
      17, // proto Enum8 udp
      4, // family
      ...ip(10, 0, 0, 1), 80, 0, // endpoint, endpoint_port
      ...ip(10, 96, 0, 1), 0x90, 0x1f, // service, service_port 8080
      1, // client Nullable: NULL
      5, 0, // client_port
      ...ip(10, 0, 0, 2), 6, 0, // seen_as, seen_as_port
      1, 0x61, // ingress_node 'a'
      0, // endpoint_node ''
      1, // snat
      2, // status unstitched
      1, 1, 0x61, // hop_nodes ['a']
      1, // isn NULL
    ]);
  });

  it('names the row and column of a value that does not fit', () => {
    const w = new RowBinaryWriter();
    expect(() => encodeRows(connectionsTable, [rec, { ...rec, seenAsPort: 70000 }], w)).toThrow(/connections row 1, column seen_as_port: UInt16 out of range: 70000/);
  });
});
