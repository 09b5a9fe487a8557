// The lab: the cluster of the Kubernetes "Using Source IP" tutorial built out of
// network namespaces, veth pairs and real kube-proxy NAT rules on one machine.
//
//   client (198.51.100.79) ── router ── br0 (10.240.0.0/24) ─┬─ lb (10.240.0.2, forwards or proxies 203.0.113.140)
//                                                             ├─ node1 (10.240.0.3) ── source-ip-app, busybox-1
//                                                             ├─ node2 (10.240.0.4) ── busybox-2
//                                                             └─ node3 (10.240.0.5)
//
// Daemons: every node runs kube-proxy's health server (kube-proxy-healthz.js, /healthz on
// each Local LoadBalancer Service's healthCheckNodePort); the LB runs a health-checking
// controller (lb-controller.js: VIP routes to the healthy nodes) and, in proxy mode, a TCP
// proxy (lb-proxy.js, optionally writing PROXY protocol headers). All follow the state file
// and get a SIGHUP after every change.
//
// Library entry points: labUp, labDown, labPatch, labTerminate, labRestore, labSetLbMode,
// labWaitLb, labHealthz, labCurl, labAddPod(s), labAddService, readLabState, labStatus.
// State lives in /run/natlens/lab-<prefix>.json (the LB controller's live targets and
// health in /run/natlens/lab-<prefix>-lb.json, merged by readLabState).

import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NatlensError, UsageError } from '../util/errors.js';
import { PACKAGE_ROOT } from '../util/paths.js';
import { ipBatch, listNetns, netnsExists, nsRun, procCmdline, run, sleep, sysctl } from './exec.js';
import { applyKubeProxy } from './kube-proxy-apply.js';
import type { IPFamily } from './kube-proxy-model.js';
import type { LabClientResult } from './lab-client.js';
import type { ProbeResult } from './kube-proxy-healthz.js';
import {
  DEFAULT_LB_HEALTH_CHECK,
  DEFAULT_PREFIX,
  POD_GW,
  STATE_DIR,
  allocateClusterIPs,
  allocateNodePort,
  allocatePodIPs,
  byFamily,
  daemonLogPath,
  defaultLabState,
  familyOf,
  hasHealthCheck,
  lbHealthPath,
  lbNetworkLines,
  lbTargetNodes,
  makePod,
  makeService,
  normalizeLabState,
  nsName,
  refreshDerived,
  statePath,
  validatePrefix,
} from './topology.js';
import type {
  LabLbHealth,
  LabLbHealthCheckConfig,
  LabNode,
  LabPod,
  LabServer,
  LabService,
  LabServicePort,
  LabState,
  LbMode,
  ProxyMode,
  ProxyProtocolMode,
  ServiceType,
  TrafficPolicy,
} from './types.js';

export * from './types.js';
export { DEFAULT_PREFIX, DEFAULT_LB_HEALTH_CHECK, lbHealthPath, statePath } from './topology.js';

export type Progress = (line: string) => void;
const quiet: Progress = () => undefined;

// ---------------------------------------------------------------- state I/O

/** The state file as written (normalised for old versions), without the LB controller's live view. */
function readRawState(prefix: string): LabState | null {
  const p = statePath(prefix);
  if (!existsSync(p)) return null;
  return normalizeLabState(JSON.parse(readFileSync(p, 'utf8')) as LabState);
}

/** The LB controller's file (live targets and health), or null. */
export function readLbHealth(prefix: string = DEFAULT_PREFIX): LabLbHealth | null {
  try {
    return JSON.parse(readFileSync(lbHealthPath(prefix), 'utf8')) as LabLbHealth;
  } catch {
    return null;
  }
}

/** The lab's state, or null when no lab with that prefix is up. lb.targets are the live,
 * health-checked targets and lb.health the controller's view (when the controller runs). */
export function readLabState(prefix: string = DEFAULT_PREFIX): LabState | null {
  const state = readRawState(prefix);
  if (!state) return null;
  const health = readLbHealth(prefix);
  if (health && health.stateCreatedAt === state.createdAt) {
    state.lb.health = health;
    for (const [key, svc] of Object.entries(health.services)) if (key in state.lb.targets) state.lb.targets[key] = [...svc.targets];
  }
  return state;
}

function noLab(prefix: string): NatlensError {
  return new NatlensError(`no lab with prefix "${prefix}" is up (start one with: natlens lab up${prefix === DEFAULT_PREFIX ? '' : ` --prefix ${prefix}`})`);
}

/** The lab's state; throws a helpful error when there is none. */
export function requireLabState(prefix: string = DEFAULT_PREFIX): LabState {
  const s = readLabState(prefix);
  if (!s) throw noLab(prefix);
  return s;
}

/** For changes: the state as stored (no live LB view merged in). */
function requireRawState(prefix: string): LabState {
  const s = readRawState(prefix);
  if (!s) throw noLab(prefix);
  return s;
}

function writeLabState(state: LabState): void {
  mkdirSync(STATE_DIR, { recursive: true });
  const p = statePath(state.prefix);
  const tmp = `${p}.tmp-${process.pid}`;
  const { health: _live, ...lb } = state.lb;
  writeFileSync(tmp, JSON.stringify({ ...state, lb }, null, 2) + '\n');
  renameSync(tmp, p);
}

function stateMtimeMs(prefix: string): number {
  try {
    return statSync(statePath(prefix)).mtimeMs;
  } catch {
    return 0;
  }
}

/** Serialise state mutations per prefix within this process. */
const locks = new Map<string, Promise<unknown>>();
function withLock<T>(prefix: string, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(prefix) ?? Promise.resolve();
  const next = prev.then(fn, fn);
  locks.set(
    prefix,
    next.catch(() => undefined),
  );
  return next;
}

// ---------------------------------------------------------------- scripts

export type LabScript = 'echo-server' | 'lab-client' | 'kube-proxy-healthz' | 'lb-controller' | 'lb-proxy';
const LAB_SCRIPTS: LabScript[] = ['echo-server', 'lab-client', 'kube-proxy-healthz', 'lb-controller', 'lb-proxy'];

/** Path of a compiled lab script (echo-server, lab-client, the daemons): next to this module
 * when running from dist/, else the build output (run `npm run build:ts` first). */
export function labScriptPath(name: LabScript): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, `${name}.js`), join(PACKAGE_ROOT, 'dist', 'src', 'lab', `${name}.js`)];
  for (const c of candidates) if (existsSync(c)) return c;
  throw new NatlensError(`cannot find ${name}.js (looked in ${candidates.join(', ')}): build first with npm run build:ts`);
}

// ---------------------------------------------------------------- wiring

const ROUTER_SYSCTLS = {
  'net.ipv4.ip_forward': 1,
  'net.ipv6.conf.all.forwarding': 1,
  'net.ipv4.conf.all.rp_filter': 0,
  'net.ipv4.conf.default.rp_filter': 0,
  'net.ipv4.conf.all.send_redirects': 0,
  'net.ipv4.conf.default.send_redirects': 0,
};
const NO_DAD = {
  'net.ipv6.conf.all.accept_dad': 0,
  'net.ipv6.conf.default.accept_dad': 0,
};

