// The lab load balancer's controller: what a cloud load balancer's health checks do for a
// Kubernetes LoadBalancer Service. Runs inside the LB's network namespace
// (`ip netns exec <lb netns> node lb-controller.js --state <file> --lb-file <file> ...`).
//
// Every --interval it sends `GET http://<node InternalIP>:<healthCheckNodePort>/healthz` to
// every node, for each LoadBalancer Service with externalTrafficPolicy Local (kube-proxy
// answers 200 where the node has a local ready endpoint, 503 elsewhere). A node is taken
// out after --unhealthy-threshold consecutive failed checks (non-200, refused, timeout)
// and put back after --healthy-threshold consecutive successes; when every node fails,
// the LB fails open and uses them all. Services with Cluster policy have no health check
// node port: every node is a target.
//
// It owns how the VIPs are delivered in the LB namespace (see lbNetworkLines): in forward
// mode the VIP routes' ECMP next hops are the healthy nodes; in proxy mode the VIPs are
// local addresses for lb-proxy.js, which reads the targets from the file below.
//
// It writes its view atomically to --lb-file (/run/natlens/lab-<prefix>-lb.json, a
// LabLbHealth) after every round and every state change; readLabState() merges it, and
// appliedStateMtimeMs tells the lab which state version the routes already reflect.
// The state is re-read on SIGHUP (sent by the lab after every change) and by a 1 s poll.

import http from 'node:http';
import { argNumber, argValue, isMainModule, LabStateFollower, JsonFile, log, onTerminate, signalReady, writeJsonAtomic } from './daemon.js';
import { run } from './exec.js';
import { byFamily, hasHealthCheck, lbNetworkLines } from './topology.js';
import type { LabLbHealth, LabLbHealthCheckConfig, LabLbNodeHealth, LabLbServiceHealth, LabState, LbMode } from './types.js';

interface CheckResult {
  ok: boolean;
  status: number | null;
  localEndpoints: number | null;
  error: string | null;
}

function check(url: string, timeoutMs: number): Promise<CheckResult> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (r: CheckResult): void => {
      if (!done) {
        done = true;
        resolve(r);
      }
    };
    const req = http.get(url, { agent: false, timeout: timeoutMs, headers: { 'User-Agent': 'natlens-lab-lb-health-check' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        if (body.length < 4096) body += d;
      });
      res.on('end', () => {
        let localEndpoints: number | null = null;
        try {
          const j = JSON.parse(body) as { localEndpoints?: unknown };
          if (typeof j.localEndpoints === 'number') localEndpoints = j.localEndpoints;
        } catch {
          /* not JSON */
        }
        finish({ ok: res.statusCode === 200, status: res.statusCode ?? null, localEndpoints, error: res.statusCode === 200 ? null : `HTTP ${res.statusCode}` });
      });
      res.on('error', (err) => finish({ ok: false, status: res.statusCode ?? null, localEndpoints: null, error: err.message }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs}ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => finish({ ok: false, status: null, localEndpoints: null, error: err.code ?? err.message }));
  });
}

/** One health-check round's bookkeeping for a node (pure; exported for tests). */
export function nextNodeHealth(prev: LabLbNodeHealth, r: CheckResult, cfg: LabLbHealthCheckConfig, now: string): LabLbNodeHealth {
  const h: LabLbNodeHealth = { ...prev, lastStatus: r.status, lastLocalEndpoints: r.localEndpoints, lastError: r.error, lastCheckedAt: now };
  if (r.ok) {
    h.consecutiveSuccesses = prev.consecutiveSuccesses + 1;
    h.consecutiveFailures = 0;
    if (!prev.healthy && h.consecutiveSuccesses >= cfg.healthyThreshold) h.healthy = true;
  } else {
    h.consecutiveFailures = prev.consecutiveFailures + 1;
    h.consecutiveSuccesses = 0;
    if (prev.healthy && h.consecutiveFailures >= cfg.unhealthyThreshold) h.healthy = false;
  }
  return h;
}

