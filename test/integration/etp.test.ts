// The externalTrafficPolicy story of the tutorial, end to end on a real lab (root): the lab plays
// the Kubernetes API server, the collector watches it and records the Service's history, one agent
// per node captures and reads its node's health-check node port, and `natlens etp --json` must tell
// exactly what the lab did: Cluster (every connection SNAT'd), Local (the real client, only on the
// node with the endpoint, drops on the others, health checks 200 on one node and 503 on the rest),
// Cluster again. Then terminating endpoints and proxy load balancers (PROXY protocol v1/v2, none).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labCurl, labDown, labPatch, labUp, type LabCurlResult, type LabState, type ProxyMode } from '../../src/lab/lab.js';
import * as lab from '../../src/lab/lab.js';
import { startLabApiServer } from '../../src/lab/lab-api-server.js';
import { skipReason } from './support/requirements.js';
import { natlens, startAgents, startCollector, who, type NatlensProcess, type RunningCollector } from './support/processes.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/etp.test.ts: skipped: ${skip}`);

const CLIENT = '198.51.100.79';
const show = (r: LabCurlResult): string => `${r.from} -> ${r.target} ok=${r.ok} saw=${r.client_address} err=${r.error}`;

interface EtpJson {
  service: string;
  periods: Array<{
    from: string; to: string | null; external_traffic_policy: string; connections: number; snat_share: number; dropped: number;
    while_terminating: number;
    per_node: Array<{ node: string; connections: number; dropped: number; snat: number; health_check: { last_status: number; answers: Record<string, number> } | null }>;
    per_endpoint: Array<{ address: string; pod: string | null; connections: number; while_terminating: number }>;
  }>;
  changes: Array<{ from_policy: string; to_policy: string; snat_share: { before: number; after: number } }>;
}

async function etp(service: string, collector: string): Promise<EtpJson> {
  const p = natlens('etp', ['etp', service, '--collector', collector, '--json', '--since', '30m', '--plaintext']);
  const code = await p.wait();
  if (code !== 0) throw new Error(`natlens etp ${service} exited ${code}: ${p.stderr.join('\n')}`);
  return JSON.parse(p.stdout) as EtpJson;
}

