import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EndpointSlice } from 'kubernetes-models/discovery.k8s.io/v1/EndpointSlice';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Node } from 'kubernetes-models/v1/Node';
import { Pod } from 'kubernetes-models/v1/Pod';
import { Service } from 'kubernetes-models/v1/Service';
import { afterEach, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ResourceStore, type KubeObject, type StoreEvent } from '../../src/k8s/api-server.js';
import { ClusterMetadata, type K8sKind } from '../../src/k8s/cluster-metadata.js';
import { ClusterWatch } from '../../src/k8s/cluster-watch.js';
import { loadKubeConfig } from '../../src/k8s/kube-config.js';
import { labKubeObjects, stableUid, syncLabObjects } from '../../src/lab/lab-kube-objects.js';
import { parseListen, startLabApiServer } from '../../src/lab/lab-api-server.js';
import { defaultLabState, refreshDerived } from '../../src/lab/topology.js';
import type { LabState } from '../../src/lab/types.js';

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  Namespace: Namespace as never, Node: Node as never, Pod: Pod as never, Service: Service as never, EndpointSlice: EndpointSlice as never,
};

function lab(): LabState {
  const s = defaultLabState('nl', 'iptables');
  s.createdAt = '2025-03-18T09:00:00.123Z';
  return s;
}

