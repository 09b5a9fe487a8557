// The cluster as natlens needs it: pods by IP, nodes by address, Services by frontend (ClusterIP,
// node address + nodePort, load-balancer ingress, external IP) and by endpoint, each Service with
// its endpoints merged over all its EndpointSlices. Fed synchronously with watch changes (by
// ClusterWatch, or directly in tests), it also emits the service_history / pod_history rows that
// let a past connection be read against the policy and endpoints in force at its time.

import { EventEmitter } from 'node:events';
import type { PodHistoryRow, ServiceHistoryRow } from '../collector/store/schema.js';
import { podFingerprint, podHistoryRow, serviceFingerprint, serviceHistoryRow, type ServiceState } from './history.js';
import {
  canonicalIP,
  compareIPs,
  endpointSliceView,
  keyString,
  nodeView,
  objectKey,
  podView,
  serviceView,
  type EndpointSliceView,
  type K8sKind,
  type NodeView,
  type ObjectKey,
  type PodView,
  type ServiceEndpoint,
  type ServicePortInfo,
  type ServiceView,
} from './objects.js';

export type { K8sKind, LoadBalancerIngress, ServiceEndpoint, ServicePortInfo } from './objects.js';
export type { ServiceState } from './history.js';

export interface WatchChange {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  kind: K8sKind;
  // Raw watch JSON or a client-node model: read through the views in objects.ts.
  object: any;
}

export interface PodRef {
  namespace: string;
  name: string;
  node: string;
  ips: string[];
  uid: string;
  phase: string;
  ready: boolean;
  terminating: boolean;
  labels: Record<string, string>;
}

export interface NodeInfo {
  name: string;
  /** InternalIP / ExternalIP addresses. */
  addresses: string[];
  podCIDRs: string[];
}

export type ServiceFrontend = 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalIP';

export interface ServiceFrontendMatch {
  service: ServiceState;
  port: ServicePortInfo;
  frontend: ServiceFrontend;
}

/**
 * A Service one of whose endpoints is the queried address. `frontend` is the outermost way in
 * the Service's type offers (LoadBalancer > NodePort > ClusterIP): the pod cannot tell which one a
 * connection used.
 */
export interface ServiceEndpointMatch extends ServiceFrontendMatch {
  endpoint: ServiceEndpoint;
}

export interface ClusterMetadataEvents {
  /** A row for service_history: every change, the first state after the initial sync, and deletions (deleted=true). */
  'service-history': [row: ServiceHistoryRow];
  /** The same deletion row again, for consumers that only care about Services going away (do not store it twice). */
  'service-deleted': [row: ServiceHistoryRow];
  /** A row for pod_history: add, change of ips/node/phase/ready/terminating, delete (deleted=true). */
  'pod-history': [row: PodHistoryRow];
}

interface FrontendEntry {
  service: string;
  port: number;
  frontend: ServiceFrontend;
}

interface Emitted {
  fp: string;
  ts: bigint;
  state: ServiceState;
}

const PHASE_DONE = new Set(['Succeeded', 'Failed']);

export class ClusterMetadata extends EventEmitter<ClusterMetadataEvents> {
  private readonly podViews = new Map<string, PodView>();
  private readonly podsByIP = new Map<string, Set<string>>();
  private readonly nodeViews = new Map<string, NodeView>();
  private readonly nodesByAddr = new Map<string, string>();
  private readonly serviceViews = new Map<string, ServiceView>();
  private readonly slices = new Map<string, EndpointSliceView>();
  private readonly slicesByService = new Map<string, Set<string>>();
  /** Current merged state of every existing Service. */
  private readonly states = new Map<string, ServiceState>();
  /** Numeric target ports by Service, as the EndpointSlices resolved them ("name|proto|port"). */
  private readonly resolvedPorts = new Map<string, Set<string>>();
  private readonly frontends = new Map<string, FrontendEntry[]>();
  private readonly nodePorts = new Map<string, FrontendEntry[]>();
  private readonly endpointIPs = new Map<string, Set<string>>();
  private readonly indexed = new Map<string, { frontends: string[]; nodePorts: string[]; endpointIPs: string[] }>();
  private readonly emittedServices = new Map<string, Emitted>();
  private readonly emittedPods = new Map<string, { fp: string; ts: bigint }>();
  /** Services changed while rows were held (before the initial sync, inside a batch). */
  private readonly dirty = new Set<string>();
  private batchDepth = 0;
  private synced = false;
  private lastNow = 0n;

