/**
 * Matches what a lab client did (its socket's tuple) with what the agents reported: the kernel's
 * evidence for one request. Used by the demo and by the capture tests.
 */
import type { AgentEvent, ConnEvent, DropEvent } from '../agent/events.js';
import type { Tuple } from '../probe/record-decoder.js';

export interface SocketTuple {
  proto: 'tcp' | 'udp';
  local: { ip: string; port: number } | null;
  remote: { ip: string; port: number };
}

function isOrigOf(t: Tuple, s: SocketTuple): boolean {
  return !!s.local && t.src === s.local.ip && t.sport === s.local.port && t.dst === s.remote.ip && t.dport === s.remote.port;
}

/** Connection records whose original direction is exactly the client's socket tuple. */
export function connsFor(events: readonly AgentEvent[], s: SocketTuple): ConnEvent[] {
  return events.filter((e): e is ConnEvent => e.type === 'conn' && e.proto === s.proto && isOrigOf(e.orig, s));
}

export function dropsFor(events: readonly AgentEvent[], s: SocketTuple): DropEvent[] {
  return events.filter((e): e is DropEvent => e.type === 'drop' && e.proto === s.proto && isOrigOf(e.orig, s));
}

/**
 * The next hop of a translated connection: the record, on another node, of the packet as it left
 * the translating node (its reply tuple reversed), with the same TCP ISN. A preview of stitching.
 */
export function nextHopOf(events: readonly AgentEvent[], hop: ConnEvent): ConnEvent | undefined {
  return events.find(
    (e): e is ConnEvent =>
      e.type === 'conn' && e.node !== hop.node && e.proto === hop.proto && e.isn === hop.isn &&
      e.orig.src === hop.reply.dst && e.orig.sport === hop.reply.dport &&
      e.orig.dst === hop.reply.src && e.orig.dport === hop.reply.sport,
  );
}

export function formatTuple(t: Tuple): string {
  const host = (ip: string): string => (ip.includes(':') ? `[${ip}]` : ip);
  return `${host(t.src)}:${t.sport} -> ${host(t.dst)}:${t.dport}`;
}

export function natLabel(e: ConnEvent): string {
  const parts = [e.snat ? 'SNAT' : '', e.dnat ? 'DNAT' : ''].filter(Boolean);
  return parts.length ? parts.join('+') : 'no NAT';
}
