/**
 * The PROXY protocol (HAProxy, versions 1 and 2): how a proxy-type load balancer tells the backend
 * who the real client was, in a header before the first byte of the proxied stream.
 *
 * One parser for everyone: the agent reads headers the kernel captured at the start of connections
 * to local pods, the lab's echo server honours them, and the lab's proxy load balancer writes them.
 * Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
 */
import { isIP } from 'node:net';

/** v2 headers start with these 12 bytes; they cannot start a valid HTTP request or v1 header. */
export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
export const PROXY_V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** A v1 header is at most 107 bytes including CRLF (spec 2.1). */
export const PROXY_V1_MAX = 107;
/** Enough bytes to hold a v1 header or a v2 header's addresses (16 + 36 for TCP over IPv6). */
export const PROXY_CAPTURE_BYTES = 108;

export interface ProxyHeader {
  version: 1 | 2;
  /** 'local': a health check or the proxy's own connection: no client to report. */
  command: 'proxy' | 'local';
  /** 0: UNKNOWN / AF_UNSPEC / AF_UNIX, no addresses. */
  family: 0 | 4 | 6;
  transport: 'tcp' | 'udp' | 'unknown';
  /** The real client, as the proxy saw it. '' when family is 0. */
  src: string;
  sport: number;
  /** What the client connected to (the load balancer's address). */
  dst: string;
  dport: number;
  /** Header length in bytes: the proxied stream starts after it. */
  length: number;
}

export type ProxyParse =
  | { kind: 'header'; header: ProxyHeader }
  /** The bytes cannot start a PROXY header: plain traffic. */
  | { kind: 'none' }
  /** A header may start here but more bytes are needed. */
  | { kind: 'incomplete' }
  /** A header was announced but is malformed. */
  | { kind: 'invalid'; reason: string };

const NONE: ProxyParse = { kind: 'none' };
const INCOMPLETE: ProxyParse = { kind: 'incomplete' };
const invalid = (reason: string): ProxyParse => ({ kind: 'invalid', reason });

/** Whether `buf` starts with (a prefix of) `sig`: true also when buf is shorter than sig but agrees. */
function startsLike(buf: Uint8Array, sig: Uint8Array): boolean {
  const n = Math.min(buf.length, sig.length);
  for (let i = 0; i < n; i++) if (buf[i] !== sig[i]) return false;
  return true;
}

/** Parses a PROXY header at the start of `buf` (v1 or v2, autodetected). */
export function parseProxyHeader(buf: Uint8Array): ProxyParse {
  if (buf.length === 0) return INCOMPLETE;
  if (startsLike(buf, PROXY_V2_SIGNATURE)) return buf.length < 16 ? INCOMPLETE : parseV2(buf);
  if (startsLike(buf, PROXY_V1_PREFIX)) return buf.length < PROXY_V1_PREFIX.length ? INCOMPLETE : parseV1(buf);
  return NONE;
}

function parseV1(buf: Uint8Array): ProxyParse {
  const limit = Math.min(buf.length, PROXY_V1_MAX);
  let end = -1;
  for (let i = 0; i + 1 < limit; i++) {
    if (buf[i] === 0x0d && buf[i + 1] === 0x0a) {
      end = i;
      break;
    }
  }
  if (end < 0) return buf.length >= PROXY_V1_MAX ? invalid('v1 header without CRLF in its first 107 bytes') : INCOMPLETE;
  const line = Buffer.from(buf.subarray(0, end)).toString('latin1');
  const parts = line.split(' ');
  const length = end + 2;
  if (parts[1] === 'UNKNOWN') {
    return { kind: 'header', header: { version: 1, command: 'proxy', family: 0, transport: 'unknown', src: '', sport: 0, dst: '', dport: 0, length } };
  }
  if (parts.length !== 6) return invalid(`v1 header has ${parts.length} fields, expected 6: ${JSON.stringify(line)}`);
  const [, proto, src, dst, sportText, dportText] = parts as [string, string, string, string, string, string];
  const family = proto === 'TCP4' ? 4 : proto === 'TCP6' ? 6 : 0;
  if (family === 0) return invalid(`v1 protocol ${JSON.stringify(proto)} is not TCP4, TCP6 or UNKNOWN`);
  // A zone (fe80::1%eth0) names an interface of the proxy's host: meaningless here, and not an address.
  if (isIP(src) !== family || isIP(dst) !== family || src.includes('%') || dst.includes('%')) {
    return invalid(`v1 addresses ${JSON.stringify(src)} ${JSON.stringify(dst)} are not IPv${family}`);
  }
  const sport = port(sportText);
  const dport = port(dportText);
  if (sport < 0 || dport < 0) return invalid(`v1 ports ${JSON.stringify(sportText)} ${JSON.stringify(dportText)} are not 0-65535`);
  // IPv6 text has many spellings (::FFFF:1.2.3.4, 0:0::1): report the one v2 headers give.
  const text = (ip: string): string => (family === 4 ? ip : ipv6Text(addrBytes(ip, 6)));
  return { kind: 'header', header: { version: 1, command: 'proxy', family, transport: 'tcp', src: text(src), sport, dst: text(dst), dport, length } };
}

