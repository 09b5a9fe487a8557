/**
 * The agent side of natlens.v1.AgentService.Stream (also used by a collector forwarding events to
 * the peer that owns them).
 *
 * Delivery is at-least-once: a batch is forgotten only when the collector acks it; when a stream
 * breaks, every unacked batch is resent on the next stream, in order, under new seqs. A batch the
 * collector stored but whose ack was lost is therefore sent twice; the collector dedupes by event
 * identity. Capture never waits: push() drops the newest events beyond maxQueuedEvents (queued plus
 * unacked) and counts them as queue_overflow in the LossReport every batch carries.
 */
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { NatlensError, describeError } from '../util/errors.js';
import {
  PROTOCOL_VERSION,
  ProtocolError,
  decodeCollectorMessage,
  encodeAgentMessage,
  validateHello,
  validateHopEvent,
} from './codec.js';
import {
  AgentServiceRawClient,
  DEFAULT_MAX_MESSAGE_BYTES,
  REJECTED_SEQ_TRAILER,
  channelOptions,
  clientCredentials,
} from './grpc-services.js';
import type { CaptureGap, HealthCheckReading, Hello, HopEvent, LossReport } from './proto.generated.js';
import type { TransportSecurity } from './tls.js';

export interface LossCounters {
  /** Cumulative events lost per stage since the agent started. */
  lost: Record<string, bigint | number>;
  /** Cumulative events captured (handed to push()) since the agent started. */
  captured: bigint | number;
  /** lost.ringbuf_full by CPU number (LossReport.ringbuf_full_per_cpu). */
  ringbufFullPerCpu?: Record<string, bigint | number>;
  /** Times the node was not captured before the agent started (LossReport.gaps). */
  gaps?: CaptureGap[];
}

export interface CollectorStreamClientOptions {
  /** host:port of the collector. */
  target: string;
  hello: { node: string; agentId: string; version: string; nodeAddresses: Uint8Array[]; forwardedBy?: string };
  /** Events per batch (the collector's Welcome may lower it). Default 1000. */
  maxBatchEvents?: number;
  /** A partly filled batch is sent after this long. Default 100 ms. */
  flushIntervalMs?: number;
  /** Bound on queued + unacked events; push() drops the newest beyond it. Default 200,000. */
  maxQueuedEvents?: number;
  /** Batches written but not yet acked, per stream. Default 64. */
  maxInflightBatches?: number;
  /** Reconnect backoff: doubles from initialMs to maxMs, with jitter. Default 100 ms -> 5 s. */
  reconnectBackoff?: { initialMs?: number; maxMs?: number };
  /** A stream whose Welcome does not arrive within this long is restarted. Default 10 s. */
  welcomeTimeoutMs?: number;
  /** Largest message the collector accepts; bigger batches are split. Default 16 MiB. */
  maxMessageBytes?: number;
  /** The capture's own loss counters; the client adds its own stages (queue_overflow, ...). */
  lossProvider?: () => LossCounters;
  /** Default: insecure. Prefer `security`. */
  credentials?: grpc.ChannelCredentials;
  /** Mutual TLS or plain text (tls.ts); the agent's and a forwarding collector's own certificate. */
  security?: TransportSecurity;
}

export interface CollectorStreamClientStats {
  /** Events waiting to be sent (open batch + send queue). */
  queuedEvents: number;
  /** Events sent on the current stream and not yet acked. */
  inflightEvents: number;
  ackedBatches: number;
  ackedEvents: number;
  /** Batch writes, resends included. */
  sentBatches: number;
  /** Events written in those batches, resends included. */
  sentEvents: number;
  /** Events push() dropped because the queue was full (queue_overflow). */
  overflowEvents: number;
  /** Events dropped because they break the contract (invalid_event) or the collector refused them (collector_rejected). */
  rejectedEvents: number;
  /** Successful connections after the first (a Welcome on a later stream). */
  reconnects: number;
  connected: boolean;
}

/** The client was closed before the batch was acked. */
export class StreamClosedError extends NatlensError {}

