/**
 * Probe record bytes -> proto HopEvent (the agent -> collector contract), read through the
 * generated record layout; no intermediate objects or address strings.
 */
import { decodeFlowHeader } from '../probe/record-decoder.js';
import { NL_EVENT } from '../probe/record-layout.generated.js';
import { HopKind, createHopEvent, createTuple, type HopEvent, type Tuple } from '../transport/proto.generated.js';

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