  /** Applies one change; `tsNs` is when it happened (default: now). */
  apply(change: WatchChange, tsNs?: bigint): void {
    const ts = tsNs ?? this.now();
    switch (change.kind) {
      case 'Pod':
        this.applyPod(change, ts);
        break;
      case 'Node':
        this.applyNode(change);
        break;
      case 'Service':
        this.applyService(change, ts);
        break;
      case 'EndpointSlice':
        this.applySlice(change, ts);
        break;
    }
  }

  /**
   * The initial lists are in: from now on every Service change emits a row, and every Service
   * gets its first one now (held until here so that a Service listed before its EndpointSlices
   * does not get a row without endpoints first).
   */
  markSynced(tsNs?: bigint): void {
    if (this.synced) return;
    this.synced = true;
    if (this.batchDepth === 0) this.flushDirty(tsNs ?? this.now());
  }

  isSynced(): boolean {
    return this.synced;
  }

  /** Holds service rows until the matching endBatch: a relist is applied as one change. */
  beginBatch(): void {
    this.batchDepth++;
  }

  endBatch(tsNs?: bigint): void {
    if (this.batchDepth === 0) return;
    this.batchDepth--;
    if (this.batchDepth === 0 && this.synced) this.flushDirty(tsNs ?? this.now());
  }

  /** Keys of the objects of one kind held now (ClusterWatch deletes those a relist no longer lists). */
  objectKeys(kind: K8sKind): ObjectKey[] {
    const keys = kind === 'Pod' ? this.podViews.keys() : kind === 'Node' ? this.nodeViews.keys() : kind === 'Service' ? this.serviceViews.keys() : this.slices.keys();
    return [...keys].map((k) => {
      const i = k.indexOf('/');
      return i < 0 ? { namespace: '', name: k } : { namespace: k.slice(0, i), name: k.slice(i + 1) };
    });
  }

  // ------------------------------------------------------------------ queries

  podByIP(ip: string): PodRef | undefined {
    const canon = canonicalIP(ip);
    const keys = canon ? this.podsByIP.get(canon) : undefined;
    if (!keys) return undefined;
    // An address can be held by a finished or terminating pod and its successor: prefer the live one.
    let best: PodView | undefined;
    let bestScore = -1;
    for (const k of keys) {
      const p = this.podViews.get(k);
      if (!p) continue;
      const score = (PHASE_DONE.has(p.phase) ? 0 : 2) + (p.terminating ? 0 : 1);
      if (score > bestScore || (score === bestScore && best && p.createdMs > best.createdMs)) {
        best = p;
        bestScore = score;
      }
    }
    return best ? podRef(best) : undefined;
  }

  pod(namespace: string, name: string): PodRef | undefined {
    const p = this.podViews.get(`${namespace}/${name}`);
    return p ? podRef(p) : undefined;
  }

  pods(): PodRef[] {
    return [...this.podViews.values()].map(podRef);
  }

  node(name: string): NodeInfo | undefined {
    const n = this.nodeViews.get(name);
    return n ? { name: n.name, addresses: [...n.addresses], podCIDRs: [...n.podCIDRs] } : undefined;
  }

  nodes(): NodeInfo[] {
    return [...this.nodeViews.keys()].sort().map((n) => this.node(n)!);
  }

  nodeByAddress(ip: string): string | undefined {
    const canon = canonicalIP(ip);
    return canon ? this.nodesByAddr.get(canon) : undefined;
  }

  service(namespace: string, name: string): ServiceState | undefined {
    return this.states.get(`${namespace}/${name}`);
  }

  services(): ServiceState[] {
    return [...this.states.keys()].sort().map((k) => this.states.get(k)!);
  }

  /** The Service port a connection to ip:port reached, and through which frontend. */
  serviceByFrontend(ip: string, port: number, proto: 'tcp' | 'udp'): ServiceFrontendMatch | undefined {
    const canon = canonicalIP(ip);
    if (!canon) return undefined;
    const P = proto.toUpperCase();
    // ClusterIP / LB ingress / external IP first: an external IP may also be a node address.
    const direct = this.frontends.get(`${P}|${canon}|${port}`)?.[0];
    if (direct) return this.match(direct);
    if (!this.nodesByAddr.has(canon)) return undefined;
    const np = this.nodePorts.get(`${P}|${port}`)?.[0];
    return np ? this.match(np) : undefined;
  }