/** Polls `pick` (every 300 ms: each call runs a CLI) until it yields a value, or fails naming `what`. */
async function waitFor<T>(pick: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await pick();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

const nodeOf = (p: EtpJson['periods'][number], name: string) => p.per_node.find((n) => n.node === name);

for (const mode of ['iptables', 'nftables'] as ProxyMode[]) {
  describe.skipIf(!!skip)(`etp on the lab (kube-proxy ${mode} mode)`, () => {
    const prefix = `e${mode[0]}${process.pid % 100000}`;
    let state: LabState;
    let api: Awaited<ReturnType<typeof startLabApiServer>> | undefined;
    let collector: RunningCollector | undefined;
    let agents: NatlensProcess[] = [];

    beforeAll(async () => {
      state = await labUp({ prefix, proxyMode: mode, force: true });
      api = await startLabApiServer({ prefix, listen: '127.0.0.1:0' });
      collector = await startCollector(['--kubeconfig', api.kubeconfigPath]);
      agents = await startAgents(state.nodes.map((n) => ({ name: n.name, netnsPath: n.netnsPath })), collector.address, [
        '--kubeconfig', api.kubeconfigPath, '--health-check-interval', '300ms',
      ]);
    }, 120_000);

    afterAll(async () => {
      await Promise.all(agents.map((a) => a.stop()));
      await collector?.stop();
      await api?.close();
      await labDown({ prefix });
    }, 60_000);

    const curl = async (target: string, expectOk: boolean): Promise<LabCurlResult> => {
      const r = await labCurl('client', target, { prefix, timeoutMs: expectOk ? 3000 : 1200 });
      expect(r.ok, show(r)).toBe(expectOk);
      return r;
    };
    /** Patches, then waits until the collector has recorded the new period (so traffic lands in it). */
    const patch = async (policy: 'Local' | 'Cluster', periods: number): Promise<void> => {
      await labPatch('loadbalancer', policy, { prefix });
      await waitFor(async () => ((await etp('default/loadbalancer', collector!.address)).periods.length === periods ? true : undefined), 15_000, `period ${periods} recorded`);
    };

    it('Cluster -> Local -> Cluster: SNAT share, traffic per node, kernel-observed drops, health checks', async () => {
      await waitFor(async () => ((await etp('default/loadbalancer', collector!.address)).periods.length === 1 ? true : undefined), 15_000, 'service recorded');
      for (const n of ['node1', 'node2', 'node3']) {
        for (let i = 0; i < 2; i++) {
          const r = await curl(`loadbalancer@${n}`, true);
          expect(r.client_address).not.toBe(CLIENT); // Cluster: the node SNATs
        }
      }
      await patch('Local', 2);
      // Let every agent read its health check a few times under Local.
      await new Promise((r) => setTimeout(r, 1500));
      for (let i = 0; i < 3; i++) expect((await curl('loadbalancer@node1', true)).client_address).toBe(CLIENT);
      await Promise.all(['node2', 'node3'].flatMap((n) => [curl(`loadbalancer@${n}`, false), curl(`loadbalancer@${n}`, false)]));
      await new Promise((r) => setTimeout(r, 1000));
      await patch('Cluster', 3);
      for (let i = 0; i < 2; i++) expect((await curl('loadbalancer@node2', true)).client_address).not.toBe(CLIENT);

      const report = await waitFor(async () => {
        const r = await etp('default/loadbalancer', collector!.address);
        const [a, b, c] = r.periods;
        return a?.connections === 6 && b?.connections === 3 && b.dropped === 4 && c?.connections === 2 ? r : undefined;
      }, 20_000, 'every connection and drop stored');
      const [cluster, local, back] = report.periods as [EtpJson['periods'][0], EtpJson['periods'][0], EtpJson['periods'][0]];
      expect(report.periods.map((p) => p.external_traffic_policy)).toEqual(['Cluster', 'Local', 'Cluster']);
      expect(cluster).toMatchObject({ connections: 6, snat_share: 1, dropped: 0 });
      for (const n of ['node1', 'node2', 'node3']) expect(nodeOf(cluster, n)).toMatchObject({ connections: 2, dropped: 0 });
      expect(local).toMatchObject({ connections: 3, snat_share: 0, dropped: 4 });
      expect(nodeOf(local, 'node1')).toMatchObject({ connections: 3, dropped: 0 });
      expect(nodeOf(local, 'node2')).toMatchObject({ connections: 0, dropped: 2 });
      expect(nodeOf(local, 'node3')).toMatchObject({ connections: 0, dropped: 2 });
      // What each node's health-check port answered while Local was in force: 200 where the endpoint
      // runs, 503 elsewhere, never the other way round. ("no answer", status 0, may show at the edges:
      // kube-proxy opens the port when the policy becomes Local and closes it when it goes back.)
      const answers = (n: string) => nodeOf(local, n)?.health_check?.answers ?? {};
      expect(answers('node1')['200'], JSON.stringify(answers('node1'))).toBeGreaterThan(0);
      expect(answers('node1')['503']).toBeUndefined();
      for (const n of ['node2', 'node3']) {
        expect(answers(n)['503'], JSON.stringify(answers(n))).toBeGreaterThan(0);
        expect(answers(n)['200']).toBeUndefined();
      }
      expect(back).toMatchObject({ connections: 2, snat_share: 1, dropped: 0 });
      expect(nodeOf(back, 'node2')).toMatchObject({ connections: 2 });
      expect(report.changes.map((c) => [c.from_policy, c.to_policy, c.snat_share.before, c.snat_share.after])).toEqual([
        ['Cluster', 'Local', 1, 0],
        ['Local', 'Cluster', 0, 1],
      ]);
      // who names the pod and the Service, and finds the pod by name.
      const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
      const w = await who(`${app.namespace}/${app.name}`, collector!.address);
      const real = w.rows.find((r) => r.client === CLIENT && !r.snat) as (typeof w.rows)[number] & { service: string | null; frontend: string | null; pod: string | null };
      expect(real).toMatchObject({ connections: 3, snat: false, service: 'default/loadbalancer', frontend: 'NodePort', pod: `${app.namespace}/${app.name}` });
    }, 180_000);

    // Terminating endpoints and PROXY headers do not depend on how kube-proxy writes its rules: once, in iptables mode.
    if (mode === 'iptables') it('counts connections that reach a terminating endpoint', async () => {
      const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
      const terminate = (lab as unknown as { labTerminate: (pod: string, o: { prefix: string }) => Promise<unknown> }).labTerminate;
      const restore = (lab as unknown as { labRestore: (pod: string, o: { prefix: string }) => Promise<unknown> }).labRestore;
      await terminate(app.name, { prefix });
      try {
        // Wait for the collector to record the pod as terminating before sending traffic.
        await new Promise((r) => setTimeout(r, 2000));
        for (let i = 0; i < 3; i++) await labCurl('busybox-1', 'clusterip', { prefix, timeoutMs: 3000 }).then((r) => expect(r.ok, show(r)).toBe(true));
      } finally {
        await restore(app.name, { prefix });
      }
      const report = await waitFor(async () => {
        const r = await etp('default/clusterip', collector!.address);
        const total = r.periods.reduce((s, p) => s + p.while_terminating, 0);
        return total === 3 ? r : undefined;
      }, 20_000, 'terminating connections counted');
      const ep = report.periods.flatMap((p) => p.per_endpoint).find((e) => e.pod === `${app.namespace}/${app.name}` && e.while_terminating > 0);
      expect(ep?.while_terminating).toBe(3);
      const w = await who(`${app.namespace}/${app.name}`, collector!.address, ['--since', '30s']);
      expect(w.rows.reduce((s, r) => s + ((r as unknown as { while_terminating: number }).while_terminating ?? 0), 0)).toBe(3);
    }, 120_000);

    if (mode === 'iptables') it('recovers the real client from PROXY protocol v1 and v2 through a proxy load balancer, and says when nothing carries it', async () => {
      const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
      const setLb = (lab as unknown as { labSetLbMode: (m: string, o: { prefix: string; proxyProtocol: string }) => Promise<unknown> }).labSetLbMode;
      const sources: Record<string, number> = {};
      for (const version of ['v1', 'v2', 'none'] as const) {
        await setLb('proxy', { prefix, proxyProtocol: version });
        // The collector must have recorded the Service's ingress as ipMode Proxy before "none" traffic.
        await new Promise((r) => setTimeout(r, 1500));
        const start = Date.now();
        for (let i = 0; i < 2; i++) {
          const r = await labCurl('client', 'loadbalancer@lb', { prefix, timeoutMs: 4000 });
          expect(r.ok, show(r)).toBe(true);
          expect((r as unknown as { proxy_client_address: string | null }).proxy_client_address).toBe(version === 'none' ? null : CLIENT);
        }
        const since = `${Math.ceil((Date.now() - start) / 1000) + 1}s`;
        type Row = { client: string | null; client_source: string; proxy: string | null; connections: number };
        const rows = await waitFor(async () => {
          const w = await who(`${app.namespace}/${app.name}`, collector!.address, ['--since', since]);
          const rs = w.rows as unknown as Row[];
          return rs.reduce((n, r) => n + r.connections, 0) >= 2 ? rs : undefined;
        }, 20_000, `who after PROXY ${version}`);
        const lbAddress = state.lb.ips[0]!;
        // The proxy spreads over the nodes (one row per ingress node); every row tells the same story.
        const want = version === 'none'
          ? { client: null, client_source: 'proxy-not-carried', proxy: lbAddress, service: 'default/loadbalancer', service_port: 'http' }
          : { client: CLIENT, client_source: `proxy-protocol-${version}`, proxy: lbAddress, service: 'default/loadbalancer', service_port: 'http' };
        for (const r of rows) expect(r).toMatchObject(want);
        expect(rows.reduce((n, r) => n + r.connections, 0)).toBe(2);
        sources[version] = rows.length;
      }
      expect(Object.keys(sources)).toEqual(['v1', 'v2', 'none']);
      await setLb('forward', { prefix, proxyProtocol: 'none' });
    }, 120_000);
  });
}
