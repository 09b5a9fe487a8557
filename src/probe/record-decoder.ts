/**
 * Decodes the fixed-size binary records natlens-probe writes to stdout.
 * Offsets come only from record-layout.generated.ts (generated from the BPF object's BTF).
 */
import { NL_CPU_LOSS, NL_EVENT, NL_PROXY, NL_STATS, NL_TUPLE, NL_RECORD_SIZE, NlCounter, NlHook, NlRecordKind } from './record-layout.generated.js';
import { formatIPv4, formatIPv6 } from './ip-format.js';
import { NatlensError } from '../util/errors.js';

export { NL_RECORD_SIZE };

export interface Tuple {
  src: string;
  sport: number;
  dst: string;
  dport: number;
}

export type Proto = 'tcp' | 'udp';
export type Hook = 'tc_egress' | 'tc_ingress' | 'ctnetlink';

/** Conntrack status bits the records carry (include/uapi/linux/netfilter/nf_conntrack_common.h). */
export const IPS_SRC_NAT = 0x10;
export const IPS_DST_NAT = 0x20;

export interface FlowRecord {
  kind: 'conn' | 'drop' | 'end' | 'ct_new';
  /** CLOCK_REALTIME nanoseconds. */
  tsNs: bigint;
  family: 4 | 6;
  proto: Proto;
  hook: Hook;
  ifindex: number;
  ctStatus: number;
  tcpIsn: number;
  /** Conntrack ORIGINAL direction: the tuple the client used (pre-NAT). */
  orig: Tuple;
  /** Conntrack REPLY direction: the post-NAT view; null for drops (never translated). */
  reply: Tuple | null;
  packetsOrig: number;
  bytesOrig: number;
  packetsReply: number;
  bytesReply: number;
}

export type CounterName = Lowercase<Exclude<keyof typeof NlCounter, 'MAX'>>;

export interface StatsRecord {
  kind: 'stats';
  tsNs: bigint;
  counters: Record<CounterName, number>;
}

/**
 * The first data segment of a new TCP connection left an interface starting like a PROXY protocol
 * header ("PROXY " or the v2 signature). The kernel only copies bytes: parsing the header is the
 * agent's job (src/util/proxy-protocol.ts).
 */
export interface ProxyRecord {
  kind: 'proxy';
  /** CLOCK_REALTIME nanoseconds. */
  tsNs: bigint;
  /** Of the packet (the header's own family may differ). */
  family: 4 | 6;
  proto: 'tcp';
  hook: Hook;
  ifindex: number;
  /** The connection's SYN ISN, as in its CONN record. */
  tcpIsn: number;
  /** The segment's tuple as it left: src = the pod's peer (the proxy, or the node that SNAT'd it), dst = the pod. */
  tuple: Tuple;
  /** TCP payload bytes of the segment (clamped to 65535); `bytes` holds the first NL_PROXY_DATA_MAX of them at most. */
  payloadLen: number;
  /** The payload's first bytes (a copy). */
  bytes: Uint8Array;
}

/** Payload bytes a PROXY record can carry. */
export const NL_PROXY_DATA_MAX = NL_PROXY.data.size;

/**
 * Cumulative ring-buffer loss (records the kernel could not queue) of some CPUs: CPUs
 * cpuFirst .. cpuFirst + ringbufFull.length - 1 of cpuTotal. The probe writes the chunks whose
 * counts changed right before the STATS record read with them, so after a STATS record the latest
 * count of every CPU sums to its ringbuf_full counter.
 */
export interface CpuLossRecord {
  kind: 'cpu_loss';
  tsNs: bigint;
  cpuFirst: number;
  cpuTotal: number;
  ringbufFull: number[];
}

export type ProbeRecord = FlowRecord | ProxyRecord | StatsRecord | CpuLossRecord;

/**
 * A record that cannot be decoded: the stream is out of step or the producer is not ours. `field`
 * and `offset` (bytes from the record's start) name what is wrong; the message says both.
 */
export class RecordDecodeError extends NatlensError {
  readonly field: string | undefined;
  readonly offset: number | undefined;
  constructor(message: string, options?: { field?: string; offset?: number; cause?: unknown }) {
    const where = options?.field === undefined ? '' : `${options.field} (record byte ${options.offset ?? '?'}): `;
    super(`bad probe record: ${where}${message}`, { cause: options?.cause });
    this.field = options?.field;
    this.offset = options?.offset;
  }
}

function badField(field: keyof typeof NL_EVENT & `hdr_${string}`, message: string): RecordDecodeError {
  return new RecordDecodeError(message, { field: field.slice(4), offset: NL_EVENT[field].offset });
}

function truncated(available: number): RecordDecodeError {
  return new RecordDecodeError(`truncated: ${Math.max(0, available)} of ${NL_RECORD_SIZE} bytes`);
}

/** The kind of a record that is not STATS. */
export type RecordKind = FlowRecord['kind'] | 'proxy';

