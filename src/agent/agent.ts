/**
 * The node agent: chooses a capture mode from the kernel's features, runs the probe in the node's
 * network namespace, and turns records into AgentEvents.
 */
import { EventEmitter } from 'node:events';
import { probeFeatures, planCapture } from '../probe/features.js';
import { ProbeProcess, ProbeError, type CaptureMode, type ProbeOptions, type ProbeStatus } from '../probe/probe-process.js';
import { decodeRecord, isProxyRecord, type ProbeRecord, type ProxyRecord, type StatsRecord } from '../probe/record-decoder.js';
import { NL_HEADER, NlRecordKind } from '../probe/record-layout.generated.js';
import {
  classifyProxyBytes, countProxyOutcome, formatPerCpu, formatTimestamp, newProxyCounts, toAgentEvent, toProxyEvent, toStatsEvent,
  type AgentEvent, type GapCause, type GapEvent, type StatsEvent,
} from './events.js';

/** A time this node's namespace was not captured (see GapEvent), with exact nanoseconds. */
export interface CaptureGap {
  fromNs: bigint;
  toNs: bigint;
  cause: GapCause;
  reason: string;
  previousPid: number;
}

const GAP_CAUSES: readonly string[] = ['crashed', 'stopped', 'failed'] satisfies GapCause[];

/** The probe's gap status line as a CaptureGap, or null when it is not one. */
export function captureGapOf(s: ProbeStatus): CaptureGap | null {
  if (s.event !== 'gap' || typeof s.from_ns !== 'string' || typeof s.to_ns !== 'string' || !/^\d+$/.test(s.from_ns) || !/^\d+$/.test(s.to_ns)) return null;
  const fromNs = BigInt(s.from_ns);
  const toNs = BigInt(s.to_ns);
  if (fromNs > toNs) return null;
  const cause = GAP_CAUSES.includes(s.cause as string) ? (s.cause as GapCause) : 'crashed';
  return { fromNs, toNs, cause, reason: typeof s.reason === 'string' ? s.reason : '', previousPid: typeof s.previous_pid === 'number' ? s.previous_pid : 0 };
}

export function toGapEvent(g: CaptureGap, node: string): GapEvent {
  return {
    type: 'gap', node, from: formatTimestamp(g.fromNs), to: formatTimestamp(g.toNs), cause: g.cause, reason: g.reason,
    previous_pid: g.previousPid, ts: formatTimestamp(g.toNs),
  };
}

export interface AgentOptions extends Omit<ProbeOptions, 'mode'> {
  node: string;
  mode: CaptureMode | 'auto';
  /** Emit a stats event at least this often (and whenever a loss counter moves). */
  statsIntervalMs: number;
  /** Report the PROXY protocol headers that open TCP connections to pods (default true). */
  proxyProtocol?: boolean;
}

/** Records the agent took from the probe, by kind (ct_new counts as conn; undecodable ones are not counted). */
export interface CapturedCounts {
  conn: number;
  drop: number;
  end: number;
  proxy: number;
}

/** Record kind byte -> CapturedCounts key. */
const CAPTURED_KIND: Array<keyof CapturedCounts | undefined> = [];
CAPTURED_KIND[NlRecordKind.CONN] = 'conn';
CAPTURED_KIND[NlRecordKind.CT_NEW] = 'conn';
CAPTURED_KIND[NlRecordKind.DROP] = 'drop';
CAPTURED_KIND[NlRecordKind.END] = 'end';
CAPTURED_KIND[NlRecordKind.PROXY] = 'proxy';

/** Events: 'event' (AgentEvent), 'warn' (string), 'exit' (code). */
export class Agent extends EventEmitter {
  private probe: ProbeProcess | undefined;
  private lastStats: StatsRecord | undefined;
  private lastEmittedStats: StatsRecord | undefined;
  private lastStatsEmit = 0;
  private lastLostTotal = 0;
  /** Cumulative ring-buffer loss by CPU, from the probe's CPU_LOSS records. */
  private readonly ringbufFullPerCpu: number[] = [];
  /** Times this namespace was not captured before this agent started (reported once, after ready). */
  readonly gaps: CaptureGap[] = [];
  /** PROXY records by outcome: reported, or counted as local / truncated / invalid. */
  private readonly proxyCounts = newProxyCounts();
  mode: CaptureMode | undefined;
  /** Set before start() to receive flow records as raw bytes instead of 'event' objects (see ProbeProcess.flowSink). */
  flowSink: ((buf: Buffer, offset: number) => void) | undefined;
  /** Records taken from the probe, by kind. */
  readonly captured: CapturedCounts = { conn: 0, drop: 0, end: 0, proxy: 0 };
  /** Probes started (more than one: the probe was restarted). */
  probeStarts = 0;
  /** Capture is live: the probe reported ready and has not exited. */
  attached = false;

  constructor(readonly options: AgentOptions) {
    super();
  }

