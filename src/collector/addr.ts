/** 16-byte addresses (IPv6, or IPv4 mapped into ::ffff:0:0/96): the form hops are stitched and stored in. */
import { isIP } from 'node:net';
import type { Addr16, WireTuple } from './hop.js';
import { formatIPv4, formatIPv6 } from '../probe/ip-format.js';

const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

export function isV4Mapped(a: Addr16): boolean {
  for (let i = 0; i < 12; i++) if (a[i] !== V4_MAPPED_PREFIX[i]) return false;
  return true;
}

/** 4- or 16-byte address (network order) -> 16 bytes. */
export function toAddr16(raw: Uint8Array): Addr16 {
  if (raw.length === 16) return raw;
  if (raw.length !== 4) throw new RangeError(`address must be 4 or 16 bytes, got ${raw.length}`);
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(raw, 12);
  return out;
}

/** Text form: dotted quad for IPv4-mapped, RFC 5952 for IPv6. */
export function formatAddr(a: Addr16): string {
  return isV4Mapped(a) ? formatIPv4(a, 12) : formatIPv6(a, 0);
}

/** Parses an IPv4 or IPv6 literal into 16 bytes; null if it is not one. */
export function parseAddr(text: string): Addr16 | null {
  const kind = isIP(text);
  // isIP accepts a zone (fe80::1%eth0), which names an interface of some host: not an address here.
  if (kind === 0 || text.includes('%')) return null;
  if (kind === 4) return toAddr16(Uint8Array.from(text.split('.').map(Number)));
  if (kind !== 6) return null;
  let head = text;
  let tail4: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    // Embedded IPv4 (::ffff:1.2.3.4): two groups in dotted form.
    tail4 = text.slice(lastColon + 1).split('.').map(Number);
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [left, right] = head.includes('::') ? head.split('::') as [string, string] : [head, undefined];
  const l = left ? left.split(':') : [];
  const r = right !== undefined && right !== '' ? right.split(':') : [];
  const fill = right === undefined ? [] : new Array<string>(8 - l.length - r.length).fill('0');
  const groups = [...l, ...fill, ...r].map((g) => parseInt(g, 16));
  const out = new Uint8Array(16);
  groups.forEach((g, i) => { out[2 * i] = g >> 8; out[2 * i + 1] = g & 0xff; });
  if (tail4.length === 4) out.set(tail4, 12);
  return out;
}

export function addrEqual(a: Addr16, b: Addr16): boolean {
  for (let i = 15; i >= 0; i--) if (a[i] !== b[i]) return false;
  return true;
}

/** A compact string usable as a Map key. */
export function addrKey(a: Addr16): string {
  if (isV4Mapped(a)) return String(((a[12]! << 24) | (a[13]! << 16) | (a[14]! << 8) | a[15]!) >>> 0);
  return Buffer.from(a.buffer, a.byteOffset, 16).toString('latin1');
}

/** The address an addrKey() names (v6 keys are 16 latin1 characters, v4 keys at most 10 digits). */
export function addrFromKey(key: string): Addr16 {
  if (key.length === 16) return Uint8Array.from(Buffer.from(key, 'latin1'));
  const n = Number(key);
  return toAddr16(Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff));
}

/** Map key of a wire tuple (one direction of one connection on the wire). */
export function tupleKey(proto: string, t: WireTuple): string {
  return `${proto}|${addrKey(t.src)}|${t.sport}|${addrKey(t.dst)}|${t.dport}`;
}

/** "ip:port" / "[ip6]:port". */
export function formatEndpoint(a: Addr16, port: number): string {
  return isV4Mapped(a) ? `${formatAddr(a)}:${port}` : `[${formatAddr(a)}]:${port}`;
}
