// The lab's state as the Kubernetes objects a real cluster would hold for it: Nodes, Pods,
// Services and their EndpointSlices (one per IP family, like the EndpointSlice controller), and
// Namespaces. Pure and deterministic: uids and timestamps derive from names and the lab's
// creation time, so converting the same state twice gives equal objects and a state change
// becomes MODIFIED events for exactly the objects it changed (syncLabObjects).

import { createHash } from 'node:crypto';
import { release } from 'node:os';
import type { KubeObject, ResourceStore, StoreEvent } from '../k8s/api-server.js';
import type { LabEndpoint, LabPod, LabService, LabState } from './types.js';

export interface LabKubeObjectsOptions {
  /** deletionTimestamp of terminating pods that have none yet (default: the lab's createdAt). */
  now?: string;
}

/** The resources the lab serves, in the order a cluster would create them. */
export const LAB_RESOURCES = ['namespaces', 'nodes', 'pods', 'services', 'endpointslices'] as const;

const ENDPOINTSLICE_CONTROLLER = 'endpointslice-controller.k8s.io';
/** Characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes). */
const SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';

function sha1(text: string): Buffer {
  return createHash('sha1').update(text).digest();
}

/** A UUID-shaped id (version 4 / variant bits set) derived from what it names: stable across calls. */
export function stableUid(prefix: string, kind: string, namespace: string, name: string): string {
  const h = sha1(`${prefix}/${kind}/${namespace}/${name}`);
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** A generateName-style suffix ("x7k2q") derived from a seed. */
function nameSuffix(seed: string): string {
  const h = sha1(seed);
  return [...h.subarray(0, 5)].map((b) => SUFFIX_ALPHABET[b % SUFFIX_ALPHABET.length]).join('');
}

/** RFC 3339 in seconds, as the apiserver writes timestamps. */
function kubeTime(iso: string): string {
  const t = Date.parse(iso);
  return (Number.isNaN(t) ? new Date(0) : new Date(t)).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const family = (ip: string): 4 | 6 => (ip.includes(':') ? 6 : 4);
const familyName = (f: 4 | 6): 'IPv4' | 'IPv6' => (f === 4 ? 'IPv4' : 'IPv6');

/** EndpointSlice conditions of a lab endpoint; state files older than these fields lack serving/terminating. */
function conditions(e: LabEndpoint): { ready: boolean; serving: boolean; terminating: boolean } {
  const x = e as LabEndpoint & { serving?: boolean; terminating?: boolean };
  return { ready: x.ready, serving: x.serving ?? x.ready, terminating: x.terminating ?? false };
}

function lbIpMode(state: LabState): 'VIP' | 'Proxy' {
  // A proxying load balancer terminates connections: kube-proxy must not short-circuit its VIP.
  return (state.lb as { mode?: string }).mode === 'proxy' ? 'Proxy' : 'VIP';
}

/** Every object of the lab, Namespaces first. */
export function labKubeObjects(state: LabState, opts: LabKubeObjectsOptions = {}): KubeObject[] {
  const created = kubeTime(state.createdAt);
  const uid = (kind: string, ns: string, name: string): string => stableUid(state.prefix, kind, ns, name);
  const meta = (kind: string, ns: string, name: string): KubeObject['metadata'] => ({
    name, ...(ns ? { namespace: ns } : {}), uid: uid(kind, ns, name), creationTimestamp: created,
  });
  const out: KubeObject[] = [];

  const namespaces = new Set(['default', ...state.pods.map((p) => p.namespace), ...state.services.map((s) => s.namespace)]);
  for (const ns of [...namespaces].sort()) {
    out.push({
      apiVersion: 'v1', kind: 'Namespace',
      metadata: { ...meta('Namespace', '', ns), labels: { 'kubernetes.io/metadata.name': ns } },
      spec: { finalizers: ['kubernetes'] },
      status: { phase: 'Active' },
    });
  }

  for (const n of state.nodes) {
    out.push({
      apiVersion: 'v1', kind: 'Node',
      metadata: {
        ...meta('Node', '', n.name),
        labels: { 'kubernetes.io/arch': 'amd64', 'kubernetes.io/hostname': n.name, 'kubernetes.io/os': 'linux' },
        annotations: { 'natlens.io/netns': n.netns },
      },
      spec: { ...(n.podCIDRs[0] ? { podCIDR: n.podCIDRs[0] } : {}), podCIDRs: [...n.podCIDRs] },
      status: {
        addresses: [...n.internalIPs.map((address) => ({ type: 'InternalIP', address })), { type: 'Hostname', address: n.name }],
        conditions: [{ type: 'Ready', status: 'True', lastHeartbeatTime: created, lastTransitionTime: created, reason: 'KubeletReady', message: 'kubelet is posting ready status' }],
        daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
        nodeInfo: {
          machineID: uid('Node', '', n.name).replace(/-/g, ''),
          systemUUID: uid('Node', '', n.name),
          bootID: uid('NodeBoot', created, n.name),
          // The lab's nodes are namespaces of this machine: its kernel is theirs.
          kernelVersion: release(),
          osImage: 'natlens lab (network namespace)',
          containerRuntimeVersion: 'natlens-lab://netns',
          kubeletVersion: 'v1.31.0',
          kubeProxyVersion: '',
          operatingSystem: 'linux',
          architecture: 'amd64',
        },
      },
    });
  }

  for (const p of state.pods) out.push(podObject(state, p, meta('Pod', p.namespace, p.name), created, opts.now ?? created));

  for (const s of state.services) {
    const svcUid = uid('Service', s.namespace, s.name);
    out.push(serviceObject(state, s, meta('Service', s.namespace, s.name)));
    const families = [...new Set(s.clusterIPs.map(family))];
    for (const f of families.length ? families : [4 as const]) {
      const name = `${s.name}-${nameSuffix(`${state.prefix}/${s.namespace}/${s.name}/${f}`)}`;
      out.push({
        apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
        metadata: {
          ...meta('EndpointSlice', s.namespace, name),
          generateName: `${s.name}-`,
          labels: { 'endpointslice.kubernetes.io/managed-by': ENDPOINTSLICE_CONTROLLER, 'kubernetes.io/service-name': s.name },
          ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name: s.name, uid: svcUid, controller: true, blockOwnerDeletion: true }],
        },
        addressType: familyName(f),
        endpoints: s.endpoints.flatMap((e) => {
          const ip = e.ips.find((a) => family(a) === f);
          if (!ip) return [];
          return [{
            addresses: [ip],
            conditions: conditions(e),
            nodeName: e.node,
            targetRef: { kind: 'Pod', namespace: s.namespace, name: e.pod, uid: uid('Pod', s.namespace, e.pod) },
          }];
        }),
        ports: s.ports.map((p) => ({ name: p.name, protocol: p.protocol, port: p.targetPort })),
      });
    }
  }
  return out;
}

