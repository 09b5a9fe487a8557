// The lab's persisted state (/run/natlens/lab-<prefix>.json). Other parts of
// natlens (agent tests, the capture bench, Kubernetes metadata, the demo) read
// it, so keep it backwards compatible: add fields, do not rename them.

import type { IPFamily, L4Protocol, TrafficPolicy } from './kube-proxy-model.js';

export type { IPFamily, L4Protocol, TrafficPolicy } from './kube-proxy-model.js';
export type ProxyMode = 'iptables' | 'nftables';
export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer';

export interface LabNode {
  /** Kubernetes node name ("node1"). */
  name: string;
  /** Network namespace name ("nl-node1"). */
  netns: string;
  /** "/run/netns/nl-node1". */
  netnsPath: string;
  /** The uplink interface inside the node namespace ("eth0"). */
  uplink: string;
  /** status.addresses InternalIP, IPv4 first then IPv6. */
  internalIPs: string[];
  /** spec.podCIDRs, IPv4 first then IPv6. */
  podCIDRs: string[];
  /** kube-proxy's service health server (healthCheckNodePort /healthz) on this node. */
  healthServer?: LabServer;
}

export interface LabServer {
  /** PID of the server process (the process `ip netns exec` exec'd into). */
  pid: number;
  /** The argv run inside the pod namespace. */
  command: string[];
  /** A substring of /proc/<pid>/cmdline identifying the process, checked before killing. */
  cmdlineMatch: string;
  /** "echo" for the built-in echo server, "custom" for a caller's command, or one of the
   * lab's daemons: kube-proxy's health server on a node, the load balancer's health-checking
   * controller, the load balancer's TCP proxy. */
  kind: 'echo' | 'custom' | 'healthz' | 'lb-controller' | 'lb-proxy';
}

export interface LabPod {
  name: string;
  namespace: string;
  /** Node name ("node1"). */
  node: string;
  netns: string;
  netnsPath: string;
  /** status.podIPs, IPv4 first then IPv6. */
  ips: string[];
  labels: Record<string, string>;
  /** Host-side (node namespace) veth, Calico-style "nlv<hash>". */
  hostVeth: string;
  /** Pod-side interface ("eth0"). */
  interface: string;
  server?: LabServer;
  /** Deleted but in its grace period (`natlens lab terminate`): its endpoints are
   * ready=false, serving=true, terminating=true and its server keeps running. */
  terminating?: boolean;
}

export interface LabServicePort {
  name: string;
  protocol: L4Protocol;
  port: number;
  targetPort: number;
  nodePort?: number;
}

export interface LabEndpoint {
  pod: string;
  node: string;
  /** Pod IPs, IPv4 first then IPv6. */
  ips: string[];
  /** EndpointSlice conditions. A running pod: ready, serving, not terminating. A terminating
   * pod that still passes its readiness probe: not ready, serving, terminating. (State files
   * written before these existed lack serving/terminating: read them as serving=ready, terminating=false.) */
  ready: boolean;
  serving: boolean;
  terminating: boolean;
}

export interface LabService {
  name: string;
  namespace: string;
  type: ServiceType;
  /** spec.clusterIPs, IPv4 first then IPv6. */
  clusterIPs: string[];
  ports: LabServicePort[];
  selector: Record<string, string>;
  externalTrafficPolicy: TrafficPolicy;
  /** status.loadBalancer.ingress[].ip (LoadBalancer only). */
  loadBalancerIPs: string[];
  /** spec.healthCheckNodePort, recorded for LoadBalancer services; in Kubernetes it
   * is only meaningful (and only programmed by kube-proxy) under Local policy. */
  healthCheckNodePort?: number;
  /** Endpoints (EndpointSlices flattened): the pods matching the selector, with their conditions. */
  endpoints: LabEndpoint[];
}

export interface LabClient {
  name: string;
  netns: string;
  netnsPath: string;
  ips: string[];
  gateways: string[];
}

export interface LabRouter {
  netns: string;
  netnsPath: string;
  /** The bridge the node uplinks (and the LB) plug into. */
  bridge: string;
  bridgeIPs: string[];
  /** Router addresses on the client link. */
  clientLinkIPs: string[];
}

