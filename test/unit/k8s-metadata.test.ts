import { describe, expect, it } from 'vitest';
import { formatAddr } from '../../src/collector/addr.js';
import type { PodHistoryRow, ServiceHistoryRow } from '../../src/collector/store/schema.js';
import { ClusterMetadata, type K8sKind, type ServiceEndpoint } from '../../src/k8s/cluster-metadata.js';
import { NEW_POD, OLD_POD, recordedEvents, recordedLists } from '../fixtures/k8s/load.js';

/** One line per row: "name etp=... hcnp=N pod@node/addresses:flags ..." (R ready, S serving, T terminating). */
function summary(r: ServiceHistoryRow): string {
  const eps = (JSON.parse(r.endpoints) as ServiceEndpoint[]).map((e) => {
    const flags = `${e.ready ? 'R' : ''}${e.serving ? 'S' : ''}${e.terminating ? 'T' : ''}`;
    return `${e.pod ? e.pod.slice(-5) : '-'}@${e.node || '-'}/${e.addresses.length}:${flags}`;
  });
  return [`${r.deleted ? 'DELETED ' : ''}${r.name}`, `etp=${r.externalTrafficPolicy || '-'}`, `hcnp=${r.healthCheckNodePort}`, ...eps].join(' ');
}

function podSummary(r: PodHistoryRow): string {
  return `${r.name.slice(-5)} ${r.node || '-'} ${r.phase} ips=${r.ips.map(formatAddr).join(',') || '-'}${r.ready ? ' ready' : ''}${r.terminating ? ' terminating' : ''}${r.deleted ? ' deleted' : ''}`;
}

interface Fed {
  md: ClusterMetadata;
  svc: ServiceHistoryRow[];
  pods: PodHistoryRow[];
  deletedSvc: ServiceHistoryRow[];
  ts: () => bigint;
}

function feedLists(): Fed {
  const md = new ClusterMetadata();
  const fed: Fed = { md, svc: [], pods: [], deletedSvc: [], ts: (() => { let t = 1_000n; return () => (t += 10n); })() };
  md.on('service-history', (r) => fed.svc.push(r));
  md.on('service-deleted', (r) => fed.deletedSvc.push(r));
  md.on('pod-history', (r) => fed.pods.push(r));
  for (const { kind, list } of recordedLists()) for (const object of list.items) md.apply({ type: 'ADDED', kind, object }, fed.ts());
  md.markSynced(fed.ts());
  return fed;
}

function feedEvents(fed: Fed): void {
  for (const e of recordedEvents()) fed.md.apply({ type: e.type, kind: e.object.kind as K8sKind, object: e.object }, fed.ts());
}

