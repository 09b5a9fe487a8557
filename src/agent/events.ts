/**
 * The agent's event stream: one JSON object per line (`natlens agent --stdout`). Other tools parse
 * this, so fields are only ever added, never renamed. Built from probe records in one place.
 */
import { IPS_DST_NAT, IPS_SRC_NAT, type CounterName, type FlowRecord, type Proto, type ProxyRecord, type StatsRecord, type Tuple } from '../probe/record-decoder.js';
import { parseProxyHeader, type ProxyHeader } from '../util/proxy-protocol.js';

export interface ReadyEvent {
  type: 'ready';
  node: string;
  mode: string;
  interfaces: string[];
  ts: string;
}

/** What every per-connection event carries. */
interface FlowEventBase {
  node: string;
  proto: Proto;
  family: 4 | 6;
  /** Conntrack original direction: what the client's socket used (pre-NAT). For drops: the attempt as it arrived. */
  orig: Tuple;
  ts: string;
}

export interface ConnEvent extends FlowEventBase {
  type: 'conn';
  /** Conntrack reply direction: the post-NAT view; reply.dst is the source address the server sees. */
  reply: Tuple;
  snat: boolean;
  dnat: boolean;
  /** TCP initial sequence number: identical on every node an SNAT hop crosses (null for UDP / ctnetlink fallback). */
  isn: number | null;
  ifname: string | null;
  hook: string;
  ct_status: number;
}

/** An attempt that was never forwarded and never answered. */
export interface DropEvent extends FlowEventBase {
  type: 'drop';
  attempts: number;
  isn: number | null;
  ifname: string | null;
}

export interface EndEvent extends FlowEventBase {
  type: 'end';
  reply: Tuple;
  snat: boolean;
  dnat: boolean;
  packets: { orig: number; reply: number };
  bytes: { orig: number; reply: number };
}

/**
 * A PROXY protocol header opened a TCP connection leaving this node (towards a pod when `ifname`
 * leads to one): who the real client was, according to the proxy.
 */
export interface ProxyEvent {
  type: 'proxy';
  node: string;
  /** Of the connection (`orig`); the header's addresses may be of the other family. */
  family: 4 | 6;
  /** The connection as the pod sees it: src = the proxy (or the node that SNAT'd it), dst = the pod. */
  orig: Tuple;
  /** What the header says: src = the real client, dst = the address it connected to. */
  proxy: { version: 1 | 2; src: string; sport: number; dst: string; dport: number };
  ifname: string | null;
  /** The connection's TCP ISN: the same as in the conn event of its SYN, on every node it crossed. */
  isn: number;
  ts: string;
}

/** PROXY records by outcome; the last three are reported as nothing but these counts. */
export interface ProxyCounts {
  /** Headers with a client: proxy events. */
  reported: number;
  /** Headers without a client (v1 UNKNOWN, v2 LOCAL / UNSPEC / UNIX): health checks and the proxy's own connections. */
  local: number;
  /** Headers cut off (longer than the kernel captures, or split across segments). */
  truncated: number;
  /** Announced but malformed headers. */
  invalid: number;
}

export const newProxyCounts = (): ProxyCounts => ({ reported: 0, local: 0, truncated: 0, invalid: 0 });

export interface StatsEvent {
  type: 'stats';
  node: string;
  /**
   * Events lost anywhere before this line, by place (kernel ring buffer, netlink socket, undecodable
   * records; and, from agents that count PROXY records: headers cut off or malformed).
   */
  lost: {
    ringbuf_full: number; pending_full: number; netlink_lost: number; decode_errors: number;
    proxy_truncated?: number; proxy_invalid?: number; total: number;
  };
  counters: Record<CounterName, number>;
  /** PROXY records by outcome (agents that count them). */
  proxy?: ProxyCounts;
  /**
   * lost.ringbuf_full by CPU number ("0", "1", ...), when the kernel lost any: where the ring
   * overflowed. The counts sum to lost.ringbuf_full.
   */
  ringbuf_full_per_cpu?: Record<string, number>;
  ts: string;
}

/** Why nobody captured for a while, from what the previous agent left in the lock directory. */
export type GapCause = 'crashed' | 'stopped' | 'failed';

/**
 * This node's network namespace was not captured from `from` to `to`: connections in between may
 * be missing. Reported once, after `ready`, by an agent that finds the previous agent's state:
 * killed or crashed (`from` = its last heartbeat, at most one probe stats interval before it
 * ended), stopped (`from` = when it detached), or stopped on an error.
 */
