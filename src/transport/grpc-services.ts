/**
 * grpc-js service definitions of natlens.v1 and every gRPC server/channel option, in one place.
 *
 * The agent stream is defined on raw Buffers both ways: the transport server decodes requests
 * itself so a malformed message becomes INVALID_ARGUMENT with a message naming the problem (a
 * throwing deserializer gives an opaque INTERNAL), and the stream client encodes itself so it can
 * size and check batches before they go out. The query service has a typed flavour (codec in the
 * (de)serializers) for clients and a raw one for the server, for the same reason.
 */
import * as grpc from '@grpc/grpc-js';
import {
  decodeEtpRequest,
  decodeEtpResponse,
  decodeWhoRequest,
  decodeWhoResponse,
  encodeEtpRequest,
  encodeEtpResponse,
  encodeWhoRequest,
  encodeWhoResponse,
} from './codec.js';
import { channelCredentialsFor, channelSecurityOptions, serverCredentialsFor, type TransportSecurity } from './tls.js';
import { AgentServiceInfo, QueryServiceInfo, type EtpRequest, type EtpResponse, type WhoRequest, type WhoResponse } from './proto.generated.js';

export const AGENT_STREAM_PATH = AgentServiceInfo.methods.Stream.path;
/** Trailer naming the batch (seq) the server refused when it ends a stream; the client drops or splits that batch. */
export const REJECTED_SEQ_TRAILER = 'natlens-rejected-seq';
export const QUERY_WHO_PATH = QueryServiceInfo.methods.Who.path;
export const QUERY_ETP_PATH = QueryServiceInfo.methods.Etp.path;

// ---------------------------------------------------------------------------------------------
// Service definitions

export interface QueryServiceDefinition extends grpc.ServiceDefinition {
  Who: grpc.MethodDefinition<WhoRequest, WhoResponse>;
  Etp: grpc.MethodDefinition<EtpRequest, EtpResponse>;
}
export interface AgentServiceRawDefinition extends grpc.ServiceDefinition {
  Stream: grpc.MethodDefinition<Buffer, Buffer>;
}
export interface QueryServiceRawDefinition extends grpc.ServiceDefinition {
  Who: grpc.MethodDefinition<Buffer, Buffer>;
  Etp: grpc.MethodDefinition<Buffer, Buffer>;
}

const AGENT_STREAM = { path: AGENT_STREAM_PATH, requestStream: true, responseStream: true, originalName: 'stream' } as const;
const QUERY_WHO = { path: QUERY_WHO_PATH, requestStream: false, responseStream: false, originalName: 'who' } as const;
const QUERY_ETP = { path: QUERY_ETP_PATH, requestStream: false, responseStream: false, originalName: 'etp' } as const;
const identity = (b: Buffer): Buffer => b;
const RAW = { requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity };

/** natlens.v1.QueryService with the codec in its (de)serializers. */
export const queryServiceDefinition: QueryServiceDefinition = {
  Who: {
    ...QUERY_WHO,
    requestSerialize: (m: WhoRequest) => encodeWhoRequest(m),
    requestDeserialize: (b: Buffer) => decodeWhoRequest(b),
    responseSerialize: (m: WhoResponse) => encodeWhoResponse(m),
    responseDeserialize: (b: Buffer) => decodeWhoResponse(b),
  },
  Etp: {
    ...QUERY_ETP,
    requestSerialize: (m: EtpRequest) => encodeEtpRequest(m),
    requestDeserialize: (b: Buffer) => decodeEtpRequest(b),
    responseSerialize: (m: EtpResponse) => encodeEtpResponse(m),
    responseDeserialize: (b: Buffer) => decodeEtpResponse(b),
  },
};

/** natlens.v1.AgentService on encoded messages (Buffer both ways). */
export const agentServiceRawDefinition: AgentServiceRawDefinition = { Stream: { ...AGENT_STREAM, ...RAW } };

/** natlens.v1.QueryService on encoded messages (Buffer both ways). */
export const queryServiceRawDefinition: QueryServiceRawDefinition = { Who: { ...QUERY_WHO, ...RAW }, Etp: { ...QUERY_ETP, ...RAW } };

// ---------------------------------------------------------------------------------------------
// Clients

