// The lab: the cluster of the Kubernetes "Using Source IP" tutorial built out of
// network namespaces, veth pairs and real kube-proxy NAT rules on one machine.
//
//   client (198.51.100.79) ── router ── br0 (10.240.0.0/24) ─┬─ lb (10.240.0.2, forwards 203.0.113.140)
//                                                             ├─ node1 (10.240.0.3) ── source-ip-app, busybox-1
//                                                             ├─ node2 (10.240.0.4) ── busybox-2
//                                                             └─ node3 (10.240.0.5)
//
// Library entry points: labUp, labDown, labPatch, labCurl, labAddPod(s),
// labAddService, readLabState, labStatus. State lives in /run/natlens/lab-<prefix>.json.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NatlensError, UsageError } from '../util/errors.js';
import { PACKAGE_ROOT } from '../util/paths.js';
import { ipBatch, listNetns, netnsExists, nsRun, procCmdline, run, sleep, sysctl } from './exec.js';
import { applyKubeProxy } from './kube-proxy-apply.js';
import type { IPFamily } from './kube-proxy-model.js';
import type { LabClientResult } from './lab-client.js';
import {
  DEFAULT_PREFIX,
  POD_GW,
  STATE_DIR,
  allocateClusterIPs,
  allocateNodePort,
  allocatePodIPs,
  byFamily,
  defaultLabState,
  familyOf,
  makePod,
  makeService,
  nsName,
  refreshDerived,
  statePath,
  validatePrefix,
} from './topology.js';
import type {
  LabNode,
  LabPod,
  LabServer,
  LabService,
  LabServicePort,
  LabState,
  ProxyMode,
  ServiceType,
  TrafficPolicy,
} from './types.js';

export * from './types.js';
export { DEFAULT_PREFIX, statePath } from './topology.js';

export type Progress = (line: string) => void;
const quiet: Progress = () => undefined;

// ---------------------------------------------------------------- state I/O

/** The lab's state, or null when no lab with that prefix is up. */
export function readLabState(prefix: string = DEFAULT_PREFIX): LabState | null {
  const p = statePath(prefix);
  if (!existsSync(p)) return null;
  return JSON.parse(readFileSync(p, 'utf8')) as LabState;
}

/** The lab's state; throws a helpful error when there is none. */
export function requireLabState(prefix: string = DEFAULT_PREFIX): LabState {
  const s = readLabState(prefix);
  if (!s) throw new NatlensError(`no lab with prefix "${prefix}" is up (start one with: natlens lab up${prefix === DEFAULT_PREFIX ? '' : ` --prefix ${prefix}`})`);
  return s;
}

