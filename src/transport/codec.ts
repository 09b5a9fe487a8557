/**
 * Wire codec of the natlens.v1 protocol. Callers only ever see the generated plain types, with
 * bigint for 64-bit fields: protobufjs (Root built from the generated descriptor) does the bytes of
 * every message, converted Long <-> bigint here, except the hot path (EventBatch and HopEvent
 * inside AgentMessage), which is hand-coded for speed and checked against the descriptor by the
 * unit tests. Validation covers what the contract promises (address lengths, ports, protocols,
 * kinds, versions, batch sizes).
 *
 * Decoding never throws anything but ProtocolError, whatever the bytes: a hostile or corrupt peer
 * costs one stream, never the process.
 */
import protobuf from 'protobufjs';
import { NatlensError } from '../util/errors.js';
import {
  HopKind,
  PROTO_DESCRIPTOR,
  type CaptureGap,
  PROTO_PACKAGE,
  collectorMessageBodyCase,
  isHopKind,
  type AgentMessage,
  type CollectorMessage,
  type EventBatch,
  type HealthCheckReading,
  type Hello,
  type HopEvent,
  type LossReport,
  type ProtoMessageName,
  type ProtoMessages,
  type Tuple,
  type Welcome,
  type WhoRequest,
  type WhoResponse,
  type EtpRequest,
  type EtpResponse,
} from './proto.generated.js';

/** The stream protocol version this build speaks (Hello/Welcome protocol_version). */
export const PROTOCOL_VERSION = 1;

/**
 * - malformed: not a protobuf message of the expected type (truncated, bad wire types, bad UTF-8)
 * - invalid: well-formed, but a field breaks the contract
 * - unsupported_version: Hello/Welcome speaks another protocol version
 * - too_large: a batch exceeds the configured maximum
 */
export type ProtocolErrorKind = 'malformed' | 'invalid' | 'unsupported_version' | 'too_large';

/** A message that breaks the natlens.v1 contract. `field` is its proto path, e.g. batch.events[3].orig.src. */
export class ProtocolError extends NatlensError {
  readonly kind: ProtocolErrorKind;
  readonly field: string | undefined;
  /** The seq of the batch at fault, when known (too_large while decoding). */
  readonly batchSeq: bigint | undefined;
  constructor(message: string, options?: { kind?: ProtocolErrorKind; field?: string; batchSeq?: bigint; cause?: unknown }) {
    super(options?.field === undefined ? message : `${options.field}: ${message}`, { cause: options?.cause });
    this.kind = options?.kind ?? 'invalid';
    this.field = options?.field;
    this.batchSeq = options?.batchSeq;
  }
}

function invalid(field: string, message: string, kind: ProtocolErrorKind = 'invalid'): ProtocolError {
  return new ProtocolError(message, { field, kind });
}

function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (v === null || typeof v !== 'object') return String(v);
  return Array.isArray(v) ? 'an array' : 'an object';
}

// ---------------------------------------------------------------------------------------------
// The protobufjs Root and the Long <-> bigint conversion plans, built once from the descriptor.

/** The protobufjs Root of natlens.v1, built from the generated descriptor. */
export const protoRoot: protobuf.Root = protobuf.Root.fromJSON(PROTO_DESCRIPTOR as protobuf.INamespace);
protoRoot.resolveAll();

const LONG_TYPES = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const SIGNED_LONG_TYPES = new Set(['int64', 'sint64', 'sfixed64']);
const EMPTY_BYTES = new Uint8Array(0);
const TWO_32 = 4294967296;
const MAX_SAFE_BIG = BigInt(Number.MAX_SAFE_INTEGER);
const U64_LIMIT = 1n << 64n;
const I64_MIN = -(1n << 63n);
const I64_LIMIT = 1n << 63n;

type Obj = Record<string, unknown>;
type LongLike = { low: number; high: number; unsigned?: boolean };

const enum K {
  Copy, // number, bool, string, enum
  Bytes,
  Long,
  Msg,
}

interface FieldPlan {
  name: string;
  kind: K;
  signed: boolean;
  repeated: boolean;
  map: boolean;
  /** Oneof member: present only when set. */
  oneof: boolean;
  sub: Plan | undefined;
}

interface Plan {
  type: protobuf.Type;
  fields: FieldPlan[];
  /** The message or a message below it has a 64-bit field: encoding must convert. */
  hasLong: boolean;
}

const plans = new Map<protobuf.Type, Plan>();

function planOf(type: protobuf.Type): Plan {
  let plan = plans.get(type);
  if (plan) return plan;
  plan = { type, fields: [], hasLong: false };
  plans.set(type, plan); // before recursing: tolerates recursive types
  for (const f of type.fieldsArray) {
    f.resolve();
    const rt = f.resolvedType;
    const kind = rt instanceof protobuf.Type ? K.Msg : LONG_TYPES.has(f.type) ? K.Long : f.type === 'bytes' ? K.Bytes : K.Copy;
    plan.fields.push({
      name: f.name,
      kind,
      signed: SIGNED_LONG_TYPES.has(f.type),
      repeated: f.repeated,
      map: f.map,
      oneof: f.partOf !== null,
      sub: rt instanceof protobuf.Type ? planOf(rt) : undefined,
    });
  }
  return plan;
}

function computeHasLong(plan: Plan, seen: Set<Plan>): boolean {
  if (seen.has(plan)) return plan.hasLong;
  seen.add(plan);
  for (const f of plan.fields) {
    if (f.kind === K.Long || (f.sub !== undefined && computeHasLong(f.sub, seen))) plan.hasLong = true;
  }
  return plan.hasLong;
}

function typeOf(name: ProtoMessageName): protobuf.Type {
  return protoRoot.lookupType(`${PROTO_PACKAGE}.${name}`);
}

const pkgNamespace = protoRoot.lookup(PROTO_PACKAGE);
if (!(pkgNamespace instanceof protobuf.Namespace)) throw new Error(`descriptor lacks package ${PROTO_PACKAGE}`);
for (const t of pkgNamespace.nestedArray) if (t instanceof protobuf.Type) planOf(t);
for (const p of plans.values()) computeHasLong(p, new Set());

function longToBigint(v: unknown, signed: boolean): bigint {
  if (typeof v === 'number') return BigInt(v);
  const l = v as LongLike;
  const lo = l.low >>> 0;
  const hi = l.high >>> 0;
  if (hi === 0) return BigInt(lo);
  if (hi < 0x200000) return BigInt(hi * TWO_32 + lo); // still an exact double
  const u = (BigInt(hi) << 32n) | BigInt(lo);
  return signed ? BigInt.asIntN(64, u) : u;
}

function bigintToWire(v: unknown, signed: boolean, path: string): number | LongLike {
  if (typeof v === 'bigint') {
    if (v >= 0n && v <= MAX_SAFE_BIG) return Number(v);
    if (signed ? v < I64_MIN || v >= I64_LIMIT : v < 0n || v >= U64_LIMIT) {
      throw invalid(path, `${show(v)} is out of range for ${signed ? 'a signed' : 'an unsigned'} 64-bit field`);
    }
    const u = BigInt.asUintN(64, v);
    return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned: !signed };
  }
  // Numbers are tolerated (exact integers only): loss counters often start life as numbers.
  if (typeof v === 'number' && Number.isSafeInteger(v) && (signed || v >= 0)) return v;
  throw invalid(path, `expected a 64-bit integer as bigint, got ${show(v)}`);
}