function main(): void {
  const statePath = argValue('state');
  const lbFile = argValue('lb-file');
  const cfg: LabLbHealthCheckConfig = {
    intervalMs: argNumber('interval', 1000),
    timeoutMs: argNumber('timeout', 800),
    unhealthyThreshold: argNumber('unhealthy-threshold', 2),
    healthyThreshold: argNumber('healthy-threshold', 1),
  };
  // Pick up where a previous controller of this lab left off (targets, health).
  const previous = new JsonFile<LabLbHealth>(lbFile);
  previous.refresh();
  let services: Record<string, LabLbServiceHealth> = previous.value?.services ?? {};
  let appliedLines = '';
  let appliedMode: LbMode | null = null;
  let appliedMtime = 0;
  let queue: Promise<void> = Promise.resolve();
  let follower: LabStateFollower;

  /** Services and targets for the current state, from the health records so far. */
  const computeServices = (state: LabState): Record<string, LabLbServiceHealth> => {
    const out: Record<string, LabLbServiceHealth> = {};
    const all = state.nodes.map((n) => n.name);
    for (const svc of state.services) {
      if (svc.type !== 'LoadBalancer') continue;
      const key = `${svc.namespace}/${svc.name}`;
      const prev = services[key];
      if (!hasHealthCheck(svc)) {
        out[key] = { externalTrafficPolicy: svc.externalTrafficPolicy, targets: all, failOpen: false, nodes: {} };
        continue;
      }
      // Newly checked service: nodes that were receiving traffic start healthy (they have to
      // fail the checks first, like on a real LB); the others start unhealthy.
      const wasTarget = new Set(prev?.targets ?? state.lb.targets[key] ?? all);
      const nodes: Record<string, LabLbNodeHealth> = {};
      for (const n of all) {
        nodes[n] = (prev?.healthCheckNodePort === svc.healthCheckNodePort ? prev.nodes[n] : undefined) ?? {
          healthy: wasTarget.has(n),
          consecutiveSuccesses: 0,
          consecutiveFailures: 0,
          lastStatus: null,
          lastLocalEndpoints: null,
          lastError: null,
          lastCheckedAt: null,
        };
      }
      const healthy = all.filter((n) => nodes[n]?.healthy);
      out[key] = {
        externalTrafficPolicy: 'Local',
        healthCheckNodePort: svc.healthCheckNodePort,
        targets: healthy.length ? healthy : all,
        failOpen: healthy.length === 0,
        nodes,
      };
    }
    return out;
  };

  /** Bring routes/addresses and the file in line with the state and health (serialised). */
  const reconcile = (why: string, force: boolean): Promise<void> => {
    queue = queue.then(async () => {
      const state = follower.state;
      const mtime = follower.file.mtimeMs;
      const before = JSON.stringify(Object.fromEntries(Object.entries(services).map(([k, v]) => [k, v.targets])));
      services = computeServices(state);
      const targets = Object.fromEntries(Object.entries(services).map(([k, v]) => [k, v.targets]));
      if (JSON.stringify(targets) !== before) log(`targets ${JSON.stringify(targets)} (${why})`);
      const mode = state.lb.mode;
      const switching = mode !== appliedMode;
      const lines = lbNetworkLines(state, targets, mode, switching);
      const text = lines.join('\n');
      if (force || switching || text !== appliedLines) {
        const res = await run('ip', ['-force', '-batch', '-'], { input: text + '\n', allowFail: true });
        if (res.code !== 0 && !switching) log(`ip -batch failed (${why}): ${res.stderr.trim()}`);
        appliedLines = text;
        appliedMode = mode;
      }
      appliedMtime = mtime;
      const out: LabLbHealth = {
        version: 1,
        prefix: state.prefix,
        stateCreatedAt: state.createdAt,
        appliedStateMtimeMs: appliedMtime,
        mode,
        proxyProtocol: state.lb.proxyProtocol,
        updatedAt: new Date().toISOString(),
        healthCheck: cfg,
        services,
      };
      try {
        writeJsonAtomic(lbFile, out);
      } catch (err) {
        log(`cannot write ${lbFile}: ${String(err)}`);
      }
    }).catch((err: unknown) => log(`reconcile failed (${why}): ${String(err)}`));
    return queue;
  };

  const round = async (): Promise<void> => {
    const started = Date.now();
    try {
      await checkAll();
    } catch (err) {
      log(`health-check round failed: ${String(err)}`);
    }
    setTimeout(() => void round(), Math.max(0, cfg.intervalMs - (Date.now() - started)));
  };

  const checkAll = async (): Promise<void> => {
    follower.check('round');
    const state = follower.state;
    const jobs: Array<Promise<void>> = [];
    const now = new Date().toISOString();
    const current = computeServices(state);
    for (const svc of state.services) {
      if (!hasHealthCheck(svc)) continue;
      const key = `${svc.namespace}/${svc.name}`;
      for (const node of state.nodes) {
        const ip = byFamily(node.internalIPs, 4) ?? node.internalIPs[0];
        if (!ip) continue;
        const host = ip.includes(':') ? `[${ip}]` : ip;
        jobs.push(
          check(`http://${host}:${svc.healthCheckNodePort}/healthz`, cfg.timeoutMs).then((r) => {
            // The service may have changed meanwhile: only record into a matching entry.
            const entry = services[key] ?? current[key];
            const prev = entry?.nodes[node.name];
            if (!entry || !prev || entry.healthCheckNodePort !== svc.healthCheckNodePort) return;
            const next = nextNodeHealth(prev, r, cfg, now);
            if (next.healthy !== prev.healthy) log(`${key}: ${node.name} ${next.healthy ? 'healthy' : 'unhealthy'} (${r.error ?? `HTTP ${r.status}`})`);
            entry.nodes[node.name] = next;
          }),
        );
      }
    }
    services = current;
    await Promise.all(jobs);
    await reconcile('health checks', false);
  };

  follower = new LabStateFollower(statePath, (_s, reason) => {
    if (reason !== 'start') void reconcile(`state changed (${reason})`, reason === 'SIGHUP');
  });
  follower.start();
  if (previous.value?.stateCreatedAt !== follower.state.createdAt) services = {};
  onTerminate(() => undefined);
  void reconcile('start', true).then(() => {
    signalReady();
    void round();
  });
}

if (isMainModule(import.meta.url)) main();