const byName = (objs: KubeObject[], kind: string, name: string): KubeObject => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name}`);
  return o;
};
const slicesOf = (objs: KubeObject[], svc: string): KubeObject[] =>
  objs.filter((o) => o.kind === 'EndpointSlice' && o.metadata.labels?.['kubernetes.io/service-name'] === svc);
const summary = (events: StoreEvent[]): string[] => events.map((e) => `${e.type} ${e.resource.resource}/${e.object.metadata.name}`);

describe('the lab as Kubernetes objects', () => {
  it('has the objects a cluster would hold, each valid against the Kubernetes schema', () => {
    const objs = labKubeObjects(lab());
    const kinds: Record<string, number> = {};
    for (const o of objs) kinds[o.kind!] = (kinds[o.kind!] ?? 0) + 1;
    expect(kinds).toEqual({ Namespace: 1, Node: 3, Pod: 3, Service: 3, EndpointSlice: 6 });
    for (const o of objs) {
      const Model = MODELS[o.kind!]!;
      expect(() => new Model(o as never).validate(), `${o.kind} ${o.metadata.name}`).not.toThrow();
      expect(o.metadata.uid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(o.metadata.creationTimestamp).toBe('2025-03-18T09:00:00Z');
    }
    expect(new Set(objs.map((o) => o.metadata.uid)).size).toBe(objs.length);
  });

  it('nodes, pods and services carry the fields natlens reads', () => {
    const objs = labKubeObjects(lab());
    expect(byName(objs, 'Node', 'node1')).toMatchObject({
      apiVersion: 'v1',
      spec: { podCIDR: '10.180.1.0/24', podCIDRs: ['10.180.1.0/24', 'fd00:10:180:1::/64'] },
      status: { addresses: [{ type: 'InternalIP', address: '10.240.0.3' }, { type: 'InternalIP', address: 'fd00:10:240::3' }, { type: 'Hostname', address: 'node1' }] },
    });
    const app = byName(objs, 'Pod', 'source-ip-app');
    expect(app).toMatchObject({
      metadata: { namespace: 'default', labels: { app: 'source-ip-app' } },
      spec: { nodeName: 'node1' },
      status: { phase: 'Running', podIP: '10.180.1.136', podIPs: [{ ip: '10.180.1.136' }, { ip: 'fd00:10:180:1::136' }], hostIP: '10.240.0.3' },
    });
    expect(app.metadata.deletionTimestamp).toBeUndefined();
    expect((app.status as { conditions: Array<{ type: string; status: string }> }).conditions.find((c) => c.type === 'Ready')?.status).toBe('True');

    const cip = byName(objs, 'Service', 'clusterip');
    expect(cip.spec).toMatchObject({ type: 'ClusterIP', clusterIP: '10.0.170.92', clusterIPs: ['10.0.170.92', 'fd00:10:96::a92'], ipFamilies: ['IPv4', 'IPv6'], internalTrafficPolicy: 'Cluster' });
    expect(cip.spec).not.toHaveProperty('externalTrafficPolicy');
    expect((cip.spec as { ports: unknown[] }).ports).toEqual([
      { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 },
      { name: 'udp', protocol: 'UDP', port: 80, targetPort: 8080 },
    ]);
    expect(byName(objs, 'Service', 'nodeport').spec).toMatchObject({ type: 'NodePort', externalTrafficPolicy: 'Cluster', ports: [{ nodePort: 30080 }, { nodePort: 30080 }] });
    const lb = byName(objs, 'Service', 'loadbalancer');
    // The lab keeps a healthCheckNodePort for later, but the apiserver only has one under Local.
    expect(lb.spec).toMatchObject({ type: 'LoadBalancer', externalTrafficPolicy: 'Cluster', allocateLoadBalancerNodePorts: true });
    expect(lb.spec).not.toHaveProperty('healthCheckNodePort');
    expect(lb.status).toEqual({ loadBalancer: { ingress: [{ ip: '203.0.113.140', ipMode: 'VIP' }, { ip: '2001:db8:203::140', ipMode: 'VIP' }] } });
  });

  it('has one EndpointSlice per Service and family, pointing at the pods', () => {
    const objs = labKubeObjects(lab());
    const slices = slicesOf(objs, 'nodeport');
    expect(slices.map((s) => s.addressType)).toEqual(['IPv4', 'IPv6']);
    expect(slices.map((s) => s.metadata.name)).toEqual(slices.map(() => expect.stringMatching(/^nodeport-[bcdfghjklmnpqrstvwxz2456789]{5}$/)));
    const [v4, v6] = slices as [KubeObject, KubeObject];
    expect(v4.metadata.ownerReferences).toEqual([{ apiVersion: 'v1', kind: 'Service', name: 'nodeport', uid: byName(objs, 'Service', 'nodeport').metadata.uid, controller: true, blockOwnerDeletion: true }]);
    expect(v4.endpoints).toEqual([{
      addresses: ['10.180.1.136'],
      conditions: { ready: true, serving: true, terminating: false },
      nodeName: 'node1',
      targetRef: { kind: 'Pod', namespace: 'default', name: 'source-ip-app', uid: byName(objs, 'Pod', 'source-ip-app').metadata.uid },
    }]);
    expect((v6.endpoints as Array<{ addresses: string[] }>)[0]!.addresses).toEqual(['fd00:10:180:1::136']);
    expect(v4.ports).toEqual([{ name: 'http', protocol: 'TCP', port: 8080 }, { name: 'udp', protocol: 'UDP', port: 8080 }]);
  });

  it('is deterministic: the same state gives equal objects, names give the uids', () => {
    const a = labKubeObjects(lab());
    const b = labKubeObjects(lab());
    expect(b).toEqual(a);
    expect(byName(a, 'Pod', 'busybox-1').metadata.uid).toBe(stableUid('nl', 'Pod', 'default', 'busybox-1'));
    expect(stableUid('other', 'Pod', 'default', 'busybox-1')).not.toBe(stableUid('nl', 'Pod', 'default', 'busybox-1'));
  });

  it('reads as the lab\'s cluster through ClusterMetadata', () => {
    const md = new ClusterMetadata();
    for (const o of labKubeObjects(lab())) {
      if (o.kind === 'Namespace') continue;
      md.apply({ type: 'ADDED', kind: o.kind as K8sKind, object: o });
    }
    md.markSynced();
    expect(md.podByIP('10.180.2.8')).toMatchObject({ name: 'busybox-2', node: 'node2' });
    expect(md.nodeByAddress('fd00:10:240::4')).toBe('node2');
    expect(md.serviceByFrontend('10.240.0.5', 30081, 'udp')).toMatchObject({ frontend: 'NodePort', service: { name: 'loadbalancer' } });
    expect(md.serviceByFrontend('203.0.113.140', 80, 'tcp')?.frontend).toBe('LoadBalancer');
    expect(md.service('default', 'clusterip')?.endpoints).toEqual([
      { pod: 'default/source-ip-app', node: 'node1', addresses: ['10.180.1.136', 'fd00:10:180:1::136'], ready: true, serving: true, terminating: false },
    ]);
  });
});

describe('syncLabObjects: a lab change becomes exactly the watch events it implies', () => {
  it('adds everything once, then nothing for an unchanged state', () => {
    const store = new ResourceStore();
    const first = syncLabObjects(store, lab());
    expect(first).toHaveLength(16);
    expect(new Set(first.map((e) => e.type))).toEqual(new Set(['ADDED']));
    expect(syncLabObjects(store, lab())).toEqual([]);
  });

  it('a policy patch modifies only that Service (healthCheckNodePort appears under Local)', () => {
    const store = new ResourceStore();
    const state = lab();
    syncLabObjects(store, state);
    const lb = state.services.find((s) => s.name === 'loadbalancer')!;
    lb.externalTrafficPolicy = 'Local';
    refreshDerived(state);
    const events = syncLabObjects(store, state);
    expect(summary(events)).toEqual(['MODIFIED services/loadbalancer']);
    expect(events[0]!.object.spec).toMatchObject({ externalTrafficPolicy: 'Local', healthCheckNodePort: 32122 });
    expect(events[0]!.previous?.spec).toMatchObject({ externalTrafficPolicy: 'Cluster' });

    state.services.find((s) => s.name === 'nodeport')!.externalTrafficPolicy = 'Local';
    const np = syncLabObjects(store, state);
    expect(summary(np)).toEqual(['MODIFIED services/nodeport']);
    expect(np[0]!.object.spec).not.toHaveProperty('healthCheckNodePort');
  });

  it('a terminating pod modifies the pod and its Services\' slices; its removal deletes it', () => {
    const store = new ResourceStore();
    const state = lab();
    syncLabObjects(store, state);
    const pod = state.pods.find((p) => p.name === 'source-ip-app')!;
    (pod as typeof pod & { terminating?: boolean }).terminating = true;
    refreshDerived(state);
    const events = syncLabObjects(store, state, { now: '2025-03-18T10:41:37.500Z' });
    expect(summary(events).sort()).toEqual([
      'MODIFIED pods/source-ip-app',
      ...['clusterip', 'loadbalancer', 'nodeport'].flatMap((s) => slicesOf(labKubeObjects(state), s).map((o) => `MODIFIED endpointslices/${o.metadata.name}`)),
    ].sort());
    const podEvent = events.find((e) => e.resource.resource === 'pods')!;
    expect(podEvent.object.metadata).toMatchObject({ deletionTimestamp: '2025-03-18T10:41:37Z', deletionGracePeriodSeconds: 30 });
    for (const e of events.filter((x) => x.resource.resource === 'endpointslices')) {
      expect((e.object.endpoints as Array<{ conditions: unknown }>)[0]!.conditions).toEqual({ ready: false, serving: true, terminating: true });
    }
    // Later syncs keep the deletion time they first saw.
    expect(syncLabObjects(store, state, { now: '2025-03-18T10:41:50Z' })).toEqual([]);

    state.pods = state.pods.filter((p) => p !== pod);
    refreshDerived(state);
    const gone = syncLabObjects(store, state);
    expect(summary(gone).filter((s) => !s.startsWith('MODIFIED endpointslices/'))).toEqual(['DELETED pods/source-ip-app']);
    expect(gone.filter((e) => e.resource.resource === 'endpointslices')).toHaveLength(6);
    expect(gone.filter((e) => e.resource.resource === 'endpointslices').every((e) => (e.object.endpoints as unknown[]).length === 0)).toBe(true);
  });

  it('a proxying load balancer shows as ipMode Proxy; old state files (no serving/terminating/mode) still convert', () => {
    const store = new ResourceStore();
    const state = lab();
    syncLabObjects(store, state);
    (state.lb as { mode?: string }).mode = 'proxy';
    const events = syncLabObjects(store, state);
    expect(summary(events)).toEqual(['MODIFIED services/loadbalancer']);
    expect(events[0]!.object.status).toEqual({ loadBalancer: { ingress: [{ ip: '203.0.113.140', ipMode: 'Proxy' }, { ip: '2001:db8:203::140', ipMode: 'Proxy' }] } });

    const old = JSON.parse(JSON.stringify(lab())) as LabState;
    delete (old.lb as { mode?: string }).mode;
    for (const s of old.services) for (const e of s.endpoints) {
      delete (e as { serving?: boolean }).serving;
      delete (e as { terminating?: boolean }).terminating;
    }
    const slice = slicesOf(labKubeObjects(old), 'clusterip')[0]!;
    expect((slice.endpoints as Array<{ conditions: unknown }>)[0]!.conditions).toEqual({ ready: true, serving: true, terminating: false });
    expect(byName(labKubeObjects(old), 'Service', 'loadbalancer').status).toMatchObject({ loadBalancer: { ingress: [{ ipMode: 'VIP' }, { ipMode: 'VIP' }] } });
  });
});

describe('the lab API server', () => {
  const dirs: string[] = [];
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  const writeState = (file: string, state: LabState): void => {
    // Like the lab: write elsewhere, then rename over the state file.
    writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2));
    renameSync(`${file}.tmp`, file);
  };

  it('parses --listen', () => {
    expect(parseListen('127.0.0.1:6443')).toEqual({ host: '127.0.0.1', port: 6443 });
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListen(':7443')).toEqual({ host: '127.0.0.1', port: 7443 });
    expect(() => parseListen('6443')).toThrow(/HOST:PORT/);
  });

  it('serves the lab state file, writes a kubeconfig, and turns file changes into watch events', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'natlens-labapi-'));
    dirs.push(dir);
    const stateFile = join(dir, 'lab-t1.json');
    const kubeconfigOut = join(dir, 'kubeconfig');
    const state = lab();
    writeState(stateFile, state);
    const logs: Array<Record<string, unknown>> = [];
    const srv = await startLabApiServer({ prefix: 't1', listen: '127.0.0.1:0', stateFile, kubeconfigOut, pollMs: 100, log: (f) => logs.push(f) });
    cleanups.push(() => srv.close());

    const kc = parse(readFileSync(kubeconfigOut, 'utf8')) as Record<string, unknown>;
    expect(kc).toMatchObject({
      kind: 'Config',
      'current-context': 'natlens-lab',
      clusters: [{ name: 'natlens-lab', cluster: { server: srv.url, 'insecure-skip-tls-verify': true } }],
    });

    const watch = await ClusterWatch.start({ kubeConfig: loadKubeConfig({ kubeconfig: kubeconfigOut }), resources: ['Pod', 'Service', 'EndpointSlice', 'Node'] });
    cleanups.push(() => watch.stop());
    expect(watch.metadata.services().map((s) => `${s.name} ${s.type}`)).toEqual(['clusterip ClusterIP', 'loadbalancer LoadBalancer', 'nodeport NodePort']);
    expect(watch.metadata.nodes().map((n) => n.name)).toEqual(['node1', 'node2', 'node3']);
    const rows: string[] = [];
    watch.metadata.on('service-history', (r) => rows.push(`${r.name} ${r.externalTrafficPolicy} ${r.healthCheckNodePort}`));

    state.services.find((s) => s.name === 'loadbalancer')!.externalTrafficPolicy = 'Local';
    refreshDerived(state);
    writeState(stateFile, state);
    const deadline = Date.now() + 8000;
    while (watch.metadata.service('default', 'loadbalancer')?.externalTrafficPolicy !== 'Local') {
      if (Date.now() > deadline) throw new Error('the watch never saw the patch');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(rows).toEqual(['loadbalancer Local 32122']);
    expect(logs).toContainEqual(expect.objectContaining({ event: 'lab-state-applied', changes: ['MODIFIED services/loadbalancer'] }));

    await srv.close();
    expect(existsSync(kubeconfigOut)).toBe(false);
  });

  it('refuses to start without a lab', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'natlens-labapi-'));
    dirs.push(dir);
    await expect(startLabApiServer({ prefix: 'none', listen: '127.0.0.1:0', stateFile: join(dir, 'lab-none.json'), kubeconfigOut: join(dir, 'kc') }))
      .rejects.toThrow(/no lab with prefix "none" is up .*natlens lab up --prefix none/);
  });
});
