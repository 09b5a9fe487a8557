/**
 * The collector's gRPC server: natlens.v1.AgentService.Stream (agents and peer collectors push
 * batches) and natlens.v1.QueryService.Who.
 *
 * Stream contract, server side: the first message must be a Hello of protocol version 1 (else
 * FAILED_PRECONDITION, or INVALID_ARGUMENT when it is malformed); the server answers Welcome, then
 * Ack(seq) for each batch once the sink has durably stored it, in the order the sink resolves
 * (not necessarily seq order). A malformed or invalid message ends the stream with
 * INVALID_ARGUMENT naming the problem (trailer natlens-rejected-seq names the batch when one is to
 * blame); acked batches stay stored, unacked ones the agent resends on its next stream, so the sink
 * sees duplicates (at-least-once) and must dedupe by event identity.
 */
import * as grpc from '@grpc/grpc-js';
import { NatlensError, describeError } from '../util/errors.js';
import {
  PROTOCOL_VERSION,
  ProtocolError,
  parseAgentMessage,
  decodeEtpRequest,
  decodeWhoRequest,
  encodeCollectorMessage,
  encodeEtpResponse,
  encodeWhoResponse,
  validateAgentMessage,
} from './codec.js';
import {
  DEFAULT_FLOW_CONTROL_WINDOW_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
  REJECTED_SEQ_TRAILER,
  agentServiceRawDefinition,
  limitServerMetadata,
  queryServiceRawDefinition,
  serverCredentials,
  serverOptions,
  tuneServerFlowControl,
} from './grpc-services.js';
import type { EtpRequest, EtpResponse, EventBatch, Hello, WhoRequest, WhoResponse } from './proto.generated.js';
import { authorize, type ServerSecurity } from './auth.js';

export { REJECTED_SEQ_TRAILER };

export interface AgentStream {
  hello: Hello;
  /** The remote address, host:port. */
  peer: string;
}

export interface AgentSink {
  /**
   * Store the batch. Resolve once it is durable: the server then acks it and the agent forgets it.
   * Rejecting ends the stream with UNAVAILABLE; the agent reconnects and resends what is unacked.
   * An error whose grpcCode is INVALID_ARGUMENT refuses the batch itself (named in the trailer
   * natlens-rejected-seq): the agent drops it and counts it instead of resending it.
   * May be called again for events already accepted (resends after a reconnect).
   */
  accept(stream: AgentStream, batch: EventBatch): Promise<void>;
  /** A stream completed its Hello. */
  streamOpened?(hello: Hello, stream: AgentStream): void;
  /** A stream that had completed its Hello ended (reason: why, 'ok' for a clean end). */
  streamClosed?(hello: Hello, stream: AgentStream, reason: string): void;
}

export interface QuerySink {
  /** Reject with an error carrying a numeric `grpcCode` (grpc.status) to choose the status; else INTERNAL. */
  who(req: WhoRequest): Promise<WhoResponse>;
  etp(req: EtpRequest): Promise<EtpResponse>;
}

export interface TransportServerOptions {
  /** host:port; port 0 picks a free one. */
  listen: string;
  agentSink: AgentSink;
  querySink?: QuerySink;
  collectorId: string;
  /** Largest batch (events) accepted, announced in Welcome. Default 5000. */
  maxBatchEvents?: number;
  /** Largest gRPC message accepted (bytes); larger ones end the stream with RESOURCE_EXHAUSTED. Default 16 MiB. */
  maxMessageBytes?: number;
  /** Batches awaiting the sink per stream before the server stops reading it (HTTP/2 pushes back). Default 16. */
  maxInflightBatchesPerStream?: number;
  /** A stream that sends no Hello within this long is ended (FAILED_PRECONDITION). Default 10 s. */
  helloTimeoutMs?: number;
  /** HTTP/2 receive window per agent connection and stream; <= 65535 keeps the HTTP/2 default. */
  flowControlWindowBytes?: number;
  /** TLS and who may call what (auth.ts). Default: plain text, everything open (tests, the lab). */
  security?: ServerSecurity;
}