function v4(list: string[]): string {
  const a = byFamily(list, 4);
  if (!a) throw new Error(`no IPv4 address in ${list.join(',')}`);
  return a;
}
function v6(list: string[]): string {
  const a = byFamily(list, 6);
  if (!a) throw new Error(`no IPv6 address in ${list.join(',')}`);
  return a;
}

function nodeByName(state: LabState, name: string): LabNode {
  const n = state.nodes.find((x) => x.name === name || x.netns === name);
  if (!n) throw new UsageError(`no node "${name}" in lab "${state.prefix}" (nodes: ${state.nodes.map((x) => x.name).join(', ')})`);
  return n;
}

/** `ip` commands (for `ip -n <lb> -batch`) delivering each LB VIP per the LB mode: ECMP
 * routes to the target nodes (forward) or local addresses for the proxy (proxy). The LB
 * controller owns these once it runs; this is the initial wiring. */
function lbRouteLines(state: LabState): string[] {
  return lbNetworkLines(state, state.lb.targets, state.lb.mode);
}

async function wireInfrastructure(state: LabState): Promise<void> {
  const r = state.router;
  const routerLines = [
    'link set lo up',
    `link add ${r.bridge} type bridge mcast_snooping 0`,
    `addr add ${v4(r.bridgeIPs)}/24 dev ${r.bridge}`,
    `addr add ${v6(r.bridgeIPs)}/64 dev ${r.bridge} nodad`,
    `link set ${r.bridge} up`,
    `link add cl0 type veth peer name tmpc netns ${state.client.netns}`,
    `addr add ${v4(r.clientLinkIPs)}/24 dev cl0`,
    `addr add ${v6(r.clientLinkIPs)}/64 dev cl0 nodad`,
    'link set cl0 up',
    `link add up-lb type veth peer name tmpu netns ${state.lb.netns}`,
    `link set up-lb master ${r.bridge} up`,
  ];
  for (const n of state.nodes) {
    routerLines.push(`link add up-${n.name} type veth peer name tmpu netns ${n.netns}`, `link set up-${n.name} master ${r.bridge} up`);
  }
  // Pod CIDRs via the node that owns them; LoadBalancer VIPs via the LB.
  for (const n of state.nodes) {
    routerLines.push(`route add ${v4(n.podCIDRs)} via ${v4(n.internalIPs)}`, `route add ${v6(n.podCIDRs)} via ${v6(n.internalIPs)}`);
  }
  const vips = new Set(state.services.flatMap((s) => s.loadBalancerIPs));
  for (const vip of vips) {
    routerLines.push(familyOf(vip) === 6 ? `route add ${vip}/128 via ${v6(state.lb.ips)}` : `route add ${vip}/32 via ${v4(state.lb.ips)}`);
  }
  await ipBatch(r.netns, routerLines);

  const c = state.client;
  const clientLines = [
    'link set lo up',
    'link set tmpc name eth0',
    `addr add ${v4(c.ips)}/24 dev eth0`,
    `addr add ${v6(c.ips)}/64 dev eth0 nodad`,
    'link set eth0 up',
    `route add default via ${v4(c.gateways)}`,
    `route add ::/0 via ${v6(c.gateways)}`,
  ];
  const lbLines = [
    'link set lo up',
    'link set tmpu name eth0',
    `addr add ${v4(state.lb.ips)}/24 dev eth0`,
    `addr add ${v6(state.lb.ips)}/64 dev eth0 nodad`,
    'link set eth0 up',
    `route add default via ${v4(r.bridgeIPs)}`,
    `route add ::/0 via ${v6(r.bridgeIPs)}`,
    ...lbRouteLines(state),
  ];
  const nodeJobs = state.nodes.map((n) => {
    const lines = [
      'link set lo up',
      `link set tmpu name ${n.uplink}`,
      `addr add ${v4(n.internalIPs)}/24 dev ${n.uplink}`,
      `addr add ${v6(n.internalIPs)}/64 dev ${n.uplink} nodad`,
      `link set ${n.uplink} up`,
      `route add default via ${v4(r.bridgeIPs)}`,
      `route add ::/0 via ${v6(r.bridgeIPs)}`,
    ];
    // host-gw: the other nodes' pod CIDRs via those nodes.
    for (const o of state.nodes) {
      if (o.name === n.name) continue;
      lines.push(`route add ${v4(o.podCIDRs)} via ${v4(o.internalIPs)}`, `route add ${v6(o.podCIDRs)} via ${v6(o.internalIPs)}`);
    }
    return ipBatch(n.netns, lines);
  });
  await Promise.all([ipBatch(c.netns, clientLines), ipBatch(state.lb.netns, lbLines), ...nodeJobs]);
}

/** Calico-style routed veth for a pod: /32 + /128 on the pod's eth0, default
 * route via 169.254.1.1 / fe80::1 on-link, answered by proxy ARP / an fe80::1
 * address on the host side, and host routes to the pod. */
async function wirePod(state: LabState, pod: LabPod): Promise<void> {
  const node = nodeByName(state, pod.node);
  const hv = pod.hostVeth;
  await ipBatch(node.netns, [
    `link add ${hv} type veth peer name tmpp netns ${pod.netns}`,
    `addr add ${POD_GW[1]}/64 dev ${hv} nodad`,
    `link set ${hv} up`,
    `route add ${v4(pod.ips)}/32 dev ${hv}`,
    `route add ${v6(pod.ips)}/128 dev ${hv}`,
  ]);
  await sysctl(node.netns, { [`net.ipv4.conf.${hv}.proxy_arp`]: 1, [`net.ipv4.conf.${hv}.rp_filter`]: 0 });
  await ipBatch(pod.netns, [
    'link set lo up',
    `link set tmpp name ${pod.interface}`,
    `addr add ${v4(pod.ips)}/32 dev ${pod.interface}`,
    `addr add ${v6(pod.ips)}/128 dev ${pod.interface} nodad`,
    `link set ${pod.interface} up`,
    `route add ${POD_GW[0]} dev ${pod.interface} scope link`,
    `route add default via ${POD_GW[0]} dev ${pod.interface}`,
    `route add ::/0 via ${POD_GW[1]} dev ${pod.interface}`,
  ]);
}

// ---------------------------------------------------------------- servers

/** What runs in a pod: the built-in echo server, nothing, or a custom command
 * (e.g. the capture bench's own server binary). */
export type PodServerSpec =
  | 'echo'
  | 'none'
  | {
      /** argv run with `ip netns exec <pod netns> ...`. */
      command: string[];
      /** Wait until this TCP port listens in the pod before returning. */
      readyPort?: number;
      /** Substring of /proc/<pid>/cmdline identifying the process (default: the whole command). */
      cmdlineMatch?: string;
    };