function scalarFromWire(f: FieldPlan, v: unknown): unknown {
  switch (f.kind) {
    case K.Long:
      return longToBigint(v, f.signed);
    case K.Bytes:
      return v instanceof Uint8Array ? v : EMPTY_BYTES;
    case K.Msg:
      return fromWire(f.sub as Plan, v as Obj);
    default:
      return v;
  }
}

/** protobufjs message -> plain object: defaults filled, Long -> bigint, absent messages left out. */
function fromWire(plan: Plan, m: Obj): Obj {
  const out: Obj = {};
  for (const f of plan.fields) {
    const v = m[f.name];
    if (f.repeated) {
      const arr = v as unknown[];
      const n = Array.isArray(arr) ? arr.length : 0;
      const res = new Array<unknown>(n);
      for (let i = 0; i < n; i++) res[i] = scalarFromWire(f, arr[i]);
      out[f.name] = res;
    } else if (f.map) {
      const res: Obj = {};
      if (v !== null && typeof v === 'object') {
        for (const k of Object.keys(v)) res[k] = scalarFromWire(f, (v as Obj)[k]);
      }
      out[f.name] = res;
    } else if (f.kind === K.Msg || f.oneof) {
      if (v !== null && v !== undefined) out[f.name] = scalarFromWire(f, v);
    } else {
      out[f.name] = scalarFromWire(f, v);
    }
  }
  return out;
}

function scalarToWire(f: FieldPlan, v: unknown, path: string): unknown {
  if (f.kind === K.Long) return bigintToWire(v, f.signed, path);
  if (f.kind === K.Msg) {
    if (v === null || typeof v !== 'object') throw invalid(path, `expected a message, got ${show(v)}`);
    return toWire(f.sub as Plan, v as Obj, path);
  }
  return v;
}

/** Plain object -> what protobufjs's encoder accepts: bigint -> number or {low, high}. */
function toWire(plan: Plan, o: Obj, path: string): Obj {
  if (!plan.hasLong) return o;
  const out: Obj = { ...o };
  for (const f of plan.fields) {
    const v = o[f.name];
    if (v === undefined || v === null) continue;
    if (f.kind !== K.Long && (f.sub === undefined || !f.sub.hasLong)) continue;
    const fp = `${path}.${f.name}`;
    if (f.repeated) {
      if (!Array.isArray(v)) throw invalid(fp, `expected an array, got ${show(v)}`);
      const res = new Array<unknown>(v.length);
      for (let i = 0; i < v.length; i++) res[i] = scalarToWire(f, v[i], `${fp}[${i}]`);
      out[f.name] = res;
    } else if (f.map) {
      if (typeof v !== 'object') throw invalid(fp, `expected an object, got ${show(v)}`);
      const res: Obj = {};
      for (const k of Object.keys(v)) res[k] = scalarToWire(f, (v as Obj)[k], `${fp}[${JSON.stringify(k)}]`);
      out[f.name] = res;
    } else {
      out[f.name] = scalarToWire(f, v, fp);
    }
  }
  return out;
}

const reader = protobuf.Reader;

function rawDecode(type: protobuf.Type, plan: Plan, buf: Uint8Array): Obj {
  if (!(buf instanceof Uint8Array)) throw new ProtocolError(`expected bytes, got ${show(buf)}`, { kind: 'malformed' });
  let m: protobuf.Message;
  try {
    const r = reader.create(buf);
    r.discardUnknown = true;
    m = type.decode(r);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new ProtocolError(`malformed ${type.name} (${buf.length} bytes): ${why}`, { kind: 'malformed', cause: err });
  }
  try {
    return fromWire(plan, m as unknown as Obj);
  } catch (err) {
    throw new ProtocolError(`malformed ${type.name}: ${err instanceof Error ? err.message : String(err)}`, {
      kind: 'malformed',
      cause: err,
    });
  }
}

function rawEncode(type: protobuf.Type, plan: Plan, msg: unknown, path: string): Buffer {
  if (msg === null || typeof msg !== 'object') throw invalid(path, `expected a ${type.name} object, got ${show(msg)}`);
  const wire = toWire(plan, msg as Obj, path);
  try {
    return type.encode(wire).finish() as Buffer;
  } catch (err) {
    throw new ProtocolError(`cannot encode ${type.name}: ${err instanceof Error ? err.message : String(err)}`, {
      field: path,
      cause: err,
    });
  }
}

interface Codec<T> {
  type: protobuf.Type;
  plan: Plan;
  encode(msg: T, path: string): Buffer;
  decode(buf: Uint8Array): T;
}

function codecOf<N extends ProtoMessageName>(name: N): Codec<ProtoMessages[N]> {
  const type = typeOf(name);
  const plan = planOf(type);
  return {
    type,
    plan,
    encode: (msg, path) => rawEncode(type, plan, msg, path),
    decode: (buf) => rawDecode(type, plan, buf) as unknown as ProtoMessages[N],
  };
}

const agentMessageCodec = codecOf('AgentMessage');
const collectorMessageCodec = codecOf('CollectorMessage');
const whoRequestCodec = codecOf('WhoRequest');
const whoResponseCodec = codecOf('WhoResponse');
const etpRequestCodec = codecOf('EtpRequest');
const etpResponseCodec = codecOf('EtpResponse');

// ---------------------------------------------------------------------------------------------
// Contract validation. Field paths use the proto (snake_case) names: they are the contract's.
// The happy path allocates nothing (it runs for every event); paths are built only on failure.

interface Problem {
  field: string;
  message: string;
  kind?: ProtocolErrorKind;
}

function addressProblem(a: unknown, field: string): Problem | undefined {
  if (!(a instanceof Uint8Array)) return { field, message: `expected an address as bytes, got ${show(a)}` };
  if (a.length !== 4 && a.length !== 16) return { field, message: `address must be 4 (IPv4) or 16 (IPv6) bytes, got ${a.length}` };
  return undefined;
}

function portProblem(p: unknown, field: string): Problem | undefined {
  if (typeof p === 'number' && p >= 0 && p <= 65535 && Number.isInteger(p)) return undefined;
  return { field, message: `port must be an integer 0..65535, got ${show(p)}` };
}

function isUint32(v: unknown): boolean {
  return typeof v === 'number' && v >>> 0 === v;
}

function isUint64(v: unknown): boolean {
  if (typeof v === 'bigint') return v >= 0n && v < U64_LIMIT;
  return typeof v === 'number' && v >= 0 && Number.isSafeInteger(v);
}

// Bounds beyond the wire types: what the collector can store (DateTime64(9) ends in 2262; counters
// are kept as JS numbers) and what a real peer sends. A value past them is refused with its field
// named, where it would otherwise fail the store's insert of every agent's batch, again and again.
/** Latest timestamp a DateTime64(9) column holds (2262-04-11T23:47:16.854775807Z). */
export const MAX_TS_NS = (1n << 63n) - 1n;
const MAX_COUNTER = BigInt(Number.MAX_SAFE_INTEGER);
/** Node, agent and collector names: a Kubernetes node name is a DNS subdomain (253). */
export const MAX_NAME_LENGTH = 253;
/** Interface names (Linux: 15). */
export const MAX_IFNAME_LENGTH = 64;
export const MAX_VERSION_LENGTH = 128;
export const MAX_NODE_ADDRESSES = 1024;
/** Loss stages per report (an agent has about ten) and the length of a stage's name. */
export const MAX_LOSS_STAGES = 256;
export const MAX_STAGE_NAME_LENGTH = 64;
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f]/;

