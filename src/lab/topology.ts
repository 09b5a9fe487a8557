// The lab's default topology (the cluster of the Kubernetes "Using Source IP"
// tutorial) as data, and the pure derivations from it: endpoints, the inputs
// of the kube-proxy generators, the load balancer's forwarding targets.

import { createHash } from 'node:crypto';
import type { IPFamily, ProxyNode, ProxyServicePort } from './kube-proxy-model.js';
import { localReadyEndpointCount } from './kube-proxy-model.js';
import type {
  LabEndpoint,
  LabLbHealthCheckConfig,
  LabNode,
  LabPod,
  LabService,
  LabServicePort,
  LabState,
  LbMode,
  ProxyMode,
  ProxyProtocolMode,
  ServiceType,
  TrafficPolicy,
} from './types.js';

export const DEFAULT_PREFIX = 'nl';
export const STATE_DIR = '/run/natlens';
export const NETNS_DIR = '/run/netns';

export const CLUSTER_CIDRS = ['10.180.0.0/16', 'fd00:10:180::/48'];
export const SERVICE_CIDRS = ['10.0.0.0/16', 'fd00:10:96::/112'];
export const CLIENT_IPS = ['198.51.100.79', '2001:db8:5100::79'];
export const CLIENT_GWS = ['198.51.100.1', '2001:db8:5100::1'];
export const ROUTER_BRIDGE_IPS = ['10.240.0.1', 'fd00:10:240::1'];
export const LB_IPS = ['10.240.0.2', 'fd00:10:240::2'];
export const LB_VIPS = ['203.0.113.140', '2001:db8:203::140'];
/** Calico-style pod gateway: proxy-ARP'd by the host veth / its fe80::1 address. */
export const POD_GW = ['169.254.1.1', 'fe80::1'];

export function statePath(prefix: string): string {
  return `${STATE_DIR}/lab-${prefix}.json`;
}

/** The LB controller's own file (live targets and health), next to the state file. */
export function lbHealthPath(prefix: string): string {
  return `${STATE_DIR}/lab-${prefix}-lb.json`;
}

/** Where a lab daemon ("healthz-node1", "lb-controller", "lb-proxy") logs. */
export function daemonLogPath(prefix: string, daemon: string): string {
  return `${STATE_DIR}/lab-${prefix}-${daemon}.log`;
}

/** Like a cloud LB's defaults, but faster (GCE: every 8 s, 3 failures; here 1 s, 2 failures). */
export const DEFAULT_LB_HEALTH_CHECK: LabLbHealthCheckConfig = {
  intervalMs: 1000,
  timeoutMs: 800,
  unhealthyThreshold: 2,
  healthyThreshold: 1,
};

/** Fill in what state files written by older versions lack (in place). */
export function normalizeLabState(state: LabState): LabState {
  const lb = state.lb as LabState['lb'] & { mode?: LbMode; proxyProtocol?: ProxyProtocolMode };
  if (lb.mode !== 'forward' && lb.mode !== 'proxy') lb.mode = 'forward';
  if (lb.proxyProtocol !== 'v1' && lb.proxyProtocol !== 'v2' && lb.proxyProtocol !== 'none') lb.proxyProtocol = 'none';
  lb.targets ??= {};
  for (const svc of state.services) {
    for (const e of svc.endpoints ?? []) {
      const ep = e as LabEndpoint & { serving?: boolean; terminating?: boolean };
      ep.serving ??= ep.ready;
      ep.terminating ??= false;
    }
  }
  return state;
}

export function validatePrefix(prefix: string): void {
  if (!/^[a-z][a-z0-9]{0,7}$/.test(prefix)) {
    throw new Error(`invalid lab prefix "${prefix}": use 1-8 lower-case letters/digits, starting with a letter`);
  }
}

export function nsName(prefix: string, what: string): string {
  return `${prefix}-${what}`;
}

/** Host-side veth name: "nlv" + 11 hex chars of sha1("<namespace>.<pod>") (like Calico's "cali..."). */
export function hostVethName(namespace: string, pod: string): string {
  return 'nlv' + createHash('sha1').update(`${namespace}.${pod}`).digest('hex').slice(0, 11);
}

export function familyOf(ip: string): IPFamily {
  return ip.includes(':') ? 6 : 4;
}