const KIND_NAMES = new Map<number, RecordKind>([
  [NlRecordKind.CONN, 'conn'],
  [NlRecordKind.DROP, 'drop'],
  [NlRecordKind.END, 'end'],
  [NlRecordKind.CT_NEW, 'ct_new'],
  [NlRecordKind.PROXY, 'proxy'],
]);
const HOOK_NAMES = new Map<number, Hook>([
  [NlHook.TC_EGRESS, 'tc_egress'],
  [NlHook.TC_INGRESS, 'tc_ingress'],
  [NlHook.CTNETLINK, 'ctnetlink'],
]);
const COUNTER_NAMES = Object.entries(NlCounter)
  .filter(([name]) => name !== 'MAX')
  .map(([name, index]) => [name.toLowerCase() as CounterName, index] as const);

/** The struct nl_tuple that starts at `at`. */
function readTuple(buf: Uint8Array, view: DataView, at: number, family: 4 | 6): Tuple {
  const fmt = family === 4 ? formatIPv4 : formatIPv6;
  return {
    src: fmt(buf, at + NL_TUPLE.src.offset),
    // Ports are in network order, as on the wire.
    sport: view.getUint16(at + NL_TUPLE.sport.offset, false),
    dst: fmt(buf, at + NL_TUPLE.dst.offset),
    dport: view.getUint16(at + NL_TUPLE.dport.offset, false),
  };
}