function podObject(state: LabState, p: LabPod, metadata: KubeObject['metadata'], created: string, now: string): KubeObject {
  const terminating = (p as LabPod & { terminating?: boolean }).terminating === true;
  const node = state.nodes.find((n) => n.name === p.node);
  // The ports Services send to: what a pod spec would declare for them.
  const ports = new Map<string, { containerPort: number; protocol: string }>();
  for (const s of state.services) {
    if (!s.endpoints.some((e) => e.pod === p.name) || s.namespace !== p.namespace) continue;
    for (const sp of s.ports) ports.set(`${sp.protocol}/${sp.targetPort}`, { containerPort: sp.targetPort, protocol: sp.protocol });
  }
  const container = p.server?.kind === 'echo' ? 'echo-server' : p.server ? 'server' : 'main';
  // A terminating pod keeps passing its readiness probe (its endpoints turn serving, not ready,
  // because of the deletion): the Ready condition stays True, as on a real node.
  const condition = (type: string): Record<string, unknown> => ({ type, status: 'True', lastProbeTime: null, lastTransitionTime: created });
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: {
      ...metadata,
      labels: { ...p.labels },
      annotations: { 'natlens.io/netns': p.netns },
      ...(terminating ? { deletionTimestamp: kubeTime(now), deletionGracePeriodSeconds: 30 } : {}),
    },
    spec: {
      nodeName: p.node,
      containers: [{
        name: container,
        image: p.server?.kind === 'echo' ? 'natlens/lab-echo-server' : 'natlens/lab-pod',
        ...(ports.size ? { ports: [...ports.values()].sort((a, b) => a.containerPort - b.containerPort || a.protocol.localeCompare(b.protocol)) } : {}),
      }],
      restartPolicy: 'Always',
      terminationGracePeriodSeconds: 30,
      schedulerName: 'default-scheduler',
      serviceAccountName: 'default',
    },
    status: {
      phase: 'Running',
      conditions: ['PodReadyToStartContainers', 'Initialized', 'Ready', 'ContainersReady', 'PodScheduled'].map(condition),
      ...(node ? { hostIP: node.internalIPs[0], hostIPs: node.internalIPs.map((ip) => ({ ip })) } : {}),
      ...(p.ips[0] ? { podIP: p.ips[0] } : {}),
      podIPs: p.ips.map((ip) => ({ ip })),
      startTime: created,
      qosClass: 'BestEffort',
    },
  };
}