function isTimestamp(v: unknown): boolean {
  if (typeof v === 'bigint') return v >= 0n && v <= MAX_TS_NS;
  return typeof v === 'number' && v >= 0 && Number.isSafeInteger(v);
}

function isCounter(v: unknown): boolean {
  if (typeof v === 'bigint') return v >= 0n && v <= MAX_COUNTER;
  return typeof v === 'number' && v >= 0 && Number.isSafeInteger(v);
}

/** A name of at most `max` characters; `printable`: no control characters either. */
function nameProblem(v: unknown, field: string, max: number, printable: boolean): Problem | undefined {
  if (typeof v !== 'string') return { field, message: `expected a string, got ${show(v)}` };
  if (v.length > max) return { field, message: `${v.length} characters, at most ${max} allowed` };
  if (printable && CONTROL_CHARACTER.test(v)) return { field, message: `${show(v)} contains a control character` };
  return undefined;
}

function tupleProblem(t: Tuple, which: string): Problem | undefined {
  if (t === null || typeof t !== 'object') return { field: which, message: `expected a Tuple, got ${show(t)}` };
  return (
    addressProblem(t.src, `${which}.src`) ??
    addressProblem(t.dst, `${which}.dst`) ??
    portProblem(t.sport, `${which}.sport`) ??
    portProblem(t.dport, `${which}.dport`)
  );
}

const HOP_KIND_NAMES: Readonly<Record<number, string>> = { 1: 'CONN', 2: 'DROP', 3: 'END', 4: 'PROXY' };

function hopEventProblem(ev: HopEvent): Problem | undefined {
  if (ev === null || typeof ev !== 'object') return { field: '', message: `expected a HopEvent, got ${show(ev)}` };
  const kind = ev.kind as unknown;
  if (typeof kind !== 'number' || !isHopKind(kind)) return { field: 'kind', message: `unknown HopKind ${show(kind)}` };
  if (kind === HopKind.UNSPECIFIED) return { field: 'kind', message: 'HopKind is UNSPECIFIED (0): must be CONN, DROP, END or PROXY' };
  if (ev.ipProto !== 6 && ev.ipProto !== 17) return { field: 'ip_proto', message: `must be 6 (TCP) or 17 (UDP), got ${show(ev.ipProto)}` };
  if (ev.orig === undefined || ev.orig === null) return { field: 'orig', message: 'missing (every hop has its original tuple)' };
  const o = tupleProblem(ev.orig, 'orig');
  if (o) return o;
  if (ev.reply === undefined || ev.reply === null) {
    if (kind !== HopKind.DROP) return { field: 'reply', message: `missing (required on ${HOP_KIND_NAMES[kind]} hops)` };
  } else {
    const r = tupleProblem(ev.reply, 'reply');
    if (r) return r;
  }
  if (!isUint32(ev.ctStatus)) return { field: 'ct_status', message: `expected a uint32, got ${show(ev.ctStatus)}` };
  if (!isUint32(ev.tcpIsn)) return { field: 'tcp_isn', message: `expected a uint32, got ${show(ev.tcpIsn)}` };
  if (typeof ev.ifname !== 'string' || ev.ifname.length > MAX_IFNAME_LENGTH) return nameProblem(ev.ifname, 'ifname', MAX_IFNAME_LENGTH, false);
  if (typeof ev.node !== 'string' || ev.node.length > MAX_NAME_LENGTH) return nameProblem(ev.node, 'node', MAX_NAME_LENGTH, false);
  if (!isTimestamp(ev.tsNs)) return { field: 'ts_ns', message: `expected nanoseconds since 1970 up to 2^63-1 (year 2262), got ${show(ev.tsNs)}` };
  if (!isCounter(ev.packetsOrig)) return { field: 'packets_orig', message: `expected a counter below 2^53, got ${show(ev.packetsOrig)}` };
  if (!isCounter(ev.bytesOrig)) return { field: 'bytes_orig', message: `expected a counter below 2^53, got ${show(ev.bytesOrig)}` };
  if (!isCounter(ev.packetsReply)) return { field: 'packets_reply', message: `expected a counter below 2^53, got ${show(ev.packetsReply)}` };
  if (!isCounter(ev.bytesReply)) return { field: 'bytes_reply', message: `expected a counter below 2^53, got ${show(ev.bytesReply)}` };
  const pv = ev.proxyVersion ?? 0;
  if (kind === HopKind.PROXY ? pv !== 1 && pv !== 2 : pv !== 0) {
    return { field: 'proxy_version', message: kind === HopKind.PROXY ? `must be 1 or 2 on PROXY hops, got ${show(pv)}` : `set on a ${HOP_KIND_NAMES[kind]} hop (only PROXY hops carry it)` };
  }
  if (kind === HopKind.PROXY && ev.ipProto !== 6) return { field: 'ip_proto', message: 'PROXY hops are TCP (6)' };
  return undefined;
}

function raise(path: string, p: Problem): never {
  throw invalid(p.field === '' ? path : `${path}.${p.field}`, p.message, p.kind);
}

/** Throws ProtocolError when ev breaks the HopEvent contract. */
export function validateHopEvent(ev: HopEvent, path = 'event'): void {
  const p = hopEventProblem(ev);
  if (p) raise(path, p);
}

/** Throws ProtocolError when h breaks the Hello contract (including protocol_version != 1). */
export function validateHello(h: Hello, path = 'hello'): void {
  if (h === null || typeof h !== 'object') throw invalid(path, `expected a Hello, got ${show(h)}`);
  if (h.protocolVersion !== PROTOCOL_VERSION) {
    throw invalid(
      `${path}.protocol_version`,
      `unsupported protocol version ${show(h.protocolVersion)} (this build speaks ${PROTOCOL_VERSION})`,
      'unsupported_version',
    );
  }
  const named = (v: unknown, field: string, max: number): void => {
    const p = nameProblem(v, field, max, true);
    if (p) raise(path, p);
  };
  named(h.forwardedBy, 'forwarded_by', MAX_NAME_LENGTH);
  named(h.node, 'node', MAX_NAME_LENGTH);
  // A forwarding collector has no node of its own: its events name theirs (HopEvent.node).
  if (h.node === '' && h.forwardedBy === '') throw invalid(`${path}.node`, 'missing node name (required unless forwarded_by is set)');
  if (typeof h.agentId !== 'string' || h.agentId === '') throw invalid(`${path}.agent_id`, 'missing agent id');
  named(h.agentId, 'agent_id', MAX_NAME_LENGTH);
  named(h.version, 'version', MAX_VERSION_LENGTH);
  if (!Array.isArray(h.nodeAddresses)) throw invalid(`${path}.node_addresses`, `expected an array, got ${show(h.nodeAddresses)}`);
  if (h.nodeAddresses.length > MAX_NODE_ADDRESSES) throw invalid(`${path}.node_addresses`, `${h.nodeAddresses.length} addresses, at most ${MAX_NODE_ADDRESSES} allowed`);
  h.nodeAddresses.forEach((a, i) => {
    const p = addressProblem(a, `node_addresses[${i}]`);
    if (p) raise(path, p);
  });
}

