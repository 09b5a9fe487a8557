// ClusterWatch against src/k8s/api-server.ts serving recorded API responses over real HTTP:
// client-node's informers list, watch (chunked JSON streams), reconnect and relist for real.

import { createServer } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, describe, expect, it } from 'vitest';
import type { PodHistoryRow, ServiceHistoryRow } from '../../src/collector/store/schema.js';
import { KubeApiServer, ResourceStore, type KubeObject } from '../../src/k8s/api-server.js';
import { ClusterMetadata, type K8sKind } from '../../src/k8s/cluster-metadata.js';
import { ClusterWatch } from '../../src/k8s/cluster-watch.js';
import { K8sError } from '../../src/k8s/errors.js';
import { NEW_POD, OLD_POD, loadLists, recordedEvents, recordedLists, type RecordedEvent } from '../fixtures/k8s/load.js';

const ALL: K8sKind[] = ['Pod', 'Service', 'EndpointSlice', 'Node'];

function kubeConfigFor(url: string, token?: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    // client-node refuses plain http unless TLS verification is explicitly off.
    clusters: [{ name: 'recorded', server: url, skipTLSVerify: true }],
    users: [{ name: 'tester', ...(token ? { token } : {}) }],
    contexts: [{ name: 'recorded', cluster: 'recorded', user: 'tester' }],
    currentContext: 'recorded',
  });
  return kc;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 8000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What metadata knows, in a comparable form. */
function snapshot(md: ClusterMetadata): unknown {
  return { pods: md.pods().sort((a, b) => a.name.localeCompare(b.name)), nodes: md.nodes(), services: md.services() };
}

/** The metadata a direct feed of the recorded lists (and optionally events) gives. */
function expected(events: RecordedEvent[] = []): ClusterMetadata {
  const md = new ClusterMetadata();
  for (const { kind, list } of recordedLists()) for (const object of list.items) md.apply({ type: 'ADDED', kind, object });
  md.markSynced();
  for (const e of events) md.apply({ type: e.type, kind: e.object.kind as K8sKind, object: e.object });
  return md;
}

const svcSummary = (r: ServiceHistoryRow): string =>
  `${r.deleted ? 'DELETED ' : ''}${r.name} ${r.externalTrafficPolicy || '-'} ${r.healthCheckNodePort} ${r.endpoints}`;