export type LbMode = 'forward' | 'proxy';
export type ProxyProtocolMode = 'none' | 'v1' | 'v2';

/** The load balancer's health checks (like a cloud LB's HTTP health check on healthCheckNodePort). */
export interface LabLbHealthCheckConfig {
  /** Check every node this often (ms). */
  intervalMs: number;
  /** Per-check timeout (ms). */
  timeoutMs: number;
  /** Consecutive failures before a node is taken out. */
  unhealthyThreshold: number;
  /** Consecutive successes before a node is put back. */
  healthyThreshold: number;
}

/** One node as the load balancer's health checks see it for one service. */
export interface LabLbNodeHealth {
  healthy: boolean;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  /** HTTP status of the last check, null when it got none (refused, timeout). */
  lastStatus: number | null;
  /** localEndpoints from the last /healthz body. */
  lastLocalEndpoints: number | null;
  lastError: string | null;
  lastCheckedAt: string | null;
}

export interface LabLbServiceHealth {
  externalTrafficPolicy: TrafficPolicy;
  /** Only for Local services: the port the nodes are checked on. */
  healthCheckNodePort?: number;
  /** The nodes the LB sends this service's traffic to. */
  targets: string[];
  /** Every node failed its check, so the LB sends to all of them (cloud LBs "fail open"). */
  failOpen: boolean;
  /** Per node (only for Local services: Cluster services send to every node unchecked). */
  nodes: Record<string, LabLbNodeHealth>;
}

/** /run/natlens/lab-<prefix>-lb.json: owned and written (atomically) by the LB controller. */
export interface LabLbHealth {
  version: 1;
  prefix: string;
  /** createdAt of the lab state the controller belongs to. */
  stateCreatedAt: string;
  /** mtime (ms) of the lab state file the controller has applied (routes, addresses, targets). */
  appliedStateMtimeMs: number;
  mode: LbMode;
  proxyProtocol: ProxyProtocolMode;
  updatedAt: string;
  healthCheck: LabLbHealthCheckConfig;
  /** Keyed "namespace/name", LoadBalancer services only. */
  services: Record<string, LabLbServiceHealth>;
}

export interface LabLoadBalancer {
  netns: string;
  netnsPath: string;
  ips: string[];
  /** Per LoadBalancer service: the nodes the LB forwards to (ECMP next hops, or the proxy's
   * backends). readLabState() returns the live, health-checked targets (from the controller's
   * lab-<prefix>-lb.json); the state file itself holds the targets the health checks converge to. */
  targets: Record<string, string[]>;
  /** "forward": a packet-forwarding LB (ECMP routes to the nodes; the node sees the client IP).
   * "proxy": a TCP proxy terminating the client's connection and opening its own to a node's
   * nodePort (the node sees the LB's IP), optionally with a PROXY protocol header.
   * Old state files lack it: read as "forward". */
  mode: LbMode;
  /** Proxy mode only: the PROXY protocol header the proxy writes ("none" in forward mode).
   * Old state files lack it: read as "none". */
  proxyProtocol: ProxyProtocolMode;
  healthCheck?: LabLbHealthCheckConfig;
  /** The health-checking controller (rewrites the VIP routes to the healthy nodes). */
  controller?: LabServer;
  /** The TCP proxy (proxy mode only). */
  proxy?: LabServer;
  /** Live health-check state, merged in by readLabState() (not stored in the state file). */
  health?: LabLbHealth;
}

export interface LabState {
  version: 1;
  prefix: string;
  createdAt: string;
  proxyMode: ProxyMode;
  /** --cluster-cidr per family (the pod network), IPv4 first. */
  clusterCIDRs: string[];
  /** Service CIDRs, IPv4 first. */
  serviceCIDRs: string[];
  client: LabClient;
  router: LabRouter;
  lb: LabLoadBalancer;
  nodes: LabNode[];
  pods: LabPod[];
  services: LabService[];
  /** Every network namespace this lab created (for teardown). */
  namespaces: string[];
}