function checkLoss(l: LossReport, path: string): void {
  if (l === null || typeof l !== 'object') throw invalid(path, `expected a LossReport, got ${show(l)}`);
  if (l.lost === null || typeof l.lost !== 'object') throw invalid(`${path}.lost`, `expected a map, got ${show(l.lost)}`);
  const stages = Object.entries(l.lost);
  if (stages.length > MAX_LOSS_STAGES) throw invalid(`${path}.lost`, `${stages.length} stages, at most ${MAX_LOSS_STAGES} allowed`);
  for (const [k, v] of stages) {
    const p = nameProblem(k, `lost[${JSON.stringify(k.slice(0, 40))}]`, MAX_STAGE_NAME_LENGTH, true);
    if (p) raise(path, { ...p, message: `stage name: ${p.message}` });
    if (!isCounter(v)) throw invalid(`${path}.lost[${JSON.stringify(k)}]`, `expected a counter below 2^53, got ${show(v)}`);
  }
  if (!isCounter(l.captured)) throw invalid(`${path}.captured`, `expected a counter below 2^53, got ${show(l.captured)}`);
  for (const [v, field] of [[l.node, 'node'], [l.agentId, 'agent_id']] as const) {
    const p = v === undefined ? undefined : nameProblem(v, field, MAX_NAME_LENGTH, true);
    if (p) raise(path, p);
  }
  const perCpu = l.ringbufFullPerCpu ?? {};
  if (perCpu === null || typeof perCpu !== 'object') throw invalid(`${path}.ringbuf_full_per_cpu`, `expected a map, got ${show(perCpu)}`);
  const cpus = Object.entries(perCpu);
  if (cpus.length > MAX_CPUS_PER_REPORT) throw invalid(`${path}.ringbuf_full_per_cpu`, `${cpus.length} CPUs, more than ${MAX_CPUS_PER_REPORT}`, 'too_large');
  for (const [cpu, n] of cpus) {
    const at = `${path}.ringbuf_full_per_cpu[${JSON.stringify(cpu)}]`;
    if (!/^\d{1,10}$/.test(cpu) || !isUint32(Number(cpu))) throw invalid(at, 'the key must be a CPU number (uint32)');
    if (!isCounter(n)) throw invalid(at, `expected a counter below 2^53, got ${show(n)}`);
  }
  const gaps = l.gaps ?? [];
  if (!Array.isArray(gaps)) throw invalid(`${path}.gaps`, `expected an array, got ${show(gaps)}`);
  if (gaps.length > MAX_GAPS_PER_REPORT) throw invalid(`${path}.gaps`, `${gaps.length} gaps, more than ${MAX_GAPS_PER_REPORT}`, 'too_large');
  gaps.forEach((g, i) => checkCaptureGap(g, `${path}.gaps[${i}]`));
}

/** An agent reports the gaps it found at start (one, usually); more than this is hostile. */
const MAX_GAPS_PER_REPORT = 64;
/** Linux's NR_CPUS is at most 8192. */
const MAX_CPUS_PER_REPORT = 8192;
const GAP_CAUSES = new Set(['crashed', 'stopped', 'failed']);

function checkCaptureGap(g: CaptureGap, path: string): void {
  if (g === null || typeof g !== 'object') throw invalid(path, `expected a CaptureGap, got ${show(g)}`);
  if (!isUint64(g.fromNs)) throw invalid(`${path}.from_ns`, `expected a uint64, got ${show(g.fromNs)}`);
  if (!isUint64(g.toNs)) throw invalid(`${path}.to_ns`, `expected a uint64, got ${show(g.toNs)}`);
  if (BigInt(g.fromNs) > BigInt(g.toNs)) throw invalid(path, `from_ns ${g.fromNs} is after to_ns ${g.toNs}`);
  if (!GAP_CAUSES.has(g.cause)) throw invalid(`${path}.cause`, `must be crashed, stopped or failed, got ${show(g.cause)}`);
  if (typeof g.reason !== 'string' || g.reason.length > 1024) throw invalid(`${path}.reason`, 'expected a string of at most 1024 characters');
  if (!isUint32(g.previousPid)) throw invalid(`${path}.previous_pid`, `expected a uint32, got ${show(g.previousPid)}`);
}

export interface BatchLimits {
  /** Largest batch accepted (events); more is a ProtocolError of kind too_large. Default: no limit. */
  maxBatchEvents?: number;
}

function tooLarge(path: string, n: number, max: number, batchSeq?: bigint): ProtocolError {
  return new ProtocolError(`batch of ${n}${batchSeq === undefined ? '' : ' or more'} events exceeds the maximum of ${max}`, {
    field: `${path}.events`,
    kind: 'too_large',
    batchSeq,
  });
}

/** Throws ProtocolError when b breaks the EventBatch contract or exceeds limits. */
export function validateEventBatch(b: EventBatch, limits: BatchLimits = {}, path = 'batch'): void {
  if (b === null || typeof b !== 'object') throw invalid(path, `expected an EventBatch, got ${show(b)}`);
  if (typeof b.seq !== 'bigint' || b.seq < 1n || b.seq >= U64_LIMIT) throw invalid(`${path}.seq`, `must be >= 1, got ${show(b.seq)}`);
  if (!Array.isArray(b.events)) throw invalid(`${path}.events`, `expected an array, got ${show(b.events)}`);
  const max = limits.maxBatchEvents;
  if (max !== undefined && b.events.length > max) throw tooLarge(path, b.events.length, max);
  const events = b.events;
  for (let i = 0; i < events.length; i++) {
    const p = hopEventProblem(events[i] as HopEvent);
    if (p) raise(`${path}.events[${i}]`, p);
  }
  if (b.loss !== undefined && b.loss !== null) checkLoss(b.loss, `${path}.loss`);
  const readings = b.healthChecks ?? [];
  if (!Array.isArray(readings)) throw invalid(`${path}.health_checks`, `expected an array, got ${show(readings)}`);
  readings.forEach((h, i) => checkHealthCheck(h, `${path}.health_checks[${i}]`));
}

function checkHealthCheck(h: HealthCheckReading, path: string): void {
  if (h === null || typeof h !== 'object') throw invalid(path, `expected a HealthCheckReading, got ${show(h)}`);
  if (!isTimestamp(h.tsNs)) throw invalid(`${path}.ts_ns`, `expected nanoseconds since 1970 up to 2^63-1 (year 2262), got ${show(h.tsNs)}`);
  if (typeof h.namespace !== 'string' || h.namespace === '') throw invalid(`${path}.namespace`, 'missing Service namespace');
  if (typeof h.service !== 'string' || h.service === '') throw invalid(`${path}.service`, 'missing Service name');
  for (const [v, field] of [[h.namespace, 'namespace'], [h.service, 'service'], [h.node, 'node']] as const) {
    const p = nameProblem(v, field, MAX_NAME_LENGTH, true);
    if (p) raise(path, p);
  }
  if (!isUint32(h.port) || h.port < 1 || h.port > 65535) throw invalid(`${path}.port`, `must be a port (1-65535), got ${show(h.port)}`);
  if (!isUint32(h.statusCode) || h.statusCode > 999) throw invalid(`${path}.status_code`, `must be an HTTP status or 0, got ${show(h.statusCode)}`);
  if (!Number.isInteger(h.localEndpoints) || h.localEndpoints < -1) throw invalid(`${path}.local_endpoints`, `must be -1 or more, got ${show(h.localEndpoints)}`);
  if (typeof h.error !== 'string' || h.error.length > 1024) throw invalid(`${path}.error`, 'expected a string of at most 1024 characters');
  if (typeof h.node !== 'string') throw invalid(`${path}.node`, `expected a string, got ${show(h.node)}`);
}