function port(text: string): number {
  if (!/^(0|[1-9][0-9]{0,4})$/.test(text)) return -1;
  const n = Number(text);
  return n <= 65535 ? n : -1;
}

function parseV2(buf: Uint8Array): ProxyParse {
  const verCmd = buf[12] as number;
  if (verCmd >> 4 !== 2) return invalid(`v2 version nibble is ${verCmd >> 4}, expected 2`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) return invalid(`v2 command ${cmd} is neither LOCAL (0) nor PROXY (1)`);
  const famByte = buf[13] as number;
  const len = ((buf[14] as number) << 8) | (buf[15] as number);
  const length = 16 + len;
  const af = famByte >> 4;
  const tp = famByte & 0x0f;
  const transport = tp === 1 ? 'tcp' : tp === 2 ? 'udp' : 'unknown';
  const base = { version: 2 as const, command: cmd === 1 ? ('proxy' as const) : ('local' as const), transport, length } satisfies Partial<ProxyHeader>;
  const need = af === 1 ? 12 : af === 2 ? 36 : 0;
  if (len < need) return invalid(`v2 length ${len} is shorter than the ${need} address bytes of its family`);
  // Addresses are all we read; TLVs after them may be cut off by the capture and do not matter.
  if (buf.length < 16 + need) return INCOMPLETE;
  if (cmd === 0 || af === 0 || af === 3) return { kind: 'header', header: { ...base, family: 0, src: '', sport: 0, dst: '', dport: 0 } };
  if (af === 1) {
    const src = `${buf[16]}.${buf[17]}.${buf[18]}.${buf[19]}`;
    const dst = `${buf[20]}.${buf[21]}.${buf[22]}.${buf[23]}`;
    const sport = ((buf[24] as number) << 8) | (buf[25] as number);
    const dport = ((buf[26] as number) << 8) | (buf[27] as number);
    return { kind: 'header', header: { ...base, family: 4, src, sport, dst, dport } };
  }
  if (af === 2) {
    const src = ipv6Text(buf.subarray(16, 32));
    const dst = ipv6Text(buf.subarray(32, 48));
    const sport = ((buf[48] as number) << 8) | (buf[49] as number);
    const dport = ((buf[50] as number) << 8) | (buf[51] as number);
    return { kind: 'header', header: { ...base, family: 6, src, sport, dst, dport } };
  }
  return invalid(`v2 address family ${af} is not one of UNSPEC (0), INET (1), INET6 (2), UNIX (3)`);
}

/** RFC 5952 text of 16 bytes (lowercase, longest zero run compressed). */
function ipv6Text(b: Uint8Array): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((b[i] as number) << 8) | (b[i + 1] as number));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

export interface ProxiedConnection {
  family: 4 | 6;
  src: string;
  sport: number;
  dst: string;
  dport: number;
}

/** The header a proxy writes before relaying a TCP connection. */
export function encodeProxyHeader(version: 1 | 2, c: ProxiedConnection): Buffer {
  if (isIP(c.src) !== c.family || isIP(c.dst) !== c.family) throw new RangeError(`PROXY header addresses must be IPv${c.family}: ${c.src} ${c.dst}`);
  if (version === 1) return Buffer.from(`PROXY TCP${c.family} ${c.src} ${c.dst} ${c.sport} ${c.dport}\r\n`, 'latin1');
  const addrLen = c.family === 4 ? 12 : 36;
  const out = Buffer.alloc(16 + addrLen);
  PROXY_V2_SIGNATURE.copy(out, 0);
  out[12] = 0x21; // version 2, PROXY
  out[13] = c.family === 4 ? 0x11 : 0x21; // INET or INET6, STREAM
  out.writeUInt16BE(addrLen, 14);
  const a = addrBytes(c.src, c.family);
  const b = addrBytes(c.dst, c.family);
  out.set(a, 16);
  out.set(b, 16 + a.length);
  out.writeUInt16BE(c.sport, 16 + 2 * a.length);
  out.writeUInt16BE(c.dport, 18 + 2 * a.length);
  return out;
}

/** Bytes of an address isIP() accepted as `family` (IPv6 may end in dotted IPv4). */
function addrBytes(ip: string, family: 4 | 6): Uint8Array {
  if (family === 4) return Uint8Array.from(ip.split('.').map(Number));
  let text = ip;
  let dotted: number[] | undefined;
  const lastColon = ip.lastIndexOf(':');
  if (ip.includes('.', lastColon)) {
    // Embedded IPv4 (::ffff:1.2.3.4): its two groups are filled in below.
    dotted = ip.slice(lastColon + 1).split('.').map(Number);
    text = `${ip.slice(0, lastColon + 1)}0:0`;
  }
  const [head, tail] = text.includes('::') ? (text.split('::') as [string, string]) : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const words = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (words.length !== 8) throw new RangeError(`not an IPv6 address: ${ip}`);
  const out = new Uint8Array(16);
  words.forEach((w, i) => {
    const v = parseInt(w, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  if (dotted) out.set(dotted, 12);
  return out;
}