  /** The Services whose endpoints include ip, with the port whose target is targetPort. */
  serviceByEndpoint(ip: string, targetPort: number, proto: 'tcp' | 'udp'): ServiceEndpointMatch[] {
    const canon = canonicalIP(ip);
    const keys = canon ? this.endpointIPs.get(canon) : undefined;
    if (!canon || !keys) return [];
    const P = proto.toUpperCase();
    const out: ServiceEndpointMatch[] = [];
    for (const key of [...keys].sort()) {
      const st = this.states.get(key);
      const endpoint = st?.endpoints.find((e) => e.addresses.includes(canon));
      if (!st || !endpoint) continue;
      const resolved = this.resolvedPorts.get(key);
      for (const p of st.ports) {
        if (p.protocol !== P) continue;
        const named = resolved && [...resolved].some((r) => r.startsWith(`${p.name}|${P}|`));
        // The slices resolve named target ports to numbers; without them only a numeric targetPort can match.
        const hit = named ? resolved!.has(`${p.name}|${P}|${targetPort}`) : p.targetPort === targetPort;
        if (hit) out.push({ service: st, port: p, frontend: outermostFrontend(st.type), endpoint });
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ pods and nodes

  private applyPod(change: WatchChange, ts: bigint): void {
    const key = objectKey(change.object);
    if (!key) return;
    const k = keyString(key);
    const prev = this.podViews.get(k);
    if (change.type === 'DELETED') {
      if (!prev) return;
      // The DELETED event carries the final object; a relist's synthetic delete carries only the key.
      const v = podView(change.object);
      this.removePod(k, v && v.uid === prev.uid ? v : prev, ts);
      return;
    }
    const v = podView(change.object);
    if (!v) return;
    // Same name, new uid (a StatefulSet pod recreated while we missed the delete): close the old one.
    if (prev && prev.uid && v.uid && prev.uid !== v.uid) this.removePod(k, prev, ts);
    const before = this.podViews.get(k);
    if (before) this.unindexPod(k, before);
    this.podViews.set(k, v);
    if (!v.hostNetwork) {
      for (const ip of v.ips) {
        let set = this.podsByIP.get(ip);
        if (!set) this.podsByIP.set(ip, (set = new Set()));
        set.add(k);
      }
    }
    const fp = podFingerprint(v);
    const last = this.emittedPods.get(k);
    if (last && last.fp === fp) return;
    const t = after(ts, last?.ts);
    this.emittedPods.set(k, { fp, ts: t });
    this.emit('pod-history', podHistoryRow(v, t, false));
  }

  private removePod(k: string, final: PodView, ts: bigint): void {
    const stored = this.podViews.get(k);
    if (stored) this.unindexPod(k, stored);
    this.podViews.delete(k);
    const t = after(ts, this.emittedPods.get(k)?.ts);
    this.emittedPods.delete(k);
    this.emit('pod-history', podHistoryRow(final, t, true));
  }

  private unindexPod(k: string, v: PodView): void {
    for (const ip of v.ips) {
      const set = this.podsByIP.get(ip);
      set?.delete(k);
      if (set?.size === 0) this.podsByIP.delete(ip);
    }
  }

  private applyNode(change: WatchChange): void {
    const key = objectKey(change.object);
    if (!key) return;
    const prev = this.nodeViews.get(key.name);
    if (prev) for (const a of prev.addresses) if (this.nodesByAddr.get(a) === key.name) this.nodesByAddr.delete(a);
    if (change.type === 'DELETED') {
      this.nodeViews.delete(key.name);
      return;
    }
    const v = nodeView(change.object);
    if (!v) return;
    this.nodeViews.set(v.name, v);
    for (const a of v.addresses) this.nodesByAddr.set(a, v.name);
  }

  // ------------------------------------------------------------------ services and slices

  private applyService(change: WatchChange, ts: bigint): void {
    const key = objectKey(change.object);
    if (!key) return;
    const k = keyString(key);
    if (change.type === 'DELETED') this.serviceViews.delete(k);
    else {
      const v = serviceView(change.object);
      if (!v) return;
      this.serviceViews.set(k, v);
    }
    this.touch(k, ts);
  }

  private applySlice(change: WatchChange, ts: bigint): void {
    const key = objectKey(change.object);
    if (!key) return;
    const k = keyString(key);
    const prev = this.slices.get(k);
    const prevService = prev?.service ? `${prev.namespace}/${prev.service}` : null;
    let nextService: string | null = null;
    if (prevService) this.slicesByService.get(prevService)?.delete(k);
    if (change.type === 'DELETED') this.slices.delete(k);
    else {
      const v = endpointSliceView(change.object);
      if (!v) return;
      this.slices.set(k, v);
      if (v.service) {
        nextService = `${v.namespace}/${v.service}`;
        let set = this.slicesByService.get(nextService);
        if (!set) this.slicesByService.set(nextService, (set = new Set()));
        set.add(k);
      }
    }
    if (prevService && this.slicesByService.get(prevService)?.size === 0) this.slicesByService.delete(prevService);
    if (prevService) this.touch(prevService, ts);
    if (nextService && nextService !== prevService) this.touch(nextService, ts);
  }

  /** Recomputes one Service's state and indexes, then writes its row now or marks it for later. */
  private touch(svcKey: string, ts: bigint): void {
    const view = this.serviceViews.get(svcKey);
    this.unindexService(svcKey);
    if (view) {
      const state = this.buildState(svcKey, view);
      this.states.set(svcKey, state);
      this.indexService(svcKey, state);
    } else {
      this.states.delete(svcKey);
      this.resolvedPorts.delete(svcKey);
    }
    if (this.synced && this.batchDepth === 0) this.flushService(svcKey, ts);
    else this.dirty.add(svcKey);
  }

  private buildState(svcKey: string, view: ServiceView): ServiceState {
    const merged = new Map<string, ServiceEndpoint>();
    const resolved = new Set<string>();
    for (const sk of [...(this.slicesByService.get(svcKey) ?? [])].sort()) {
      const slice = this.slices.get(sk);
      if (!slice) continue;
      for (const p of slice.ports) resolved.add(`${p.name}|${p.protocol}|${p.port}`);
      for (const e of slice.endpoints) {
        // One pod appears once per family (an IPv4 and an IPv6 slice): merge them into one endpoint.
        const mk = e.pod ? `pod:${e.pod}` : `addr:${e.node}|${e.addresses[0] ?? ''}`;
        const m = merged.get(mk);
        if (!m) {
          merged.set(mk, { pod: e.pod, node: e.node, addresses: [...e.addresses], ready: e.ready, serving: e.serving, terminating: e.terminating });
          continue;
        }
        // Slices of one pod are updated one after the other: until both agree, the pod counts as
        // not ready / terminating, never as more available than either slice says.
        for (const a of e.addresses) if (!m.addresses.includes(a)) m.addresses.push(a);
        m.node ||= e.node;
        m.ready &&= e.ready;
        m.serving &&= e.serving;
        m.terminating ||= e.terminating;
      }
    }
    const endpoints = [...merged.values()];
    for (const e of endpoints) e.addresses.sort(compareIPs);
    endpoints.sort((a, b) => cmp(a.node, b.node) || cmp(a.pod ?? '', b.pod ?? '') || cmp(a.addresses[0] ?? '', b.addresses[0] ?? ''));
    this.resolvedPorts.set(svcKey, resolved);
    return {
      namespace: view.namespace,
      name: view.name,
      type: view.type,
      externalTrafficPolicy: view.externalTrafficPolicy,
      internalTrafficPolicy: view.internalTrafficPolicy,
      healthCheckNodePort: view.healthCheckNodePort,
      clusterIPs: view.clusterIPs,
      externalIPs: view.externalIPs,
      ports: view.ports,
      loadBalancerIngress: view.loadBalancerIngress,
      endpoints,
    };
  }

  private indexService(svcKey: string, st: ServiceState): void {
    const rec = { frontends: [] as string[], nodePorts: [] as string[], endpointIPs: [] as string[] };
    const add = (map: Map<string, FrontendEntry[]>, keys: string[], key: string, entry: FrontendEntry): void => {
      let list = map.get(key);
      if (!list) map.set(key, (list = []));
      list.push(entry);
      keys.push(key);
    };
    st.ports.forEach((p, i) => {
      for (const ip of st.clusterIPs) add(this.frontends, rec.frontends, `${p.protocol}|${ip}|${p.port}`, { service: svcKey, port: i, frontend: 'ClusterIP' });
      for (const ip of st.externalIPs) add(this.frontends, rec.frontends, `${p.protocol}|${ip}|${p.port}`, { service: svcKey, port: i, frontend: 'ExternalIP' });
      if (st.type === 'LoadBalancer') {
        for (const ing of st.loadBalancerIngress) add(this.frontends, rec.frontends, `${p.protocol}|${ing.ip}|${p.port}`, { service: svcKey, port: i, frontend: 'LoadBalancer' });
      }
      if (p.nodePort > 0 && (st.type === 'NodePort' || st.type === 'LoadBalancer')) {
        add(this.nodePorts, rec.nodePorts, `${p.protocol}|${p.nodePort}`, { service: svcKey, port: i, frontend: 'NodePort' });
      }
    });
    for (const e of st.endpoints) {
      for (const ip of e.addresses) {
        let set = this.endpointIPs.get(ip);
        if (!set) this.endpointIPs.set(ip, (set = new Set()));
        set.add(svcKey);
        rec.endpointIPs.push(ip);
      }
    }
    this.indexed.set(svcKey, rec);
  }

  private unindexService(svcKey: string): void {
    const rec = this.indexed.get(svcKey);
    if (!rec) return;
    const drop = (map: Map<string, FrontendEntry[]>, key: string): void => {
      const list = map.get(key)?.filter((e) => e.service !== svcKey);
      if (list && list.length > 0) map.set(key, list);
      else map.delete(key);
    };
    for (const k of rec.frontends) drop(this.frontends, k);
    for (const k of rec.nodePorts) drop(this.nodePorts, k);
    for (const ip of rec.endpointIPs) {
      const set = this.endpointIPs.get(ip);
      set?.delete(svcKey);
      if (set?.size === 0) this.endpointIPs.delete(ip);
    }
    this.indexed.delete(svcKey);
  }

  private match(e: FrontendEntry): ServiceFrontendMatch | undefined {
    const service = this.states.get(e.service);
    const port = service?.ports[e.port];
    return service && port ? { service, port, frontend: e.frontend } : undefined;
  }

  // ------------------------------------------------------------------ rows

  private flushDirty(ts: bigint): void {
    const keys = [...this.dirty].sort();
    this.dirty.clear();
    for (const k of keys) this.flushService(k, ts);
  }

  /** Emits a row when the Service's recorded state differs from the last row (or it went away). */
  private flushService(svcKey: string, ts: bigint): void {
    const st = this.states.get(svcKey);
    const last = this.emittedServices.get(svcKey);
    const t = after(ts, last?.ts);
    if (st) {
      const fp = serviceFingerprint(st);
      if (last && last.fp === fp) return;
      this.emittedServices.set(svcKey, { fp, ts: t, state: st });
      this.emit('service-history', serviceHistoryRow(st, t, false));
      return;
    }
    if (!last) return;
    // Forget it: a Service recreated later under the same name starts a new history.
    this.emittedServices.delete(svcKey);
    const row = serviceHistoryRow(last.state, t, true);
    this.emit('service-history', row);
    this.emit('service-deleted', row);
  }

  /** Nanoseconds since the epoch, strictly increasing: rows of one object never share a ts. */
  private now(): bigint {
    let t = BigInt(Date.now()) * 1_000_000n;
    if (t <= this.lastNow) t = this.lastNow + 1n;
    this.lastNow = t;
    return t;
  }
}

/** ts, moved past the previous row's ts of the same object (service_history/pod_history dedupe on it). */
function after(ts: bigint, last: bigint | undefined): bigint {
  return last !== undefined && ts <= last ? last + 1n : ts;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function outermostFrontend(type: string): ServiceFrontend {
  return type === 'LoadBalancer' ? 'LoadBalancer' : type === 'NodePort' ? 'NodePort' : 'ClusterIP';
}

function podRef(p: PodView): PodRef {
  return {
    namespace: p.namespace,
    name: p.name,
    node: p.node,
    ips: [...p.ips],
    uid: p.uid,
    phase: p.phase,
    ready: p.ready,
    terminating: p.terminating,
    labels: { ...p.labels },
  };
}