/** Throws ProtocolError unless msg is exactly one valid Hello or EventBatch (within limits). */
export function validateAgentMessage(msg: AgentMessage, limits: BatchLimits = {}): void {
  if (msg === null || typeof msg !== 'object') throw invalid('AgentMessage', `expected an object, got ${show(msg)}`);
  const hasHello = msg.hello !== undefined && msg.hello !== null;
  const hasBatch = msg.batch !== undefined && msg.batch !== null;
  if (hasHello && hasBatch) throw invalid('body', 'AgentMessage sets both hello and batch');
  if (hasHello) validateHello(msg.hello as Hello);
  else if (hasBatch) validateEventBatch(msg.batch as EventBatch, limits);
  else throw invalid('body', 'empty AgentMessage: neither hello nor batch is set');
}

/** Throws ProtocolError unless msg is exactly one Welcome or Ack (ack.seq >= 1). */
export function validateCollectorMessage(msg: CollectorMessage): void {
  if (msg.welcome !== undefined && msg.ack !== undefined) throw invalid('body', 'CollectorMessage sets both welcome and ack');
  const which = collectorMessageBodyCase(msg);
  if (which === 'welcome') {
    const w = msg.welcome as Welcome;
    if (!isUint32(w.protocolVersion)) throw invalid('welcome.protocol_version', `expected a uint32, got ${show(w.protocolVersion)}`);
    if (!isUint32(w.maxBatchEvents)) throw invalid('welcome.max_batch_events', `expected a uint32, got ${show(w.maxBatchEvents)}`);
    if (typeof w.collectorId !== 'string') throw invalid('welcome.collector_id', `expected a string, got ${show(w.collectorId)}`);
  } else if (which === 'ack') {
    const seq = msg.ack?.seq;
    if (typeof seq !== 'bigint' || seq < 1n) throw invalid('ack.seq', `must be >= 1, got ${show(seq)}`);
  } else {
    throw invalid('body', 'empty CollectorMessage: neither welcome nor ack is set');
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-coded wire format of the hot path: AgentMessage, EventBatch, HopEvent, Tuple. Going
// through protobufjs costs ~2.6 us per event each way (Long objects, then conversion to bigint);
// this is several times faster. Hello and LossReport inside still go through protobufjs. The
// unit test checks HAND_CODED_FIELDS against the descriptor: a proto change fails it until this
// code follows.

/** Fields this hand-coded path reads and writes, as `name=number:type`; must match the descriptor. */
export const HAND_CODED_FIELDS: Readonly<Record<string, readonly string[]>> = {
  AgentMessage: ['hello=1:Hello', 'batch=2:EventBatch'],
  EventBatch: ['seq=1:uint64', 'events=2:repeated HopEvent', 'loss=3:LossReport', 'batchId=4:uint64', 'healthChecks=5:repeated HealthCheckReading'],
  HopEvent: [
    'kind=1:HopKind', 'tsNs=2:fixed64', 'ipProto=3:uint32', 'orig=4:Tuple', 'reply=5:Tuple', 'ctStatus=6:uint32',
    'tcpIsn=7:uint32', 'hasIsn=8:bool', 'ifname=9:string', 'deliveredLocal=10:bool', 'packetsOrig=11:uint64',
    'bytesOrig=12:uint64', 'packetsReply=13:uint64', 'bytesReply=14:uint64', 'node=15:string',
    'proxyVersion=16:uint32',
  ],
  Tuple: ['src=1:bytes', 'dst=2:bytes', 'sport=3:uint32', 'dport=4:uint32'],
};

const helloType = typeOf('Hello');
const helloPlan = planOf(helloType);
const lossType = typeOf('LossReport');
const lossPlan = planOf(lossType);
const healthType = typeOf('HealthCheckReading');
const healthPlan = planOf(healthType);
/** Readings per batch: an agent takes a few per Service per interval; more is hostile. */
export const MAX_HEALTH_CHECKS_PER_BATCH = 10_000;
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
const EMPTY_BUFFER = Buffer.alloc(0);

// bigint <-> two uint32 words through one 8-byte scratch: one native conversion instead of BigInt
// shifts and masks (the difference is most of the cost of a 64-bit field).
const scratch64 = new BigUint64Array(1);
const scratch32 = new Uint32Array(scratch64.buffer);
const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
const W_LO = LITTLE_ENDIAN ? 0 : 1;
const W_HI = LITTLE_ENDIAN ? 1 : 0;

function bigFromWords(lo: number, hi: number): bigint {
  if (hi === 0) return BigInt(lo);
  if (hi < 0x200000) return BigInt(hi * TWO_32 + lo);
  scratch32[W_LO] = lo;
  scratch32[W_HI] = hi;
  return scratch64[0] as bigint;
}

// Short strings (interface names, node names) repeat endlessly: decode each distinct byte
// sequence once. Direct-mapped by a hash of the bytes; a collision just decodes again.
const STRING_CACHE_SLOTS = 256;
const stringCacheBytes: Array<Uint8Array | undefined> = new Array(STRING_CACHE_SLOTS);
const stringCacheText: string[] = new Array<string>(STRING_CACHE_SLOTS).fill('');

function cachedAscii(buf: Buffer, start: number, stop: number): string {
  let h = 0x811c9dc5;
  for (let i = start; i < stop; i++) h = Math.imul(h ^ (buf[i] as number), 0x01000193);
  const slot = (h >>> 0) & (STRING_CACHE_SLOTS - 1);
  const cached = stringCacheBytes[slot];
  const len = stop - start;
  if (cached !== undefined && cached.length === len) {
    let same = true;
    for (let i = 0; i < len; i++) {
      if (cached[i] !== buf[start + i]) {
        same = false;
        break;
      }
    }
    if (same) return stringCacheText[slot] as string;
  }
  const text = buf.toString('latin1', start, stop);
  stringCacheBytes[slot] = Uint8Array.prototype.slice.call(buf, start, stop);
  stringCacheText[slot] = text;
  return text;
}

function malformed(message: string): ProtocolError {
  return new ProtocolError(message, { kind: 'malformed' });
}

/** Bounds-checked protobuf reader over one Buffer; every failure is a ProtocolError. */
class WireReader {
  constructor(
    readonly buf: Buffer,
    public pos: number,
  ) {}

  varint32(end: number): number {
    const buf = this.buf;
    let pos = this.pos;
    let v = 0;
    for (let shift = 0; shift < 70; shift += 7) {
      if (pos >= end) throw malformed(`truncated varint at byte ${pos}`);
      const b = buf[pos++] as number;
      if (shift < 32) v |= (b & 0x7f) << shift;
      if (b < 0x80) {
        this.pos = pos;
        return v >>> 0;
      }
    }
    throw malformed(`varint longer than 10 bytes at byte ${this.pos}`);
  }

  varint64(end: number): bigint {
    const buf = this.buf;
    let pos = this.pos;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (pos >= end) throw malformed(`truncated varint at byte ${pos}`);
      const b = buf[pos++] as number;
      if (i < 4) lo |= (b & 0x7f) << (7 * i);
      else if (i === 4) {
        lo |= (b & 0x0f) << 28;
        hi |= (b & 0x7f) >> 4;
      } else hi |= (b & 0x7f) << (7 * i - 32);
      if (b < 0x80) {
        this.pos = pos;
        return bigFromWords(lo >>> 0, hi >>> 0);
      }
    }
    throw malformed(`varint longer than 10 bytes at byte ${this.pos}`);
  }

  fixed64(end: number): bigint {
    if (this.pos + 8 > end) throw malformed(`truncated fixed64 at byte ${this.pos}`);
    const lo = this.buf.readUInt32LE(this.pos);
    const hi = this.buf.readUInt32LE(this.pos + 4);
    this.pos += 8;
    return bigFromWords(lo, hi);
  }

  /** Reads a length prefix; returns where the delimited bytes end. */
  delimited(end: number): number {
    const len = this.varint32(end);
    const stop = this.pos + len;
    if (stop > end) throw malformed(`length ${len} at byte ${this.pos} runs past the end of its message`);
    return stop;
  }

  /** Short values (addresses) are copied: cheaper than a view, and they do not pin the message. */
  bytes(end: number): Uint8Array {
    const stop = this.delimited(end);
    const start = this.pos;
    this.pos = stop;
    const len = stop - start;
    if (len > 16) return this.buf.subarray(start, stop);
    const out = new Uint8Array(len);
    const buf = this.buf;
    for (let i = 0; i < len; i++) out[i] = buf[start + i] as number;
    return out;
  }

  string(end: number): string {
    const stop = this.delimited(end);
    const buf = this.buf;
    const start = this.pos;
    this.pos = stop;
    for (let i = start; i < stop; i++) {
      if ((buf[i] as number) >= 0x80) {
        try {
          return strictUtf8.decode(buf.subarray(start, stop));
        } catch (err) {
          throw new ProtocolError(`invalid UTF-8 in a string at byte ${start}`, { kind: 'malformed', cause: err });
        }
      }
    }
    return stop - start <= 64 ? cachedAscii(buf, start, stop) : buf.toString('latin1', start, stop);
  }

  skip(wireType: number, end: number): void {
    switch (wireType) {
      case 0:
        this.varint32(end);
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.pos = this.delimited(end);
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw malformed(`unsupported wire type ${wireType} at byte ${this.pos}`);
    }
    if (this.pos > end) throw malformed('truncated field');
  }

  /** Next tag; 0 when at end. */
  tag(end: number): number {
    if (this.pos >= end) return 0;
    const at = this.pos;
    const t = this.varint32(end);
    if (t >>> 3 === 0) throw malformed(`field number 0 at byte ${at}`);
    return t;
  }
}

function readTuple(r: WireReader, end: number): Tuple {
  const t: Tuple = { src: EMPTY_BYTES, dst: EMPTY_BYTES, sport: 0, dport: 0 };
  for (let tag = r.tag(end); tag !== 0; tag = r.tag(end)) {
    switch (tag) {
      case 0x0a:
        t.src = r.bytes(end);
        break;
      case 0x12:
        t.dst = r.bytes(end);
        break;
      case 0x18:
        t.sport = r.varint32(end);
        break;
      case 0x20:
        t.dport = r.varint32(end);
        break;
      default:
        r.skip(tag & 7, end);
    }
  }
  return t;
}

function readHopEvent(r: WireReader, end: number): HopEvent {
  const ev: HopEvent = {
    kind: 0,
    tsNs: 0n,
    ipProto: 0,
    orig: undefined,
    reply: undefined,
    ctStatus: 0,
    tcpIsn: 0,
    hasIsn: false,
    ifname: '',
    deliveredLocal: false,
    packetsOrig: 0n,
    bytesOrig: 0n,
    packetsReply: 0n,
    bytesReply: 0n,
    node: '',
    proxyVersion: 0,
  };
  for (let tag = r.tag(end); tag !== 0; tag = r.tag(end)) {
    switch (tag) {
      case 0x08:
        ev.kind = r.varint32(end) as HopKind; // int32 on the wire: out-of-range values fail validation
        break;
      case 0x11:
        ev.tsNs = r.fixed64(end);
        break;
      case 0x18:
        ev.ipProto = r.varint32(end);
        break;
      case 0x22: {
        const stop = r.delimited(end);
        ev.orig = readTuple(r, stop);
        break;
      }
      case 0x2a: {
        const stop = r.delimited(end);
        ev.reply = readTuple(r, stop);
        break;
      }
      case 0x30:
        ev.ctStatus = r.varint32(end);
        break;
      case 0x38:
        ev.tcpIsn = r.varint32(end);
        break;
      case 0x40:
        ev.hasIsn = r.varint32(end) !== 0;
        break;
      case 0x4a:
        ev.ifname = r.string(end);
        break;
      case 0x50:
        ev.deliveredLocal = r.varint32(end) !== 0;
        break;
      case 0x58:
        ev.packetsOrig = r.varint64(end);
        break;
      case 0x60:
        ev.bytesOrig = r.varint64(end);
        break;
      case 0x68:
        ev.packetsReply = r.varint64(end);
        break;
      case 0x70:
        ev.bytesReply = r.varint64(end);
        break;
      case 0x7a:
        ev.node = r.string(end);
        break;
      case 0x80: // field 16, varint: the tag's varint is 0x80 0x01 = 128
        ev.proxyVersion = r.varint32(end);
        break;
      default:
        r.skip(tag & 7, end);
    }
  }
  return ev;
}

function readEventBatch(r: WireReader, end: number, maxEvents: number): EventBatch {
  const b: EventBatch = { seq: 0n, events: [], loss: undefined, batchId: 0n, healthChecks: [] };
  for (let tag = r.tag(end); tag !== 0; tag = r.tag(end)) {
    switch (tag) {
      case 0x08:
        b.seq = r.varint64(end);
        break;
      case 0x12: {
        // Checked while decoding: a hostile 16 MiB of empty events must not become 8M objects.
        if (b.events.length >= maxEvents) throw tooLarge('batch', b.events.length + 1, maxEvents, b.seq > 0n ? b.seq : undefined);
        const stop = r.delimited(end);
        b.events.push(readHopEvent(r, stop));
        break;
      }
      case 0x20:
        b.batchId = r.varint64(end);
        break;
      case 0x1a: {
        const stop = r.delimited(end);
        b.loss = rawDecode(lossType, lossPlan, r.buf.subarray(r.pos, stop)) as unknown as LossReport;
        r.pos = stop;
        break;
      }
      case 0x2a: {
        if (b.healthChecks.length >= MAX_HEALTH_CHECKS_PER_BATCH) {
          throw new ProtocolError(`more than ${MAX_HEALTH_CHECKS_PER_BATCH} health-check readings in one batch`, { field: 'batch.health_checks', kind: 'too_large', batchSeq: b.seq > 0n ? b.seq : undefined });
        }
        const stop = r.delimited(end);
        b.healthChecks.push(rawDecode(healthType, healthPlan, r.buf.subarray(r.pos, stop)) as unknown as HealthCheckReading);
        r.pos = stop;
        break;
      }
      default:
        r.skip(tag & 7, end);
    }
  }
  return b;
}

function asBuffer(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
}

function readAgentMessage(input: Uint8Array, limits: BatchLimits): AgentMessage {
  if (!(input instanceof Uint8Array)) throw malformed(`expected bytes, got ${show(input)}`);
  const buf = asBuffer(input);
  const r = new WireReader(buf, 0);
  const end = buf.length;
  const msg: AgentMessage = {};
  const maxEvents = limits.maxBatchEvents ?? Number.POSITIVE_INFINITY;
  for (let tag = r.tag(end); tag !== 0; tag = r.tag(end)) {
    switch (tag) {
      case 0x0a: {
        const stop = r.delimited(end);
        msg.hello = rawDecode(helloType, helloPlan, buf.subarray(r.pos, stop)) as unknown as Hello;
        r.pos = stop;
        break;
      }
      case 0x12: {
        const stop = r.delimited(end);
        msg.batch = readEventBatch(r, stop, maxEvents);
        break;
      }
      default:
        r.skip(tag & 7, end);
    }
  }
  return msg;
}

// Writer side: one pass to size every length-delimited part, one to write into a single Buffer.

let LO = 0;
let HI = 0;

/** Splits a uint64 (bigint or safe integer number) into LO/HI. */
function split64(v: bigint | number): void {
  if (typeof v === 'number') {
    LO = v >>> 0;
    HI = ((v - LO) / TWO_32) >>> 0;
  } else if (v <= MAX_SAFE_BIG && v >= 0n) {
    const n = Number(v);
    LO = n >>> 0;
    HI = ((n - LO) / TWO_32) >>> 0;
  } else {
    scratch64[0] = v; // modulo 2^64, like protobuf; validation rejects out-of-range values first
    LO = scratch32[W_LO] as number;
    HI = scratch32[W_HI] as number;
  }
}

function varint32Len(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/** Length of the varint in LO/HI. */
function varint64Len(): number {
  if (HI === 0) return varint32Len(LO);
  return HI < 0x8 ? 5 : HI < 0x400 ? 6 : HI < 0x20000 ? 7 : HI < 0x1000000 ? 8 : HI < 0x80000000 ? 9 : 10;
}

function u64Len(v: bigint | number): number {
  split64(v);
  return varint64Len();
}

function isZero64(v: bigint | number): boolean {
  return v === 0n || v === 0;
}

// UTF-8 of the short strings written per event (interface and node names), encoded once.
const utf8Cache = new Map<string, Buffer>();

function utf8Of(s: string): Buffer {
  let b = utf8Cache.get(s);
  if (b === undefined) {
    if (utf8Cache.size >= 4096) utf8Cache.clear();
    b = Buffer.from(s, 'utf8');
    if (s.length <= 64) utf8Cache.set(s, b);
  }
  return b;
}

function tupleLen(t: Tuple): number {
  let n = 0;
  const sl = t.src.length;
  if (sl) n += 1 + varint32Len(sl) + sl;
  const dl = t.dst.length;
  if (dl) n += 1 + varint32Len(dl) + dl;
  if (t.sport) n += 1 + varint32Len(t.sport);
  if (t.dport) n += 1 + varint32Len(t.dport);
  return n;
}

function enumLen(v: number): number {
  return v < 0 ? 10 : varint32Len(v);
}

function hopEventLen(ev: HopEvent, origLen: number, replyLen: number): number {
  let n = 0;
  if (ev.kind) n += 1 + enumLen(ev.kind);
  if (!isZero64(ev.tsNs)) n += 9;
  if (ev.ipProto) n += 1 + varint32Len(ev.ipProto);
  if (origLen >= 0) n += 1 + varint32Len(origLen) + origLen;
  if (replyLen >= 0) n += 1 + varint32Len(replyLen) + replyLen;
  if (ev.ctStatus) n += 1 + varint32Len(ev.ctStatus);
  if (ev.tcpIsn) n += 1 + varint32Len(ev.tcpIsn);
  if (ev.hasIsn) n += 2;
  if (ev.ifname.length) {
    const l = utf8Of(ev.ifname).length;
    n += 1 + varint32Len(l) + l;
  }
  if (ev.deliveredLocal) n += 2;
  if (!isZero64(ev.packetsOrig)) n += 1 + u64Len(ev.packetsOrig);
  if (!isZero64(ev.bytesOrig)) n += 1 + u64Len(ev.bytesOrig);
  if (!isZero64(ev.packetsReply)) n += 1 + u64Len(ev.packetsReply);
  if (!isZero64(ev.bytesReply)) n += 1 + u64Len(ev.bytesReply);
  if (ev.node.length) {
    const l = utf8Of(ev.node).length;
    n += 1 + varint32Len(l) + l;
  }
  if (ev.proxyVersion) n += 2 + varint32Len(ev.proxyVersion);
  return n;
}

class WireWriter {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  varint32(v: number): void {
    const buf = this.buf;
    let pos = this.pos;
    while (v > 0x7f) {
      buf[pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[pos++] = v;
    this.pos = pos;
  }

  /** Writes the varint in LO/HI. */
  varint64(): void {
    if (HI === 0) {
      this.varint32(LO);
      return;
    }
    const buf = this.buf;
    let pos = this.pos;
    let lo = LO;
    let hi = HI;
    while (hi !== 0 || lo > 0x7f) {
      buf[pos++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    buf[pos++] = lo;
    this.pos = pos;
  }

  u64(tag: number, v: bigint | number): void {
    if (isZero64(v)) return;
    this.buf[this.pos++] = tag;
    split64(v);
    this.varint64();
  }

  uint32(tag: number, v: number): void {
    if (!v) return;
    this.buf[this.pos++] = tag;
    this.varint32(v);
  }

  bytes(tag: number, b: Uint8Array): void {
    const len = b.length;
    if (!len) return;
    this.buf[this.pos++] = tag;
    this.varint32(len);
    if (len <= 16) {
      const buf = this.buf;
      let pos = this.pos;
      for (let i = 0; i < len; i++) buf[pos++] = b[i] as number;
      this.pos = pos;
    } else {
      this.buf.set(b, this.pos);
      this.pos += len;
    }
  }

  string(tag: number, s: string): void {
    if (!s.length) return;
    this.bytes(tag, utf8Of(s));
  }

  tuple(tag: number, t: Tuple, len: number): void {
    this.buf[this.pos++] = tag;
    this.varint32(len);
    this.bytes(0x0a, t.src);
    this.bytes(0x12, t.dst);
    this.uint32(0x18, t.sport);
    this.uint32(0x20, t.dport);
  }

  raw(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

let sizes = new Int32Array(3 * 1024);

function writeBatchMessage(batch: EventBatch): Buffer {
  const events = batch.events;
  const n = events.length;
  if (sizes.length < 3 * n) sizes = new Int32Array(3 * n);
  let batchLen = (isZero64(batch.seq) ? 0 : 1 + u64Len(batch.seq)) + (isZero64(batch.batchId ?? 0n) ? 0 : 1 + u64Len(batch.batchId));
  for (let i = 0; i < n; i++) {
    const ev = events[i] as HopEvent;
    const o = ev.orig ? tupleLen(ev.orig) : -1;
    const r = ev.reply ? tupleLen(ev.reply) : -1;
    const e = hopEventLen(ev, o, r);
    sizes[3 * i] = o;
    sizes[3 * i + 1] = r;
    sizes[3 * i + 2] = e;
    batchLen += 1 + varint32Len(e) + e;
  }
  const loss = batch.loss ? rawEncode(lossType, lossPlan, batch.loss, 'batch.loss') : EMPTY_BUFFER;
  if (batch.loss) batchLen += 1 + varint32Len(loss.length) + loss.length;
  const readings = batch.healthChecks ?? [];
  const health = readings.map((h, i) => rawEncode(healthType, healthPlan, h, `batch.health_checks[${i}]`));
  for (const h of health) batchLen += 1 + varint32Len(h.length) + h.length;
  const w = new WireWriter(Buffer.allocUnsafe(1 + varint32Len(batchLen) + batchLen));
  w.buf[w.pos++] = 0x12; // AgentMessage.batch
  w.varint32(batchLen);
  w.u64(0x08, batch.seq);
  w.u64(0x20, batch.batchId ?? 0n);
  for (let i = 0; i < n; i++) {
    const ev = events[i] as HopEvent;
    w.buf[w.pos++] = 0x12; // EventBatch.events
    w.varint32(sizes[3 * i + 2] as number);
    if (ev.kind) {
      w.buf[w.pos++] = 0x08;
      if (ev.kind < 0) {
        LO = ev.kind >>> 0;
        HI = 0xffffffff;
        w.varint64();
      } else w.varint32(ev.kind);
    }
    if (!isZero64(ev.tsNs)) {
      w.buf[w.pos++] = 0x11;
      split64(ev.tsNs);
      w.buf.writeUInt32LE(LO, w.pos);
      w.buf.writeUInt32LE(HI, w.pos + 4);
      w.pos += 8;
    }
    w.uint32(0x18, ev.ipProto);
    if (ev.orig) w.tuple(0x22, ev.orig, sizes[3 * i] as number);
    if (ev.reply) w.tuple(0x2a, ev.reply, sizes[3 * i + 1] as number);
    w.uint32(0x30, ev.ctStatus);
    w.uint32(0x38, ev.tcpIsn);
    if (ev.hasIsn) {
      w.buf[w.pos++] = 0x40;
      w.buf[w.pos++] = 1;
    }
    w.string(0x4a, ev.ifname);
    if (ev.deliveredLocal) {
      w.buf[w.pos++] = 0x50;
      w.buf[w.pos++] = 1;
    }
    w.u64(0x58, ev.packetsOrig);
    w.u64(0x60, ev.bytesOrig);
    w.u64(0x68, ev.packetsReply);
    w.u64(0x70, ev.bytesReply);
    w.string(0x7a, ev.node);
    if (ev.proxyVersion) {
      w.buf[w.pos++] = 0x80;
      w.buf[w.pos++] = 0x01;
      w.varint32(ev.proxyVersion);
    }
  }
  if (batch.loss) {
    w.buf[w.pos++] = 0x1a;
    w.varint32(loss.length);
    w.raw(loss);
  }
  for (const h of health) {
    w.buf[w.pos++] = 0x2a;
    w.varint32(h.length);
    w.raw(h);
  }
  if (w.pos !== w.buf.length) throw new Error(`codec bug: wrote ${w.pos} of ${w.buf.length} bytes`);
  return w.buf;
}

// ---------------------------------------------------------------------------------------------
// Public encode/decode.

export interface EncodeOptions {
  /** Check the contract before encoding (default true). Off only for events already validated, or in tests. */
  validate?: boolean;
}

export type DecodeOptions = BatchLimits;

export function encodeAgentMessage(msg: AgentMessage, opts: EncodeOptions = {}): Buffer {
  if (opts.validate !== false) validateAgentMessage(msg, {});
  try {
    if (msg.batch !== undefined && msg.batch !== null && (msg.hello === undefined || msg.hello === null)) return writeBatchMessage(msg.batch);
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    throw new ProtocolError(`cannot encode AgentMessage: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return agentMessageCodec.encode(msg, 'AgentMessage');
}

/**
 * Decodes without contract checks (structure only, plus limits.maxBatchEvents, enforced while
 * decoding); validateAgentMessage does the rest. For servers that want the batch seq of an invalid batch.
 */
export function parseAgentMessage(buf: Uint8Array, limits: BatchLimits = {}): AgentMessage {
  try {
    return readAgentMessage(buf, limits);
  } catch (err) {
    if (err instanceof ProtocolError && err.kind !== 'malformed') throw err;
    const why = err instanceof Error ? err.message : String(err);
    const size = buf instanceof Uint8Array ? ` (${buf.length} bytes)` : '';
    throw new ProtocolError(`malformed AgentMessage${size}: ${why}`, { kind: 'malformed', cause: err });
  }
}

/** Decodes and validates; ProtocolError for anything else than a valid Hello or EventBatch. */
export function decodeAgentMessage(buf: Uint8Array, opts: DecodeOptions = {}): AgentMessage {
  const msg = parseAgentMessage(buf, opts);
  validateAgentMessage(msg, opts);
  return msg;
}

export function encodeCollectorMessage(msg: CollectorMessage, opts: EncodeOptions = {}): Buffer {
  if (opts.validate !== false) validateCollectorMessage(msg);
  return collectorMessageCodec.encode(msg, 'CollectorMessage');
}

/** Decodes and validates (one body set, ack.seq >= 1). Welcome's protocol_version is the caller's to judge. */
export function decodeCollectorMessage(buf: Uint8Array): CollectorMessage {
  const msg = collectorMessageCodec.decode(buf);
  validateCollectorMessage(msg);
  return msg;
}

export function encodeWhoRequest(req: WhoRequest): Buffer {
  return whoRequestCodec.encode(req, 'WhoRequest');
}

export function decodeWhoRequest(buf: Uint8Array): WhoRequest {
  return whoRequestCodec.decode(buf);
}

export function encodeWhoResponse(res: WhoResponse): Buffer {
  return whoResponseCodec.encode(res, 'WhoResponse');
}

export function decodeWhoResponse(buf: Uint8Array): WhoResponse {
  return whoResponseCodec.decode(buf);
}

export function encodeEtpRequest(req: EtpRequest): Buffer {
  return etpRequestCodec.encode(req, 'EtpRequest');
}

export function decodeEtpRequest(buf: Uint8Array): EtpRequest {
  return etpRequestCodec.decode(buf);
}

export function encodeEtpResponse(res: EtpResponse): Buffer {
  return etpResponseCodec.encode(res, 'EtpResponse');
}

export function decodeEtpResponse(buf: Uint8Array): EtpResponse {
  return etpResponseCodec.decode(buf);
}

/** Any natlens.v1 message through protobufjs, structure only (no contract checks): for tools and tests. */
export function encodeMessage<N extends ProtoMessageName>(name: N, msg: ProtoMessages[N]): Buffer {
  const type = typeOf(name);
  return rawEncode(type, planOf(type), msg, name);
}

/** Any natlens.v1 message through protobufjs, structure only (no contract checks); ProtocolError when malformed. */
export function decodeMessage<N extends ProtoMessageName>(name: N, buf: Uint8Array): ProtoMessages[N] {
  const type = typeOf(name);
  return rawDecode(type, planOf(type), buf) as unknown as ProtoMessages[N];
}