export function byFamily<T extends string>(list: T[], family: IPFamily): T | undefined {
  return list.find((x) => familyOf(x) === family);
}

function makeNode(prefix: string, i: number): LabNode {
  return {
    name: `node${i}`,
    netns: nsName(prefix, `node${i}`),
    netnsPath: `${NETNS_DIR}/${nsName(prefix, `node${i}`)}`,
    uplink: 'eth0',
    internalIPs: [`10.240.0.${i + 2}`, `fd00:10:240::${i + 2}`],
    podCIDRs: [`10.180.${i}.0/24`, `fd00:10:180:${i}::/64`],
  };
}

export function makePod(prefix: string, name: string, node: string, ips: string[], labels: Record<string, string>): LabPod {
  return {
    name,
    namespace: 'default',
    node,
    netns: nsName(prefix, `pod-${name}`),
    netnsPath: `${NETNS_DIR}/${nsName(prefix, `pod-${name}`)}`,
    ips,
    labels,
    hostVeth: hostVethName('default', name),
    interface: 'eth0',
  };
}

function httpUdpPorts(nodePort?: number): LabServicePort[] {
  return [
    { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, ...(nodePort ? { nodePort } : {}) },
    { name: 'udp', protocol: 'UDP', port: 80, targetPort: 8080, ...(nodePort ? { nodePort } : {}) },
  ];
}

export function makeService(
  name: string,
  type: ServiceType,
  clusterIPs: string[],
  ports: LabServicePort[],
  selector: Record<string, string>,
  extra: Partial<Pick<LabService, 'loadBalancerIPs' | 'healthCheckNodePort' | 'externalTrafficPolicy' | 'namespace'>> = {},
): LabService {
  return {
    name,
    namespace: extra.namespace ?? 'default',
    type,
    clusterIPs,
    ports,
    selector,
    externalTrafficPolicy: extra.externalTrafficPolicy ?? 'Cluster',
    loadBalancerIPs: extra.loadBalancerIPs ?? [],
    ...(extra.healthCheckNodePort ? { healthCheckNodePort: extra.healthCheckNodePort } : {}),
    endpoints: [],
  };
}

/** The tutorial's cluster, before anything is created. */
export function defaultLabState(prefix: string, proxyMode: ProxyMode): LabState {
  const nodes = [1, 2, 3].map((i) => makeNode(prefix, i));
  const app = { app: 'source-ip-app' };
  const pods = [
    makePod(prefix, 'source-ip-app', 'node1', ['10.180.1.136', 'fd00:10:180:1::136'], app),
    makePod(prefix, 'busybox-1', 'node1', ['10.180.1.8', 'fd00:10:180:1::8'], { run: 'busybox-1' }),
    makePod(prefix, 'busybox-2', 'node2', ['10.180.2.8', 'fd00:10:180:2::8'], { run: 'busybox-2' }),
  ];
  const services = [
    makeService('clusterip', 'ClusterIP', ['10.0.170.92', 'fd00:10:96::a92'], httpUdpPorts(), app),
    makeService('nodeport', 'NodePort', ['10.0.42.17', 'fd00:10:96::2a17'], httpUdpPorts(30080), app),
    makeService('loadbalancer', 'LoadBalancer', ['10.0.65.118', 'fd00:10:96::6576'], httpUdpPorts(30081), app, {
      loadBalancerIPs: [...LB_VIPS],
      healthCheckNodePort: 32122,
    }),
  ];
  const state: LabState = {
    version: 1,
    prefix,
    createdAt: new Date().toISOString(),
    proxyMode,
    clusterCIDRs: [...CLUSTER_CIDRS],
    serviceCIDRs: [...SERVICE_CIDRS],
    client: {
      name: 'client',
      netns: nsName(prefix, 'client'),
      netnsPath: `${NETNS_DIR}/${nsName(prefix, 'client')}`,
      ips: [...CLIENT_IPS],
      gateways: [...CLIENT_GWS],
    },
    router: {
      netns: nsName(prefix, 'router'),
      netnsPath: `${NETNS_DIR}/${nsName(prefix, 'router')}`,
      bridge: 'br0',
      bridgeIPs: [...ROUTER_BRIDGE_IPS],
      clientLinkIPs: [...CLIENT_GWS],
    },
    lb: {
      netns: nsName(prefix, 'lb'),
      netnsPath: `${NETNS_DIR}/${nsName(prefix, 'lb')}`,
      ips: [...LB_IPS],
      targets: {},
      mode: 'forward',
      proxyProtocol: 'none',
    },
    nodes,
    pods,
    services,
    namespaces: [],
  };
  refreshDerived(state);
  return state;
}