// The framer hands over many records of one buffer in a row: build its DataView once.
let lastBuf: Uint8Array | undefined;
let lastView: DataView | undefined;
function viewOf(buf: Uint8Array): DataView {
  if (buf !== lastBuf) {
    lastBuf = buf;
    lastView = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  return lastView!;
}

/** The validated header fields of a flow or PROXY record (kind is never 'stats' here). */
export interface FlowHeader {
  kind: RecordKind;
  family: 4 | 6;
  proto: Proto;
  hook: Hook;
}

/**
 * Validates and names the header of the flow record at `base` (NL_RECORD_SIZE bytes must be
 * available: every reader of the record's body relies on it). Throws RecordDecodeError.
 */
export function decodeFlowHeader(buf: Uint8Array, base: number): FlowHeader {
  if (!(base >= 0 && buf.length - base >= NL_RECORD_SIZE)) throw truncated(buf.length - base);
  const kindCode = buf[base + NL_EVENT.hdr_kind.offset]!;
  const kind = KIND_NAMES.get(kindCode);
  if (kind === undefined) throw badField('hdr_kind', `unknown record kind ${kindCode} (known: ${[...KIND_NAMES].map(([c, n]) => `${c} ${n}`).join(', ')}, ${NlRecordKind.STATS} stats)`);
  const family = buf[base + NL_EVENT.hdr_family.offset];
  if (family !== 4 && family !== 6) throw badField('hdr_family', `unknown address family ${family} in ${kind} record (expected 4 or 6)`);
  const protoCode = buf[base + NL_EVENT.hdr_proto.offset];
  if (protoCode !== 6 && protoCode !== 17) throw badField('hdr_proto', `unknown protocol ${protoCode} in ${kind} record (expected 6 TCP or 17 UDP)`);
  const hookCode = buf[base + NL_EVENT.hdr_hook.offset]!;
  const hook = HOOK_NAMES.get(hookCode);
  if (hook === undefined) throw badField('hdr_hook', `unknown hook ${hookCode} in ${kind} record (expected 1-${HOOK_NAMES.size})`);
  if (kind === 'proxy' && protoCode !== 6) throw badField('hdr_proto', `protocol ${protoCode} in a proxy record (PROXY headers open TCP connections)`);
  // Checked on the high words only (cheap): a clock past 2262 or a counter past 2^53 is a corrupt
  // record, and neither fits where events end up (DateTime64(9), JS numbers).
  if (buf[base + NL_EVENT.hdr_ts_ns.offset + 7]! >= 0x80) throw badField('hdr_ts_ns', 'timestamp past 2^63 ns (year 2262)');
  if (kind !== 'proxy') {
    for (const field of COUNTER_FIELDS) {
      const at = base + NL_EVENT[field].offset;
      if ((buf[at + 6]! | (buf[at + 7]! << 8)) >= 0x20) {
        throw new RecordDecodeError(`counter past 2^53 in ${kind} record`, { field, offset: NL_EVENT[field].offset });
      }
    }
  }
  return { kind, family, proto: protoCode === 6 ? 'tcp' : 'udp', hook };
}

const COUNTER_FIELDS = ['packets_orig', 'bytes_orig', 'packets_reply', 'bytes_reply'] as const;

export function isStatsRecord(buf: Uint8Array, base: number): boolean {
  return buf[base + NL_EVENT.hdr_kind.offset] === NlRecordKind.STATS;
}

/** STATS and CPU_LOSS: the probe's own bookkeeping, never a flow. */
export function isControlRecord(buf: Uint8Array, base: number): boolean {
  const kind = buf[base + NL_EVENT.hdr_kind.offset];
  return kind === NlRecordKind.STATS || kind === NlRecordKind.CPU_LOSS;
}

export function isProxyRecord(buf: Uint8Array, base: number): boolean {
  return buf[base + NL_PROXY.hdr_kind.offset] === NlRecordKind.PROXY;
}

/** The captured payload bytes of the PROXY record at `base` (a view into `buf`), and the segment's payload length. */
export function proxyPayloadOf(buf: Uint8Array, base: number): { bytes: Uint8Array; payloadLen: number } {
  const at = base + NL_PROXY.data_len.offset;
  const payloadLen = buf[at]! | (buf[at + 1]! << 8); // u16, host order (little-endian)
  const start = base + NL_PROXY.data.offset;
  return { bytes: buf.subarray(start, start + Math.min(payloadLen, NL_PROXY.data.size)), payloadLen };
}

/** Decodes the record at `base` (NL_RECORD_SIZE bytes must be available). Throws RecordDecodeError on bad kind/family/proto. */
export function decodeRecord(buf: Uint8Array, base = 0): ProbeRecord {
  if (!(base >= 0 && buf.length - base >= NL_RECORD_SIZE)) throw truncated(buf.length - base);
  const view = viewOf(buf);
  const tsNs = view.getBigUint64(base + NL_EVENT.hdr_ts_ns.offset, true);
  if (isStatsRecord(buf, base)) {
    const counters = {} as Record<CounterName, number>;
    for (const [name, index] of COUNTER_NAMES) {
      counters[name] = Number(view.getBigUint64(base + NL_STATS.counter.offset + 8 * index, true));
    }
    return { kind: 'stats', tsNs, counters };
  }
  if (buf[base + NL_CPU_LOSS.hdr_kind.offset] === NlRecordKind.CPU_LOSS) return decodeCpuLoss(view, base, tsNs);
  const { kind, family, proto, hook } = decodeFlowHeader(buf, base);
  if (kind === 'proxy') {
    const { bytes, payloadLen } = proxyPayloadOf(buf, base);
    return {
      kind,
      tsNs,
      family,
      proto: 'tcp',
      hook,
      ifindex: view.getUint32(base + NL_PROXY.hdr_ifindex.offset, true),
      tcpIsn: view.getUint32(base + NL_PROXY.hdr_tcp_isn.offset, true),
      tuple: readTuple(buf, view, base + NL_PROXY.pkt_src.offset, family),
      payloadLen,
      bytes: Uint8Array.from(bytes),
    };
  }
  return {
    kind,
    tsNs,
    family,
    proto,
    hook,
    ifindex: view.getUint32(base + NL_EVENT.hdr_ifindex.offset, true),
    ctStatus: view.getUint32(base + NL_EVENT.hdr_ct_status.offset, true),
    tcpIsn: view.getUint32(base + NL_EVENT.hdr_tcp_isn.offset, true),
    orig: readTuple(buf, view, base + NL_EVENT.orig_src.offset, family),
    reply: kind === 'drop' ? null : readTuple(buf, view, base + NL_EVENT.reply_src.offset, family),
    packetsOrig: Number(view.getBigUint64(base + NL_EVENT.packets_orig.offset, true)),
    bytesOrig: Number(view.getBigUint64(base + NL_EVENT.bytes_orig.offset, true)),
    packetsReply: Number(view.getBigUint64(base + NL_EVENT.packets_reply.offset, true)),
    bytesReply: Number(view.getBigUint64(base + NL_EVENT.bytes_reply.offset, true)),
  };
}

function decodeCpuLoss(view: DataView, base: number, tsNs: bigint): CpuLossRecord {
  const cpuFirst = view.getUint32(base + NL_CPU_LOSS.cpu_first.offset, true);
  const count = view.getUint16(base + NL_CPU_LOSS.cpu_count.offset, true);
  const cpuTotal = view.getUint16(base + NL_CPU_LOSS.cpu_total.offset, true);
  if (count < 1 || count > NL_CPU_LOSS.ringbuf_full.count || cpuFirst + count > cpuTotal) {
    throw new RecordDecodeError(`CPUs ${cpuFirst}..${cpuFirst + count - 1} of ${cpuTotal}: not a valid range`, { field: 'cpu_count', offset: NL_CPU_LOSS.cpu_count.offset });
  }
  const ringbufFull: number[] = [];
  for (let i = 0; i < count; i++) {
    const offset = NL_CPU_LOSS.ringbuf_full.offset + 8 * i;
    const n = view.getBigUint64(base + offset, true);
    // Same bound as every other counter: above 2^53 the record is corrupt, not a real count.
    if (n >= 1n << 53n) throw new RecordDecodeError(`cpu ${cpuFirst + i}: ${n} is not a plausible count`, { field: 'ringbuf_full', offset });
    ringbufFull.push(Number(n));
  }
  return { kind: 'cpu_loss', tsNs, cpuFirst, cpuTotal, ringbufFull };
}