function serviceObject(state: LabState, s: LabService, metadata: KubeObject['metadata']): KubeObject {
  const withNodePorts = s.type !== 'ClusterIP';
  const lb = s.type === 'LoadBalancer';
  return {
    apiVersion: 'v1', kind: 'Service',
    metadata,
    spec: {
      type: s.type,
      selector: { ...s.selector },
      clusterIP: s.clusterIPs[0] ?? 'None',
      clusterIPs: [...s.clusterIPs],
      ipFamilies: s.clusterIPs.map((ip) => familyName(family(ip))),
      ipFamilyPolicy: s.clusterIPs.length > 1 ? 'RequireDualStack' : 'SingleStack',
      ports: s.ports.map((p) => ({
        name: p.name, protocol: p.protocol, port: p.port, targetPort: p.targetPort,
        ...(withNodePorts && p.nodePort ? { nodePort: p.nodePort } : {}),
      })),
      sessionAffinity: 'None',
      internalTrafficPolicy: 'Cluster',
      // The apiserver clears externalTrafficPolicy on ClusterIP Services and allocates a
      // healthCheckNodePort only for LoadBalancer + Local.
      ...(withNodePorts ? { externalTrafficPolicy: s.externalTrafficPolicy } : {}),
      ...(lb && s.externalTrafficPolicy === 'Local' && s.healthCheckNodePort ? { healthCheckNodePort: s.healthCheckNodePort } : {}),
      ...(lb ? { allocateLoadBalancerNodePorts: true } : {}),
    },
    status: {
      loadBalancer: lb && s.loadBalancerIPs.length ? { ingress: s.loadBalancerIPs.map((ip) => ({ ip, ipMode: lbIpMode(state) })) } : {},
    },
  };
}

/**
 * Makes the store hold exactly the lab's objects: puts what changed (MODIFIED / ADDED), deletes
 * what the lab no longer has, and returns the events that produced. A pod that was already
 * terminating keeps its deletionTimestamp.
 */
export function syncLabObjects(store: ResourceStore, state: LabState, opts: LabKubeObjectsOptions = {}): StoreEvent[] {
  const desired = labKubeObjects(state, { now: opts.now ?? new Date().toISOString() });
  const events: StoreEvent[] = [];
  const keep = new Set<string>();
  for (const obj of desired) {
    const ns = obj.metadata.namespace ?? '';
    keep.add(`${obj.kind}/${ns}/${obj.metadata.name}`);
    if (obj.kind === 'Pod' && obj.metadata.deletionTimestamp) {
      const prev = store.get('pods', ns, obj.metadata.name);
      if (prev?.metadata.deletionTimestamp) obj.metadata.deletionTimestamp = prev.metadata.deletionTimestamp;
    }
    const e = store.put(obj);
    if (e) events.push(e);
  }
  // Dependents first, as the garbage collector would: slices, then Services, pods, nodes.
  for (const resource of [...LAB_RESOURCES].reverse()) {
    for (const o of store.list(resource)) {
      if (keep.has(`${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`)) continue;
      const e = store.delete(resource, o.metadata.namespace ?? '', o.metadata.name);
      if (e) events.push(e);
    }
  }
  return events;
}