export function selectorMatches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  const keys = Object.keys(selector);
  return keys.length > 0 && keys.every((k) => labels[k] === selector[k]);
}

/** What the EndpointSlice controller would compute for a service: every pod matching the
 * selector; a terminating pod (still passing its readiness probe) is ready=false,
 * serving=true, terminating=true. */
export function computeEndpoints(state: LabState, svc: LabService): LabEndpoint[] {
  return state.pods
    .filter((p) => p.namespace === svc.namespace && selectorMatches(svc.selector, p.labels))
    .map((p) => ({ pod: p.name, node: p.node, ips: [...p.ips], ready: !p.terminating, serving: true, terminating: !!p.terminating }));
}

/** localEndpoints of kube-proxy's health check for a service on a node: its ready endpoints there. */
export function localEndpointCount(svc: LabService, nodeName: string): number {
  return localReadyEndpointCount(
    svc.endpoints.map((e) => ({ ip: e.ips[0] ?? e.pod, port: 0, nodeName: e.node, ready: e.ready })),
    nodeName,
  );
}

/** Whether kube-proxy serves a health check for the service (LoadBalancer, Local, with a healthCheckNodePort). */
export function hasHealthCheck(svc: LabService): svc is LabService & { healthCheckNodePort: number } {
  return svc.type === 'LoadBalancer' && svc.externalTrafficPolicy === 'Local' && !!svc.healthCheckNodePort;
}

/**
 * The nodes a cloud load balancer ends up sending a LoadBalancer service's traffic to once
 * its health checks have converged. Under Cluster every node is eligible (not checked).
 * Under Local the checks against spec.healthCheckNodePort (/healthz, served by kube-proxy on
 * each node) fail (503) on nodes without a local ready endpoint, so the LB takes them out;
 * when every node fails, the LB fails open and sends to all of them. The LB controller
 * (lb-controller.ts) reaches this by actually checking; this is what it converges to.
 */
export function lbTargetNodes(state: LabState, svc: LabService): string[] {
  if (svc.type !== 'LoadBalancer' || svc.loadBalancerIPs.length === 0) return [];
  const all = state.nodes.map((n) => n.name);
  if (!hasHealthCheck(svc)) return all;
  const healthy = all.filter((n) => localEndpointCount(svc, n) > 0);
  return healthy.length ? healthy : all;
}

/** Recompute endpoints and LB targets after a change. */
export function refreshDerived(state: LabState): void {
  for (const svc of state.services) svc.endpoints = computeEndpoints(state, svc);
  state.lb.targets = {};
  for (const svc of state.services) {
    if (svc.type === 'LoadBalancer') state.lb.targets[`${svc.namespace}/${svc.name}`] = lbTargetNodes(state, svc);
  }
}

/**
 * `ip -batch` lines (run in the LB namespace) that deliver each LoadBalancer VIP:
 * - forward mode: a route per VIP with one `nexthop` per target node's InternalIP (ECMP,
 *   L4-hashed), or a blackhole without targets;
 * - proxy mode: the VIPs are local addresses on lo, where the TCP proxy accepts them.
 * `switching` adds the lines undoing the other mode (VIPs off lo / VIP routes deleted);
 * those fail harmlessly when there is nothing to undo, so run them with `ip -force`.
 */
export function lbNetworkLines(state: LabState, targets: Record<string, string[]>, mode: LbMode, switching = false): string[] {
  const lines: string[] = [];
  for (const svc of state.services) {
    if (svc.type !== 'LoadBalancer') continue;
    const nodes = (targets[`${svc.namespace}/${svc.name}`] ?? []).flatMap((n) => state.nodes.filter((x) => x.name === n));
    for (const vip of svc.loadBalancerIPs) {
      const fam = familyOf(vip);
      const dst = `${vip}/${fam === 6 ? 128 : 32}`;
      if (mode === 'proxy') {
        lines.push(`addr replace ${dst} dev lo${fam === 6 ? ' nodad' : ''}`);
        if (switching) lines.push(`route del ${dst}`);
        continue;
      }
      if (switching) lines.push(`addr del ${dst} dev lo`);
      const hops = nodes.map((n) => byFamily(n.internalIPs, fam)).filter((x): x is string => !!x);
      if (hops.length === 0) lines.push(`route replace blackhole ${dst}`);
      else lines.push(`route replace ${dst} ${hops.map((h) => `nexthop via ${h} dev eth0`).join(' ')}`);
    }
  }
  return lines;
}

