/**
 * ClickHouse RowBinary encoding: a growable little-endian byte writer. The collector pre-serialises
 * each insert batch with it because the engine parses RowBinary about 3x cheaper than TSV or JSON,
 * and JavaScript-side JSON building was the larger cost anyway (see /work/shared/notes/storage.md).
 *
 * Hot path: one writer is reused across batches; a row costs no allocation here beyond what V8
 * does for the values themselves. Out-of-range values throw a RangeError instead of wrapping
 * silently, since a wrapped port or counter would be stored as a plausible wrong number.
 */

const MAX_U64 = (1n << 64n) - 1n;
const MIN_I64 = -(1n << 63n);
const MAX_I64 = (1n << 63n) - 1n;
const TWO_32 = 4294967296;

export class RowBinaryWriter {
  #buf: Buffer;
  #view: DataView;
  #pos = 0;

  constructor(initialCapacity = 64 * 1024) {
    this.#buf = Buffer.allocUnsafe(Math.max(16, initialCapacity));
    this.#view = new DataView(this.#buf.buffer, this.#buf.byteOffset, this.#buf.byteLength);
  }

  /** Bytes written since the last reset. */
  get length(): number {
    return this.#pos;
  }

  /** Bytes allocated. */
  get capacity(): number {
    return this.#buf.length;
  }

  /** Start a new batch, keeping the allocated capacity. */
  reset(): void {
    this.#pos = 0;
  }

  /**
   * The bytes written so far, as a view (no copy): valid until the next write or reset, so the
   * caller must be done with it (file written, request sent) before reusing the writer.
   */
  bytes(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }

  #ensure(n: number): void {
    const need = this.#pos + n;
    if (need <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < need) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.#buf.copy(next, 0, 0, this.#pos);
    this.#buf = next;
    this.#view = new DataView(next.buffer, next.byteOffset, next.byteLength);
  }

  uint8(v: number): void {
    if ((v & 0xff) !== v) throw new RangeError(`UInt8 out of range: ${v}`);
    this.#ensure(1);
    this.#buf[this.#pos++] = v;
  }

  int8(v: number): void {
    if (!Number.isInteger(v) || v < -128 || v > 127) throw new RangeError(`Int8 out of range: ${v}`);
    this.#ensure(1);
    this.#buf[this.#pos++] = v & 0xff;
  }

  /** ClickHouse Bool is one byte, 0 or 1. */
  bool(v: boolean): void {
    this.#ensure(1);
    this.#buf[this.#pos++] = v ? 1 : 0;
  }

  uint16(v: number): void {
    if ((v & 0xffff) !== v) throw new RangeError(`UInt16 out of range: ${v}`);
    this.#ensure(2);
    this.#view.setUint16(this.#pos, v, true);
    this.#pos += 2;
  }

  uint32(v: number): void {
    if (v >>> 0 !== v) throw new RangeError(`UInt32 out of range: ${v}`);
    this.#ensure(4);
    this.#view.setUint32(this.#pos, v, true);
    this.#pos += 4;
  }

  int32(v: number): void {
    if ((v | 0) !== v) throw new RangeError(`Int32 out of range: ${v}`);
    this.#ensure(4);
    this.#view.setInt32(this.#pos, v, true);
    this.#pos += 4;
  }

  /** UInt64 from a JS number (counters): exact up to 2^53, written as two 32-bit halves without a BigInt. */
  uint64(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`UInt64 (number) out of range: ${v}`);
    this.#ensure(8);
    this.#view.setUint32(this.#pos, v >>> 0, true);
    this.#view.setUint32(this.#pos + 4, Math.floor(v / TWO_32), true);
    this.#pos += 8;
  }

  uint64Big(v: bigint): void {
    if (v < 0n || v > MAX_U64) throw new RangeError(`UInt64 out of range: ${v}`);
    this.#ensure(8);
    this.#view.setBigUint64(this.#pos, v, true);
    this.#pos += 8;
  }

  int64Big(v: bigint): void {
    if (v < MIN_I64 || v > MAX_I64) throw new RangeError(`Int64 out of range: ${v}`);
    this.#ensure(8);
    this.#view.setBigInt64(this.#pos, v, true);
    this.#pos += 8;
  }

  /** DateTime64(9) is an Int64 count of nanoseconds since the Unix epoch. */
  dateTime64ns(ns: bigint): void {
    this.int64Big(ns);
  }

  /** IPv6: the 16 address bytes as they are, in network order (unlike the integer types). */
  ipv6(addr: Uint8Array): void {
    if (addr.length !== 16) throw new RangeError(`IPv6 needs 16 bytes, got ${addr.length}`);
    this.#ensure(16);
    // A plain loop: TypedArray.set costs more than the copy at 16 bytes.
    const buf = this.#buf;
    const p = this.#pos;
    for (let i = 0; i < 16; i++) buf[p + i] = addr[i]!;
    this.#pos = p + 16;
  }

  /** Unsigned LEB128, the length prefix of String and the count prefix of Array. */
  varUInt(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`VarUInt out of range: ${v}`);
    this.#ensure(10);
    while (v >= 0x80) {
      this.#buf[this.#pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.#buf[this.#pos++] = v;
  }

  /** String and LowCardinality(String): LEB128 byte length, then the UTF-8 bytes. */
  string(s: string): void {
    const len = s.length;
    // Fast path for short ASCII (node names, interfaces, stages): one byte of length, one per char,
    // no native calls. Non-ASCII falls through and is rewritten from the same position.
    if (len < 0x80) {
      this.#ensure(len + 1);
      const buf = this.#buf;
      const start = this.#pos;
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[start + 1 + i] = c;
      }
      if (i === len) {
        buf[start] = len;
        this.#pos = start + 1 + len;
        return;
      }
    }
    // The length prefix comes first, so measure the UTF-8 size (no allocation) before writing.
    const n = len === 0 ? 0 : Buffer.byteLength(s, 'utf8');
    this.varUInt(n);
    if (n === 0) return;
    this.#ensure(n);
    this.#pos += this.#buf.write(s, this.#pos, n, 'utf8');
  }

  /** Nullable(T) prefix: 1 means NULL and no value follows; 0 means the value follows. */
  nullMarker(isNull: boolean): void {
    this.#ensure(1);
    this.#buf[this.#pos++] = isNull ? 1 : 0;
  }
}