export interface TransportServer {
  port: number;
  server: grpc.Server;
  /** Ends every stream (UNAVAILABLE) once its in-flight batches are stored or timeoutMs passes, then shuts down. */
  close(opts?: { timeoutMs?: number }): Promise<void>;
}

/** The server could not start (bind failed, bad options). */
export class TransportServerError extends NatlensError {}

interface StatusError {
  code: grpc.status;
  details: string;
  metadata?: grpc.Metadata;
}

function statusError(code: grpc.status, details: string, metadata?: grpc.Metadata): StatusError & Error {
  return Object.assign(new Error(details), { code, details, metadata: metadata ?? new grpc.Metadata() });
}

function protocolStatus(err: ProtocolError): grpc.status {
  if (err.kind === 'unsupported_version') return grpc.status.FAILED_PRECONDITION;
  if (err.kind === 'too_large') return grpc.status.RESOURCE_EXHAUSTED;
  return grpc.status.INVALID_ARGUMENT;
}

/** The `grpcCode` an error carries (a valid non-OK grpc.status), if any. */
function grpcCodeOf(err: unknown): grpc.status | undefined {
  const code = (err as { grpcCode?: unknown } | null)?.grpcCode;
  return typeof code === 'number' && Number.isInteger(code) && code > 0 && code <= 16 ? (code as grpc.status) : undefined;
}

interface StreamState {
  /** Stop reading, let in-flight sink calls finish (bounded), then end with UNAVAILABLE. */
  shutdown(deadline: number): Promise<void>;
}

