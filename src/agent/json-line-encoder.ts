/**
 * Writes the JSON line of a flow record straight from its bytes into an output buffer: the
 * `natlens agent --stdout` hot path. Building objects and strings per event (decodeRecord ->
 * toAgentEvent -> JSON) cost ~3.4 µs and most of the agent's garbage; this costs a fraction.
 * The text is byte-for-byte what serializeEvent(toAgentEvent(decodeRecord(...))) gives: a unit
 * test holds the two paths to it on random records. PROXY records (one per proxied connection at
 * most, and their header needs parsing anyway) take the object path.
 */
import { NL_EVENT, NL_TUPLE } from '../probe/record-layout.generated.js';
import { decodeFlowHeader, decodeRecord, IPS_DST_NAT, IPS_SRC_NAT, type ProxyRecord } from '../probe/record-decoder.js';
import { formatIPv6 } from '../probe/ip-format.js';
import { serializeEvent, toProxyEvent } from './events.js';

const OCTETS: Buffer[] = Array.from({ length: 256 }, (_, i) => Buffer.from(String(i), 'latin1'));
const lit = (s: string): Buffer => Buffer.from(s, 'latin1');

const K = {
  conn: lit('{"type":"conn","node":'),
  drop: lit('{"type":"drop","node":'),
  end: lit('{"type":"end","node":'),
  tcp: lit(',"proto":"tcp","family":'),
  udp: lit(',"proto":"udp","family":'),
  orig: lit(',"orig":'),
  reply: lit(',"reply":'),
  src: lit('{"src":"'),
  sport: lit('","sport":'),
  dst: lit(',"dst":"'),
  dport: lit('","dport":'),
  snat: lit(',"snat":'),
  dnat: lit(',"dnat":'),
  ts: lit(',"ts":"'),
  tsEnd: lit('Z"'),
  isn: lit(',"isn":'),
  ifname: lit(',"ifname":'),
  hook: lit(',"hook":"'),
  ctStatus: lit('","ct_status":'),
  attempts: lit(',"attempts":'),
  packets: lit(',"packets":{"orig":'),
  bytes: lit('},"bytes":{"orig":'),
  replyCount: lit(',"reply":'),
  true: lit('true'),
  false: lit('false'),
  null: lit('null'),
  lineEnd: lit('}\n'),
};

export class JsonLineEncoder {
  private out = Buffer.allocUnsafe(256 * 1024);
  private pos = 0;
  private readonly nodeJson: Buffer;
  private readonly ifnameJson = new Map<string, Buffer>();
  // Cached second of the last timestamp: its start in ns as two u32 halves, and its text.
  private secHi = -1;
  private secLo = 0;
  private secText: Buffer = Buffer.alloc(0);

  constructor(
    private readonly node: string,
    private readonly ifname: (ifindex: number) => string | null,
  ) {
    this.nodeJson = lit(JSON.stringify(node));
  }

  /**
   * Appends the line of the flow record at `base`. Throws RecordDecodeError (nothing appended).
   * A PROXY record whose header names no client or cannot be read appends nothing (the agent
   * counts those before they get here).
   */
  encode(buf: Buffer, base: number): void {
    const h = decodeFlowHeader(buf, base);
    if (h.kind === 'proxy') {
      const ev = toProxyEvent(decodeRecord(buf, base) as ProxyRecord, this.node, this.ifname);
      if (ev) this.appendLine(serializeEvent(ev));
      return;
    }
    this.reserve(1024);
    const ctStatus = buf.readUInt32LE(base + NL_EVENT.hdr_ct_status.offset);
    const ifindex = buf.readUInt32LE(base + NL_EVENT.hdr_ifindex.offset);
    const isn = h.proto === 'tcp' && h.hook !== 'ctnetlink' ? buf.readUInt32LE(base + NL_EVENT.hdr_tcp_isn.offset) : -1;
    const kind = h.kind === 'ct_new' ? 'conn' : h.kind;
    this.put(K[kind]);
    this.put(this.nodeJson);
    this.put(h.proto === 'tcp' ? K.tcp : K.udp);
    this.num(h.family);
    this.put(K.orig);
    this.tuple(buf, base + NL_EVENT.orig_src.offset, h.family);
    if (kind === 'drop') {
      this.put(K.attempts);
      this.num(this.u64(buf, base + NL_EVENT.packets_orig.offset));
      this.isn(isn);
      this.ifnameOf(ifindex);
      this.ts(buf, base);
    } else {
      this.put(K.reply);
      this.tuple(buf, base + NL_EVENT.reply_src.offset, h.family);
      this.put(K.snat);
      this.put((ctStatus & IPS_SRC_NAT) !== 0 ? K.true : K.false);
      this.put(K.dnat);
      this.put((ctStatus & IPS_DST_NAT) !== 0 ? K.true : K.false);
      if (kind === 'end') {
        this.put(K.packets);
        this.num(this.u64(buf, base + NL_EVENT.packets_orig.offset));
        this.put(K.replyCount);
        this.num(this.u64(buf, base + NL_EVENT.packets_reply.offset));
        this.put(K.bytes);
        this.num(this.u64(buf, base + NL_EVENT.bytes_orig.offset));
        this.put(K.replyCount);
        this.num(this.u64(buf, base + NL_EVENT.bytes_reply.offset));
        this.out[this.pos++] = 0x7d; // }
        this.ts(buf, base);
      } else {
        this.ts(buf, base);
        this.isn(isn);
        this.ifnameOf(ifindex);
        this.put(K.hook);
        this.ascii(h.hook);
        this.put(K.ctStatus);
        this.num(ctStatus);
      }
    }
    this.put(K.lineEnd);
  }

