/**
 * One health-check GET, and (run as a script inside a node's network namespace) a worker that
 * answers JSON-line requests {id, url, timeoutMs} with {id, status, localEndpoints, error}.
 */
import http from 'node:http';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export interface ProbeAnswer {
  /** HTTP status; 0 when nothing answered. */
  status: number;
  /** kube-proxy's localEndpoints (JSON body, or "N Service Endpoints found"); -1 when not said. */
  localEndpoints: number;
  error: string;
}

/** kube-proxy's body: JSON {"localEndpoints": N, ...} today, "N Service Endpoints found" in old releases. */
export function localEndpointsOf(body: string): number {
  try {
    const j = JSON.parse(body) as { localEndpoints?: unknown };
    if (typeof j.localEndpoints === 'number' && Number.isInteger(j.localEndpoints)) return j.localEndpoints;
  } catch {
    /* not JSON */
  }
  const m = /^(\d+) Service Endpoints found/.exec(body.trim());
  if (m) return Number(m[1]);
  if (/^No Service Endpoints Found/i.test(body.trim())) return 0;
  return -1;
}

export function probeHealth(url: string, timeoutMs: number): Promise<ProbeAnswer> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (a: ProbeAnswer): void => {
      if (settled) return;
      settled = true;
      resolve(a);
    };
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        if (body.length < 4096) body += d;
      });
      res.on('end', () => done({ status: res.statusCode ?? 0, localEndpoints: localEndpointsOf(body), error: '' }));
      res.on('error', (e) => done({ status: res.statusCode ?? 0, localEndpoints: -1, error: e.message }));
    });
    req.on('timeout', () => {
      req.destroy(new Error(`no answer within ${timeoutMs} ms`));
    });
    req.on('error', (e) => done({ status: 0, localEndpoints: -1, error: e.message }));
  });
}

// Worker mode: `node health-probe-worker.js` (spawned with nsenter --net=...).
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  createInterface({ input: process.stdin }).on('line', (line) => {
    let req: { id: number; url: string; timeoutMs: number };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      return;
    }
    void probeHealth(req.url, req.timeoutMs).then((a) => process.stdout.write(`${JSON.stringify({ id: req.id, ...a })}\n`));
  });
  process.stdin.on('end', () => process.exit(0));
}