export interface GapEvent {
  type: 'gap';
  node: string;
  from: string;
  /** When this agent's capture started. */
  to: string;
  cause: GapCause;
  reason: string;
  /** The previous natlens-probe's pid. */
  previous_pid: number;
  ts: string;
}

export type AgentEvent = ReadyEvent | ConnEvent | DropEvent | EndEvent | ProxyEvent | StatsEvent | GapEvent;

let cachedSecond = -1;
let cachedPrefix = '';

/** RFC 3339 with nanoseconds, UTC. Hot path: the date part is formatted once per second. */
export function formatTimestamp(tsNs: bigint): string {
  const second = Number(tsNs / 1_000_000_000n);
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedPrefix = new Date(second * 1000).toISOString().slice(0, 19); // 2026-11-23T13:12:10
  }
  const frac = Number(tsNs - BigInt(second) * 1_000_000_000n);
  return `${cachedPrefix}.${String(frac).padStart(9, '0')}Z`;
}

const tupleJson = (t: Tuple): string => `{"src":"${t.src}","sport":${t.sport},"dst":"${t.dst}","dport":${t.dport}}`;

/**
 * One JSON line's text for an event, without the newline. Equivalent to JSON.stringify (same keys,
 * same order; a test holds them to it) at a third of the cost for the per-connection events. Every
 * string interpolated raw is an IP address, a fixed word or a timestamp; names go through JSON.stringify.
 */
export function serializeEvent(ev: AgentEvent): string {
  switch (ev.type) {
    case 'conn':
      return `{"type":"conn","node":${JSON.stringify(ev.node)},"proto":"${ev.proto}","family":${ev.family},"orig":${tupleJson(ev.orig)},"reply":${tupleJson(ev.reply)},"snat":${ev.snat},"dnat":${ev.dnat},"ts":"${ev.ts}","isn":${ev.isn},"ifname":${ev.ifname === null ? 'null' : JSON.stringify(ev.ifname)},"hook":"${ev.hook}","ct_status":${ev.ct_status}}`;
    case 'end':
      return `{"type":"end","node":${JSON.stringify(ev.node)},"proto":"${ev.proto}","family":${ev.family},"orig":${tupleJson(ev.orig)},"reply":${tupleJson(ev.reply)},"snat":${ev.snat},"dnat":${ev.dnat},"packets":{"orig":${ev.packets.orig},"reply":${ev.packets.reply}},"bytes":{"orig":${ev.bytes.orig},"reply":${ev.bytes.reply}},"ts":"${ev.ts}"}`;
    case 'proxy': {
      const p = ev.proxy;
      return `{"type":"proxy","node":${JSON.stringify(ev.node)},"family":${ev.family},"orig":${tupleJson(ev.orig)},"proxy":{"version":${p.version},"src":"${p.src}","sport":${p.sport},"dst":"${p.dst}","dport":${p.dport}},"ifname":${ev.ifname === null ? 'null' : JSON.stringify(ev.ifname)},"isn":${ev.isn},"ts":"${ev.ts}"}`;
    }
    default:
      return JSON.stringify(ev);
  }
}

export function toAgentEvent(rec: FlowRecord, node: string, ifname: (ifindex: number) => string | null): ConnEvent | DropEvent | EndEvent {
  const ts = formatTimestamp(rec.tsNs);
  const snat = (rec.ctStatus & IPS_SRC_NAT) !== 0;
  const dnat = (rec.ctStatus & IPS_DST_NAT) !== 0;
  const isn = rec.proto === 'tcp' && rec.hook !== 'ctnetlink' ? rec.tcpIsn : null;
  switch (rec.kind) {
    case 'conn':
    case 'ct_new':
      return {
        type: 'conn', node, proto: rec.proto, family: rec.family, orig: rec.orig, reply: rec.reply!,
        snat, dnat, ts, isn, ifname: rec.ifindex ? ifname(rec.ifindex) : null, hook: rec.hook, ct_status: rec.ctStatus,
      };
    case 'drop':
      return {
        type: 'drop', node, proto: rec.proto, family: rec.family, orig: rec.orig, attempts: rec.packetsOrig,
        isn, ifname: rec.ifindex ? ifname(rec.ifindex) : null, ts,
      };
    case 'end':
      return {
        type: 'end', node, proto: rec.proto, family: rec.family, orig: rec.orig, reply: rec.reply!, snat, dnat,
        packets: { orig: rec.packetsOrig, reply: rec.packetsReply }, bytes: { orig: rec.bytesOrig, reply: rec.bytesReply }, ts,
      };
  }
}