  get length(): number {
    return this.pos;
  }

  /** The lines encoded so far (a copy), and a fresh start. */
  take(): Buffer {
    const b = Buffer.from(this.out.subarray(0, this.pos));
    this.pos = 0;
    return b;
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.out.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.out.length * 2, this.pos + n));
    this.out.copy(bigger, 0, 0, this.pos);
    this.out = bigger;
  }

  // Byte loops, not Buffer.copy/write: for pieces this small the native call costs more than the copy.
  private put(b: Buffer): void {
    const out = this.out;
    let p = this.pos;
    for (let i = 0; i < b.length; i++) out[p++] = b[i]!;
    this.pos = p;
  }

  private ascii(s: string): void {
    const out = this.out;
    let p = this.pos;
    for (let i = 0; i < s.length; i++) out[p++] = s.charCodeAt(i);
    this.pos = p;
  }

  /** A non-negative integer below 2^53 (decodeFlowHeader refuses records with larger counters), in decimal. */
  private num(n: number): void {
    let digits = 1;
    for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
    const out = this.out;
    let p = this.pos + digits - 1;
    for (let i = 0; i < digits; i++) {
      out[p--] = 48 + (n % 10);
      n = Math.floor(n / 10);
    }
    this.pos += digits;
  }

  private u64(buf: Buffer, at: number): number {
    return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 0x1_0000_0000;
  }

  private isn(isn: number): void {
    this.put(K.isn);
    if (isn < 0) this.put(K.null);
    else this.num(isn);
  }

  private ifnameOf(ifindex: number): void {
    this.put(K.ifname);
    const name = ifindex === 0 ? null : this.ifname(ifindex);
    if (name === null) {
      this.put(K.null);
      return;
    }
    let json = this.ifnameJson.get(name);
    if (!json) {
      json = lit(JSON.stringify(name));
      this.ifnameJson.set(name, json);
    }
    this.put(json);
  }

  /** Appends one line of text (the rare events: ready, stats), keeping order with the flows. */
  appendLine(text: string): void {
    this.reserve(Buffer.byteLength(text) + 1);
    this.pos += this.out.write(text, this.pos, 'utf8');
    this.out[this.pos++] = 0x0a;
  }

  private addr(buf: Buffer, at: number, family: 4 | 6): void {
    if (family === 4) {
      this.put(OCTETS[buf[at]!]!);
      this.out[this.pos++] = 0x2e;
      this.put(OCTETS[buf[at + 1]!]!);
      this.out[this.pos++] = 0x2e;
      this.put(OCTETS[buf[at + 2]!]!);
      this.out[this.pos++] = 0x2e;
      this.put(OCTETS[buf[at + 3]!]!);
    } else {
      this.ascii(formatIPv6(buf, at));
    }
  }

  /** struct nl_tuple at `at`: offsets from its generated layout. */
  private tuple(buf: Buffer, at: number, family: 4 | 6): void {
    this.put(K.src);
    this.addr(buf, at + NL_TUPLE.src.offset, family);
    this.put(K.sport);
    this.num(buf.readUInt16BE(at + NL_TUPLE.sport.offset));
    this.put(K.dst);
    this.addr(buf, at + NL_TUPLE.dst.offset, family);
    this.put(K.dport);
    this.num(buf.readUInt16BE(at + NL_TUPLE.dport.offset));
    this.out[this.pos++] = 0x7d; // }
  }

  private ts(buf: Buffer, base: number): void {
    const lo = buf.readUInt32LE(base + NL_EVENT.hdr_ts_ns.offset);
    const hi = buf.readUInt32LE(base + NL_EVENT.hdr_ts_ns.offset + 4);
    // Nanoseconds since the cached second's start; exact in a double while it is small.
    let frac = (hi - this.secHi) * 0x1_0000_0000 + (lo - this.secLo);
    if (this.secHi < 0 || frac < 0 || frac >= 1_000_000_000) {
      const tsNs = (BigInt(hi) << 32n) | BigInt(lo);
      const second = tsNs / 1_000_000_000n;
      const start = second * 1_000_000_000n;
      this.secHi = Number(start >> 32n);
      this.secLo = Number(start & 0xffff_ffffn);
      this.secText = lit(new Date(Number(second) * 1000).toISOString().slice(0, 19));
      frac = Number(tsNs - start);
    }
    this.put(K.ts);
    this.put(this.secText);
    this.out[this.pos++] = 0x2e; // .
    // nine digits, zero-padded
    for (let i = 8; i >= 0; i--) {
      this.out[this.pos + i] = 48 + (frac % 10);
      frac = Math.floor(frac / 10);
    }
    this.pos += 9;
    this.put(K.tsEnd);
  }
}
