// Tiny typed views of the Kubernetes object fields natlens uses. Objects arrive in two shapes:
// raw JSON from watch streams and client-node's deserialised models from lists (Date instead of
// string timestamps, unknown fields dropped). Both use the same field names, so every reader here
// goes through `rec`/`str`/... and never trusts a type.

import { formatAddr, parseAddr } from '../collector/addr.js';

export type K8sKind = 'Pod' | 'Service' | 'EndpointSlice' | 'Node';

export type L4 = 'TCP' | 'UDP' | 'SCTP';

export interface ServicePortInfo {
  name: string;
  protocol: L4;
  port: number;
  /** A number, or the name of a container port. */
  targetPort: number | string;
  /** 0 = none (ClusterIP services, or allocateLoadBalancerNodePorts=false). */
  nodePort: number;
}

export interface LoadBalancerIngress {
  ip: string;
  /** "Proxy": the load balancer terminates connections (the pod sees the LB, not the client). */
  ipMode: 'VIP' | 'Proxy';
}

/** One endpoint of a Service, merged over its EndpointSlices (one entry per pod, all its families). */
export interface ServiceEndpoint {
  /** "namespace/name" of the backing pod; null when the slice names none. */
  pod: string | null;
  node: string;
  /** Canonical address strings, IPv4 first. */
  addresses: string[];
  ready: boolean;
  serving: boolean;
  terminating: boolean;
}

export interface PodView {
  namespace: string;
  name: string;
  uid: string;
  node: string;
  /** status.podIPs (or status.podIP), canonical, IPv4 first. */
  ips: string[];
  phase: string;
  ready: boolean;
  /** metadata.deletionTimestamp is set. */
  terminating: boolean;
  /** Host-network pods share the node's address: never indexed by IP. */
  hostNetwork: boolean;
  /** metadata.creationTimestamp in ms since the epoch (0 if absent). */
  createdMs: number;
  labels: Record<string, string>;
}

export interface NodeView {
  name: string;
  /** InternalIP and ExternalIP addresses, canonical. */
  addresses: string[];
  podCIDRs: string[];
}

export interface ServiceView {
  namespace: string;
  name: string;
  type: string;
  externalTrafficPolicy: string;
  internalTrafficPolicy: string;
  healthCheckNodePort: number;
  /** spec.clusterIPs (or spec.clusterIP), canonical; headless ("None") services have none. */
  clusterIPs: string[];
  externalIPs: string[];
  ports: ServicePortInfo[];
  loadBalancerIngress: LoadBalancerIngress[];
}

export interface SliceEndpointView {
  pod: string | null;
  node: string;
  addresses: string[];
  ready: boolean;
  serving: boolean;
  terminating: boolean;
}

export interface EndpointSliceView {
  namespace: string;
  name: string;
  /** The kubernetes.io/service-name label: the Service this slice belongs to. */
  service: string | null;
  addressType: string;
  /** Resolved (numeric) target ports by Service port name. */
  ports: { name: string; port: number; protocol: L4 }[];
  endpoints: SliceEndpointView[];
}

type Rec = Record<string, unknown>;

export function rec(x: unknown): Rec {
  return x !== null && typeof x === 'object' && !Array.isArray(x) ? (x as Rec) : {};
}
function arr(x: unknown): unknown[] {
  return Array.isArray(x) ? x : [];
}
function str(x: unknown): string {
  return typeof x === 'string' ? x : '';
}
function num(x: unknown): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : 0;
}
function strMap(x: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(rec(x))) if (typeof v === 'string') out[k] = v;
  return out;
}
function present(x: unknown): boolean {
  return x !== undefined && x !== null && x !== '';
}
function timeMs(x: unknown): number {
  if (x instanceof Date) return x.getTime();
  const t = typeof x === 'string' ? Date.parse(x) : NaN;
  return Number.isNaN(t) ? 0 : t;
}

/** The address as formatAddr prints it ("10.0.0.1", "fd00::1"); null if `text` is no IP literal. */
export function canonicalIP(text: string): string | null {
  const a = parseAddr(text);
  return a ? formatAddr(a) : null;
}

/** IPv4 before IPv6, then textual: a stable order for addresses of one endpoint or pod. */
export function compareIPs(a: string, b: string): number {
  const fa = a.includes(':') ? 1 : 0;
  const fb = b.includes(':') ? 1 : 0;
  return fa - fb || (a < b ? -1 : a > b ? 1 : 0);
}

function ips(list: unknown[]): string[] {
  const out = new Set<string>();
  for (const x of list) {
    const ip = canonicalIP(str(x));
    if (ip) out.add(ip);
  }
  return [...out].sort(compareIPs);
}

function protocol(x: unknown): L4 {
  return x === 'UDP' || x === 'SCTP' ? x : 'TCP';
}

export interface ObjectKey {
  namespace: string;
  name: string;
}