function writeLabState(state: LabState): void {
  mkdirSync(STATE_DIR, { recursive: true });
  const p = statePath(state.prefix);
  const tmp = `${p}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n');
  renameSync(tmp, p);
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

/** Path of a compiled lab script (echo-server, lab-client): next to this module
 * when running from dist/, else the build output (run `npm run build:ts` first). */
export function labScriptPath(name: 'echo-server' | 'lab-client'): string {
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

/** `ip` commands (for `ip -n <lb> -batch`) that point each LB VIP at its target nodes (ECMP). */
function lbRouteLines(state: LabState): string[] {
  const lines: string[] = [];
  for (const svc of state.services) {
    if (svc.type !== 'LoadBalancer') continue;
    const targets = (state.lb.targets[`${svc.namespace}/${svc.name}`] ?? []).map((n) => nodeByName(state, n));
    for (const vip of svc.loadBalancerIPs) {
      const fam = familyOf(vip);
      const dst = `${vip}/${fam === 6 ? 128 : 32}`;
      const hops = targets.map((n) => byFamily(n.internalIPs, fam)).filter((x): x is string => !!x);
      if (hops.length === 0) lines.push(`route replace blackhole ${dst}`);
      else lines.push(`route replace ${dst} ${hops.map((h) => `nexthop via ${h} dev eth0`).join(' ')}`);
    }
  }
  return lines;
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

// ---------------------------------------------------------------- up / down

export interface LabUpOptions {
  prefix?: string;
  proxyMode?: ProxyMode;
  /** Tear down an existing lab with the same prefix first. */
  force?: boolean;
  progress?: Progress;
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
  const progress = opts.progress ?? quiet;
  return withLock(prefix, async () => {
    const state = defaultLabState(prefix, proxyMode);
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
      progress(`lab "${prefix}" is up`);
      return state;
    } catch (err) {
      progress(`lab up failed: removing what was created`);
      for (const pod of state.pods) if (pod.server) await killServer(pod.server);
      await deleteNamespaces(created);
      rmSync(statePath(prefix), { force: true });
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

async function labDownUnlocked(prefix: string, progress: Progress): Promise<LabDownResult> {
  const state = readLabState(prefix);
  const killed: number[] = [];
  let names: string[] = [];
  if (state) {
    for (const pod of state.pods) {
      if (pod.server && (await killServer(pod.server))) killed.push(pod.server.pid);
    }
    names = [...new Set([...state.namespaces, ...labNamespaceNames(state)])];
  }
  // Also namespaces of this prefix left by a crashed run; processes in them are
  // killed only when they are lab scripts (echo server / lab client).
  for (const ns of strayNamespaces(prefix)) if (!names.includes(ns)) names.push(ns);
  for (const ns of names.filter(netnsExists)) {
    const pids = await run('ip', ['netns', 'pids', ns], { allowFail: true });
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      const cl = procCmdline(pid) ?? '';
      if ((cl.includes('/lab/echo-server.js') || cl.includes('/lab/lab-client.js')) && !killed.includes(pid)) {
        if (await killServer({ pid, command: [], cmdlineMatch: cl, kind: 'echo' })) killed.push(pid);
      }
    }
  }
  progress(`removing ${names.filter(netnsExists).length} namespaces of lab "${prefix}"`);
  const removed = await deleteNamespaces(names);
  rmSync(statePath(prefix), { force: true });
  return { prefix, removedNamespaces: removed, killedPids: killed };
}

/** Remove every namespace of the lab and kill the servers it started. */
export async function labDown(opts: { prefix?: string; progress?: Progress } = {}): Promise<LabDownResult> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  validatePrefix(prefix);
  return withLock(prefix, () => labDownUnlocked(prefix, opts.progress ?? quiet));
}

// ---------------------------------------------------------------- changes

async function resync(state: LabState): Promise<void> {
  refreshDerived(state);
  await Promise.all(state.nodes.map((n) => applyKubeProxy(state, n, { ensureJumps: false })));
  const lines = lbRouteLines(state);
  if (lines.length) await ipBatch(state.lb.netns, lines);
  writeLabState(state);
}

function findService(state: LabState, name: string): LabService {
  const [ns, n] = name.includes('/') ? name.split('/', 2) : ['default', name];
  const svc = state.services.find((s) => s.name === n && s.namespace === ns);
  if (!svc) throw new UsageError(`no service "${name}" in lab "${state.prefix}" (services: ${state.services.map((s) => s.name).join(', ')})`);
  return svc;
}

/** `kubectl patch svc <service> -p '{"spec":{"externalTrafficPolicy":"<policy>"}}'`:
 * reprograms kube-proxy on every node and the load balancer's targets. */
export async function labPatch(service: string, externalTrafficPolicy: TrafficPolicy, opts: { prefix?: string } = {}): Promise<LabService> {
  if (externalTrafficPolicy !== 'Local' && externalTrafficPolicy !== 'Cluster') {
    throw new UsageError(`externalTrafficPolicy must be Local or Cluster, not "${String(externalTrafficPolicy)}"`);
  }
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  return withLock(prefix, async () => {
    const state = requireLabState(prefix);
    const svc = findService(state, service);
    if (svc.type === 'ClusterIP') throw new UsageError(`service "${service}" is a ClusterIP service: externalTrafficPolicy applies to NodePort and LoadBalancer services`);
    svc.externalTrafficPolicy = externalTrafficPolicy;
    await resync(state);
    return svc;
  });
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
    const state = requireLabState(prefix);
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
    const state = requireLabState(prefix);
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
}

export function labStatus(prefix: string = DEFAULT_PREFIX): LabStatus {
  const state = readLabState(prefix);
  if (!state) return { prefix, up: false, state: null, missingNamespaces: [], servers: [] };
  const missing = labNamespaceNames(state).filter((n) => !netnsExists(n));
  const servers = state.pods
    .filter((p) => p.server)
    .map((p) => {
      const s = p.server as LabServer;
      return { pod: p.name, pid: s.pid, running: (procCmdline(s.pid) ?? '').includes(s.cmdlineMatch) };
    });
  return { prefix, up: missing.length === 0 && servers.every((s) => s.running), state, missingNamespaces: missing, servers };
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
