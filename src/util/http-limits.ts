/**
 * Bounds for every HTTP server natlens runs (the lab's Kubernetes API server, kube-proxy's health
 * checks, the echo server, metrics): header size, time to send a request, body size, connections.
 * A client past a bound gets 431 / 408 / 413 (or its connection closed) and costs nothing more;
 * everyone else keeps being served. Use createLimitedHttpServer, or httpServerOptions +
 * limitHttpServer for a server made elsewhere, and readRequestBody / refuseUnexpectedBody in handlers.
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { NatlensError } from './errors.js';

export interface HttpLimits {
  /** Largest request line + headers (bytes): larger gets 431. */
  maxHeaderBytes: number;
  /** Time allowed to send the request headers. */
  headersTimeoutMs: number;
  /** Time allowed to send the whole request, body included (responses, e.g. watches, may last longer). */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
  /** How often the two timeouts above are checked. */
  timeoutCheckIntervalMs: number;
  /** Largest request body a handler reads (bytes): larger gets 413 and the connection is closed. */
  maxBodyBytes: number;
  /** Connections open at once; beyond, new ones are closed at once. */
  maxConnections: number;
}

export const DEFAULT_HTTP_LIMITS: Readonly<HttpLimits> = {
  maxHeaderBytes: 16 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  timeoutCheckIntervalMs: 1_000,
  maxBodyBytes: 1024 * 1024,
  maxConnections: 1024,
};

/** Options for http.createServer(options, handler): what can only be set at creation. */
export function httpServerOptions(limits: Partial<HttpLimits> = {}): http.ServerOptions {
  const l = { ...DEFAULT_HTTP_LIMITS, ...limits };
  return {
    maxHeaderSize: l.maxHeaderBytes,
    headersTimeout: l.headersTimeoutMs,
    requestTimeout: l.requestTimeoutMs,
    keepAliveTimeout: l.keepAliveTimeoutMs,
    connectionsCheckingInterval: l.timeoutCheckIntervalMs,
  };
}

/**
 * Applies what can be set after creation (timeouts, connection count) and answers malformed or
 * oversized requests with their status (431, 408, 400) before closing them. Returns the server.
 */
export function limitHttpServer<S extends http.Server>(server: S, limits: Partial<HttpLimits> = {}): S {
  const l = { ...DEFAULT_HTTP_LIMITS, ...limits };
  server.headersTimeout = l.headersTimeoutMs;
  server.requestTimeout = l.requestTimeoutMs;
  server.keepAliveTimeout = l.keepAliveTimeoutMs;
  server.maxConnections = l.maxConnections;
  if (server.listenerCount('clientError') === 0) server.on('clientError', answerClientError);
  return server;
}

/** http.createServer with every bound of `limits` (defaults: DEFAULT_HTTP_LIMITS). */
export function createLimitedHttpServer(handler: http.RequestListener, limits: Partial<HttpLimits> = {}): http.Server {
  return limitHttpServer(http.createServer(httpServerOptions(limits), handler), limits);
}

const CLIENT_ERROR_STATUS: Record<string, string> = {
  HPE_HEADER_OVERFLOW: '431 Request Header Fields Too Large',
  ERR_HTTP_REQUEST_TIMEOUT: '408 Request Timeout',
  HPE_HEADERS_TIMEOUT: '408 Request Timeout',
};

/** 'clientError' handler: the status a malformed or oversized request earned, then the connection closed. */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (socket.writable && !(socket as Duplex & { _httpMessage?: unknown })._httpMessage) {
    const status = CLIENT_ERROR_STATUS[err.code ?? ''] ?? '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  }
  socket.destroy();
}

/** A request body over the limit (declared by Content-Length, or streamed past it). */
export class RequestBodyTooLargeError extends NatlensError {
  constructor(readonly limitBytes: number, readonly declaredBytes?: number) {
    super(`request body ${declaredBytes === undefined ? 'exceeds' : `of ${declaredBytes} bytes exceeds`} the limit of ${limitBytes} bytes`);
  }
}

/** Reads the whole body, up to `maxBytes` (RequestBodyTooLargeError beyond, without buffering the rest). */
export function readRequestBody(req: http.IncomingMessage, maxBytes = DEFAULT_HTTP_LIMITS.maxBodyBytes): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    if (declared !== undefined && declared > maxBytes) {
      reject(new RequestBodyTooLargeError(maxBytes, declared));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > maxBytes) {
        req.off('data', onData);
        req.pause();
        reject(new RequestBodyTooLargeError(maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
    req.once('close', () => {
      if (!req.complete) reject(new NatlensError('request aborted before its body was complete'));
    });
  });
}

/** Answers 413 and closes the connection: the rest of the body is never read. */
export function refuseBody(res: http.ServerResponse, err: RequestBodyTooLargeError): void {
  const text = `${err.message}\n`;
  res.writeHead(413, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text), Connection: 'close' });
  res.end(text, () => res.socket?.destroy());
}

/** Whether the request carries a body (declared, or chunked). */
export function hasRequestBody(req: http.IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined;
}

/**
 * For handlers that take no body: when the request has one, answers 413 and closes the
 * connection (rather than reading whatever a client streams) and returns true.
 */
export function refuseUnexpectedBody(req: http.IncomingMessage, res: http.ServerResponse): boolean {
  if (!hasRequestBody(req)) return false;
  const text = 'this endpoint takes no request body\n';
  res.writeHead(413, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text), Connection: 'close' });
  res.end(text, () => res.socket?.destroy());
  return true;
}