async function startServer(state: LabState, pod: LabPod, spec: PodServerSpec): Promise<LabServer | undefined> {
  if (spec === 'none') return undefined;
  if (spec === 'echo') {
    const script = labScriptPath('echo-server');
    const command = [process.execPath, script, '--port', '8080', '--pod', pod.name, '--node', pod.node];
    const child = spawn('ip', ['netns', 'exec', pod.netns, ...command], { detached: true, stdio: ['ignore', 'pipe', 'ignore'] });
    const pid = child.pid;
    if (!pid) throw new NatlensError(`cannot start the echo server in ${pod.netns}`);
    const server: LabServer = { pid, command, cmdlineMatch: `${script} --port 8080 --pod ${pod.name} `, kind: 'echo' };
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new NatlensError(`echo server in ${pod.netns} did not become ready within 10s`)), 10_000);
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('ready\n')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new NatlensError(`echo server in ${pod.netns} exited (code ${code}) before it was ready`));
      });
    }).catch(async (err: unknown) => {
      await killServer(server);
      throw err;
    });
    child.removeAllListeners('exit');
    child.stdout?.destroy();
    child.unref();
    return server;
  }
  const child = spawn('ip', ['netns', 'exec', pod.netns, ...spec.command], { detached: true, stdio: 'ignore' });
  if (!child.pid) throw new NatlensError(`cannot start ${spec.command.join(' ')} in ${pod.netns}`);
  child.unref();
  const server: LabServer = { pid: child.pid, command: spec.command, cmdlineMatch: spec.cmdlineMatch ?? spec.command.join(' '), kind: 'custom' };
  if (spec.readyPort) {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const ss = await nsRun(pod.netns, 'ss', ['-Hltn', `sport = :${spec.readyPort}`], { allowFail: true });
      if (ss.stdout.trim()) break;
      if (Date.now() > deadline || !procCmdline(server.pid)) {
        await killServer(server);
        throw new NatlensError(`${spec.command.join(' ')} in ${pod.netns} did not listen on TCP ${spec.readyPort} within 10s`);
      }
      await sleep(50);
    }
  }
  return server;
}

/** Kill a server the lab started, only if the PID still runs that command. */
async function killServer(server: LabServer): Promise<boolean> {
  const owned = (): boolean => (procCmdline(server.pid) ?? '').includes(server.cmdlineMatch);
  if (!owned()) return false;
  try {
    process.kill(server.pid, 'SIGTERM');
  } catch {
    return false;
  }
  for (let i = 0; i < 40 && owned(); i++) await sleep(50);
  if (owned()) {
    try {
      process.kill(server.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  return true;
}

// ---------------------------------------------------------------- daemons

function serverRunning(server: LabServer | undefined): boolean {
  return !!server && (procCmdline(server.pid) ?? '').includes(server.cmdlineMatch);
}

/** Start one of the lab's daemons inside a namespace; resolves once it printed "ready". */
async function startDaemon(
  netns: string,
  script: LabScript,
  args: string[],
  kind: LabServer['kind'],
  logFile: string,
): Promise<LabServer> {
  const path = labScriptPath(script);
  const command = [process.execPath, path, ...args];
  mkdirSync(STATE_DIR, { recursive: true });
  const fd = openSync(logFile, 'a');
  let child;
  try {
    child = spawn('ip', ['netns', 'exec', netns, ...command], { detached: true, stdio: ['ignore', 'pipe', fd] });
  } finally {
    closeSync(fd);
  }
  const pid = child.pid;
  if (!pid) throw new NatlensError(`cannot start ${script} in ${netns}`);
  // /proc/<pid>/cmdline joined with spaces ends with one: the trailing space keeps "node1" from matching "node10".
  const server: LabServer = { pid, command, cmdlineMatch: `${path} ${args.join(' ')} `, kind };
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new NatlensError(`${script} in ${netns} did not become ready within 10s (log: ${logFile})`)), 10_000);
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('ready\n')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new NatlensError(`${script} in ${netns} exited (code ${code}) before it was ready (log: ${logFile})`));
    });
  }).catch(async (err: unknown) => {
    await killServer(server);
    throw err;
  });
  child.removeAllListeners('exit');
  child.stdout?.destroy();
  child.unref();
  return server;
}

function startHealthServer(state: LabState, node: LabNode): Promise<LabServer> {
  return startDaemon(
    node.netns,
    'kube-proxy-healthz',
    ['--state', statePath(state.prefix), '--node', node.name],
    'healthz',
    daemonLogPath(state.prefix, `healthz-${node.name}`),
  );
}

function startLbController(state: LabState): Promise<LabServer> {
  const hc = state.lb.healthCheck ?? DEFAULT_LB_HEALTH_CHECK;
  return startDaemon(
    state.lb.netns,
    'lb-controller',
    [
      '--state', statePath(state.prefix),
      '--lb-file', lbHealthPath(state.prefix),
      '--interval', String(hc.intervalMs),
      '--timeout', String(hc.timeoutMs),
      '--unhealthy-threshold', String(hc.unhealthyThreshold),
      '--healthy-threshold', String(hc.healthyThreshold),
    ],
    'lb-controller',
    daemonLogPath(state.prefix, 'lb-controller'),
  );
}

function startLbProxy(state: LabState): Promise<LabServer> {
  return startDaemon(
    state.lb.netns,
    'lb-proxy',
    ['--state', statePath(state.prefix), '--lb-file', lbHealthPath(state.prefix)],
    'lb-proxy',
    daemonLogPath(state.prefix, 'lb-proxy'),
  );
}

export interface LabDaemon {
  /** "healthz-node1", "lb-controller", "lb-proxy". */
  name: string;
  netns: string;
  server: LabServer;
}

/** The daemons recorded in a state. */
export function labDaemons(state: LabState): LabDaemon[] {
  const out: LabDaemon[] = [];
  for (const n of state.nodes) if (n.healthServer) out.push({ name: `healthz-${n.name}`, netns: n.netns, server: n.healthServer });
  if (state.lb.controller) out.push({ name: 'lb-controller', netns: state.lb.netns, server: state.lb.controller });
  if (state.lb.proxy) out.push({ name: 'lb-proxy', netns: state.lb.netns, server: state.lb.proxy });
  return out;
}

/**
 * Start the daemons the state needs that are not running (all of them for a fresh lab;
 * after a crash, or for a lab made by an older natlens), stop the proxy outside proxy mode.
 * The state file must be written first: the daemons read it. Returns true when the state
 * changed (new PIDs) and must be written again.
 */
async function ensureDaemons(state: LabState): Promise<boolean> {
  let changed = false;
  // allSettled: a failed start must not leave the others running unrecorded.
  const started = await Promise.allSettled(
    state.nodes.map(async (n) => {
      if (serverRunning(n.healthServer)) return;
      n.healthServer = await startHealthServer(state, n);
      changed = true;
    }),
  );
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  if (!serverRunning(state.lb.controller)) {
    state.lb.controller = await startLbController(state);
    changed = true;
  }
  if (state.lb.mode === 'proxy' && !serverRunning(state.lb.proxy)) {
    state.lb.proxy = await startLbProxy(state);
    changed = true;
  } else if (state.lb.mode !== 'proxy' && state.lb.proxy) {
    await killServer(state.lb.proxy);
    delete state.lb.proxy;
    changed = true;
  }
  return changed;
}