export interface AgentServiceRawClient extends grpc.Client {
  Stream(metadata?: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<Buffer, Buffer>;
}
export interface QueryServiceClient extends grpc.Client {
  Who(request: WhoRequest, callback: grpc.requestCallback<WhoResponse>): grpc.ClientUnaryCall;
  Who(request: WhoRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<WhoResponse>): grpc.ClientUnaryCall;
  Who(
    request: WhoRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<WhoResponse>,
  ): grpc.ClientUnaryCall;
  Etp(
    request: EtpRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<EtpResponse>,
  ): grpc.ClientUnaryCall;
}

type ClientCtor<C> = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => C;

export const AgentServiceRawClient = grpc.makeGenericClientConstructor(
  agentServiceRawDefinition,
  AgentServiceInfo.name,
) as unknown as ClientCtor<AgentServiceRawClient>;
export const QueryServiceClient = grpc.makeGenericClientConstructor(
  queryServiceDefinition,
  QueryServiceInfo.name,
) as unknown as ClientCtor<QueryServiceClient>;

// ---------------------------------------------------------------------------------------------
// Options

/** Largest gRPC message either side accepts by default (a batch of 5000 events is ~0.6 MB). */
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * HTTP/2 flow-control window for the collector's receiving side. The 64 KB default caps one agent
 * stream near 0.9M events/s (the sender stalls whenever the collector's event loop is busy); a
 * larger window costs up to this much buffered memory per agent connection when the collector
 * pauses reading, so keep it modest.
 */
export const DEFAULT_FLOW_CONTROL_WINDOW_BYTES = 1024 * 1024;

/**
 * Largest metadata (HTTP/2 header list, uncompressed) a server takes with one call: tokens and
 * tracing headers fit many times over; a larger header block resets the call.
 */
export const MAX_METADATA_BYTES = 16 * 1024;
/** Calls open at once on one connection: an agent uses one, a query client or a peer collector a few. */
export const MAX_CONCURRENT_STREAMS = 128;

const KEEPALIVE_TIME_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 10_000;

/**
 * Credentials (tls.ts): mutual TLS from the security settings, plain text when there are none
 * (the CLI never gets here without an explicit --plaintext or TLS files).
 */
export function clientCredentials(security?: TransportSecurity): grpc.ChannelCredentials {
  return channelCredentialsFor(security);
}

export function serverCredentials(security?: TransportSecurity, requireClientCertificate = true): grpc.ServerCredentials {
  return serverCredentialsFor(security, requireClientCertificate);
}

export interface ServerTuning {
  maxMessageBytes?: number;
}

export function serverOptions(t: ServerTuning = {}): grpc.ServerOptions {
  const max = t.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  return {
    'grpc.max_receive_message_length': max,
    'grpc.max_send_message_length': max,
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
    // Pings find agents whose node died without closing TCP, so their streams and memory go away.
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
  };
}

/**
 * Bounds the metadata a grpc-js server accepts per call (MAX_METADATA_BYTES): grpc-js has no option
 * for it (grpc.max_metadata_size is C-core's), so this sets the SETTINGS_MAX_HEADER_LIST_SIZE it
 * passes to http2.createServer. Call before bindAsync. Best effort on grpc-js internals like
 * tuneServerFlowControl: false (and Node's own default bound) if they are not there.
 */
export function limitServerMetadata(server: grpc.Server, maxBytes = MAX_METADATA_BYTES): boolean {
  const common = (server as unknown as GrpcServerInternals).commonServerOptions;
  if (common === null || typeof common !== 'object') return false;
  common.settings = { ...(common.settings ?? {}), maxHeaderListSize: maxBytes };
  return true;
}

export interface ChannelTuning {
  maxMessageBytes?: number;
  /** Mirrors the stream client's own backoff so the channel does not reconnect faster than it. */
  initialReconnectBackoffMs?: number;
  maxReconnectBackoffMs?: number;
  /** TLS: adds the server-name override when one is set (tls.ts). */
  security?: TransportSecurity;
}

export function channelOptions(t: ChannelTuning = {}): grpc.ChannelOptions {
  const max = t.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  return {
    'grpc.max_receive_message_length': max,
    'grpc.max_send_message_length': max,
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.initial_reconnect_backoff_ms': t.initialReconnectBackoffMs ?? 100,
    'grpc.max_reconnect_backoff_ms': t.maxReconnectBackoffMs ?? 5_000,
    // The only window option grpc-js has: it sizes this client's *receive* window (responses:
    // Who answers), not what the collector grants an agent's uploads; see tuneServerFlowControl.
    'grpc-node.flow_control_window': DEFAULT_FLOW_CONTROL_WINDOW_BYTES,
    ...channelSecurityOptions(t.security),
  };
}

interface GrpcServerInternals {
  commonServerOptions?: { settings?: Record<string, unknown> };
  http2Servers?: Map<{ on(ev: 'session', fn: (s: unknown) => void): unknown }, unknown>;
}

/**
 * Widens the HTTP/2 receive window of a grpc-js server: grpc-js has no option for it, so this sets
 * the SETTINGS_INITIAL_WINDOW_SIZE it passes to http2.createServer (call before bindAsync) and
 * returns a function to call after bindAsync that raises each new session's connection window.
 * Best effort on grpc-js internals: returns false (and changes nothing) if they are not there.
 */
export function tuneServerFlowControl(server: grpc.Server, windowBytes: number): { applied: boolean; afterBind: () => void } {
  const s = server as unknown as GrpcServerInternals;
  const common = s.commonServerOptions;
  if (windowBytes <= 65_535 || common === null || typeof common !== 'object') return { applied: false, afterBind: () => {} };
  common.settings = { ...(common.settings ?? {}), initialWindowSize: windowBytes };
  return {
    applied: true,
    afterBind: () => {
      if (!(s.http2Servers instanceof Map)) return;
      for (const h2 of s.http2Servers.keys()) {
        h2.on('session', (session: unknown) => {
          try {
            (session as { setLocalWindowSize(n: number): void }).setLocalWindowSize(windowBytes);
          } catch {
            // Session already gone, or a Node without setLocalWindowSize: keep the default window.
          }
        });
      }
    },
  };
}