interface Completion {
  remaining: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Batch {
  /** Stable across resends (EventBatch.batch_id): lets the collector skip a batch it already stored. */
  id: bigint;
  events: HopEvent[];
  /** Health-check readings ride with the events they were taken among (and are resent with them). */
  healthChecks?: HealthCheckReading[];
  /** Set for send() batches: settled when every part is acked. */
  done?: Completion;
}

interface Stream {
  call: grpc.ClientDuplexStream<Buffer, Buffer>;
  welcomed: boolean;
  /** seq -> batch, in seq (write) order. */
  inflight: Map<bigint, Batch>;
  nextSeq: bigint;
  waitingDrain: boolean;
  welcomeTimer: NodeJS.Timeout | undefined;
}

let lastBatchId = 0n;
/** Batch ids only need to be unique per client (per agent_id); a process-wide counter is. */
function nextBatchId(): bigint {
  return ++lastBatchId;
}

/** Unsent health-check readings held at most (see pushHealthCheck). */
const MAX_OPEN_HEALTH_CHECKS = 1000;

function splitBatch(b: Batch, size: number): Batch[] {
  const parts: Batch[] = [];
  // The refused batch was not stored: its parts are new batches.
  for (let i = 0; i < b.events.length; i += size) parts.push({ id: nextBatchId(), events: b.events.slice(i, i + size), done: b.done });
  if (parts[0] && b.healthChecks) parts[0].healthChecks = b.healthChecks;
  if (b.done) b.done.remaining += parts.length - 1;
  return parts;
}

function toBig(v: bigint | number): bigint {
  if (typeof v === 'bigint') return v;
  return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : 0n;
}

/**
 * Events: 'connected' ({ collectorId, maxBatchEvents }), 'disconnected' (reason: string,
 * { code?, connected }) for every stream that ends or fails to open, 'error' (Error) only for
 * programming errors (invalid events pushed, a throwing lossProvider), and only when listened to.
 */
export class CollectorStreamClient extends EventEmitter {
  private readonly opts: Required<Omit<CollectorStreamClientOptions, 'lossProvider' | 'credentials' | 'security' | 'reconnectBackoff' | 'hello'>> & {
    backoffInitialMs: number;
    backoffMaxMs: number;
  };
  private readonly helloBuf: Buffer;
  private readonly client: AgentServiceRawClient;
  private readonly lossProvider: (() => LossCounters) | undefined;