/** SIGHUP every running daemon of the lab: re-read the state now. */
function signalDaemons(state: LabState): void {
  for (const d of labDaemons(state)) {
    if (!serverRunning(d.server)) continue;
    try {
      process.kill(d.server.pid, 'SIGHUP');
    } catch {
      /* gone */
    }
  }
}

/** Wait (bounded) until every node's health server listens on the Local services' ports. */
async function waitHealthPorts(state: LabState, timeoutMs = 3000): Promise<void> {
  const ports = state.services.filter(hasHealthCheck).map((s) => s.healthCheckNodePort);
  if (!ports.length) return;
  const deadline = Date.now() + timeoutMs;
  await Promise.all(
    state.nodes
      .filter((n) => serverRunning(n.healthServer))
      .map(async (n) => {
        for (;;) {
          const ss = await nsRun(n.netns, 'ss', ['-Hltn'], { allowFail: true });
          const listening = new Set([...ss.stdout.matchAll(/:(\d+)\s/g)].map((m) => Number(m[1])));
          if (ports.every((p) => listening.has(p)) || Date.now() > deadline) return;
          await sleep(50);
        }
      }),
  );
}

// ---------------------------------------------------------------- up / down

export interface LabUpOptions {
  prefix?: string;
  proxyMode?: ProxyMode;
  /** Tear down an existing lab with the same prefix first. */
  force?: boolean;
  progress?: Progress;
  /** The load balancer: "forward" (packet-forwarding, default) or "proxy" (TCP proxy). */
  lbMode?: LbMode;
  /** Proxy mode: the PROXY protocol header the proxy writes (default "none"). */
  proxyProtocol?: ProxyProtocolMode;
  /** The LB's health checks (default DEFAULT_LB_HEALTH_CHECK: every 1 s, out after 2 failures, back after 1 success). */
  lbHealthCheck?: Partial<LabLbHealthCheckConfig>;
}

function checkLbOptions(mode: unknown, pp: unknown, hc: Partial<LabLbHealthCheckConfig> | undefined): LabLbHealthCheckConfig {
  if (mode !== 'forward' && mode !== 'proxy') throw new UsageError(`--lb-mode must be forward or proxy, not "${String(mode)}"`);
  if (pp !== 'none' && pp !== 'v1' && pp !== 'v2') throw new UsageError(`--proxy-protocol must be none, v1 or v2, not "${String(pp)}"`);
  if (mode === 'forward' && pp !== 'none') throw new UsageError('--proxy-protocol needs --lb-mode proxy (a packet-forwarding LB writes no headers)');
  const cfg = { ...DEFAULT_LB_HEALTH_CHECK, ...hc };
  for (const [k, v] of Object.entries(cfg)) {
    if (!Number.isInteger(v) || v <= 0 || v > 600_000) throw new UsageError(`LB health check ${k} must be a positive integer, not ${String(v)}`);
  }
  if (cfg.intervalMs < 50) throw new UsageError('the LB health-check interval must be at least 50ms');
  return cfg;
}

function labNamespaceNames(state: LabState): string[] {
  return [state.client.netns, state.router.netns, state.lb.netns, ...state.nodes.map((n) => n.netns), ...state.pods.map((p) => p.netns)];
}

/** Build the tutorial's cluster. Fails (removing everything it created) if anything goes wrong. */
export async function labUp(opts: LabUpOptions = {}): Promise<LabState> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  validatePrefix(prefix);
  const proxyMode = opts.proxyMode ?? 'iptables';
  if (proxyMode !== 'iptables' && proxyMode !== 'nftables') throw new UsageError(`--proxy-mode must be iptables or nftables, not "${String(proxyMode)}"`);
  const lbMode = opts.lbMode ?? 'forward';
  const proxyProtocol = opts.proxyProtocol ?? 'none';
  const healthCheck = checkLbOptions(lbMode, proxyProtocol, opts.lbHealthCheck);
  const progress = opts.progress ?? quiet;
  return withLock(prefix, async () => {
    const state = defaultLabState(prefix, proxyMode);
    state.lb.mode = lbMode;
    state.lb.proxyProtocol = proxyProtocol;
    state.lb.healthCheck = healthCheck;
    const names = labNamespaceNames(state);
    const existing = names.filter(netnsExists);
    if (readLabState(prefix) || existing.length) {
      if (!opts.force) {
        throw new NatlensError(
          `a lab with prefix "${prefix}" already exists (${existing.length ? `namespaces ${existing.join(', ')}` : statePath(prefix)}); ` +
            `remove it with: natlens lab down${prefix === DEFAULT_PREFIX ? '' : ` --prefix ${prefix}`} (or pass --force to recreate it)`,
        );
      }
      progress(`lab "${prefix}" exists: tearing it down first (--force)`);
      await labDownUnlocked(prefix, progress);
    }
    const created: string[] = [];
    try {
      progress(`creating ${names.length} network namespaces (${prefix}-*)`);
      for (const n of names) {
        await run('ip', ['netns', 'add', n]);
        created.push(n);
      }
      state.namespaces = [...created];
      const all = [state.client.netns, ...state.pods.map((p) => p.netns)];
      const routers = [state.router.netns, state.lb.netns, ...state.nodes.map((n) => n.netns)];
      await Promise.all([
        ...all.map((ns) => sysctl(ns, NO_DAD)),
        ...routers.map((ns) =>
          sysctl(ns, {
            ...NO_DAD,
            ...ROUTER_SYSCTLS,
            ...(ns === state.lb.netns ? { 'net.ipv4.fib_multipath_hash_policy': 1, 'net.ipv6.fib_multipath_hash_policy': 1 } : {}),
            ...(state.nodes.some((n) => n.netns === ns) ? { 'net.netfilter.nf_conntrack_acct': 1 } : {}),
          }),
        ),
      ]);
      progress('wiring router, load balancer, client and nodes (veth pairs, bridge, routes)');
      await wireInfrastructure(state);
      progress(`wiring pods (${state.pods.map((p) => `${p.name}@${p.node}`).join(', ')})`);
      await Promise.all(state.pods.map((p) => wirePod(state, p)));
      progress(`programming kube-proxy (${proxyMode} mode, IPv4 + IPv6) on ${state.nodes.map((n) => n.name).join(', ')}`);
      await Promise.all(state.nodes.map((n) => applyKubeProxy(state, n, { ensureJumps: true })));
      progress('starting echo servers');
      for (const pod of state.pods) {
        if (pod.labels['app'] !== 'source-ip-app') continue;
        const server = await startServer(state, pod, 'echo');
        if (server) pod.server = server;
      }
      writeLabState(state);
      progress(
        `starting kube-proxy's health servers on the nodes and the load balancer's controller` +
          (lbMode === 'proxy' ? ` and TCP proxy (PROXY protocol: ${proxyProtocol})` : ''),
      );
      rmSync(lbHealthPath(prefix), { force: true });
      await ensureDaemons(state);
      writeLabState(state);
      progress(`lab "${prefix}" is up`);
      return state;
    } catch (err) {
      progress(`lab up failed: removing what was created`);
      for (const pod of state.pods) if (pod.server) await killServer(pod.server);
      for (const d of labDaemons(state)) await killServer(d.server);
      await deleteNamespaces(created);
      removeLabFiles(state.prefix, state);
      throw err;
    }
  });
}

