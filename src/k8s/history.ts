// Store rows (service_history, pod_history) from the tracked state of Services and Pods, and the
// fingerprints that decide whether a new row is due: a row is written only when what it records
// differs from the last row written for the same object, so relists and event reordering across
// EndpointSlices never add rows that say nothing new.

import { parseAddr } from '../collector/addr.js';
import type { Addr16 } from '../collector/hop.js';
import type { PodHistoryRow, ServiceHistoryRow } from '../collector/store/schema.js';
import type { LoadBalancerIngress, PodView, ServiceEndpoint, ServicePortInfo } from './objects.js';

/** What service_history records about a Service at one moment. */
export interface ServiceState {
  namespace: string;
  name: string;
  type: string;
  /** "Cluster" | "Local", "" for ClusterIP services (the apiserver clears it there). */
  externalTrafficPolicy: string;
  internalTrafficPolicy: string;
  /** 0 = none; only meaningful (and only allocated by the apiserver) for LoadBalancer + Local. */
  healthCheckNodePort: number;
  clusterIPs: string[];
  /** spec.externalIPs (not recorded in service_history, but a frontend). */
  externalIPs: string[];
  ports: ServicePortInfo[];
  loadBalancerIngress: LoadBalancerIngress[];
  /** Merged over all the Service's EndpointSlices, sorted by node, pod, first address. */
  endpoints: ServiceEndpoint[];
}

function addrs(list: readonly string[]): Addr16[] {
  return list.flatMap((ip) => {
    const a = parseAddr(ip);
    return a ? [a] : [];
  });
}

/** The fields of a ServiceHistoryRow as one string: equal fingerprints, equal rows. */
export function serviceFingerprint(s: ServiceState): string {
  return JSON.stringify([
    s.type, s.externalTrafficPolicy, s.internalTrafficPolicy, s.healthCheckNodePort,
    s.clusterIPs, s.ports, s.loadBalancerIngress, s.endpoints,
  ]);
}

export function serviceHistoryRow(s: ServiceState, tsNs: bigint, deleted: boolean): ServiceHistoryRow {
  return {
    tsNs,
    namespace: s.namespace,
    name: s.name,
    type: s.type,
    externalTrafficPolicy: s.externalTrafficPolicy,
    internalTrafficPolicy: s.internalTrafficPolicy,
    healthCheckNodePort: s.healthCheckNodePort,
    clusterIps: addrs(s.clusterIPs),
    nodePorts: s.ports.map((p) => p.nodePort).filter((p) => p > 0),
    ports: JSON.stringify(s.ports.map((p) => ({ name: p.name, protocol: p.protocol, port: p.port, targetPort: p.targetPort, nodePort: p.nodePort }))),
    loadBalancerIngress: JSON.stringify(s.loadBalancerIngress.map((i) => ({ ip: i.ip, ipMode: i.ipMode }))),
    endpoints: JSON.stringify(s.endpoints),
    deleted,
  };
}

/** The fields pod_history records (ts and deleted aside). */
export function podFingerprint(p: PodView): string {
  return JSON.stringify([p.uid, p.node, p.ips, p.phase, p.ready, p.terminating]);
}

export function podHistoryRow(p: PodView, tsNs: bigint, deleted: boolean): PodHistoryRow {
  return {
    tsNs,
    namespace: p.namespace,
    name: p.name,
    uid: p.uid,
    node: p.node,
    ips: addrs(p.ips),
    phase: p.phase,
    ready: p.ready,
    terminating: p.terminating,
    deleted,
  };
}