  async start(): Promise<void> {
    let mode = this.options.mode;
    if (mode === 'auto') {
      const plan = planCapture(await probeFeatures({ binary: this.options.binary, object: this.options.object }));
      if (plan.mode === null) throw new ProbeError(`capture cannot run on this kernel: ${plan.reasons.join('; ')} (run 'natlens doctor')`);
      for (const r of plan.reasons) this.emit('warn', r);
      mode = plan.mode;
    }
    this.mode = mode;
    const probe = new ProbeProcess({ ...this.options, mode });
    const sink = this.flowSink;
    // PROXY records reach the sink only when their header names a client; the rest is counted here.
    probe.flowSink = sink && ((buf, off) => {
      const kind = CAPTURED_KIND[buf[off + NL_HEADER.kind.offset]!];
      if (!isProxyRecord(buf, off) || this.admitProxy(buf, off)) sink(buf, off);
      if (kind) this.captured[kind]++; // after the sink: a record it could not decode is not captured
    });
    this.probe = probe;
    probe.on('record', (rec: ProbeRecord) => this.onRecord(rec));
    probe.on('status', (s: ProbeStatus) => {
      if (s.event === 'warn' || s.event === 'error') this.emit('warn', `${s.what ? `${s.what}: ` : ''}${s.msg ?? JSON.stringify(s)}`);
      const gap = captureGapOf(s);
      if (gap) this.gaps.push(gap);
    });
    probe.on('exit', (code: number | null) => {
      this.attached = false;
      this.emitStats(true);
      this.emit('exit', code);
    });
    this.probeStarts++;
    const ready = await probe.start();
    this.attached = true;
    this.emit('event', {
      type: 'ready', node: this.options.node, mode, ts: formatTimestamp(BigInt(Date.now()) * 1_000_000n),
      interfaces: (ready.ifaces ?? []).map((i) => i.ifname),
    } satisfies AgentEvent);
    for (const gap of this.gaps) {
      this.emit('warn', `not capturing from ${formatTimestamp(gap.fromNs)} to ${formatTimestamp(gap.toNs)}: ${gap.reason}`);
      this.emit('event', toGapEvent(gap, this.options.node));
    }
  }

  private onRecord(rec: ProbeRecord): void {
    if (rec.kind === 'stats') {
      this.warnRingLoss(rec);
      this.lastStats = rec;
      this.emitStats(false);
      return;
    }
    if (rec.kind === 'cpu_loss') {
      rec.ringbufFull.forEach((n, i) => { this.ringbufFullPerCpu[rec.cpuFirst + i] = n; });
      for (let cpu = 0; cpu < rec.cpuTotal; cpu++) this.ringbufFullPerCpu[cpu] ??= 0;
      return;
    }
    this.captured[rec.kind === 'ct_new' ? 'conn' : rec.kind]++;
    const ifname = (i: number): string | null => this.probe?.interfaces.get(i) ?? null;
    if (rec.kind === 'proxy') {
      const ev = this.proxyEvent(rec, ifname);
      if (ev) this.emit('event', ev);
      return;
    }
    this.emit('event', toAgentEvent(rec, this.options.node, ifname));
  }

  /** The proxy event of a PROXY record, counting its outcome; null when there is nothing to report. */
  private proxyEvent(rec: ProxyRecord, ifname: (i: number) => string | null): AgentEvent | null {
    // Disabled: nothing is reported. (natlens-probe --no-proxy-protocol keeps the kernel from producing
    // them at all, once ProbeOptions passes it on; this also covers a probe that was not told.)
    if (this.options.proxyProtocol === false) return null;
    const outcome = classifyProxyBytes(rec.bytes);
    countProxyOutcome(this.proxyCounts, outcome);
    return toProxyEvent(rec, this.options.node, ifname, outcome);
  }

  /** Flow-sink path: whether the PROXY record at `off` goes to the sink (its outcome is counted either way). Throws RecordDecodeError. */
  private admitProxy(buf: Buffer, off: number): boolean {
    return this.proxyEvent(decodeRecord(buf, off) as ProxyRecord, () => null) !== null;
  }

  /** Interfaces the probe is attached to. */
  get interfaceCount(): number {
    return this.probe?.interfaces.size ?? 0;
  }

  /** Name of an attached interface, or null. */
  interfaceName(ifindex: number): string | null {
    return this.probe?.interfaces.get(ifindex) ?? null;
  }

  /** The latest counters as a stats event (null before the probe's first stats record). */
  stats(): StatsEvent | null {
    return this.lastStats ? toStatsEvent(this.lastStats, this.options.node, this.probe?.decodeErrors ?? 0, this.proxyCounts, this.ringbufFullPerCpu) : null;
  }

  /** Ring-buffer loss is never silent: a warning whenever it grows (at most once per probe stats record). */
  private warnRingLoss(rec: StatsRecord): void {
    const before = this.lastStats?.counters.ringbuf_full ?? 0;
    const now = rec.counters.ringbuf_full;
    if (now <= before) return;
    const perCpu: Record<string, number> = {};
    this.ringbufFullPerCpu.forEach((n, cpu) => { if (n > 0) perCpu[cpu] = n; });
    this.emit('warn', `kernel ring buffer full: ${now - before} events lost (${now} since start; ${formatPerCpu(perCpu)}); ` +
      'raise --ring-kb, or drain more often (--drain, --wakeup-kb)');
  }

  private emitStats(force: boolean): void {
    const ev = this.stats();
    if (!ev) return;
    const now = Date.now();
    if (this.lastStats === this.lastEmittedStats) return; // nothing new since the last stats event
    if (force || ev.lost.total !== this.lastLostTotal || now - this.lastStatsEmit >= this.options.statsIntervalMs) {
      this.lastEmittedStats = this.lastStats;
      this.lastLostTotal = ev.lost.total;
      this.lastStatsEmit = now;
      this.emit('event', ev);
    }
  }

  pause(): void {
    this.probe?.pause();
  }

  resume(): void {
    this.probe?.resume();
  }

  get probePid(): number | undefined {
    return this.probe?.pid;
  }

  /** Detaches (the probe removes its filters on SIGTERM) and waits for the probe to exit. */
  async stop(): Promise<void> {
    await this.probe?.stop();
  }

  wait(): Promise<number | null> {
    return this.probe?.wait() ?? Promise.resolve(null);
  }
}
