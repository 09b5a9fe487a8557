/**
 * The HTTP endpoint of a natlens process's own health: /metrics (Prometheus text format, from a
 * per-process registry), /healthz (the process and its event loop are alive) and /readyz (every
 * readiness condition met; else 503 naming each unmet one). GET and HEAD only, small headers,
 * short timeouts, a bounded number of connections: it is scraped, never browsed.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createLimitedHttpServer, type HttpLimits } from '../util/http-limits.js';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { NatlensError, describeError } from '../util/errors.js';

/** The metrics endpoint could not start (bad address, port taken). */
export class MetricsServerError extends NatlensError {}

/** Returns why the condition is unmet, or null when it is met. */
export type Condition = () => string | null;

/** Named conditions; a process is ready (or live) when every one is met. */
export class Conditions {
  private readonly checks = new Map<string, Condition>();

  /** Adds or replaces the condition `name`. */
  set(name: string, check: Condition): void {
    this.checks.set(name, check);
  }

  delete(name: string): void {
    this.checks.delete(name);
  }

  /** name -> reason, for every unmet condition (a throwing check counts as unmet, with its error). */
  unmet(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [name, check] of this.checks) {
      let reason: string | null;
      try {
        reason = check();
      } catch (err) {
        reason = `check failed: ${describeError(err)}`;
      }
      if (reason !== null) out[name] = reason;
    }
    return out;
  }
}

export interface MetricsServerOptions {
  /** HOST:PORT ([v6]:PORT for IPv6); port 0 picks a free one. */
  listen: string;
  registry: Registry;
  /** What /readyz requires. Default: none (always ready). */
  readiness?: Conditions;
  /** What /healthz requires on top of a responsive event loop. */
  liveness?: Conditions;
  /** /healthz fails once the event loop has not run a timer for this long. Default 10 s. */
  stallMs?: number;
  /** Clock (ms) of the event-loop heartbeat. */
  now?: () => number;
}

export interface MetricsServer {
  /** The bound port (the chosen one when listen asked for 0). */
  readonly port: number;
  readonly host: string;
  close(): Promise<void>;
}

/** Tighter than the HTTP defaults: scrapers and probes send small GETs, a few at a time. */
const LIMITS: Partial<HttpLimits> = {
  maxHeaderBytes: 8 * 1024,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 32,
};

const HEARTBEAT_MS = 1_000;

/** 'host:port' or '[v6]:port' -> parts (config.ts has validated the shape; this re-checks the port). */
export function splitHostPort(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new MetricsServerError(`metrics listen address '${listen}' must be HOST:PORT (e.g. 127.0.0.1:9469 or [::1]:9469)`, { exitCode: 2 });
  return { host: (m[1] ?? m[2])!, port };
}

export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  const { host, port } = splitHostPort(opts.listen);
  const readiness = opts.readiness ?? new Conditions();
  const liveness = opts.liveness ?? new Conditions();
  const stallMs = opts.stallMs ?? 10_000;
  const now = opts.now ?? Date.now;
  // A timer that stops running means a blocked or starved event loop: the process is not alive in
  // any useful sense, even if this request is answered later.
  let lastBeat = now();
  const heartbeat = setInterval(() => { lastBeat = now(); }, HEARTBEAT_MS);
  heartbeat.unref();

  const send = (res: ServerResponse, code: number, type: string, body: string, head: boolean): void => {
    res.writeHead(code, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
    res.end(head ? undefined : body);
  };
  const json = (v: unknown): string => `${JSON.stringify(v)}\n`;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Nothing here reads a body: drain whatever was sent so the socket can be reused (bounded by requestTimeout).
    req.resume();
    const method = req.method ?? '';
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== '/metrics' && path !== '/healthz' && path !== '/readyz') {
      send(res, 404, 'text/plain; charset=utf-8', 'not found: try /metrics, /healthz or /readyz\n', method === 'HEAD');
      return;
    }
    if (method !== 'GET' && method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      send(res, 405, 'text/plain; charset=utf-8', `method ${method} not allowed: use GET\n`, false);
      return;
    }
    const head = method === 'HEAD';
    if (path === '/metrics') {
      let text: string;
      try {
        text = await opts.registry.metrics();
      } catch (err) {
        send(res, 500, 'text/plain; charset=utf-8', `collecting metrics failed: ${describeError(err)}\n`, head);
        return;
      }
      send(res, 200, opts.registry.contentType, text, head);
      return;
    }
    if (path === '/healthz') {
      const unmet = liveness.unmet();
      const stalled = now() - lastBeat;
      if (stalled > stallMs) unmet['event-loop'] = `no timer ran for ${stalled} ms`;
      if (Object.keys(unmet).length === 0) send(res, 200, 'text/plain; charset=utf-8', 'ok\n', head);
      else send(res, 503, 'application/json', json({ live: false, unmet }), head);
      return;
    }
    const unmet = readiness.unmet();
    const ready = Object.keys(unmet).length === 0;
    send(res, ready ? 200 : 503, 'application/json', json({ ready, unmet }), head);
  }

  const server: Server = createLimitedHttpServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `internal error: ${describeError(err)}\n`, false);
      else res.destroy();
    });
  }, LIMITS);
  server.maxRequestsPerSocket = 100;
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      clearInterval(heartbeat);
      reject(new MetricsServerError(`cannot serve metrics on ${opts.listen}: ${err.message}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;

  let closed: Promise<void> | undefined;
  return {
    port: bound.port,
    host: bound.address,
    close() {
      closed ??= new Promise<void>((resolve) => {
        clearInterval(heartbeat);
        server.close(() => resolve());
        // Idle keep-alive scrapers would hold close() open.
        for (const s of sockets) s.destroy();
      });
      return closed;
    },
  };
}