async function deleteNamespaces(names: string[]): Promise<string[]> {
  const present = names.filter(netnsExists);
  if (present.length) await ipBatch(undefined, present.map((n) => `netns del ${n}`), { allowFail: true });
  return present;
}

/** Namespaces that look like this prefix's, minus those recorded by other labs. */
function strayNamespaces(prefix: string): string[] {
  // Prefixes contain no '-', so this never matches another lab's namespaces.
  const re = new RegExp(`^${prefix}-(client|router|lb|node\\d+|pod-[a-z0-9.-]+)$`);
  return listNetns().filter((ns) => re.test(ns));
}

export interface LabDownResult {
  prefix: string;
  removedNamespaces: string[];
  killedPids: number[];
}

/** Remove the state file, the LB controller's file and the daemons' logs. */
function removeLabFiles(prefix: string, state: LabState | null): void {
  rmSync(statePath(prefix), { force: true });
  rmSync(lbHealthPath(prefix), { force: true });
  const logs = new Set(['lb-controller', 'lb-proxy', ...(state?.nodes ?? []).map((n) => `healthz-${n.name}`)].map((d) => daemonLogPath(prefix, d)));
  // Also logs of nodes a crashed run left behind.
  try {
    for (const f of readdirSync(STATE_DIR)) if (new RegExp(`^lab-${prefix}-healthz-node\\d+\\.log$`).test(f)) logs.add(join(STATE_DIR, f));
  } catch {
    /* no dir */
  }
  for (const l of logs) rmSync(l, { force: true });
}

async function labDownUnlocked(prefix: string, progress: Progress): Promise<LabDownResult> {
  const state = readRawState(prefix);
  const killed: number[] = [];
  let names: string[] = [];
  if (state) {
    // The controller first (it rewrites routes), then the rest.
    const daemons = labDaemons(state).sort((a, b) => Number(b.name === 'lb-controller') - Number(a.name === 'lb-controller'));
    for (const d of daemons) if (await killServer(d.server)) killed.push(d.server.pid);
    for (const pod of state.pods) {
      if (pod.server && (await killServer(pod.server))) killed.push(pod.server.pid);
    }
    names = [...new Set([...state.namespaces, ...labNamespaceNames(state)])];
  }
  // Also namespaces of this prefix left by a crashed run; processes in them are
  // killed only when they are lab scripts (echo server, lab client, the daemons).
  for (const ns of strayNamespaces(prefix)) if (!names.includes(ns)) names.push(ns);
  for (const ns of names.filter(netnsExists)) {
    const pids = await run('ip', ['netns', 'pids', ns], { allowFail: true });
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      const cl = procCmdline(pid) ?? '';
      if (LAB_SCRIPTS.some((sc) => cl.includes(`/lab/${sc}.js`)) && !killed.includes(pid)) {
        if (await killServer({ pid, command: [], cmdlineMatch: cl, kind: 'custom' })) killed.push(pid);
      }
    }
  }
  progress(`removing ${names.filter(netnsExists).length} namespaces of lab "${prefix}"`);
  const removed = await deleteNamespaces(names);
  removeLabFiles(prefix, state);
  return { prefix, removedNamespaces: removed, killedPids: killed };
}

/** Remove every namespace of the lab and kill the servers it started. */
export async function labDown(opts: { prefix?: string; progress?: Progress } = {}): Promise<LabDownResult> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  validatePrefix(prefix);
  return withLock(prefix, () => labDownUnlocked(prefix, opts.progress ?? quiet));
}

// ---------------------------------------------------------------- changes

/**
 * After a change: recompute endpoints, reprogram kube-proxy on every node, write the state
 * (atomically), make sure the daemons run and SIGHUP them (health servers, LB controller,
 * proxy), and wait until the health servers listen on the Local services' ports.
 */
async function resync(state: LabState): Promise<void> {
  refreshDerived(state);
  await Promise.all(state.nodes.map((n) => applyKubeProxy(state, n, { ensureJumps: false })));
  if (!serverRunning(state.lb.controller)) {
    // No controller (yet): point the VIPs at the converged targets directly.
    const lines = lbRouteLines(state);
    if (lines.length) await ipBatch(state.lb.netns, lines);
  }
  writeLabState(state);
  if (await ensureDaemons(state)) writeLabState(state);
  signalDaemons(state);
  await waitHealthPorts(state);
}

function findService(state: LabState, name: string): LabService {
  const [ns, n] = name.includes('/') ? name.split('/', 2) : ['default', name];
  const svc = state.services.find((s) => s.name === n && s.namespace === ns);
  if (!svc) throw new UsageError(`no service "${name}" in lab "${state.prefix}" (services: ${state.services.map((s) => s.name).join(', ')})`);
  return svc;
}

export interface LabPatchOptions {
  prefix?: string;
  /**
   * Wait until the load balancer's health checks have converged on the new policy
   * (labWaitLb) before returning. Default true, so that a request sent right after
   * labPatch() sees the converged LB. false shows the tutorial's in-between moment:
   * after a patch to Local the LB keeps sending to every node (those without an endpoint
   * drop) until their health checks fail.
   */
  waitForLb?: boolean;
  /** Bound of that wait (default: see labWaitLb). */
  lbTimeoutMs?: number;
}

/** `kubectl patch svc <service> -p '{"spec":{"externalTrafficPolicy":"<policy>"}}'`:
 * reprograms kube-proxy on every node (and its health check node ports); the load
 * balancer follows through its health checks. */
export async function labPatch(service: string, externalTrafficPolicy: TrafficPolicy, opts: LabPatchOptions = {}): Promise<LabService> {
  if (externalTrafficPolicy !== 'Local' && externalTrafficPolicy !== 'Cluster') {
    throw new UsageError(`externalTrafficPolicy must be Local or Cluster, not "${String(externalTrafficPolicy)}"`);
  }
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const svc = await withLock(prefix, async () => {
    const state = requireRawState(prefix);
    const svc = findService(state, service);
    if (svc.type === 'ClusterIP') throw new UsageError(`service "${service}" is a ClusterIP service: externalTrafficPolicy applies to NodePort and LoadBalancer services`);
    svc.externalTrafficPolicy = externalTrafficPolicy;
    await resync(state);
    return svc;
  });
  if (svc.type === 'LoadBalancer') await settleLb(prefix, opts.waitForLb ?? true, opts.lbTimeoutMs);
  return svc;
}

/** After a change: wait for the LB to converge, or at least for its controller to have seen the
 * change (immediate effects: a Cluster service's targets, a Local service's health checks start). */
async function settleLb(prefix: string, converge: boolean, timeoutMs?: number): Promise<void> {
  if (converge) {
    await labWaitLb({ prefix, ...(timeoutMs ? { timeoutMs } : {}) });
    return;
  }
  const state = readRawState(prefix);
  if (state) await waitLbApplied(state, 3000).catch(() => null);
}

function findPod(state: LabState, name: string): LabPod {
  const pod = state.pods.find((p) => p.name === name || p.netns === name);
  if (!pod) throw new UsageError(`no pod "${name}" in lab "${state.prefix}" (pods: ${state.pods.map((p) => p.name).join(', ')})`);
  return pod;
}