export function objectKey(obj: unknown): ObjectKey | null {
  const md = rec(rec(obj).metadata);
  const name = str(md.name);
  return name ? { namespace: str(md.namespace), name } : null;
}

/** "namespace/name", or "name" for cluster-scoped objects. */
export function keyString(k: ObjectKey): string {
  return k.namespace ? `${k.namespace}/${k.name}` : k.name;
}

export function podView(obj: unknown): PodView | null {
  const key = objectKey(obj);
  if (!key) return null;
  const o = rec(obj);
  const md = rec(o.metadata);
  const spec = rec(o.spec);
  const status = rec(o.status);
  const podIPs = arr(status.podIPs).map((p) => rec(p).ip);
  const conditions = arr(status.conditions).map(rec);
  return {
    namespace: key.namespace,
    name: key.name,
    uid: str(md.uid),
    node: str(spec.nodeName),
    ips: ips(podIPs.length > 0 ? podIPs : [status.podIP]),
    phase: str(status.phase),
    ready: conditions.some((c) => c.type === 'Ready' && c.status === 'True'),
    terminating: present(md.deletionTimestamp),
    hostNetwork: spec.hostNetwork === true,
    createdMs: timeMs(md.creationTimestamp),
    labels: strMap(md.labels),
  };
}

export function nodeView(obj: unknown): NodeView | null {
  const key = objectKey(obj);
  if (!key) return null;
  const o = rec(obj);
  const spec = rec(o.spec);
  const addresses = arr(rec(o.status).addresses)
    .map(rec)
    .filter((a) => a.type === 'InternalIP' || a.type === 'ExternalIP')
    .map((a) => a.address);
  const cidrs = arr(spec.podCIDRs).map(str).filter(Boolean);
  return {
    name: key.name,
    addresses: ips(addresses),
    podCIDRs: cidrs.length > 0 ? cidrs : [str(spec.podCIDR)].filter(Boolean),
  };
}

export function serviceView(obj: unknown): ServiceView | null {
  const key = objectKey(obj);
  if (!key) return null;
  const o = rec(obj);
  const spec = rec(o.spec);
  const clusterIPs = arr(spec.clusterIPs);
  const ingress = arr(rec(rec(o.status).loadBalancer).ingress).map(rec);
  return {
    namespace: key.namespace,
    name: key.name,
    // The apiserver defaults type to ClusterIP; an object without it was written by hand.
    type: str(spec.type) || 'ClusterIP',
    externalTrafficPolicy: str(spec.externalTrafficPolicy),
    internalTrafficPolicy: str(spec.internalTrafficPolicy),
    healthCheckNodePort: num(spec.healthCheckNodePort),
    clusterIPs: ips(clusterIPs.length > 0 ? clusterIPs : [spec.clusterIP]),
    externalIPs: ips(arr(spec.externalIPs)),
    ports: arr(spec.ports).map(rec).map((p) => ({
      name: str(p.name),
      protocol: protocol(p.protocol),
      port: num(p.port),
      // targetPort defaults to port; it may name a container port instead of a number.
      targetPort: typeof p.targetPort === 'string' && p.targetPort !== '' ? (/^\d+$/.test(p.targetPort) ? Number(p.targetPort) : p.targetPort) : num(p.targetPort) || num(p.port),
      nodePort: num(p.nodePort),
    })),
    loadBalancerIngress: ingress.flatMap((i) => {
      const ip = canonicalIP(str(i.ip));
      // ipMode unset means VIP (the field is newer than most load balancer controllers).
      return ip ? [{ ip, ipMode: i.ipMode === 'Proxy' ? 'Proxy' as const : 'VIP' as const }] : [];
    }),
  };
}

export function endpointSliceView(obj: unknown): EndpointSliceView | null {
  const key = objectKey(obj);
  if (!key) return null;
  const o = rec(obj);
  const labels = strMap(rec(o.metadata).labels);
  return {
    namespace: key.namespace,
    name: key.name,
    service: labels['kubernetes.io/service-name'] ?? null,
    addressType: str(o.addressType),
    ports: arr(o.ports).map(rec).map((p) => ({ name: str(p.name), port: num(p.port), protocol: protocol(p.protocol) })),
    endpoints: arr(o.endpoints).map(rec).map((e) => {
      const c = rec(e.conditions);
      const t = rec(e.targetRef);
      // API semantics: ready unset means ready; serving unset means "same as ready"; terminating unset means false.
      const ready = c.ready !== false;
      return {
        pod: t.kind === 'Pod' && str(t.name) ? `${str(t.namespace) || key.namespace}/${str(t.name)}` : null,
        node: str(e.nodeName),
        addresses: ips(arr(e.addresses)),
        ready,
        serving: typeof c.serving === 'boolean' ? c.serving : ready,
        terminating: c.terminating === true,
      };
    }),
  };
}