  private open: HopEvent[] = [];
  private openHealth: HealthCheckReading[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  /** Batches waiting to be written, oldest first. */
  private pending: Batch[] = [];
  private pendingEvents = 0;
  private inflightEvents = 0;
  private stream: Stream | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private everConnected = false;
  private batchLimit: number;
  private closing = false;
  private closed = false;
  private drainWaiters: Array<() => void> = [];
  private pushed = 0;
  /** The client's loss counts in the last LossReport encoded. */
  private lossSent = { overflow: 0, invalid: 0, rejected: 0 };
  /** lossChanged() since the last LossReport encoded. */
  private lossDirty = false;
  private counters = { ackedBatches: 0, ackedEvents: 0, sentBatches: 0, sentEvents: 0, overflow: 0, invalid: 0, rejected: 0, reconnects: 0, healthOverflow: 0 };

  constructor(options: CollectorStreamClientOptions) {
    super();
    const positive = (name: string, v: number | undefined, dflt: number): number => {
      const n = v ?? dflt;
      if (!Number.isInteger(n) || n < 1) throw new NatlensError(`CollectorStreamClient: ${name} must be a positive integer, got ${v}`);
      return n;
    };
    this.opts = {
      target: options.target,
      maxBatchEvents: positive('maxBatchEvents', options.maxBatchEvents, 1000),
      flushIntervalMs: positive('flushIntervalMs', options.flushIntervalMs, 100),
      maxQueuedEvents: positive('maxQueuedEvents', options.maxQueuedEvents, 200_000),
      maxInflightBatches: positive('maxInflightBatches', options.maxInflightBatches, 64),
      welcomeTimeoutMs: positive('welcomeTimeoutMs', options.welcomeTimeoutMs, 10_000),
      maxMessageBytes: positive('maxMessageBytes', options.maxMessageBytes, DEFAULT_MAX_MESSAGE_BYTES),
      backoffInitialMs: positive('reconnectBackoff.initialMs', options.reconnectBackoff?.initialMs, 100),
      backoffMaxMs: positive('reconnectBackoff.maxMs', options.reconnectBackoff?.maxMs, 5_000),
    };
    this.batchLimit = this.opts.maxBatchEvents;
    this.lossProvider = options.lossProvider;
    const hello: Hello = {
      protocolVersion: PROTOCOL_VERSION,
      node: options.hello.node,
      agentId: options.hello.agentId,
      version: options.hello.version,
      nodeAddresses: options.hello.nodeAddresses,
      forwardedBy: options.hello.forwardedBy ?? '',
    };
    validateHello(hello); // a bad Hello is a programming error: fail at construction, not in a reconnect loop
    this.helloBuf = encodeAgentMessage({ hello }, { validate: false });
    this.client = new AgentServiceRawClient(
      options.target,
      options.credentials ?? clientCredentials(options.security),
      channelOptions({
        security: options.security,
        maxMessageBytes: this.opts.maxMessageBytes,
        initialReconnectBackoffMs: this.opts.backoffInitialMs,
        maxReconnectBackoffMs: this.opts.backoffMaxMs,
      }),
    );
    this.connect();
  }

  // ---- producer side -----------------------------------------------------------------------

  /** Queues one event. Never throws, never blocks: beyond maxQueuedEvents the event is dropped and counted. */
  push(event: HopEvent): void {
    if (this.closed) return;
    this.pushed++;
    if (this.open.length + this.pendingEvents + this.inflightEvents >= this.opts.maxQueuedEvents) {
      this.counters.overflow++;
      // The batches that will carry this count may all be written already (each carries the counts
      // of when it was written): a loss-only batch will, if nothing else goes first (see flush()).
      if (this.flushTimer === undefined) {
        this.flushTimer = setTimeout(() => {
          this.flushTimer = undefined;
          this.flush();
        }, this.opts.flushIntervalMs);
        this.flushTimer.unref();
      }
      return;
    }
    try {
      validateHopEvent(event);
    } catch (err) {
      this.counters.invalid++;
      this.programmingError(err);
      return;
    }
    this.open.push(event);
    if (this.open.length >= this.batchLimit) this.closeOpenBatch();
    else if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.closeOpenBatch();
      }, this.opts.flushIntervalMs);
      this.flushTimer.unref();
    }
  }

  /**
   * Queues events as their own batch(es), outside the push() bound, and resolves once the collector
   * acked all of them. Rejects with StreamClosedError on close() before that, with ProtocolError
   * when an event breaks the contract or the collector refuses the batch.
   */
  send(events: HopEvent[]): Promise<void> {
    if (this.closed || this.closing) return Promise.reject(new StreamClosedError('collector stream client is closed'));
    try {
      events.forEach((ev, i) => validateHopEvent(ev, `events[${i}]`));
    } catch (err) {
      return Promise.reject(err);
    }
    if (events.length === 0) return Promise.resolve();
    this.closeOpenBatch(false); // keeps push()ed events ahead of these
    return new Promise<void>((resolve, reject) => {
      const batch: Batch = { id: nextBatchId(), events: events.slice(), done: { remaining: 1, resolve, reject } };
      this.pending.push(batch);
      this.pendingEvents += batch.events.length;
      this.pump();
    });
  }

  /**
   * Queues a health-check reading for the next batch. Readings are few (one per Service with a
   * health-check node port per interval); past MAX_OPEN_HEALTH_CHECKS unsent, new ones are dropped
   * and counted (health_overflow).
   */
  pushHealthCheck(reading: HealthCheckReading): void {
    if (this.closed) return;
    if (this.openHealth.length >= MAX_OPEN_HEALTH_CHECKS) {
      this.counters.healthOverflow++;
      return;
    }
    this.openHealth.push(reading);
    if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.closeOpenBatch();
      }, this.opts.flushIntervalMs);
      this.flushTimer.unref();
    }
  }

  /**
   * Sends the partly filled batch now. When nothing is left to carry it, a batch without events
   * carries the client's latest loss counts (queue_overflow after the last batch went out).
   */
  flush(): void {
    this.closeOpenBatch(false);
    const c = this.counters;
    const sent = this.lossSent;
    if (this.pending.length === 0 && (this.lossDirty || c.overflow !== sent.overflow || c.invalid !== sent.invalid || c.rejected !== sent.rejected)) {
      this.pending.push({ id: nextBatchId(), events: [] });
    }
    this.pump();
  }

  stats(): CollectorStreamClientStats {
    return {
      queuedEvents: this.open.length + this.pendingEvents,
      inflightEvents: this.inflightEvents,
      ackedBatches: this.counters.ackedBatches,
      ackedEvents: this.counters.ackedEvents,
      sentBatches: this.counters.sentBatches,
      sentEvents: this.counters.sentEvents,
      overflowEvents: this.counters.overflow,
      rejectedEvents: this.counters.invalid + this.counters.rejected,
      reconnects: this.counters.reconnects,
      connected: this.stream?.welcomed === true,
    };
  }

  /**
   * Flushes, waits until everything is acked or drainTimeoutMs passes, then ends the stream and
   * the channel. Returns how many events were never acked (send() promises of those reject).
   */
  async close(opts: { drainTimeoutMs?: number } = {}): Promise<number> {
    if (this.closed) return 0;
    const timeoutMs = opts.drainTimeoutMs ?? 5_000;
    this.closing = true;
    this.flush();
    if (!this.idle() && timeoutMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, timeoutMs);
        this.drainWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.closed = true;
    const unacked = this.open.length + this.pendingEvents + this.inflightEvents;
    clearTimeout(this.flushTimer);
    clearTimeout(this.reconnectTimer);
    const s = this.stream;
    this.stream = undefined;
    if (s) {
      clearTimeout(s.welcomeTimer);
      s.call.removeAllListeners('data');
      s.call.on('error', () => {}); // the cancellation below reports CANCELLED: expected
      if (unacked === 0) s.call.end();
      else s.call.cancel();
      for (const b of s.inflight.values()) this.pending.unshift(b);
    }
    const err = new StreamClosedError(`collector stream client closed with ${unacked} events unacked`);
    const failed = new Set<Completion>();
    for (const b of this.pending) if (b.done && !failed.has(b.done)) failed.add(b.done);
    for (const c of failed) c.reject(err);
    this.pending = [];
    this.open = [];
    this.pendingEvents = 0;
    this.inflightEvents = 0;
    this.client.close();
    return unacked;
  }

  // ---- batching ----------------------------------------------------------------------------

  private closeOpenBatch(pump = true): void {
    if (this.flushTimer !== undefined) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
    }
    if (this.open.length === 0 && this.openHealth.length === 0) return;
    const events = this.open;
    this.open = [];
    const batch: Batch = { id: nextBatchId(), events };
    if (this.openHealth.length) {
      batch.healthChecks = this.openHealth;
      this.openHealth = [];
    }
    this.pending.push(batch);
    this.pendingEvents += events.length;
    if (pump) this.pump();
  }

  /**
   * The capture's loss counters moved (or it found a capture gap): send them soon even if no
   * event comes to carry them, so that a burst's loss or a restart's gap does not wait for traffic.
   */
  lossChanged(): void {
    if (this.closed) return;
    this.lossDirty = true;
    if (this.open.length === 0) this.flush();
  }

  private lossReport(): LossReport {
    const lost: Record<string, bigint> = {};
    const ringbufFullPerCpu: Record<string, bigint> = {};
    let gaps: CaptureGap[] = [];
    let captured = BigInt(this.pushed);
    this.lossDirty = false;
    if (this.lossProvider) {
      try {
        const l = this.lossProvider();
        for (const [k, v] of Object.entries(l.lost)) lost[k] = toBig(v);
        captured = toBig(l.captured);
        for (const [k, v] of Object.entries(l.ringbufFullPerCpu ?? {})) ringbufFullPerCpu[k] = toBig(v);
        gaps = l.gaps ?? [];
      } catch (err) {
        this.programmingError(err);
      }
    }
    this.lossSent = { overflow: this.counters.overflow, invalid: this.counters.invalid, rejected: this.counters.rejected };
    for (const [stage, n] of Object.entries(this.lossCounts())) if (n > 0) lost[stage] = (lost[stage] ?? 0n) + BigInt(n);
    return { lost, captured, node: '', agentId: '', ringbufFullPerCpu, gaps };
  }

  /** What this client lost, by stage, as its LossReports name the stages (cumulative). */
  lossCounts(): Record<'queue_overflow' | 'health_overflow' | 'invalid_event' | 'collector_rejected', number> {
    const c = this.counters;
    return { queue_overflow: c.overflow, health_overflow: c.healthOverflow, invalid_event: c.invalid, collector_rejected: c.rejected };
  }

  /** Writes pending batches while the stream is welcomed, writable and under the in-flight bound. */
  private pump(): void {
    const s = this.stream;
    if (!s || !s.welcomed || s.waitingDrain) return;
    while (this.pending.length > 0 && s.inflight.size < this.opts.maxInflightBatches) {
      let batch = this.pending[0] as Batch;
      if (batch.events.length > this.batchLimit) {
        this.pending.splice(0, 1, ...splitBatch(batch, this.batchLimit));
        batch = this.pending[0] as Batch;
      }
      const seq = s.nextSeq;
      let buf: Buffer;
      try {
        // Events were validated on the way in.
        buf = encodeAgentMessage(
          { batch: { seq, events: batch.events, loss: this.lossReport(), batchId: batch.id, healthChecks: batch.healthChecks ?? [] } },
          { validate: false },
        );
      } catch (err) {
        this.pending.shift();
        this.pendingEvents -= batch.events.length;
        this.dropBatch(batch, 'invalid', err);
        continue;
      }
      if (buf.length > this.opts.maxMessageBytes && batch.events.length > 1) {
        this.pending.splice(0, 1, ...splitBatch(batch, Math.ceil(batch.events.length / 2)));
        continue;
      }
      if (buf.length > this.opts.maxMessageBytes) {
        this.pending.shift();
        this.pendingEvents -= batch.events.length;
        this.dropBatch(batch, 'invalid', new ProtocolError(`one event encodes to ${buf.length} bytes, over the ${this.opts.maxMessageBytes}-byte message limit`));
        continue;
      }
      this.pending.shift();
      this.pendingEvents -= batch.events.length;
      this.inflightEvents += batch.events.length;
      s.inflight.set(seq, batch);
      s.nextSeq = seq + 1n;
      this.counters.sentBatches++;
      this.counters.sentEvents += batch.events.length;
      if (!s.call.write(buf)) {
        s.waitingDrain = true;
        s.call.once('drain', () => {
          s.waitingDrain = false;
          if (this.stream === s) this.pump();
        });
        return;
      }
    }
  }

  private dropBatch(batch: Batch, why: 'invalid' | 'rejected', err: unknown): void {
    if (why === 'invalid') this.counters.invalid += batch.events.length;
    else this.counters.rejected += batch.events.length;
    if (batch.done) {
      const e = err instanceof Error ? err : new ProtocolError(describeError(err));
      batch.done.reject(e);
      batch.done.remaining = Number.POSITIVE_INFINITY; // other parts of it must not resolve it
    }
    if (why === 'invalid') this.programmingError(err);
    this.checkDrained();
  }

  /** Nothing queued, nothing unacked (loss-only batches included). */
  private idle(): boolean {
    return this.open.length === 0 && this.pending.length === 0 && (this.stream === undefined || this.stream.inflight.size === 0);
  }

  private checkDrained(): void {
    if (!this.idle()) return;
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w();
  }

  // ---- stream lifecycle --------------------------------------------------------------------

  private connect(): void {
    if (this.closed) return;
    const call = this.client.Stream();
    const s: Stream = { call, welcomed: false, inflight: new Map(), nextSeq: 1n, waitingDrain: false, welcomeTimer: undefined };
    this.stream = s;
    s.welcomeTimer = setTimeout(() => this.streamDown(s, `no Welcome within ${this.opts.welcomeTimeoutMs} ms`), this.opts.welcomeTimeoutMs);
    s.welcomeTimer.unref();
    call.on('data', (buf: Buffer) => {
      try {
        this.onMessage(s, buf);
      } catch (err) {
        // Bugs only: onMessage handles every protocol problem itself.
        this.programmingError(err);
        this.streamDown(s, `internal error: ${describeError(err)}`);
      }
    });
    call.on('error', (err: grpc.ServiceError) => this.onStatus(s, err));
    call.on('status', (st: grpc.StatusObject) => this.onStatus(s, st));
    call.write(this.helloBuf);
  }

  private onMessage(s: Stream, buf: Buffer): void {
    if (this.stream !== s) return;
    let msg;
    try {
      msg = decodeCollectorMessage(buf);
    } catch (err) {
      this.streamDown(s, `collector sent an invalid message: ${describeError(err)}`);
      return;
    }
    if (msg.welcome) {
      if (s.welcomed) return;
      const w = msg.welcome;
      if (w.protocolVersion !== PROTOCOL_VERSION) {
        this.streamDown(s, `collector speaks protocol version ${w.protocolVersion}, this agent ${PROTOCOL_VERSION}`);
        return;
      }
      clearTimeout(s.welcomeTimer);
      s.welcomed = true;
      this.batchLimit = w.maxBatchEvents > 0 ? Math.min(this.opts.maxBatchEvents, w.maxBatchEvents) : this.opts.maxBatchEvents;
      if (this.everConnected) this.counters.reconnects++;
      this.everConnected = true;
      this.emit('connected', { collectorId: w.collectorId, maxBatchEvents: this.batchLimit });
      if (this.open.length >= this.batchLimit) this.closeOpenBatch(false);
      this.pump();
      return;
    }
    const ack = msg.ack;
    if (!ack) return;
    const batch = s.inflight.get(ack.seq);
    if (!batch) return; // unknown or repeated seq: nothing to forget
    s.inflight.delete(ack.seq);
    this.inflightEvents -= batch.events.length;
    this.counters.ackedBatches++;
    this.counters.ackedEvents += batch.events.length;
    this.attempt = 0; // the collector is storing: a later failure starts the backoff afresh
    if (batch.done && --batch.done.remaining === 0) batch.done.resolve();
    this.pump();
    this.checkDrained();
  }

  private onStatus(s: Stream, st: { code: grpc.status; details?: string; metadata?: grpc.Metadata }): void {
    if (this.stream !== s) return;
    const reason = `${grpc.status[st.code] ?? st.code}: ${st.details || 'stream ended'}`;
    // The collector names the batch it refused: drop it (or split it, if too large) rather than
    // resending it forever.
    const replace = new Map<bigint, Batch[]>();
    const named = st.metadata?.get(REJECTED_SEQ_TRAILER)[0];
    if (named !== undefined && (st.code === grpc.status.INVALID_ARGUMENT || st.code === grpc.status.RESOURCE_EXHAUSTED)) {
      const seq = /^[0-9]{1,20}$/.test(String(named)) ? BigInt(String(named)) : undefined;
      const batch = seq === undefined ? undefined : s.inflight.get(seq);
      if (seq !== undefined && batch) {
        if (st.code === grpc.status.RESOURCE_EXHAUSTED && batch.events.length > 1) {
          replace.set(seq, splitBatch(batch, Math.ceil(batch.events.length / 2)));
        } else {
          replace.set(seq, []);
          this.inflightEvents -= batch.events.length;
          s.inflight.delete(seq);
          this.dropBatch(batch, 'rejected', new ProtocolError(`collector refused the batch: ${st.details ?? ''}`));
        }
      }
    }
    this.streamDown(s, reason, st.code, replace);
  }

  private streamDown(s: Stream, reason: string, code?: grpc.status, replace?: Map<bigint, Batch[]>): void {
    if (this.stream !== s) return;
    this.stream = undefined;
    clearTimeout(s.welcomeTimer);
    s.call.removeAllListeners('data');
    s.call.on('error', () => {}); // later errors of a stream we gave up on
    s.call.cancel();
    // Unacked batches go back ahead of everything else, in the order they were sent (Map order).
    const unacked: Batch[] = [];
    for (const [seq, b] of s.inflight) {
      this.inflightEvents -= b.events.length;
      this.pendingEvents += b.events.length;
      const parts = replace?.get(seq);
      if (parts) unacked.push(...parts);
      else unacked.push(b);
    }
    this.pending = unacked.concat(this.pending);
    this.emit('disconnected', reason, { code, connected: s.welcomed });
    this.checkDrained();
    if (this.closed) return;
    const base = Math.min(this.opts.backoffMaxMs, this.opts.backoffInitialMs * 2 ** Math.min(this.attempt, 20));
    this.attempt++;
    const delay = base / 2 + Math.random() * (base / 2);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
    this.reconnectTimer.unref();
  }

  private programmingError(err: unknown): void {
    if (this.listenerCount('error') > 0) this.emit('error', err instanceof Error ? err : new Error(describeError(err)));
  }
}