export interface LabTerminateOptions {
  prefix?: string;
  /** Wait until the LB's health checks reflect the change (default true; see LabPatchOptions.waitForLb). */
  waitForLb?: boolean;
  lbTimeoutMs?: number;
}

async function setTerminating(pod: string, terminating: boolean, opts: LabTerminateOptions): Promise<LabPod> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const res = await withLock(prefix, async () => {
    const state = requireRawState(prefix);
    const p = findPod(state, pod);
    if (terminating) p.terminating = true;
    else delete p.terminating;
    await resync(state);
    return { pod: p, hasLb: state.services.some((s) => s.type === 'LoadBalancer') };
  });
  if (res.hasLb) await settleLb(prefix, opts.waitForLb ?? true, opts.lbTimeoutMs);
  return res.pod;
}

/**
 * `kubectl delete pod <pod>` during its grace period: the pod's endpoints become
 * ready=false, serving=true, terminating=true while its server keeps running. kube-proxy
 * then only uses them when no ready endpoint is left (cluster-wide for Cluster policy, on
 * the node for Local), and the health check stops counting them. Undo with labRestore.
 */
export function labTerminate(pod: string, opts: LabTerminateOptions = {}): Promise<LabPod> {
  return setTerminating(pod, true, opts);
}

/** Undo labTerminate: the pod's endpoints are ready again. */
export function labRestore(pod: string, opts: LabTerminateOptions = {}): Promise<LabPod> {
  return setTerminating(pod, false, opts);
}

export interface LabLbModeOptions {
  prefix?: string;
  /** Proxy mode: the header to write; default: the current one when already in proxy mode, else "none". */
  proxyProtocol?: ProxyProtocolMode;
  /** Bound of the wait for the controller to apply the switch (default 10 s). */
  timeoutMs?: number;
}

/**
 * Switch the running lab's load balancer between packet forwarding and a TCP proxy (with a
 * PROXY protocol header or not). Returns once the VIPs are delivered the new way: in proxy
 * mode the proxy listens and the VIPs are local to the LB; in forward mode the VIP routes
 * point at the health-checked nodes and the proxy is stopped.
 */
export async function labSetLbMode(mode: LbMode, opts: LabLbModeOptions = {}): Promise<LabState['lb']> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return withLock(prefix, async () => {
    const state = requireRawState(prefix);
    const pp = mode === 'proxy' ? (opts.proxyProtocol ?? (state.lb.mode === 'proxy' ? state.lb.proxyProtocol : 'none')) : (opts.proxyProtocol ?? 'none');
    checkLbOptions(mode, pp, state.lb.healthCheck);
    state.lb.mode = mode;
    state.lb.proxyProtocol = pp;
    if (mode === 'proxy') {
      // The proxy first (it listens on the wildcard address), then the VIPs become local.
      writeLabState(state);
      if (await ensureDaemons(state)) writeLabState(state);
      signalDaemons(state);
      await waitLbApplied(state, timeoutMs);
    } else {
      // Routes back first, then the proxy goes.
      writeLabState(state);
      if (!serverRunning(state.lb.controller)) await ipBatch(state.lb.netns, lbNetworkLines(state, state.lb.targets, 'forward', true), { allowFail: true });
      signalDaemons(state);
      await waitLbApplied(state, timeoutMs);
      if (await ensureDaemons(state)) writeLabState(state);
    }
    return state.lb;
  });
}

/** Wait until the LB controller has applied the state file as it is now (mode, routes). */
async function waitLbApplied(state: LabState, timeoutMs: number): Promise<LabLbHealth | null> {
  if (!serverRunning(state.lb.controller)) return null;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const mtime = stateMtimeMs(state.prefix);
    const h = readLbHealth(state.prefix);
    if (h && h.stateCreatedAt === state.createdAt && h.appliedStateMtimeMs >= mtime && h.mode === state.lb.mode) return h;
    if (Date.now() > deadline) {
      throw new NatlensError(`the load balancer controller did not apply the change within ${timeoutMs}ms (log: ${daemonLogPath(state.prefix, 'lb-controller')})`);
    }
    await sleep(25);
  }
}

export interface LabWaitLbOptions {
  prefix?: string;
  /** Only this LoadBalancer service ("loadbalancer" or "default/loadbalancer"); default all. */
  service?: string;
  /** Default: 4 health-check intervals plus the thresholds' worth, at least 10 s. */
  timeoutMs?: number;
}

/**
 * Wait until the load balancer has converged: its controller has seen the current state and
 * its health-checked targets are what the checks lead to (lbTargetNodes: for Local services
 * the nodes with a local ready endpoint, all nodes if none; for Cluster services all nodes).
 * Returns the targets per service ("namespace/name").
 */
export async function labWaitLb(opts: LabWaitLbOptions = {}): Promise<Record<string, string[]>> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const first = requireRawState(prefix);
  const hc = first.lb.healthCheck ?? DEFAULT_LB_HEALTH_CHECK;
  const timeoutMs = opts.timeoutMs ?? Math.max(10_000, (hc.unhealthyThreshold + hc.healthyThreshold + 4) * (hc.intervalMs + hc.timeoutMs));
  const only = opts.service ? findService(first, opts.service) : undefined;
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const state = requireRawState(prefix);
    const mtime = stateMtimeMs(prefix);
    const h = readLbHealth(prefix);
    const want: Record<string, string[]> = {};
    // For health-checked services also each node's verdict (a fail-open LB sends to all
    // nodes before and after they fail: the targets alone do not show convergence).
    const wantHealthy: Record<string, Record<string, boolean>> = {};
    for (const svc of state.services) {
      if (svc.type !== 'LoadBalancer') continue;
      if (only && (svc.name !== only.name || svc.namespace !== only.namespace)) continue;
      const key = `${svc.namespace}/${svc.name}`;
      want[key] = lbTargetNodes(state, svc);
      if (hasHealthCheck(svc)) {
        wantHealthy[key] = Object.fromEntries(
          state.nodes.map((n) => [n.name, svc.endpoints.some((e) => e.node === n.name && e.ready)]),
        );
      }
    }
    if (!serverRunning(state.lb.controller)) return want; // no controller: resync set the routes directly
    const have: Record<string, string[]> = {};
    const haveHealthy: Record<string, Record<string, boolean>> = {};
    if (h && h.stateCreatedAt === state.createdAt) {
      for (const k of Object.keys(want)) have[k] = h.services[k]?.targets ?? [];
      for (const k of Object.keys(wantHealthy)) {
        haveHealthy[k] = Object.fromEntries(state.nodes.map((n) => [n.name, h.services[k]?.nodes[n.name]?.healthy ?? !wantHealthy[k]?.[n.name]]));
      }
    }
    const applied = !!h && h.stateCreatedAt === state.createdAt && h.appliedStateMtimeMs >= mtime;
    if (applied && JSON.stringify(have) === JSON.stringify(want) && JSON.stringify(haveHealthy) === JSON.stringify(wantHealthy)) return have;
    last =
      `targets ${JSON.stringify(have)}, expected ${JSON.stringify(want)}` +
      (Object.keys(wantHealthy).length ? `; healthy ${JSON.stringify(haveHealthy)}, expected ${JSON.stringify(wantHealthy)}` : '') +
      (applied ? '' : ' (controller has not seen the latest state yet)');
    if (Date.now() > deadline) {
      throw new NatlensError(`the load balancer did not converge within ${timeoutMs}ms: ${last} (log: ${daemonLogPath(prefix, 'lb-controller')})`);
    }
    await sleep(50);
  }
}

