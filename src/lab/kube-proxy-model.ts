// The data model that both kube-proxy rule generators (iptables and nftables)
// consume, plus the pieces of kube-proxy's logic they share: service-port name
// strings, chain-name hashing and endpoint categorisation
// (pkg/proxy/topology.go CategorizeEndpoints, pkg/proxy/serviceport.go).
//
// Everything here is pure: no I/O, no root, so it is unit-testable.

import { createHash } from 'node:crypto';

export type IPFamily = 4 | 6;
export type L4Protocol = 'TCP' | 'UDP' | 'SCTP';
export type TrafficPolicy = 'Cluster' | 'Local';

/** One endpoint (a pod address) of a service port, in one IP family, with its
 * EndpointSlice conditions. */
export interface ProxyEndpoint {
  ip: string;
  port: number;
  /** Node the endpoint's pod runs on (EndpointSlice endpoint.nodeName). */
  nodeName: string;
  /** conditions.ready; default true. */
  ready?: boolean;
  /** conditions.serving; default: the value of ready (as the API server defaults it). */
  serving?: boolean;
  /** conditions.terminating; default false. */
  terminating?: boolean;
}

/**
 * One service port as kube-proxy sees it in one IP family (kube-proxy runs one
 * proxier per family; a dual-stack Service yields one ProxyServicePort per family).
 */
export interface ProxyServicePort {
  namespace: string;
  name: string;
  /** The port's name (`http`); may be empty for single-port services. */
  portName: string;
  protocol: L4Protocol;
  port: number;
  /** 0 / undefined when the service has no node port. */
  nodePort?: number;
  /** The ClusterIP of this family. */
  clusterIP: string;
  externalIPs?: string[];
  /** status.loadBalancer.ingress IPs of this family. */
  loadBalancerIPs?: string[];
  externalTrafficPolicy?: TrafficPolicy;
  internalTrafficPolicy?: TrafficPolicy;
  /** Only set (non-zero) for LoadBalancer services with externalTrafficPolicy Local. */
  healthCheckNodePort?: number;
  endpoints: ProxyEndpoint[];
}

/** The node a proxier runs on, for one IP family. */
export interface ProxyNode {
  nodeName: string;
  family: IPFamily;
  /** --cluster-cidr of this family: the local-traffic detector ("is this from a pod?"). */
  clusterCIDR?: string;
  /** --iptables-masquerade-bit, default 14 (mark 0x4000). */
  masqueradeBit?: number;
  /** --iptables-localhost-nodeports (IPv4 only), default true. */
  localhostNodePorts?: boolean;
}

export function masqueradeMark(node: ProxyNode): string {
  return '0x' + (1 << (node.masqueradeBit ?? 14)).toString(16);
}

/** ServicePortName.String(): "namespace/name" plus ":port" when the port is named. */
export function servicePortNameString(sp: Pick<ProxyServicePort, 'namespace' | 'name' | 'portName'>): string {
  return `${sp.namespace}/${sp.name}${sp.portName ? `:${sp.portName}` : ''}`;
}

/** Lower-case protocol as kube-proxy uses it in names and rules. */
export function protoLower(p: L4Protocol): string {
  return p.toLowerCase();
}

