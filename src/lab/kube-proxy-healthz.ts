// kube-proxy's service health server (pkg/proxy/healthcheck/service_health.go) for one lab
// node. Runs inside the node's network namespace
// (`ip netns exec <node netns> node kube-proxy-healthz.js --state <file> --node node1`)
// and, for every LoadBalancer Service with externalTrafficPolicy Local, serves HTTP on
// spec.healthCheckNodePort on all of the node's addresses:
//
//   200 when the node has at least one local *ready* endpoint, else 503, with
//   Content-Type: application/json, X-Content-Type-Options: nosniff,
//   X-Load-Balancing-Endpoint-Weight: <localEndpoints> and the body
//   {
//   	"service": {
//   		"namespace": "default",
//   		"name": "loadbalancer"
//   	},
//   	"localEndpoints": 1,
//   	"serviceProxyHealthy": true
//   }
//
// (tab-indented, no trailing newline, byte for byte what kube-proxy writes; kube-proxy
// before 1.x answered "1 Service Endpoints found" / "No Service Endpoints Found", the
// text the tutorial shows). Serving-terminating endpoints do not count (LocalReadyEndpoints).
//
// The endpoints come from the lab state file, re-read on SIGHUP (the lab sends one after
// every change), on a 1 s poll, and (one stat) before every answer. Ports open and close
// as services switch between Local and Cluster, like kube-proxy's SyncServices.
//
// Also a one-shot client for `natlens lab healthz`:
//   node kube-proxy-healthz.js probe --url http://127.0.0.1:32122/healthz [--timeout 2000]
// prints {"ok","status","statusText","headers","body","error"} as one JSON line.

import http from 'node:http';
import { argNumber, argValue, isMainModule, LabStateFollower, log, onTerminate, signalReady } from './daemon.js';
import { createLimitedHttpServer, refuseUnexpectedBody } from '../util/http-limits.js';
import { hasHealthCheck, localEndpointCount } from './topology.js';
import type { LabService, LabState } from './types.js';

/** The body kube-proxy's hcHandler writes (dedented, trimmed of newlines). */
export function healthzBody(namespace: string, name: string, localEndpoints: number, serviceProxyHealthy = true): string {
  return [
    '{',
    '\t"service": {',
    `\t\t"namespace": ${JSON.stringify(namespace)},`,
    `\t\t"name": ${JSON.stringify(name)}`,
    '\t},',
    `\t"localEndpoints": ${localEndpoints},`,
    `\t"serviceProxyHealthy": ${serviceProxyHealthy}`,
    '}',
  ].join('\n');
}

export interface HealthzAnswer {
  status: 200 | 503;
  headers: Record<string, string>;
  body: string;
  localEndpoints: number;
}

/** What kube-proxy on `nodeName` answers for a service's health check. */
export function healthzAnswer(svc: Pick<LabService, 'namespace' | 'name' | 'endpoints'>, nodeName: string, proxyHealthy = true): HealthzAnswer {
  const count = localEndpointCount(svc as LabService, nodeName);
  const body = healthzBody(svc.namespace, svc.name, count, proxyHealthy);
  return {
    status: count !== 0 && proxyHealthy ? 200 : 503,
    headers: {
      'Content-Type': 'application/json',
      'X-Content-Type-Options': 'nosniff',
      'X-Load-Balancing-Endpoint-Weight': String(count),
    },
    body,
    localEndpoints: count,
  };
}

/** The health-checked services of a state, by healthCheckNodePort. */
export function healthCheckPorts(state: LabState): Map<number, string> {
  const out = new Map<number, string>();
  for (const svc of state.services) if (hasHealthCheck(svc)) out.set(svc.healthCheckNodePort, `${svc.namespace}/${svc.name}`);
  return out;
}

function serve(statePath: string, nodeName: string): void {
  const servers = new Map<number, { key: string; server: http.Server }>();
  let follower: LabStateFollower;

  const handler = (port: number) => (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (refuseUnexpectedBody(req, res)) return;
    follower.check('request');
    const key = healthCheckPorts(follower.state).get(port) ?? servers.get(port)?.key ?? '';
    const svc = follower.state.services.find((s) => `${s.namespace}/${s.name}` === key && hasHealthCheck(s));
    const [ns, name] = key.split('/', 2) as [string, string];
    // A port being closed (the service left Local): kube-proxy would have no handler; answer 503.
    const ans = svc ? healthzAnswer(svc, nodeName) : healthzAnswer({ namespace: ns, name, endpoints: [] }, nodeName);
    res.writeHead(ans.status, { ...ans.headers, 'Content-Length': Buffer.byteLength(ans.body) });
    res.end(ans.body);
  };

  const sync = (state: LabState, reason: string): void => {
    const want = healthCheckPorts(state);
    for (const [port, s] of servers) {
      if (want.get(port) !== s.key) {
        log(`closing healthcheck ${s.key} on port ${port} (${reason})`);
        s.server.close();
        s.server.closeAllConnections();
        servers.delete(port);
      }
    }
    for (const [port, key] of want) {
      if (servers.has(port)) continue;
      log(`opening healthcheck ${key} on port ${port} (${reason})`);
      const server = createLimitedHttpServer(handler(port), { keepAliveTimeoutMs: 2000 });
      server.on('error', (err) => {
        log(`healthcheck ${key} on port ${port}: ${err.message}`);
        if (servers.get(port)?.server === server) servers.delete(port); // retried on the next change/poll
      });
      server.listen({ host: '::', port, ipv6Only: false });
      servers.set(port, { key, server });
    }
  };

  follower = new LabStateFollower(statePath, sync);
  follower.start();
  // Retry ports that failed to open (e.g. still in use) once a second.
  setInterval(() => sync(follower.state, 'retry'), 1000).unref();
  onTerminate(() => {
    for (const s of servers.values()) s.server.close();
  });
  // Ready once every port listens (or failed).
  const waitListening = (): void => {
    if ([...servers.values()].every((s) => s.server.listening)) signalReady();
    else setTimeout(waitListening, 20);
  };
  waitListening();
}

export interface ProbeResult {
  ok: boolean;
  status: number | null;
  statusText: string | null;
  headers: Record<string, string>;
  body: string | null;
  error: string | null;
}

export function probe(url: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (r: ProbeResult): void => {
      if (done) return;
      done = true;
      resolve(r);
    };
    const req = http.get(url, { agent: false, timeout: timeoutMs, headers: { 'User-Agent': 'natlens-lab' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        const headers: Record<string, string> = {};
        for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) headers[res.rawHeaders[i] as string] = res.rawHeaders[i + 1] as string;
        finish({ ok: res.statusCode === 200, status: res.statusCode ?? null, statusText: res.statusMessage ?? null, headers, body, error: null });
      });
      res.on('error', (err) => finish({ ok: false, status: res.statusCode ?? null, statusText: null, headers: {}, body, error: err.message }));
    });
    req.on('timeout', () => {
      req.destroy(new Error(`timeout after ${timeoutMs}ms`));
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      finish({ ok: false, status: null, statusText: null, headers: {}, body: null, error: `${err.code ? `${err.code}: ` : ''}${err.message}` }),
    );
  });
}

if (isMainModule(import.meta.url)) {
  if (process.argv[2] === 'probe') {
    probe(argValue('url'), argNumber('timeout', 2000)).then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
  } else {
    serve(argValue('state'), argValue('node'));
  }
}