/** A header that names a client. */
export type ClientProxyHeader = ProxyHeader & { family: 4 | 6; command: 'proxy' };

/** What the captured bytes of a PROXY record amount to. */
export type ProxyOutcome =
  | { kind: 'header'; header: ClientProxyHeader }
  | { kind: 'local' | 'truncated' }
  | { kind: 'invalid'; reason: string };

/**
 * Classifies a PROXY record's captured payload. A header the bytes do not hold completely (longer
 * than the kernel captures, or split across segments) is 'truncated': counted, never guessed.
 */
export function classifyProxyBytes(bytes: Uint8Array): ProxyOutcome {
  const r = parseProxyHeader(bytes);
  switch (r.kind) {
    case 'header': {
      const h = r.header;
      if (h.command === 'local' || h.family === 0) return { kind: 'local' };
      return { kind: 'header', header: h as ClientProxyHeader };
    }
    case 'incomplete':
      return { kind: 'truncated' };
    case 'invalid':
      return { kind: 'invalid', reason: r.reason };
    case 'none':
      // The kernel only reports payloads that start like a header.
      return { kind: 'invalid', reason: 'the captured bytes do not start a PROXY header' };
  }
}

/** Adds one outcome to `counts`. */
export function countProxyOutcome(counts: ProxyCounts, o: ProxyOutcome): void {
  if (o.kind === 'header') counts.reported++;
  else counts[o.kind]++;
}

/** The proxy event of a PROXY record, or null when its header names no client or cannot be read. */
export function toProxyEvent(
  rec: ProxyRecord,
  node: string,
  ifname: (ifindex: number) => string | null,
  outcome: ProxyOutcome = classifyProxyBytes(rec.bytes),
): ProxyEvent | null {
  if (outcome.kind !== 'header') return null;
  const h = outcome.header;
  return {
    type: 'proxy', node, family: rec.family, orig: rec.tuple,
    proxy: { version: h.version, src: h.src, sport: h.sport, dst: h.dst, dport: h.dport },
    ifname: rec.ifindex ? ifname(rec.ifindex) : null, isn: rec.tcpIsn, ts: formatTimestamp(rec.tsNs),
  };
}

/**
 * The stats event of the probe's latest counters. With `proxy` (the agent's PROXY outcome counts),
 * headers cut off or malformed count as lost (proxy_truncated, proxy_invalid) and the counts are
 * reported under `proxy`; without it the event has the shape it always had.
 */
export function toStatsEvent(rec: StatsRecord, node: string, decodeErrors: number, proxy?: ProxyCounts, ringbufFullPerCpu?: readonly number[]): StatsEvent {
  const c = rec.counters;
  const base = c.ringbuf_full + c.pending_full + c.netlink_lost + decodeErrors;
  const perCpu = perCpuMap(ringbufFullPerCpu);
  if (!proxy) {
    const lost = { ringbuf_full: c.ringbuf_full, pending_full: c.pending_full, netlink_lost: c.netlink_lost, decode_errors: decodeErrors, total: base };
    return { type: 'stats', node, lost, counters: c, ...(perCpu && { ringbuf_full_per_cpu: perCpu }), ts: formatTimestamp(rec.tsNs) };
  }
  const lost = {
    ringbuf_full: c.ringbuf_full,
    pending_full: c.pending_full,
    netlink_lost: c.netlink_lost,
    decode_errors: decodeErrors,
    proxy_truncated: proxy.truncated,
    proxy_invalid: proxy.invalid,
    total: base + proxy.truncated + proxy.invalid,
  };
  return { type: 'stats', node, lost, counters: c, proxy: { ...proxy }, ...(perCpu && { ringbuf_full_per_cpu: perCpu }), ts: formatTimestamp(rec.tsNs) };
}

/** CPU number -> count, for the CPUs that lost any; undefined when none did. */
function perCpuMap(counts: readonly number[] | undefined): Record<string, number> | undefined {
  if (!counts) return undefined;
  let out: Record<string, number> | undefined;
  counts.forEach((n, cpu) => {
    if (n > 0) (out ??= {})[String(cpu)] = n;
  });
  return out;
}

/** "cpu0: 12, cpu1: 3": where the ring overflowed, for messages. */
export function formatPerCpu(perCpu: Readonly<Record<string, number>>): string {
  return Object.entries(perCpu).sort(([a], [b]) => Number(a) - Number(b)).map(([cpu, n]) => `cpu${cpu}: ${n}`).join(', ');
}