interface Harness {
  store: ResourceStore;
  api: KubeApiServer;
  watch: ClusterWatch;
  svcRows: ServiceHistoryRow[];
  podRows: PodHistoryRow[];
  logs: Array<Record<string, unknown>>;
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function startApi(opts: { token?: string } = {}): Promise<{ store: ResourceStore; api: KubeApiServer }> {
  const store = new ResourceStore();
  loadLists(store);
  const api = await KubeApiServer.start({ store, ...opts });
  cleanups.push(() => api.close());
  return { store, api };
}

async function start(opts: { nodeName?: string; resources?: K8sKind[]; resyncMs?: number } = {}): Promise<Harness> {
  const { store, api } = await startApi();
  const metadata = new ClusterMetadata();
  const svcRows: ServiceHistoryRow[] = [];
  const podRows: PodHistoryRow[] = [];
  metadata.on('service-history', (r) => svcRows.push(r));
  metadata.on('pod-history', (r) => podRows.push(r));
  const logs: Array<Record<string, unknown>> = [];
  const watch = await ClusterWatch.start({
    kubeConfig: kubeConfigFor(api.url),
    resources: opts.resources ?? ALL,
    metadata,
    log: (f) => logs.push(f),
    ...(opts.nodeName ? { nodeName: opts.nodeName } : {}),
    ...(opts.resyncMs ? { resyncMs: opts.resyncMs } : {}),
  });
  cleanups.push(() => watch.stop());
  return { store, api, watch, svcRows, podRows, logs };
}

const events = recordedEvents();
const policyChange = events.slice(0, 1);
const termination = events.slice(1, 9); // pod deleting, replacement added, slices -> terminating
const rest = events.slice(9);

describe('ClusterWatch over the list/watch protocol', () => {
  it('syncs to exactly what the recorded lists say', async () => {
    const h = await start();
    expect(h.watch.isSynced()).toBe(true);
    await waitFor('watches open', () => h.api.openWatches() === 4);
    expect(snapshot(h.watch.metadata)).toEqual(snapshot(expected()));
    // One row per Service once synced; one per pod as listed.
    expect(h.svcRows.map((r) => r.name)).toEqual(['clusterip', 'kubernetes', 'loadbalancer', 'nodeport']);
    expect(h.podRows.map((r) => r.name).sort()).toEqual(['busybox-1', 'busybox-2', OLD_POD]);
    // Lists are paged like client-go's, then each resource is watched from the list's version.
    const urls = h.api.requests.map((r) => r.url);
    expect(urls).toContain('/api/v1/pods?limit=500');
    expect(urls).toContain('/apis/discovery.k8s.io/v1/endpointslices?limit=500');
    const podWatch = h.api.requests.find((r) => r.watch && r.path === '/api/v1/pods');
    expect(podWatch?.query).toMatchObject({ resourceVersion: '48211', allowWatchBookmarks: 'true' });
    expect(Number(podWatch?.query.timeoutSeconds)).toBeGreaterThanOrEqual(300);
  });

  it('follows a policy change and a pod termination through the watch streams', async () => {
    const h = await start();
    const synced = h.svcRows.length;
    for (const e of policyChange) h.store.replay(e);
    await waitFor('policy change', () => h.watch.metadata.service('default', 'loadbalancer')?.externalTrafficPolicy === 'Local');
    expect(h.watch.metadata.service('default', 'loadbalancer')?.healthCheckNodePort).toBe(32122);

    for (const e of termination) h.store.replay(e);
    await waitFor('terminating endpoints', () => h.watch.metadata.services().filter((s) => s.endpoints.some((ep) => ep.terminating)).length === 3);
    expect(h.watch.metadata.pod('default', OLD_POD)?.terminating).toBe(true);

    for (const e of rest) h.store.replay(e);
    await waitFor('old pod gone', () => h.watch.metadata.services().filter((s) => s.endpoints.length === 1 && s.endpoints[0]!.pod === `default/${NEW_POD}` && s.endpoints[0]!.addresses.length === 2).length === 3);
    await waitFor('pod deleted', () => h.watch.metadata.pod('default', OLD_POD) === undefined);

    const want = expected(events);
    expect(snapshot(h.watch.metadata)).toEqual(snapshot(want));
    // The same rows a direct feed of the recorded events writes, Service by Service.
    const direct: ServiceHistoryRow[] = [];
    const md = new ClusterMetadata();
    md.on('service-history', (r) => direct.push(r));
    for (const { kind, list } of recordedLists()) for (const object of list.items) md.apply({ type: 'ADDED', kind, object });
    md.markSynced();
    for (const e of events) md.apply({ type: e.type, kind: e.object.kind as K8sKind, object: e.object });
    for (const name of ['clusterip', 'loadbalancer', 'nodeport']) {
      expect(h.svcRows.slice(synced).filter((r) => r.name === name).map(svcSummary), name).toEqual(direct.slice(4).filter((r) => r.name === name).map(svcSummary));
    }
    expect(h.podRows.filter((r) => r.name === OLD_POD).map((r) => [r.terminating, r.deleted])).toEqual([[false, false], [true, false], [true, true]]);
  });

  it('reconnects after the connections drop and misses nothing changed meanwhile', async () => {
    const h = await start();
    for (const e of policyChange) h.store.replay(e);
    await waitFor('policy change', () => h.watch.metadata.service('default', 'loadbalancer')?.externalTrafficPolicy === 'Local');
    const listsBefore = h.api.requests.filter((r) => !r.watch).length;
    const watchesBefore = h.api.requests.filter((r) => r.watch).length;

    expect(h.api.killWatches()).toBe(4);
    // Changed while nobody is connected.
    for (const e of termination) h.store.replay(e);
    await waitFor('terminating endpoints after reconnect', () => h.watch.metadata.services().filter((s) => s.endpoints.some((ep) => ep.terminating)).length === 3);
    await waitFor('replacement pod', () => h.watch.metadata.pod('default', NEW_POD) !== undefined);
    await waitFor('all watches back', () => h.api.openWatches() === 4);

    // Resumed from the last version seen: no relist.
    expect(h.api.requests.filter((r) => !r.watch).length).toBe(listsBefore);
    const resumed = h.api.requests.filter((r) => r.watch).slice(watchesBefore);
    expect(resumed.find((r) => r.path === '/api/v1/services')?.query.resourceVersion).toBe('48302');
    expect(h.logs.some((l) => l.event === 'k8s-watch-error' && typeof l.retryInMs === 'number')).toBe(true);
    expect(snapshot(h.watch.metadata)).toEqual(snapshot(expected([...policyChange, ...termination])));
  });

  it('relists after 410 Expired and converges without writing rows for what did not change', async () => {
    const h = await start();
    const rowsBefore = h.svcRows.length;
    const podRowsBefore = h.podRows.length;
    const listsBefore = h.api.requests.filter((r) => !r.watch).length;

    h.api.killWatches();
    for (const e of policyChange) h.store.replay(e);
    // The history no longer reaches back to where the watches will resume.
    h.store.compact();
    await waitFor('relisted', () => h.watch.metadata.service('default', 'loadbalancer')?.externalTrafficPolicy === 'Local');
    await waitFor('all watches back', () => h.api.openWatches() === 4);

    const lists = h.api.requests.filter((r) => !r.watch).slice(listsBefore).map((r) => r.path).sort();
    expect(lists).toEqual(['/api/v1/nodes', '/api/v1/pods', '/api/v1/services', '/apis/discovery.k8s.io/v1/endpointslices']);
    // Exactly the one real change; nothing for the pods, nodes and slices that were listed again.
    expect(h.svcRows.slice(rowsBefore).map((r) => `${r.name} ${r.externalTrafficPolicy} ${r.healthCheckNodePort}`)).toEqual(['loadbalancer Local 32122']);
    expect(h.podRows.length).toBe(podRowsBefore);
    expect(snapshot(h.watch.metadata)).toEqual(snapshot(expected(policyChange)));
  });

  it('agent mode sees only its node and the pods on it (selectors reach the server)', async () => {
    const h = await start({ nodeName: 'node2', resources: ['Pod', 'Node'] });
    await waitFor('watches open', () => h.api.openWatches() === 2);
    expect(h.watch.metadata.nodes().map((n) => n.name)).toEqual(['node2']);
    expect(h.watch.metadata.pods().map((p) => p.name)).toEqual(['busybox-2']);
    const pods = h.api.requests.filter((r) => r.path === '/api/v1/pods');
    const nodes = h.api.requests.filter((r) => r.path === '/api/v1/nodes');
    expect(pods.map((r) => r.query.fieldSelector)).toEqual(['spec.nodeName=node2', 'spec.nodeName=node2']);
    expect(nodes.map((r) => r.query.fieldSelector)).toEqual(['metadata.name=node2', 'metadata.name=node2']);
    expect(pods.map((r) => r.watch)).toEqual([false, true]);
    expect(h.api.requests.some((r) => r.path.includes('services') || r.path.includes('endpointslices'))).toBe(false);

    for (const e of events) h.store.replay(e);
    // The replacement enters the selection when it is scheduled to node2; node1's pod never shows.
    await waitFor('replacement on node2', () => h.watch.metadata.pod('default', NEW_POD)?.ips.length === 2);
    expect(h.watch.metadata.pods().map((p) => p.name).sort()).toEqual(['busybox-2', NEW_POD]);
    expect(h.podRows.some((r) => r.name === OLD_POD)).toBe(false);
    expect(h.watch.metadata.podByIP('10.180.2.141')?.node).toBe('node2');
  });

  it('a periodic relist deletes what a missed DELETED left behind, and writes nothing else', async () => {
    const h = await start({ resyncMs: 300 });
    const rowsBefore = h.svcRows.length;
    // A pod the watch never told us was deleted.
    h.watch.metadata.apply({ type: 'ADDED', kind: 'Pod', object: { metadata: { name: 'ghost', namespace: 'default', uid: 'g' }, spec: { nodeName: 'node3' }, status: { podIPs: [{ ip: '10.180.3.9' }] } } });
    const listsBefore = h.api.requests.filter((r) => !r.watch).length;
    await waitFor('relist', () => h.api.requests.filter((r) => !r.watch).length >= listsBefore + 8);
    await waitFor('ghost removed', () => h.watch.metadata.pod('default', 'ghost') === undefined);
    expect(h.podRows.filter((r) => r.name === 'ghost').map((r) => r.deleted)).toEqual([false, true]);
    expect(h.svcRows.length).toBe(rowsBefore);
    expect(h.podRows.filter((r) => r.name !== 'ghost').length).toBe(3);
    expect(snapshot(h.watch.metadata)).toEqual(snapshot(expected()));
  });

  it('start() rejects with a clear K8sError when the API server cannot be reached', async () => {
    // A port nobody listens on.
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const t0 = Date.now();
    const err = await ClusterWatch.start({ kubeConfig: kubeConfigFor(`http://127.0.0.1:${port}`), resources: ['Pod', 'Node'] }).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeLessThan(6000);
    expect(err).toBeInstanceOf(K8sError);
    const e = err as K8sError;
    expect(e.message).toMatch(new RegExp(`listing (pods|nodes) at http://127\\.0\\.0\\.1:${port}/api/v1/(pods|nodes)\\?limit=500: .*ECONNREFUSED.*gave up after 3 attempts`));
    expect(e.url).toContain(`127.0.0.1:${port}`);
    expect(e.cause).toBeDefined();
  });

  it('start() names the HTTP status when the API server refuses the list', async () => {
    const { api } = await startApi({ token: 'sesame' });
    const err = await ClusterWatch.start({ kubeConfig: kubeConfigFor(api.url, 'wrong'), resources: ['Service'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(K8sError);
    expect((err as K8sError).statusCode).toBe(401);
    expect((err as K8sError).message).toMatch(/listing services at http:\/\/127\.0\.0\.1:\d+\/api\/v1\/services\?limit=500: HTTP 401: Unauthorized/);
    // With the right token it works (the bearer token reaches both lists and watches).
    const watch = await ClusterWatch.start({ kubeConfig: kubeConfigFor(api.url, 'sesame'), resources: ['Service'] });
    cleanups.push(() => watch.stop());
    expect(watch.metadata.services()).toHaveLength(4);
    await waitFor('watch open', () => api.openWatches() === 1);
  });

  it('stop() closes every connection and leaves no timer behind', async () => {
    const active = (): Record<string, number> => {
      const counts: Record<string, number> = {};
      for (const r of process.getActiveResourcesInfo()) if (r === 'Timeout' || r === 'TCPSocketWrap') counts[r] = (counts[r] ?? 0) + 1;
      return counts;
    };
    const { api, store } = await startApi();
    await new Promise((r) => setTimeout(r, 50));
    const before = active();
    const watch = await ClusterWatch.start({ kubeConfig: kubeConfigFor(api.url), resources: ALL, resyncMs: 60_000 });
    await waitFor('watches open', () => api.openWatches() === 4);
    for (const e of policyChange) store.replay(e);
    api.killWatches();
    // Stopped while the informers are backing off before reconnecting.
    await new Promise((r) => setTimeout(r, 100));
    await watch.stop();
    expect(watch.isSynced()).toBe(false);
    await new Promise((r) => setTimeout(r, 1500));
    expect(api.openWatches()).toBe(0);
    // Nothing of ours is left (other timers of the test runner may have come and gone).
    const after = active();
    for (const k of Object.keys(after)) expect(after[k], k).toBeLessThanOrEqual(before[k] ?? 0);
  });
});

describe('the API server speaks the apiserver protocol', () => {
  const get = async (url: string, token?: string): Promise<{ status: number; body: unknown; type: string | null }> => {
    const res = await fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
    const text = await res.text();
    return { status: res.status, type: res.headers.get('content-type'), body: text.startsWith('{') ? JSON.parse(text) : text };
  };

  it('lists with kind, resourceVersion, selectors and pages', async () => {
    const { api } = await startApi();
    const pods = await get(`${api.url}/api/v1/namespaces/default/pods?labelSelector=app%3Dsource-ip-app`);
    expect(pods.status).toBe(200);
    expect(pods.body).toMatchObject({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '48211' } });
    const items = (pods.body as { items: KubeObject[] }).items;
    expect(items.map((i) => i.metadata.name)).toEqual([OLD_POD]);
    expect(items[0]).not.toHaveProperty('kind');

    const slices = await get(`${api.url}/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io/service-name%20in%20(clusterip,nodeport)`);
    expect((slices.body as { kind: string; items: KubeObject[] }).items.map((i) => i.metadata.name)).toEqual(['clusterip-7tkxs', 'clusterip-r2bnm', 'nodeport-4hxwc', 'nodeport-9qvzd']);

    const page1 = (await get(`${api.url}/api/v1/pods?limit=2`)).body as { metadata: { continue?: string; remainingItemCount?: number }; items: KubeObject[] };
    expect(page1.items.map((i) => i.metadata.name)).toEqual(['busybox-1', 'busybox-2']);
    expect(page1.metadata.remainingItemCount).toBe(1);
    const page2 = (await get(`${api.url}/api/v1/pods?limit=2&continue=${page1.metadata.continue}`)).body as { metadata: { continue?: string }; items: KubeObject[] };
    expect(page2.items.map((i) => i.metadata.name)).toEqual([OLD_POD]);
    expect(page2.metadata.continue).toBeUndefined();

    const bad = await get(`${api.url}/api/v1/pods?fieldSelector=spec.color%3Dblue`);
    expect(bad).toMatchObject({ status: 400, body: { kind: 'Status', reason: 'BadRequest', message: 'field label not supported: spec.color', code: 400 } });
    const nodes = (await get(`${api.url}/api/v1/nodes?fieldSelector=metadata.name%3Dnode3`)).body as { items: KubeObject[] };
    expect(nodes.items.map((n) => n.metadata.name)).toEqual(['node3']);
  });

  it('gets single objects and answers unknown paths with a 404 Status', async () => {
    const { api } = await startApi();
    expect((await get(`${api.url}/api/v1/namespaces/default/services/nodeport`)).body).toMatchObject({ kind: 'Service', apiVersion: 'v1', metadata: { name: 'nodeport' } });
    expect(await get(`${api.url}/api/v1/namespaces/default/pods/nope`)).toMatchObject({
      status: 404, body: { kind: 'Status', status: 'Failure', reason: 'NotFound', message: 'pods "nope" not found', details: { name: 'nope', kind: 'pods' }, code: 404 },
    });
    expect(await get(`${api.url}/apis/apps/v1/deployments`)).toMatchObject({ status: 404, body: { kind: 'Status', reason: 'NotFound', code: 404 } });
    expect((await get(`${api.url}/version`)).body).toMatchObject({ major: '1', gitVersion: expect.stringMatching(/^v1\./) });
    expect((await get(`${api.url}/apis`)).body).toMatchObject({ kind: 'APIGroupList', groups: [{ name: 'discovery.k8s.io' }] });
    expect((await get(`${api.url}/api/v1`)).body).toMatchObject({ kind: 'APIResourceList', groupVersion: 'v1' });
  });

  it('streams watch events from a resourceVersion, and 410 Expired for one that left the history', async () => {
    const { api, store } = await startApi();
    for (const e of events.slice(0, 3)) store.replay(e);
    // Replay from the list's version: every event since, as JSON lines.
    const res = await fetch(`${api.url}/api/v1/pods?watch=true&resourceVersion=48211&timeoutSeconds=1`);
    expect(res.headers.get('transfer-encoding')).toBe('chunked');
    const lines = (await res.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; object: KubeObject });
    expect(lines.map((l) => `${l.type} ${l.object.metadata.name} ${l.object.metadata.resourceVersion}`)).toEqual([
      `MODIFIED ${OLD_POD} 48390`,
      `ADDED ${NEW_POD} 48391`,
    ]);
    expect(lines[0]!.object).toMatchObject({ kind: 'Pod', apiVersion: 'v1' });

    store.compact();
    const expired = await (await fetch(`${api.url}/api/v1/pods?watch=true&resourceVersion=48390`)).text();
    expect(JSON.parse(expired.trim())).toEqual({
      type: 'ERROR',
      object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'too old resource version: 48390 (48391)', reason: 'Expired', code: 410 },
    });
  });

  it('turns objects entering or leaving a field selector into ADDED / DELETED for that watch', async () => {
    const { api, store } = await startApi();
    const res = await fetch(`${api.url}/api/v1/pods?watch=true&resourceVersion=48211&fieldSelector=spec.nodeName%3Dnode2&timeoutSeconds=1`);
    for (const e of events) store.replay(e);
    const moved = store.get('pods', 'default', 'busybox-2')!;
    moved.spec = { ...(moved.spec as object), nodeName: 'node3' };
    store.update(moved);
    const lines = (await res.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; object: KubeObject });
    expect(lines.map((l) => `${l.type} ${l.object.metadata.name}`)).toEqual([
      `ADDED ${NEW_POD}`, // scheduled to node2
      `MODIFIED ${NEW_POD}`, // running, with its IPs
      'DELETED busybox-2', // no longer on node2
    ]);
  });

  it('sends bookmarks when asked', async () => {
    const store = new ResourceStore();
    loadLists(store);
    const api = await KubeApiServer.start({ store, bookmarkIntervalMs: 100 });
    cleanups.push(() => api.close());
    const text = await (await fetch(`${api.url}/api/v1/nodes?watch=true&resourceVersion=48211&allowWatchBookmarks=true&timeoutSeconds=1`)).text();
    const first = JSON.parse(text.split('\n')[0]!) as { type: string; object: KubeObject };
    expect(first).toEqual({ type: 'BOOKMARK', object: { kind: 'Node', apiVersion: 'v1', metadata: { resourceVersion: '48211' } } });
  });
});
