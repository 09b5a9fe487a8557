/**
 * Probe record bytes -> proto HopEvent (the agent -> collector contract), read through the
 * generated record layout; no intermediate objects or address strings.
 */
import { decodeFlowHeader, proxyPayloadOf, RecordDecodeError, type FlowHeader } from '../probe/record-decoder.js';
import { NL_EVENT, NL_PROXY } from '../probe/record-layout.generated.js';
import { HopKind, createHopEvent, createTuple, type HopEvent, type Tuple } from '../transport/proto.generated.js';
import { classifyProxyBytes, type ProxyOutcome } from './events.js';

const KIND = { conn: HopKind.CONN, ct_new: HopKind.CONN, drop: HopKind.DROP, end: HopKind.END } as const;

function tupleAt(buf: Buffer, at: { src: number; dst: number; sport: number; dport: number }, addrLen: number): Tuple {
  return createTuple({
    // Copies: the probe stream's buffers are reused.
    src: Buffer.from(buf.subarray(at.src, at.src + addrLen)),
    dst: Buffer.from(buf.subarray(at.dst, at.dst + addrLen)),
    sport: buf.readUInt16BE(at.sport),
    dport: buf.readUInt16BE(at.dport),
  });
}

/**
 * `ifname(ifindex)` names the interface; `deliversLocally(ifname)` says whether it leads to a pod
 * on this node. Throws RecordDecodeError on a record that is not a valid flow record.
 */
export function hopEventFromRecord(
  buf: Buffer,
  base: number,
  ifname: (ifindex: number) => string | null,
  deliversLocally: (ifname: string | null) => boolean,
): HopEvent {
  const h = decodeFlowHeader(buf, base);
  if (h.kind === 'proxy') return proxyHopEvent(buf, base, h, ifname, deliversLocally);
  const addrLen = h.family === 4 ? 4 : 16;
  const ifindex = buf.readUInt32LE(base + NL_EVENT.hdr_ifindex.offset);
  const name = ifindex ? ifname(ifindex) : null;
  const hasIsn = h.proto === 'tcp' && h.hook !== 'ctnetlink';
  const orig = tupleAt(buf, {
    src: base + NL_EVENT.orig_src.offset, dst: base + NL_EVENT.orig_dst.offset,
    sport: base + NL_EVENT.orig_sport.offset, dport: base + NL_EVENT.orig_dport.offset,
  }, addrLen);
  const reply = h.kind === 'drop' ? undefined : tupleAt(buf, {
    src: base + NL_EVENT.reply_src.offset, dst: base + NL_EVENT.reply_dst.offset,
    sport: base + NL_EVENT.reply_sport.offset, dport: base + NL_EVENT.reply_dport.offset,
  }, addrLen);
  return createHopEvent({
    kind: KIND[h.kind],
    tsNs: buf.readBigUInt64LE(base + NL_EVENT.hdr_ts_ns.offset),
    ipProto: h.proto === 'tcp' ? 6 : 17,
    orig,
    reply,
    ctStatus: buf.readUInt32LE(base + NL_EVENT.hdr_ct_status.offset),
    tcpIsn: hasIsn ? buf.readUInt32LE(base + NL_EVENT.hdr_tcp_isn.offset) : 0,
    hasIsn,
    ifname: name ?? '',
    // Only new connections are delivered somewhere; ends and drops come from conntrack / ingress.
    deliveredLocal: h.kind !== 'drop' && h.kind !== 'end' && h.hook === 'tc_egress' && deliversLocally(name),
    packetsOrig: buf.readBigUInt64LE(base + NL_EVENT.packets_orig.offset),
    bytesOrig: buf.readBigUInt64LE(base + NL_EVENT.bytes_orig.offset),
    packetsReply: buf.readBigUInt64LE(base + NL_EVENT.packets_reply.offset),
    bytesReply: buf.readBigUInt64LE(base + NL_EVENT.bytes_reply.offset),
  });
}

/** Address text (as parseProxyHeader gives it) -> 4 or 16 bytes. */
function addrBytes(ip: string, family: 4 | 6): Buffer {
  if (family === 4) return Buffer.from(ip.split('.').map(Number));
  const [head, tail] = ip.includes('::') ? (ip.split('::') as [string, string]) : [ip, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const words = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(parseInt(w, 16), 2 * i));
  return out;
}

/**
 * A PROXY record -> HopEvent{kind PROXY}: orig = the segment's tuple as it left (src = the proxy or
 * the node that SNAT'd it, dst = the pod), reply = the header's client -> the address it connected
 * to, in the header's own family (a v4 client behind a v6 proxy keeps 4-byte addresses). Throws
 * RecordDecodeError when the header names no client or cannot be read: the agent counts those
 * (proxy_local / proxy_truncated / proxy_invalid) and never passes them here.
 */
export function proxyHopEvent(
  buf: Buffer,
  base: number,
  h: FlowHeader,
  ifname: (ifindex: number) => string | null,
  deliversLocally: (ifname: string | null) => boolean,
  outcome: ProxyOutcome = classifyProxyBytes(proxyPayloadOf(buf, base).bytes),
): HopEvent {
  if (outcome.kind !== 'header') throw new RecordDecodeError(`proxy record with no reportable header (${outcome.kind})`, { field: 'data', offset: NL_PROXY.data.offset });
  const hdr = outcome.header;
  const ifindex = buf.readUInt32LE(base + NL_PROXY.hdr_ifindex.offset);
  const name = ifindex ? ifname(ifindex) : null;
  const orig = tupleAt(buf, {
    src: base + NL_PROXY.pkt_src.offset, dst: base + NL_PROXY.pkt_dst.offset,
    sport: base + NL_PROXY.pkt_sport.offset, dport: base + NL_PROXY.pkt_dport.offset,
  }, h.family === 4 ? 4 : 16);
  const reply = createTuple({ src: addrBytes(hdr.src, hdr.family), dst: addrBytes(hdr.dst, hdr.family), sport: hdr.sport, dport: hdr.dport });
  return createHopEvent({
    kind: HopKind.PROXY,
    tsNs: buf.readBigUInt64LE(base + NL_PROXY.hdr_ts_ns.offset),
    ipProto: 6,
    orig,
    reply,
    ctStatus: 0,
    tcpIsn: buf.readUInt32LE(base + NL_PROXY.hdr_tcp_isn.offset),
    hasIsn: true,
    ifname: name ?? '',
    // Like CONN hops: the segment left by an interface that leads to a pod on this node.
    deliveredLocal: h.hook === 'tc_egress' && deliversLocally(name),
    proxyVersion: hdr.version,
  });
}
