/**
 * Spawns and supervises natlens-probe, the libbpf CLI. The only code in natlens that talks to it:
 * arguments in, fixed-size records (stdout) and JSON status lines (stderr) out.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createInterface } from 'node:readline';
import { existsSync } from 'node:fs';
import { BPF_OBJECT, PROBE_BIN } from '../util/paths.js';
import { NatlensError } from '../util/errors.js';
import { RecordFramer } from './record-stream.js';
import { decodeRecord, isControlRecord, NL_RECORD_SIZE, RecordDecodeError, type ProbeRecord } from './record-decoder.js';

export type CaptureMode = 'tc' | 'ctnetlink';

export interface ProbeOptions {
  /** Network namespace to capture in (a path such as /run/netns/NAME); the probe enters it, we stay put. */
  netns?: string;
  mode: CaptureMode;
  /** Only interfaces whose name matches (POSIX extended regex); default all but lo. */
  ifaces?: string;
  exclude?: string;
  udp?: boolean;
  /** Track connection attempts on ingress to report drops. */
  attempts?: boolean;
  /** Report connection ends (ctnetlink DESTROY) with counters. */
  ctEnd?: boolean;
  /** Watch the first data segment of new TCP connections for PROXY protocol headers (default on). */
  proxyProtocol?: boolean;
  ringKb?: number;
  wakeupKb?: number;
  drainMs?: number;
  statsMs?: number;
  dropAfterMs?: number;
  lockDir?: string;
  binary?: string;
  object?: string;
}

/** One JSON status line from the probe's stderr. */
export interface ProbeStatus {
  event: 'ready' | 'attached' | 'detached' | 'warn' | 'error' | string;
  ifindex?: number;
  ifname?: string;
  ifaces?: { ifindex: number; ifname: string }[];
  mode?: string;
  msg?: string;
  what?: string;
  errno?: number;
  [key: string]: unknown;
}

export class ProbeError extends NatlensError {}
/** Another agent already captures in that network namespace (the probe's exit code 3). */
export class ProbeLockedError extends ProbeError {}

export function probeArgs(opts: ProbeOptions): string[] {
  const args = ['run', '--obj', opts.object ?? BPF_OBJECT, '--mode', opts.mode];
  if (opts.netns) args.push('--netns', opts.netns);
  if (opts.ifaces) args.push('--ifaces', opts.ifaces);
  if (opts.exclude) args.push('--exclude', opts.exclude);
  if (opts.udp === false) args.push('--no-udp');
  if (opts.attempts === false) args.push('--no-attempts');
  if (opts.ctEnd === false) args.push('--no-ct-end');
  if (opts.proxyProtocol === false) args.push('--no-proxy-protocol');
  const numeric: [keyof ProbeOptions, string][] = [
    ['ringKb', '--ring-kb'], ['wakeupKb', '--wakeup-kb'], ['drainMs', '--drain-ms'],
    ['statsMs', '--stats-ms'], ['dropAfterMs', '--drop-after-ms'],
  ];
  for (const [key, flag] of numeric) {
    const v = opts[key];
    if (v !== undefined) args.push(flag, String(v));
  }
  if (opts.lockDir) args.push('--lock-dir', opts.lockDir);
  return args;
}

/**
 * Events: 'record' (ProbeRecord), 'status' (ProbeStatus), 'decode-error' (RecordDecodeError, index of
 * the record in the stream from 0), 'exit' (code, signal).
 */
export class ProbeProcess extends EventEmitter {
  readonly interfaces = new Map<number, string>();
  /** Records dropped because they could not be decoded (counted, never silent). */
  decodeErrors = 0;
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> | undefined;
  private readonly errors: ProbeStatus[] = [];
  /**
   * When set, flow records (not stats) go here as raw bytes instead of being decoded into
   * 'record' events: the hot path for sinks that encode straight from the bytes. It throws
   * RecordDecodeError for a bad record, which is counted like any decode error.
   */
  flowSink: ((buf: Buffer, offset: number) => void) | undefined;