describe('ClusterMetadata from recorded API responses', () => {
  it('indexes pods, nodes and Services after the initial lists', () => {
    const { md } = feedLists();
    expect(md.podByIP('10.180.1.136')).toMatchObject({ namespace: 'default', name: OLD_POD, node: 'node1', ready: true, terminating: false });
    // Any spelling of an address finds it: lookups go through the canonical form.
    expect(md.podByIP('fd00:10:180:1:0:0:0:136')?.name).toBe(OLD_POD);
    expect(md.podByIP('::ffff:10.180.2.8')?.name).toBe('busybox-2');
    expect(md.podByIP('10.180.3.1')).toBeUndefined();
    expect(md.pod('default', 'busybox-1')).toMatchObject({ node: 'node1', ips: ['10.180.1.8', 'fd00:10:180:1::8'], uid: '7f3c1a9e-2d6b-4e8f-a0c4-9b1d5e7f3a26' });

    expect(md.node('node1')).toEqual({ name: 'node1', addresses: ['10.240.0.3', 'fd00:10:240::3'], podCIDRs: ['10.180.1.0/24', 'fd00:10:180:1::/64'] });
    expect(md.nodeByAddress('10.240.0.4')).toBe('node2');
    expect(md.nodeByAddress('fd00:10:240::5')).toBe('node3');
    expect(md.nodeByAddress('10.240.0.2')).toBeUndefined();

    const cip = md.serviceByFrontend('10.0.170.92', 80, 'tcp');
    expect(cip).toMatchObject({ frontend: 'ClusterIP', port: { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 0 } });
    expect(cip?.service).toMatchObject({ namespace: 'default', name: 'clusterip', type: 'ClusterIP', externalTrafficPolicy: '', internalTrafficPolicy: 'Cluster' });
    expect(md.serviceByFrontend('fd00:10:96::a92', 80, 'udp')?.port.name).toBe('udp');
    expect(md.serviceByFrontend('10.0.170.92', 8080, 'tcp')).toBeUndefined();
    expect(md.serviceByFrontend('10.0.0.1', 443, 'tcp')?.service.name).toBe('kubernetes');

    // NodePort: every address of every node, both families and protocols.
    for (const n of ['node1', 'node2', 'node3']) {
      for (const addr of md.node(n)!.addresses) {
        expect(md.serviceByFrontend(addr, 30080, 'tcp'), `${addr}:30080`).toMatchObject({ frontend: 'NodePort', service: { name: 'nodeport' }, port: { name: 'http' } });
        expect(md.serviceByFrontend(addr, 30080, 'udp')).toMatchObject({ frontend: 'NodePort', port: { name: 'udp' } });
        expect(md.serviceByFrontend(addr, 30081, 'tcp')).toMatchObject({ frontend: 'NodePort', service: { name: 'loadbalancer' } });
      }
    }
    // A nodePort on an address that is no node's is nothing.
    expect(md.serviceByFrontend('10.180.1.136', 30080, 'tcp')).toBeUndefined();

    const lb = md.serviceByFrontend('203.0.113.140', 80, 'tcp');
    expect(lb).toMatchObject({ frontend: 'LoadBalancer', service: { name: 'loadbalancer', type: 'LoadBalancer', externalTrafficPolicy: 'Cluster', healthCheckNodePort: 0 } });
    expect(lb?.service.loadBalancerIngress).toEqual([{ ip: '203.0.113.140', ipMode: 'VIP' }, { ip: '2001:db8:203::140', ipMode: 'VIP' }]);
    expect(md.serviceByFrontend('2001:db8:203::140', 80, 'udp')?.frontend).toBe('LoadBalancer');

    // The pod-facing view: every Service that has the pod behind targetPort 8080.
    const byEp = md.serviceByEndpoint('10.180.1.136', 8080, 'tcp');
    expect(byEp.map((m) => `${m.service.name}:${m.port.name}:${m.frontend}`)).toEqual(['clusterip:http:ClusterIP', 'loadbalancer:http:LoadBalancer', 'nodeport:http:NodePort']);
    expect(byEp[0]?.endpoint).toEqual({ pod: `default/${OLD_POD}`, node: 'node1', addresses: ['10.180.1.136', 'fd00:10:180:1::136'], ready: true, serving: true, terminating: false });
    expect(md.serviceByEndpoint('10.180.1.136', 9090, 'tcp')).toEqual([]);
    expect(md.services().map((s) => s.name)).toEqual(['clusterip', 'kubernetes', 'loadbalancer', 'nodeport']);
  });

  it('writes one row per Service at the initial sync and one per pod as it is added', () => {
    const fed = feedLists();
    expect(fed.svc.map(summary)).toEqual([
      `clusterip etp=- hcnp=0 k2x7q@node1/2:RS`,
      `kubernetes etp=- hcnp=0 -@-/1:RS`,
      `loadbalancer etp=Cluster hcnp=0 k2x7q@node1/2:RS`,
      `nodeport etp=Cluster hcnp=0 k2x7q@node1/2:RS`,
    ]);
    const lb = fed.svc[2]!;
    expect(lb.clusterIps.map(formatAddr)).toEqual(['10.0.65.118', 'fd00:10:96::6576']);
    expect(lb.nodePorts).toEqual([30081, 30081]);
    expect(JSON.parse(lb.ports)).toEqual([
      { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30081 },
      { name: 'udp', protocol: 'UDP', port: 80, targetPort: 8080, nodePort: 30081 },
    ]);
    expect(JSON.parse(lb.loadBalancerIngress)).toEqual([{ ip: '203.0.113.140', ipMode: 'VIP' }, { ip: '2001:db8:203::140', ipMode: 'VIP' }]);
    expect(lb.deleted).toBe(false);
    expect(fed.pods.map(podSummary)).toEqual([
      'box-1 node1 Running ips=10.180.1.8,fd00:10:180:1::8 ready',
      'box-2 node2 Running ips=10.180.2.8,fd00:10:180:2::8 ready',
      'k2x7q node1 Running ips=10.180.1.136,fd00:10:180:1::136 ready',
    ]);
  });

  it('records the policy change and the endpoint going ready -> terminating -> gone, in order', () => {
    const fed = feedLists();
    const before = fed.svc.length;
    feedEvents(fed);
    const rows = fed.svc.slice(before);
    const lbLocal = 'loadbalancer etp=Local hcnp=32122';
    expect(rows.map(summary)).toEqual([
      // Service MODIFIED: externalTrafficPolicy Local, healthCheckNodePort allocated.
      `${lbLocal} k2x7q@node1/2:RS`,
      // The pod is deleted: its endpoint turns not ready, still serving, terminating (the IPv6
      // slice's identical update adds no row).
      'clusterip etp=- hcnp=0 k2x7q@node1/2:ST',
      `${lbLocal} k2x7q@node1/2:ST`,
      'nodeport etp=Cluster hcnp=0 k2x7q@node1/2:ST',
      // The replacement on node2 becomes an endpoint, IPv4 slice first, then IPv6.
      'clusterip etp=- hcnp=0 k2x7q@node1/2:ST p9m4w@node2/1:RS',
      'clusterip etp=- hcnp=0 k2x7q@node1/2:ST p9m4w@node2/2:RS',
      `${lbLocal} k2x7q@node1/2:ST p9m4w@node2/1:RS`,
      `${lbLocal} k2x7q@node1/2:ST p9m4w@node2/2:RS`,
      'nodeport etp=Cluster hcnp=0 k2x7q@node1/2:ST p9m4w@node2/1:RS',
      'nodeport etp=Cluster hcnp=0 k2x7q@node1/2:ST p9m4w@node2/2:RS',
      // The old pod is gone: out of the IPv4 slice, then the IPv6 one.
      'clusterip etp=- hcnp=0 k2x7q@node1/1:ST p9m4w@node2/2:RS',
      'clusterip etp=- hcnp=0 p9m4w@node2/2:RS',
      `${lbLocal} k2x7q@node1/1:ST p9m4w@node2/2:RS`,
      `${lbLocal} p9m4w@node2/2:RS`,
      'nodeport etp=Cluster hcnp=0 k2x7q@node1/1:ST p9m4w@node2/2:RS',
      'nodeport etp=Cluster hcnp=0 p9m4w@node2/2:RS',
    ]);
    // Timestamps strictly increase per Service (the store deduplicates on namespace, name, ts).
    for (const name of ['clusterip', 'loadbalancer', 'nodeport']) {
      const ts = fed.svc.filter((r) => r.name === name).map((r) => r.tsNs);
      expect([...ts].sort((a, b) => (a < b ? -1 : 1))).toEqual(ts);
      expect(new Set(ts).size).toBe(ts.length);
    }
    expect(fed.pods.slice(3).map(podSummary)).toEqual([
      'k2x7q node1 Running ips=10.180.1.136,fd00:10:180:1::136 ready terminating',
      'p9m4w - Pending ips=-',
      'p9m4w node2 Pending ips=-',
      'p9m4w node2 Running ips=10.180.2.141,fd00:10:180:2::141 ready',
      'k2x7q node1 Running ips=10.180.1.136,fd00:10:180:1::136 ready terminating deleted',
    ]);

    expect(fed.md.podByIP('10.180.1.136')).toBeUndefined();
    expect(fed.md.podByIP('fd00:10:180:2::141')).toMatchObject({ name: NEW_POD, node: 'node2', ready: true });
    expect(fed.md.serviceByEndpoint('10.180.2.141', 8080, 'udp').map((m) => m.service.name)).toEqual(['clusterip', 'loadbalancer', 'nodeport']);
    expect(fed.md.serviceByFrontend('10.240.0.3', 30081, 'tcp')?.service).toMatchObject({ externalTrafficPolicy: 'Local', healthCheckNodePort: 32122 });
  });

  it('a relist of identical objects writes nothing', () => {
    const fed = feedLists();
    feedEvents(fed);
    const counts = [fed.svc.length, fed.pods.length];
    // The state after the events, as a relist would return it.
    const latest = new Map<string, { kind: K8sKind; object: unknown }>();
    for (const { kind, list } of recordedLists()) for (const o of list.items) latest.set(`${kind}/${o.metadata.namespace}/${o.metadata.name}`, { kind, object: o });
    for (const e of recordedEvents()) {
      const k = `${e.object.kind}/${e.object.metadata.namespace}/${e.object.metadata.name}`;
      if (e.type === 'DELETED') latest.delete(k);
      else latest.set(k, { kind: e.object.kind as K8sKind, object: e.object });
    }
    fed.md.beginBatch();
    for (const { kind, object } of latest.values()) fed.md.apply({ type: 'ADDED', kind, object }, fed.ts());
    fed.md.endBatch(fed.ts());
    // And outside a batch, as MODIFIED events.
    for (const { kind, object } of latest.values()) fed.md.apply({ type: 'MODIFIED', kind, object }, fed.ts());
    expect([fed.svc.length, fed.pods.length]).toEqual(counts);
  });

  it('holds Service rows inside a batch and writes only the net change', () => {
    const fed = feedLists();
    const before = fed.svc.length;
    const [e1, e2] = recordedEvents().filter((e) => e.object.kind === 'EndpointSlice' && e.object.metadata.name.startsWith('clusterip-'));
    fed.md.beginBatch();
    fed.md.apply({ type: e1!.type, kind: 'EndpointSlice', object: e1!.object }, fed.ts());
    fed.md.apply({ type: e2!.type, kind: 'EndpointSlice', object: e2!.object }, fed.ts());
    expect(fed.svc.length).toBe(before);
    fed.md.endBatch(fed.ts());
    expect(fed.svc.slice(before).map(summary)).toEqual(['clusterip etp=- hcnp=0 k2x7q@node1/2:ST']);
  });

  it('writes a deleted row (its last state) when a Service goes away', () => {
    const fed = feedLists();
    const svc = recordedLists().find((l) => l.kind === 'Service')!.list.items.find((o) => o.metadata.name === 'nodeport')!;
    fed.md.apply({ type: 'DELETED', kind: 'Service', object: svc }, fed.ts());
    const last = fed.svc[fed.svc.length - 1]!;
    expect(summary(last)).toBe('DELETED nodeport etp=Cluster hcnp=0 k2x7q@node1/2:RS');
    expect(fed.deletedSvc).toEqual([last]);
    expect(fed.md.service('default', 'nodeport')).toBeUndefined();
    expect(fed.md.serviceByFrontend('10.240.0.3', 30080, 'tcp')).toBeUndefined();
    // Its slices going away afterwards add nothing.
    const n = fed.svc.length;
    for (const o of recordedLists().find((l) => l.kind === 'EndpointSlice')!.list.items.filter((s) => s.metadata.name.startsWith('nodeport-'))) {
      fed.md.apply({ type: 'DELETED', kind: 'EndpointSlice', object: o }, fed.ts());
    }
    expect(fed.svc.length).toBe(n);
  });

  it('holds Service rows until the initial sync (a Service listed before its slices gets one row, with endpoints)', () => {
    const md = new ClusterMetadata();
    const rows: ServiceHistoryRow[] = [];
    md.on('service-history', (r) => rows.push(r));
    const lists = recordedLists();
    for (const kind of ['Service', 'EndpointSlice'] as const) {
      for (const object of lists.find((l) => l.kind === kind)!.list.items) md.apply({ type: 'ADDED', kind, object });
    }
    expect(rows).toEqual([]);
    md.markSynced();
    expect(rows.map((r) => r.name)).toEqual(['clusterip', 'kubernetes', 'loadbalancer', 'nodeport']);
    expect(rows.every((r) => JSON.parse(r.endpoints).length === 1)).toBe(true);
  });

  it('prefers the live pod when a terminating one still holds the same address, and skips host-network pods', () => {
    const md = new ClusterMetadata();
    const pod = (name: string, extra: Record<string, unknown> = {}, spec: Record<string, unknown> = {}) => ({
      metadata: { name, namespace: 'default', uid: `uid-${name}`, creationTimestamp: '2025-03-18T10:00:00Z', ...extra },
      spec: { nodeName: 'node1', ...spec },
      status: { phase: 'Running', podIPs: [{ ip: '10.180.1.50' }], conditions: [{ type: 'Ready', status: 'True' }] },
    });
    md.apply({ type: 'ADDED', kind: 'Pod', object: pod('old', { deletionTimestamp: '2025-03-18T10:05:00Z' }) });
    md.apply({ type: 'ADDED', kind: 'Pod', object: pod('new', { creationTimestamp: '2025-03-18T10:05:01Z' }) });
    md.apply({ type: 'ADDED', kind: 'Pod', object: { ...pod('kube-proxy-x', {}, { hostNetwork: true }), status: { phase: 'Running', podIPs: [{ ip: '10.240.0.3' }] } } });
    expect(md.podByIP('10.180.1.50')?.name).toBe('new');
    expect(md.podByIP('10.240.0.3')).toBeUndefined();
    md.apply({ type: 'DELETED', kind: 'Pod', object: pod('new') });
    expect(md.podByIP('10.180.1.50')?.name).toBe('old');
  });
});