/** The ProxyNode for a node and family. */
export function proxyNode(state: LabState, nodeName: string, family: IPFamily): ProxyNode {
  const clusterCIDR = byFamily(state.clusterCIDRs, family);
  return { nodeName, family, ...(clusterCIDR ? { clusterCIDR } : {}) };
}

/** The service ports kube-proxy's proxier of one family sees. */
export function proxyServicePorts(state: LabState, family: IPFamily): ProxyServicePort[] {
  const out: ProxyServicePort[] = [];
  for (const svc of state.services) {
    const clusterIP = byFamily(svc.clusterIPs, family);
    if (!clusterIP) continue;
    const lbIPs = svc.type === 'LoadBalancer' ? svc.loadBalancerIPs.filter((ip) => familyOf(ip) === family) : [];
    for (const p of svc.ports) {
      const sp: ProxyServicePort = {
        namespace: svc.namespace,
        name: svc.name,
        portName: p.name,
        protocol: p.protocol,
        port: p.port,
        clusterIP,
        loadBalancerIPs: lbIPs,
        externalTrafficPolicy: svc.externalTrafficPolicy,
        endpoints: svc.endpoints.flatMap((e) => {
          const ip = byFamily(e.ips, family);
          return ip
            ? [{ ip, port: p.targetPort, nodeName: e.node, ready: e.ready, serving: e.serving ?? e.ready, terminating: e.terminating ?? false }]
            : [];
        }),
      };
      if (svc.type !== 'ClusterIP' && p.nodePort) sp.nodePort = p.nodePort;
      if (svc.type === 'LoadBalancer' && svc.externalTrafficPolicy === 'Local' && svc.healthCheckNodePort) {
        sp.healthCheckNodePort = svc.healthCheckNodePort;
      }
      out.push(sp);
    }
  }
  return out;
}

// ---- allocation helpers for labAddPod / labAddService ----

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);
}
function intToIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

/** Next free pod IPs (v4 and v6 with the same host part) in a node's pod CIDRs. */
export function allocatePodIPs(state: LabState, node: LabNode): string[] {
  const used = new Set(state.pods.flatMap((p) => p.ips));
  const [v4cidr, v6cidr] = node.podCIDRs;
  const base4 = ipv4ToInt((v4cidr ?? '').split('/')[0] ?? '0.0.0.0');
  const base6 = (v6cidr ?? '').split('/')[0] ?? '';
  for (let host = 10; host < 250; host++) {
    if (host === 136 || host === 8) continue;
    const v4 = intToIpv4(base4 + host);
    const v6 = base6.replace(/::$/, `::${host}`);
    if (!used.has(v4) && !used.has(v6)) return [v4, v6];
  }
  throw new Error(`no free pod IP left on ${node.name}`);
}

/** Next free ClusterIPs (v4 in 10.0.200.0/24, v6 fd00:10:96::c8xx). */
export function allocateClusterIPs(state: LabState): string[] {
  const used = new Set(state.services.flatMap((s) => s.clusterIPs));
  for (let i = 10; i < 250; i++) {
    const v4 = `10.0.200.${i}`;
    const v6 = `fd00:10:96::c8${i.toString(16).padStart(2, '0')}`;
    if (!used.has(v4) && !used.has(v6)) return [v4, v6];
  }
  throw new Error('no free ClusterIP left');
}

export function allocateNodePort(state: LabState, exclude: Set<number> = new Set()): number {
  const used = new Set<number>(exclude);
  for (const s of state.services) {
    for (const p of s.ports) if (p.nodePort) used.add(p.nodePort);
    if (s.healthCheckNodePort) used.add(s.healthCheckNodePort);
  }
  for (let p = 30100; p <= 32767; p++) if (!used.has(p)) return p;
  throw new Error('no free node port left');
}

export type { TrafficPolicy };