  constructor(readonly options: ProbeOptions) {
    super();
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts the probe; resolves with its 'ready' status once capture is live. */
  start(): Promise<ProbeStatus> {
    const binary = this.options.binary ?? PROBE_BIN;
    if (!existsSync(binary)) {
      return Promise.reject(new ProbeError(`natlens-probe not found at ${binary}: run 'npm run build' (or 'npm run setup' on a fresh machine)`));
    }
    const child = spawn(binary, probeArgs(this.options), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    const framer = new RecordFramer();
    let recordIndex = 0;
    // A bad record is counted and skipped; the records after it still come out.
    const rejected = (err: unknown, index: number): void => {
      if (!(err instanceof RecordDecodeError)) throw err;
      this.decodeErrors++;
      this.emit('decode-error', err, index);
    };
    child.stdout!.on('data', (chunk: Buffer) => {
      framer.push(chunk, (buf, off) => {
        const index = recordIndex++;
        if (this.flowSink && !isControlRecord(buf, off)) {
          try {
            this.flowSink(buf, off);
          } catch (err) {
            rejected(err, index);
          }
          return;
        }
        let rec: ProbeRecord;
        try {
          rec = decodeRecord(buf, off);
        } catch (err) {
          rejected(err, index);
          return;
        }
        this.emit('record', rec);
      });
    });
    this.exited = new Promise((resolve) => child.on('close', (code, signal) => {
      if (framer.pendingBytes > 0) {
        rejected(new RecordDecodeError(`the stream ended inside record ${recordIndex}: ${framer.pendingBytes} of ${NL_RECORD_SIZE} bytes`), recordIndex);
      }
      this.emit('exit', code, signal);
      resolve(code);
    }));

    return new Promise((resolve, reject) => {
      let ready = false;
      child.on('error', (err) => reject(new ProbeError(`cannot start ${binary}`, { cause: err })));
      createInterface({ input: child.stderr! }).on('line', (line) => {
        const status = parseStatus(line);
        if (status.event === 'attached' && status.ifindex !== undefined) this.interfaces.set(status.ifindex, status.ifname ?? `if${status.ifindex}`);
        if (status.event === 'detached' && status.ifindex !== undefined && ready) this.interfaces.delete(status.ifindex);
        if (status.event === 'ready') {
          for (const i of status.ifaces ?? []) this.interfaces.set(i.ifindex, i.ifname);
          ready = true;
          resolve(status);
        }
        if (status.event === 'error') this.errors.push(status);
        this.emit('status', status);
      });
      void this.exited!.then((code) => {
        if (ready) return;
        const detail = this.errors.map((e) => `${e.what ?? 'probe'}: ${e.msg ?? ''}`).join('; ') || `exit code ${code}`;
        const where = this.options.netns ? ` in ${this.options.netns}` : '';
        if (code === 3) reject(new ProbeLockedError(`another natlens agent is already capturing${where}: ${detail}`, { exitCode: 3 }));
        else reject(new ProbeError(`natlens-probe failed to start capture${where} (mode ${this.options.mode}): ${detail}`));
      });
    });
  }

  /** Backpressure: stop reading records (the probe blocks on write; the kernel counts what it cannot buffer). */
  pause(): void {
    this.child?.stdout?.pause();
  }

  resume(): void {
    this.child?.stdout?.resume();
  }

  /** SIGTERM (the probe detaches its filters), then SIGKILL if it does not exit in time. */
  async stop(timeoutMs = 5000): Promise<number | null> {
    const child = this.child;
    if (!child || !this.exited) return null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Resolves when the probe exits, with its exit code. */
  wait(): Promise<number | null> {
    return this.exited ?? Promise.resolve(null);
  }
}

function parseStatus(line: string): ProbeStatus {
  try {
    const v = JSON.parse(line) as unknown;
    if (v && typeof v === 'object' && typeof (v as ProbeStatus).event === 'string') return v as ProbeStatus;
  } catch {
    // fall through: libbpf or libc may print plain text
  }
  return { event: 'warn', msg: line };
}
