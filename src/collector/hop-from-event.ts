/** proto HopEvent (already validated by the codec) -> the collector's Hop. */
import type { HopEvent } from '../transport/proto.generated.js';
import { HopKind } from '../transport/proto.generated.js';
import { toAddr16 } from './addr.js';
import { hash64 } from './hop-id.js';
import type { Hop, HopKind as Kind, WireTuple } from './hop.js';

const KINDS: Record<number, Kind> = { [HopKind.CONN]: 'conn', [HopKind.DROP]: 'drop', [HopKind.END]: 'end', [HopKind.PROXY]: 'proxy' };

function wire(t: { src: Uint8Array; dst: Uint8Array; sport: number; dport: number }): WireTuple {
  return { src: toAddr16(t.src), sport: t.sport, dst: toAddr16(t.dst), dport: t.dport };
}

export function hopFromEvent(ev: HopEvent, streamNode: string): Hop {
  const node = ev.node || streamNode;
  const kind = KINDS[ev.kind]!;
  const orig = wire(ev.orig!);
  const isn = ev.hasIsn ? ev.tcpIsn : null;
  return {
    // What makes an event itself: resent copies hash the same.
    id: hash64([node, ev.tsNs, ev.kind, ev.ipProto, orig.src, orig.sport, orig.dst, orig.dport, isn]),
    node,
    kind,
    proto: ev.ipProto === 6 ? 'tcp' : 'udp',
    family: ev.orig!.src.length === 4 ? 4 : 6,
    tsNs: ev.tsNs,
    orig,
    reply: ev.reply ? wire(ev.reply) : null,
    ctStatus: ev.ctStatus,
    isn,
    ifname: ev.ifname,
    deliveredLocal: ev.deliveredLocal,
    packetsOrig: Number(ev.packetsOrig),
    bytesOrig: Number(ev.bytesOrig),
    packetsReply: Number(ev.packetsReply),
    bytesReply: Number(ev.bytesReply),
    proxyVersion: ev.proxyVersion,
  };
}

/** The pod address a hop is about: where its packet was sent after DNAT (drops: what was dialled;
 * PROXY hops: the pod the header reached). */
export function endpointOf(ev: HopEvent): Uint8Array {
  return ev.reply && ev.kind !== HopKind.PROXY ? ev.reply.src : ev.orig!.dst;
}