export async function startTransportServer(opts: TransportServerOptions): Promise<TransportServer> {
  const maxBatchEvents = opts.maxBatchEvents ?? 5000;
  const maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const maxInflight = opts.maxInflightBatchesPerStream ?? 16;
  const helloTimeoutMs = opts.helloTimeoutMs ?? 10_000;
  if (!Number.isInteger(maxBatchEvents) || maxBatchEvents < 1 || maxBatchEvents > 0xffffffff) {
    throw new TransportServerError(`maxBatchEvents must be a positive integer, got ${maxBatchEvents}`);
  }
  if (!Number.isInteger(maxInflight) || maxInflight < 1) {
    throw new TransportServerError(`maxInflightBatchesPerStream must be a positive integer, got ${maxInflight}`);
  }
  const { agentSink, querySink, collectorId } = opts;
  const streams = new Set<StreamState>();
  let closing = false;

  const welcome = encodeCollectorMessage({ welcome: { protocolVersion: PROTOCOL_VERSION, collectorId, maxBatchEvents } });

  function handleStream(call: grpc.ServerDuplexStream<Buffer, Buffer>): void {
    if (closing) {
      call.emit('error', statusError(grpc.status.UNAVAILABLE, 'collector shutting down'));
      return;
    }
    const denied = authorize(opts.security, 'stream', call);
    if (denied) {
      call.emit('error', statusError(denied.code, denied.details));
      return;
    }
    const peer = call.getPeer();
    let info: AgentStream | undefined;
    let expectedSeq = 1n;
    let inflight = 0;
    let paused = false;
    let ended = false;
    let halfClosed = false;
    let onIdle: (() => void) | undefined;

    const helloTimer = setTimeout(() => {
      end(statusError(grpc.status.FAILED_PRECONDITION, `no Hello within ${helloTimeoutMs} ms: the first message must be a Hello`));
    }, helloTimeoutMs);
    helloTimer.unref();

    const state: StreamState = {
      shutdown: async (deadline) => {
        if (ended) return;
        call.pause();
        paused = true;
        if (inflight > 0) {
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, Math.max(0, deadline - Date.now()));
            onIdle = () => {
              clearTimeout(t);
              resolve();
            };
          });
        }
        end(statusError(grpc.status.UNAVAILABLE, 'collector shutting down'));
      },
    };
    streams.add(state);

    function finish(reason: string): void {
      clearTimeout(helloTimer);
      streams.delete(state);
      if (info) {
        try {
          agentSink.streamClosed?.(info.hello, info, reason);
        } catch {
          // A hook's failure must not take the server down.
        }
      }
      onIdle?.();
    }

    function end(err: (StatusError & Error) | null): void {
      if (ended) return;
      ended = true;
      if (err) call.emit('error', err);
      else call.end();
      finish(err ? `${grpc.status[err.code]}: ${err.details}` : 'ok');
    }

    function settled(): void {
      inflight--;
      if (inflight === 0) onIdle?.();
      if (paused && !ended && !closing && inflight < maxInflight) {
        paused = false;
        call.resume();
      }
      if (halfClosed && inflight === 0) end(null);
    }

    function onBatch(batch: EventBatch, stream: AgentStream): void {
      const seq = batch.seq;
      if (seq !== expectedSeq) {
        end(statusError(grpc.status.INVALID_ARGUMENT, `batch.seq: expected ${expectedSeq}, got ${seq} (seq counts from 1 per stream)`));
        return;
      }
      if (stream.hello.node === '') {
        // A forwarding collector's Hello has no node: each event must name the node that captured it.
        const i = batch.events.findIndex((ev) => ev.node === '');
        if (i >= 0) {
          const md = new grpc.Metadata();
          md.set(REJECTED_SEQ_TRAILER, String(seq));
          end(statusError(grpc.status.INVALID_ARGUMENT, `batch.events[${i}].node: missing (required when the Hello names no node)`, md));
          return;
        }
      }
      expectedSeq++;
      inflight++;
      if (inflight >= maxInflight && !paused) {
        paused = true;
        call.pause();
      }
      let p: Promise<void>;
      try {
        p = agentSink.accept(stream, batch);
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(
        () => {
          if (!ended) call.write(encodeCollectorMessage({ ack: { seq } }, { validate: false }));
          settled();
        },
        (err: unknown) => {
          const code = grpcCodeOf(err) ?? grpc.status.UNAVAILABLE;
          if (code === grpc.status.INVALID_ARGUMENT) {
            // The sink refuses this batch for its content: name it, so the agent drops it rather than resending it forever.
            const md = new grpc.Metadata();
            md.set(REJECTED_SEQ_TRAILER, String(seq));
            end(statusError(code, describeError(err), md));
          } else {
            end(statusError(code, `collector could not store batch ${seq}: ${describeError(err)}`));
          }
          settled();
        },
      );
    }

    call.on('data', (buf: Buffer) => {
      if (ended) return;
      let msg;
      try {
        msg = parseAgentMessage(buf, { maxBatchEvents });
      } catch (err) {
        const pe = err instanceof ProtocolError ? err : new ProtocolError(describeError(err), { kind: 'malformed', cause: err });
        const md = new grpc.Metadata();
        if (pe.batchSeq !== undefined && info) md.set(REJECTED_SEQ_TRAILER, String(pe.batchSeq));
        end(statusError(protocolStatus(pe), info ? pe.message : `first message must be a Hello: ${pe.message}`, md));
        return;
      }
      if (!info && msg.hello === undefined) {
        const got = msg.batch !== undefined ? 'a batch' : 'an empty message';
        end(statusError(grpc.status.FAILED_PRECONDITION, `first message must be a Hello, got ${got}`));
        return;
      }
      try {
        validateAgentMessage(msg, { maxBatchEvents });
      } catch (err) {
        const pe = err instanceof ProtocolError ? err : new ProtocolError(describeError(err), { cause: err });
        const md = new grpc.Metadata();
        if (msg.batch !== undefined && info) md.set(REJECTED_SEQ_TRAILER, String(msg.batch.seq));
        end(statusError(protocolStatus(pe), pe.message, md));
        return;
      }
      if (msg.hello !== undefined) {
        if (info) {
          end(statusError(grpc.status.INVALID_ARGUMENT, 'Hello sent twice on one stream'));
          return;
        }
        clearTimeout(helloTimer);
        info = { hello: msg.hello, peer };
        call.write(welcome);
        try {
          agentSink.streamOpened?.(msg.hello, info);
        } catch {
          // Hooks are advisory.
        }
        return;
      }
      if (info) onBatch(msg.batch as EventBatch, info);
    });
    call.on('end', () => {
      halfClosed = true;
      if (inflight === 0) end(null);
    });
    call.on('cancelled', () => {
      if (ended) return;
      ended = true;
      finish('cancelled by the client');
    });
    call.on('error', () => {
      // Emitted by our own end(err) (grpc-js turns it into the status) or by a broken transport:
      // either way the stream is over.
      if (!ended) {
        ended = true;
        finish('stream error');
      }
    });
  }

  /** A unary query: decode (bad request → INVALID_ARGUMENT), answer, encode (bad answer → INTERNAL). */
  function unary<Req, Res>(
    name: string,
    decode: (b: Buffer) => Req,
    answer: (sink: QuerySink, req: Req) => Promise<Res>,
    encode: (res: Res) => Buffer,
  ): (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => void {
    return (call, callback) => {
      const denied = authorize(opts.security, 'query', call);
      if (denied) {
        callback(statusError(denied.code, denied.details));
        return;
      }
      let req: Req;
      try {
        req = decode(call.request);
      } catch (err) {
        callback(statusError(grpc.status.INVALID_ARGUMENT, describeError(err)));
        return;
      }
      let p: Promise<Res>;
      try {
        p = answer(querySink as QuerySink, req);
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(
        (res) => {
          let buf: Buffer;
          try {
            buf = encode(res);
          } catch (err) {
            callback(statusError(grpc.status.INTERNAL, `invalid ${name} from the query sink: ${describeError(err)}`));
            return;
          }
          callback(null, buf);
        },
        (err: unknown) => {
          callback(statusError(grpcCodeOf(err) ?? grpc.status.INTERNAL, describeError(err)));
        },
      );
    };
  }

  const server = new grpc.Server(serverOptions({ maxMessageBytes }));
  limitServerMetadata(server);
  const tuning = tuneServerFlowControl(server, opts.flowControlWindowBytes ?? DEFAULT_FLOW_CONTROL_WINDOW_BYTES);
  server.addService(agentServiceRawDefinition, { Stream: handleStream });
  if (querySink) {
    server.addService(queryServiceRawDefinition, {
      Who: unary('WhoResponse', decodeWhoRequest, (sink, req) => sink.who(req), encodeWhoResponse),
      Etp: unary('EtpResponse', decodeEtpRequest, (sink, req) => sink.etp(req), encodeEtpResponse),
    });
  }

  const port = await new Promise<number>((resolve, reject) => {
    // With a token file, clients without a certificate must get through the handshake (to show their token).
    const credentials = serverCredentials(opts.security?.transport, !opts.security?.queryTokens);
    server.bindAsync(opts.listen, credentials, (err, p) => {
      if (err) reject(new TransportServerError(`cannot listen on ${opts.listen}: ${err.message}`, { cause: err }));
      else resolve(p);
    });
  });
  tuning.afterBind();

  let closed: Promise<void> | undefined;
  const close = (closeOpts: { timeoutMs?: number } = {}): Promise<void> => {
    closed ??= (async () => {
      closing = true;
      const timeoutMs = closeOpts.timeoutMs ?? 5_000;
      const deadline = Date.now() + timeoutMs;
      await Promise.all([...streams].map((s) => s.shutdown(deadline)));
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, Math.max(0, deadline - Date.now()));
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
    })();
    return closed;
  };

  return { port, server, close };
}