export interface LabHealthzResult extends ProbeResult {
  node: string;
  service: string;
  url: string;
}

/** `curl localhost:<healthCheckNodePort>/healthz` on a node, like the tutorial: kube-proxy's
 * answer for a LoadBalancer service (connection refused unless the service is Local). */
export async function labHealthz(node: string, service: string, opts: { prefix?: string; timeoutMs?: number } = {}): Promise<LabHealthzResult> {
  const state = requireLabState(opts.prefix ?? DEFAULT_PREFIX);
  const n = nodeByName(state, node);
  const svc = findService(state, service);
  if (svc.type !== 'LoadBalancer' || !svc.healthCheckNodePort) throw new UsageError(`service "${service}" has no healthCheckNodePort (it is a ${svc.type} service)`);
  const url = `http://127.0.0.1:${svc.healthCheckNodePort}/healthz`;
  const timeoutMs = opts.timeoutMs ?? 2000;
  const res = await nsRun(n.netns, process.execPath, [labScriptPath('kube-proxy-healthz'), 'probe', '--url', url, '--timeout', String(timeoutMs)], {
    timeoutMs: timeoutMs + 5000,
    allowFail: true,
  });
  let probe: ProbeResult;
  try {
    probe = JSON.parse(res.stdout.trim().split('\n').pop() ?? '') as ProbeResult;
  } catch {
    probe = { ok: false, status: null, statusText: null, headers: {}, body: null, error: `probe failed (exit ${res.code}): ${res.stderr.trim()}` };
  }
  return { node: n.name, service: `${svc.namespace}/${svc.name}`, url, ...probe };
}

export interface LabPodSpec {
  name: string;
  /** Node name ("node2"). */
  node: string;
  labels?: Record<string, string>;
  /** Pod IPs (IPv4, IPv6); allocated from the node's pod CIDRs when omitted. */
  ips?: string[];
  /** Default: the echo server when labels select it into a service, i.e. always 'echo'. */
  server?: PodServerSpec;
}

/** Add backend/client pods at runtime (each gets its netns, veth, routes and server);
 * services whose selector matches get them as endpoints and kube-proxy is resynced. */
export async function labAddPods(pods: LabPodSpec[], opts: { prefix?: string; progress?: Progress } = {}): Promise<LabPod[]> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const progress = opts.progress ?? quiet;
  return withLock(prefix, async () => {
    const state = requireRawState(prefix);
    const added: LabPod[] = [];
    try {
      for (const spec of pods) {
        if (!/^[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?$/.test(spec.name)) throw new UsageError(`invalid pod name "${spec.name}"`);
        if (state.pods.some((p) => p.name === spec.name)) throw new UsageError(`pod "${spec.name}" already exists in lab "${prefix}"`);
        const node = nodeByName(state, spec.node);
        const pod = makePod(prefix, spec.name, node.name, spec.ips ?? allocatePodIPs(state, node), spec.labels ?? {});
        if (netnsExists(pod.netns)) throw new NatlensError(`namespace ${pod.netns} already exists`);
        progress(`adding pod ${pod.name} on ${node.name} (${pod.ips.join(', ')})`);
        await run('ip', ['netns', 'add', pod.netns]);
        state.namespaces.push(pod.netns);
        state.pods.push(pod);
        added.push(pod);
        writeLabState(state);
        await sysctl(pod.netns, NO_DAD);
        await wirePod(state, pod);
        const server = await startServer(state, pod, spec.server ?? 'echo');
        if (server) pod.server = server;
        writeLabState(state);
      }
      await resync(state);
      return added;
    } catch (err) {
      // Undo the pods of this call.
      for (const pod of added) {
        if (pod.server) await killServer(pod.server);
        await deleteNamespaces([pod.netns]);
        state.pods = state.pods.filter((p) => p !== pod);
        state.namespaces = state.namespaces.filter((n) => n !== pod.netns);
      }
      await resync(state).catch(() => undefined);
      throw err;
    }
  });
}

export async function labAddPod(spec: LabPodSpec, opts: { prefix?: string; progress?: Progress } = {}): Promise<LabPod> {
  const [pod] = await labAddPods([spec], opts);
  return pod as LabPod;
}

export interface LabServiceSpec {
  name: string;
  type: ServiceType;
  selector: Record<string, string>;
  /** Default: http TCP 80→8080 and udp UDP 80→8080. */
  ports?: Array<Omit<LabServicePort, 'nodePort'> & { nodePort?: number }>;
  /** Allocated when omitted (IPv4, IPv6). */
  clusterIPs?: string[];
  /** For NodePort/LoadBalancer services without explicit ports: the node port of both ports. */
  nodePort?: number;
  loadBalancerIPs?: string[];
  externalTrafficPolicy?: TrafficPolicy;
  healthCheckNodePort?: number;
}

/** Add a Service at runtime and program it on every node. */
export async function labAddService(spec: LabServiceSpec, opts: { prefix?: string } = {}): Promise<LabService> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  return withLock(prefix, async () => {
    const state = requireRawState(prefix);
    if (state.services.some((s) => s.name === spec.name && s.namespace === 'default')) throw new UsageError(`service "${spec.name}" already exists`);
    const external = spec.type !== 'ClusterIP';
    const np = external ? (spec.nodePort ?? allocateNodePort(state)) : undefined;
    const ports: LabServicePort[] = (
      spec.ports ?? [
        { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 },
        { name: 'udp', protocol: 'UDP', port: 80, targetPort: 8080 },
      ]
    ).map((p) => {
      const nodePort = external ? (p.nodePort ?? np) : undefined;
      return { ...p, ...(nodePort ? { nodePort } : {}) };
    });
    if (spec.type === 'LoadBalancer' && !spec.loadBalancerIPs?.length) throw new UsageError('a LoadBalancer service needs loadBalancerIPs in the lab');
    const svc = makeService(spec.name, spec.type, spec.clusterIPs ?? allocateClusterIPs(state), ports, spec.selector, {
      externalTrafficPolicy: spec.externalTrafficPolicy ?? 'Cluster',
      ...(spec.loadBalancerIPs ? { loadBalancerIPs: spec.loadBalancerIPs } : {}),
      ...(spec.type === 'LoadBalancer' ? { healthCheckNodePort: spec.healthCheckNodePort ?? allocateNodePort(state, new Set(ports.map((p) => p.nodePort ?? 0))) } : {}),
    });
    state.services.push(svc);
    if (svc.loadBalancerIPs.length) {
      await ipBatch(
        state.router.netns,
        svc.loadBalancerIPs.map((vip) => (familyOf(vip) === 6 ? `route replace ${vip}/128 via ${v6(state.lb.ips)}` : `route replace ${vip}/32 via ${v4(state.lb.ips)}`)),
      );
    }
    await resync(state);
    return svc;
  });
}

