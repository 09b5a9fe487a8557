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
}

export interface LabServer {
  /** PID of the server process (the process `ip netns exec` exec'd into). */
  pid: number;
  /** The argv run inside the pod namespace. */
  command: string[];
  /** A substring of /proc/<pid>/cmdline identifying the process, checked before killing. */
  cmdlineMatch: string;
  /** "echo" for the built-in echo server, "custom" otherwise. */
  kind: 'echo' | 'custom';
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
  ready: boolean;
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
  /** Endpoints (EndpointSlices flattened): the ready pods matching the selector. */
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

export interface LabLoadBalancer {
  netns: string;
  netnsPath: string;
  ips: string[];
  /** Per LoadBalancer service: the nodes the LB forwards to (ECMP next hops). */
  targets: Record<string, string[]>;
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