/** net.JoinHostPort(ip, port) — the endpoint's String(). */
export function endpointString(ep: Pick<ProxyEndpoint, 'ip' | 'port'>): string {
  return ep.ip.includes(':') ? `[${ep.ip}]:${ep.port}` : `${ep.ip}:${ep.port}`;
}

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 standard base32 (Go's base32.StdEncoding), with '=' padding. */
export function base32Std(buf: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  while (out.length % 8 !== 0) out += '=';
  return out;
}

export function sha256Base32(s: string): string {
  return base32Std(createHash('sha256').update(s).digest());
}

export function isReady(ep: ProxyEndpoint): boolean {
  return ep.ready !== false;
}

export function isServing(ep: ProxyEndpoint): boolean {
  return ep.serving ?? isReady(ep);
}

export function isTerminating(ep: ProxyEndpoint): boolean {
  return ep.terminating === true;
}

/** A serving-but-terminating endpoint (a pod in its deletion grace period that still passes
 * its readiness probe): used only when no ready endpoint is available (ProxyTerminatingEndpoints). */
export function isServingTerminating(ep: ProxyEndpoint): boolean {
  return !isReady(ep) && isServing(ep) && isTerminating(ep);
}

export function externallyAccessible(sp: ProxyServicePort): boolean {
  return (
    (sp.nodePort ?? 0) !== 0 || (sp.loadBalancerIPs?.length ?? 0) > 0 || (sp.externalIPs?.length ?? 0) > 0
  );
}

export function externalPolicyLocal(sp: ProxyServicePort): boolean {
  return externallyAccessible(sp) && sp.externalTrafficPolicy === 'Local';
}

export function internalPolicyLocal(sp: ProxyServicePort): boolean {
  return sp.internalTrafficPolicy === 'Local';
}

/** serviceport.go UsesClusterEndpoints: Cluster endpoints are needed for
 * internal Cluster policy, or whenever the service accepts external traffic
 * (short-circuiting of pod/host-originated external traffic). */
export function usesClusterEndpoints(sp: ProxyServicePort): boolean {
  return !internalPolicyLocal(sp) || externallyAccessible(sp);
}

export function usesLocalEndpoints(sp: ProxyServicePort): boolean {
  return internalPolicyLocal(sp) || externalPolicyLocal(sp);
}

export interface CategorizedEndpoints {
  clusterEndpoints: ProxyEndpoint[];
  localEndpoints: ProxyEndpoint[];
  allLocallyReachableEndpoints: ProxyEndpoint[];
  hasEndpoints: boolean;
}

/**
 * pkg/proxy/topology.go CategorizeEndpoints, without topology hints: the usable
 * Cluster-policy endpoints, the usable Local-policy endpoints, their union, and whether
 * the service has usable endpoints anywhere in the cluster.
 *
 * "Usable" means ready; when there is no ready endpoint in a set, kube-proxy falls back to
 * the serving-and-terminating endpoints of that set (ProxyTerminatingEndpoints, GA in 1.28),
 * independently for Cluster (cluster-wide) and Local (on this node).
 */
export function categorizeEndpoints(sp: ProxyServicePort, nodeName: string): CategorizedEndpoints {
  const endpoints = sp.endpoints;
  let clusterEndpoints: ProxyEndpoint[] = [];
  let localEndpoints: ProxyEndpoint[] = [];
  let hasEndpoints = false;
  if (endpoints.length === 0) return { clusterEndpoints, localEndpoints, allLocallyReachableEndpoints: [], hasEndpoints };

  if (usesClusterEndpoints(sp)) {
    clusterEndpoints = endpoints.filter(isReady);
    // No ready endpoint anywhere: try the serving-terminating ones.
    if (clusterEndpoints.length === 0) clusterEndpoints = endpoints.filter((e) => isServing(e) && isTerminating(e));
    if (clusterEndpoints.length > 0) hasEndpoints = true;
  }
  if (!usesLocalEndpoints(sp)) return { clusterEndpoints, localEndpoints, allLocallyReachableEndpoints: clusterEndpoints, hasEndpoints };

  // Pre-scan: which kind of endpoint Local policy uses, and whether any is usable anywhere.
  let hasLocalReady = false;
  let hasLocalServingTerminating = false;
  for (const e of endpoints) {
    const local = e.nodeName === nodeName;
    if (isReady(e)) {
      hasEndpoints = true;
      if (local) hasLocalReady = true;
    } else if (isServing(e) && isTerminating(e)) {
      hasEndpoints = true;
      if (local) hasLocalServingTerminating = true;
    }
  }
  let useServingTerminating = false;
  if (hasLocalReady) localEndpoints = endpoints.filter((e) => e.nodeName === nodeName && isReady(e));
  else if (hasLocalServingTerminating) {
    useServingTerminating = true;
    localEndpoints = endpoints.filter((e) => e.nodeName === nodeName && isServing(e) && isTerminating(e));
  }
  if (!usesClusterEndpoints(sp)) return { clusterEndpoints, localEndpoints, allLocallyReachableEndpoints: localEndpoints, hasEndpoints };
  // Without topology, clusterEndpoints holds every ready endpoint: a superset of the ready local ones.
  if (!useServingTerminating) return { clusterEndpoints, localEndpoints, allLocallyReachableEndpoints: clusterEndpoints, hasEndpoints };

  // clusterEndpoints may hold remote endpoints, localEndpoints terminating local ones: merge.
  const seen = new Set<string>();
  const allLocallyReachableEndpoints: ProxyEndpoint[] = [];
  for (const e of [...clusterEndpoints, ...localEndpoints]) {
    const k = endpointString(e);
    if (!seen.has(k)) {
      seen.add(k);
      allLocallyReachableEndpoints.push(e);
    }
  }
  return { clusterEndpoints, localEndpoints, allLocallyReachableEndpoints, hasEndpoints };
}

/**
 * What kube-proxy's service health server reports as localEndpoints for a service on a node
 * (EndpointsMap.LocalReadyEndpoints): the number of distinct IPs of *ready* endpoints on the node.
 * Serving-terminating endpoints may still carry traffic but do not count: the health check must
 * fail on a node that only has terminating endpoints, so load balancers drain it.
 */
export function localReadyEndpointCount(endpoints: ProxyEndpoint[], nodeName: string): number {
  return new Set(endpoints.filter((e) => e.nodeName === nodeName && isReady(e)).map((e) => e.ip)).size;
}

/** The per-service-port decisions of syncProxyRules, shared by both backends. */
export interface ServicePortPlan {
  nameString: string;
  protocol: string;
  cat: CategorizedEndpoints;
  usesClusterPolicyChain: boolean;
  usesLocalPolicyChain: boolean;
  hasInternalEndpoints: boolean;
  hasExternalEndpoints: boolean;
  /** true: the internal traffic chain is the Local chain. */
  internalIsLocal: boolean;
  /** true: the external policy chain is the Local chain. */
  externalIsLocal: boolean;
  usesExternalTrafficChain: boolean;
  /** What to do with traffic for which there is no endpoint: 'reject' (no endpoints
   * at all), 'drop' (Local policy, no local endpoint) or undefined (has endpoints). */
  internalFilter?: 'reject' | 'drop';
  externalFilter?: 'reject' | 'drop';
}

export function planServicePort(sp: ProxyServicePort, node: ProxyNode): ServicePortPlan {
  const cat = categorizeEndpoints(sp, node.nodeName);
  const usesClusterPolicyChain = cat.clusterEndpoints.length > 0 && usesClusterEndpoints(sp);
  const usesLocalPolicyChain = cat.localEndpoints.length > 0 && usesLocalEndpoints(sp);
  let hasInternalEndpoints = cat.hasEndpoints;
  const internalIsLocal = internalPolicyLocal(sp);
  if (internalIsLocal && cat.localEndpoints.length === 0) hasInternalEndpoints = false;
  let hasExternalEndpoints = cat.hasEndpoints;
  const externalIsLocal = externalPolicyLocal(sp);
  if (externalIsLocal && cat.localEndpoints.length === 0) hasExternalEndpoints = false;
  const usesExternalTrafficChain = cat.hasEndpoints && externallyAccessible(sp);
  let internalFilter: ServicePortPlan['internalFilter'];
  let externalFilter: ServicePortPlan['externalFilter'];
  if (!cat.hasEndpoints) {
    internalFilter = 'reject';
    externalFilter = 'reject';
  } else {
    if (!hasInternalEndpoints) internalFilter = 'drop';
    if (!hasExternalEndpoints) externalFilter = 'drop';
  }
  return {
    nameString: servicePortNameString(sp),
    protocol: protoLower(sp.protocol),
    cat,
    usesClusterPolicyChain,
    usesLocalPolicyChain,
    hasInternalEndpoints,
    hasExternalEndpoints,
    internalIsLocal,
    externalIsLocal,
    usesExternalTrafficChain,
    internalFilter,
    externalFilter,
  };
}

/** Deterministic order (kube-proxy iterates a Go map; we sort for readable diffs). */
export function sortServicePorts(sps: ProxyServicePort[]): ProxyServicePort[] {
  return [...sps].sort((a, b) => {
    const ka = servicePortNameString(a) + '/' + a.protocol;
    const kb = servicePortNameString(b) + '/' + b.protocol;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
}