// ---------------------------------------------------------------- curl

export interface ResolvedTarget {
  host: string;
  port: number;
  family: IPFamily;
  proto: 'tcp' | 'udp';
  /** "ClusterIP of clusterip", "nodePort 30080 of nodeport on node2", ... */
  via: string;
}

/** Resolve a `lab curl` target: SERVICE (its ClusterIP), SERVICE@NODE (node
 * InternalIP + nodePort), SERVICE@lb (load-balancer IP), IP:PORT or [IPv6]:PORT. */
export function resolveTarget(state: LabState, target: string, opts: { family?: IPFamily; udp?: boolean } = {}): ResolvedTarget {
  const proto = opts.udp ? 'udp' : 'tcp';
  const lit6 = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(target);
  const lit4 = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(target);
  if (lit6 || lit4) {
    const m = (lit6 ?? lit4) as RegExpExecArray;
    return { host: m[1] as string, port: Number(m[2]), family: lit6 ? 6 : 4, proto, via: 'literal address' };
  }
  const family = opts.family ?? 4;
  const [svcName, where] = target.split('@', 2) as [string, string | undefined];
  const svc = findService(state, svcName);
  const port = svc.ports.find((p) => p.protocol.toLowerCase() === proto);
  if (!port) throw new UsageError(`service "${svc.name}" has no ${proto.toUpperCase()} port`);
  const fam = (list: string[], what: string): string => {
    const ip = byFamily(list, family);
    if (!ip) throw new UsageError(`${what} has no IPv${family} address`);
    return ip;
  };
  if (where === undefined) {
    return { host: fam(svc.clusterIPs, `service ${svc.name}`), port: port.port, family, proto, via: `ClusterIP of ${svc.name}` };
  }
  if (where === 'lb') {
    if (svc.type !== 'LoadBalancer') throw new UsageError(`service "${svc.name}" is not a LoadBalancer service`);
    return { host: fam(svc.loadBalancerIPs, `service ${svc.name}`), port: port.port, family, proto, via: `load-balancer IP of ${svc.name}` };
  }
  if (!port.nodePort) throw new UsageError(`service "${svc.name}" has no nodePort (it is a ${svc.type} service)`);
  const node = nodeByName(state, where);
  return { host: fam(node.internalIPs, `node ${node.name}`), port: port.nodePort, family, proto, via: `nodePort ${port.nodePort} of ${svc.name} on ${node.name}` };
}

/** The namespace a `lab curl` runs from: client, a pod, a node, lb or router. */
export function resolveFrom(state: LabState, from: string): string {
  if (from === 'client' || from === state.client.netns) return state.client.netns;
  if (from === 'lb' || from === state.lb.netns) return state.lb.netns;
  if (from === 'router' || from === state.router.netns) return state.router.netns;
  const pod = state.pods.find((p) => p.name === from || p.netns === from);
  if (pod) return pod.netns;
  const node = state.nodes.find((n) => n.name === from || n.netns === from);
  if (node) return node.netns;
  throw new UsageError(
    `unknown source "${from}": use client, a pod (${state.pods.map((p) => p.name).join(', ')}) or a node (${state.nodes.map((n) => n.name).join(', ')})`,
  );
}

export interface LabCurlOptions {
  prefix?: string;
  family?: IPFamily;
  udp?: boolean;
  /** Default 2000 ms. */
  timeoutMs?: number;
  path?: string;
}

export interface LabCurlResult extends LabClientResult {
  from: string;
  target: string;
}

/** One request from `from` to `target` (see resolveTarget), like the tutorial's curl. */
export async function labCurl(from: string, target: string, opts: LabCurlOptions = {}): Promise<LabCurlResult> {
  const state = requireLabState(opts.prefix ?? DEFAULT_PREFIX);
  const ns = resolveFrom(state, from);
  const t = resolveTarget(state, target, opts);
  const timeoutMs = opts.timeoutMs ?? 2000;
  const req = { proto: t.proto, host: t.host, port: t.port, timeoutMs, path: opts.path ?? '/' };
  const res = await nsRun(ns, process.execPath, [labScriptPath('lab-client'), JSON.stringify(req)], {
    timeoutMs: timeoutMs + 5000,
    allowFail: true,
  });
  const line = res.stdout.trim().split('\n').pop() ?? '';
  let parsed: LabClientResult;
  try {
    parsed = JSON.parse(line) as LabClientResult;
  } catch {
    parsed = {
      proto: t.proto,
      family: t.family,
      local: null,
      remote: { ip: t.host, port: t.port },
      ok: false,
      client_address: null,
      proxy_protocol: null,
      proxy_client_address: null,
      proxy_client_port: null,
      response: null,
      error: `lab client failed (exit ${res.code}): ${res.stderr.trim() || res.stdout.trim()}`,
    };
  }
  return { from, target, ...parsed };
}

// ---------------------------------------------------------------- status

export interface LabStatus {
  prefix: string;
  up: boolean;
  state: LabState | null;
  missingNamespaces: string[];
  servers: Array<{ pod: string; pid: number; running: boolean }>;
  /** kube-proxy health servers, LB controller, LB proxy. */
  daemons: Array<{ name: string; netns: string; pid: number; running: boolean; log: string }>;
  /** The load balancer: mode, live targets and health per LoadBalancer service. */
  lb: { mode: LbMode; proxyProtocol: ProxyProtocolMode; targets: Record<string, string[]>; health: LabLbHealth | null } | null;
}

export function labStatus(prefix: string = DEFAULT_PREFIX): LabStatus {
  const state = readLabState(prefix);
  if (!state) return { prefix, up: false, state: null, missingNamespaces: [], servers: [], daemons: [], lb: null };
  const missing = labNamespaceNames(state).filter((n) => !netnsExists(n));
  const servers = state.pods
    .filter((p) => p.server)
    .map((p) => {
      const s = p.server as LabServer;
      return { pod: p.name, pid: s.pid, running: (procCmdline(s.pid) ?? '').includes(s.cmdlineMatch) };
    });
  const daemons = labDaemons(state).map((d) => ({
    name: d.name,
    netns: d.netns,
    pid: d.server.pid,
    running: serverRunning(d.server),
    log: daemonLogPath(prefix, d.name),
  }));
  const lb = { mode: state.lb.mode, proxyProtocol: state.lb.proxyProtocol, targets: state.lb.targets, health: state.lb.health ?? null };
  return {
    prefix,
    up: missing.length === 0 && servers.every((s) => s.running) && daemons.every((d) => d.running),
    state,
    missingNamespaces: missing,
    servers,
    daemons,
    lb,
  };
}

/** Prefixes of the labs with a state file. */
export function listLabs(): string[] {
  try {
    return (existsSync(STATE_DIR) ? readdirSync(STATE_DIR) : [])
      .map((f) => /^lab-([a-z0-9]+)\.json$/.exec(f)?.[1])
      .filter((x): x is string => !!x);
  } catch {
    return [];
  }
}

export { nsName };
