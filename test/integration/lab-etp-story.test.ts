// The tutorial's LoadBalancer story with real health checks (root + network namespaces):
// kube-proxy's health check server on every node, the load balancer taking nodes out after
// failed checks, and terminating endpoints (ProxyTerminatingEndpoints), in iptables and
// nftables mode. Needs the build output (npm run build:ts).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpKubeProxy } from '../../src/lab/kube-proxy-apply.js';
import { listNetns, nsRun, procCmdline, run } from '../../src/lab/exec.js';
import {
  labAddPods,
  labCurl,
  labDown,
  labHealthz,
  labPatch,
  labRestore,
  labScriptPath,
  labTerminate,
  labUp,
  labWaitLb,
  readLabState,
  requireLabState,
  type LabCurlResult,
  type LabState,
  type ProxyMode,
} from '../../src/lab/lab.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

const pexec = promisify(execFile);

async function labSkipReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, iptables/nft)';
  for (const s of ['echo-server', 'lab-client', 'kube-proxy-healthz', 'lb-controller', 'lb-proxy'] as const) {
    try {
      labScriptPath(s);
    } catch (err) {
      return String(err);
    }
  }
  const probe = await run('ip', ['netns', 'list'], { allowFail: true }).catch((err: unknown) => ({ code: 1, stderr: String(err) }));
  if (probe.code !== 0) return `network namespaces unavailable: ${probe.stderr.trim()}`;
  return null;
}
const skip = await labSkipReason();
if (skip) console.warn(`test/integration/lab-etp-story.test.ts: skipped: ${skip}`);

const CLIENT4 = '198.51.100.79';
const NODE_IPS4 = ['10.240.0.3', '10.240.0.4', '10.240.0.5'];
const healthBody = (n: number): string =>
  `{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "loadbalancer"\n\t},\n\t"localEndpoints": ${n},\n\t"serviceProxyHealthy": true\n}`;
const show = (r: LabCurlResult): string => `${r.from} -> ${r.target} ${r.proto}/v${r.family}: ok=${r.ok} client_address=${r.client_address} error=${r.error}`;
const podOf = (r: LabCurlResult): string | undefined => /^pod_name=(\S+)$/m.exec(r.response ?? '')?.[1];
/** A DNAT to the source-ip-app pod in a node's kube-proxy rules (iptables or nftables). */
const DNAT_136 = /(--to-destination|dnat to) 10\.180\.1\.136:8080/;

for (const mode of ['iptables', 'nftables'] as ProxyMode[]) {
  describe.skipIf(!!skip)(`lab (${mode}): LoadBalancer health checks, externalTrafficPolicy and terminating endpoints`, () => {
    const prefix = mode === 'iptables' ? 'hzi' : 'hzn';
    let state: LabState;
    let started = 0;

    const curl = (from: string, target: string, o: { family?: 4 | 6; timeoutMs?: number; udp?: boolean } = {}): Promise<LabCurlResult> =>
      labCurl(from, target, { prefix, family: o.family ?? 4, udp: !!o.udp, timeoutMs: o.timeoutMs ?? 3000 });
    const curlMany = (n: number, from: string, target: string, o: { family?: 4 | 6; timeoutMs?: number } = {}): Promise<LabCurlResult[]> =>
      Promise.all(Array.from({ length: n }, () => curl(from, target, o)));

    beforeAll(async () => {
      started = Date.now();
      state = await labUp({
        prefix,
        proxyMode: mode,
        force: true,
        // Fast health checks; 3 failures so that the moment right after the patch is observable.
        lbHealthCheck: { intervalMs: 200, timeoutMs: 300, unhealthyThreshold: 3, healthyThreshold: 1 },
      });
    }, 60_000);

    afterAll(async () => {
      const before = readLabState(prefix);
      const pids = [
        ...(before?.nodes.flatMap((n) => (n.healthServer ? [n.healthServer] : [])) ?? []),
        ...(before?.lb.controller ? [before.lb.controller] : []),
        ...(before?.lb.proxy ? [before.lb.proxy] : []),
      ];
      await labDown({ prefix });
      expect(listNetns().filter((n) => n.startsWith(`${prefix}-`))).toEqual([]);
      expect(readLabState(prefix)).toBeNull();
      for (const d of pids) expect((procCmdline(d.pid) ?? '').includes(d.cmdlineMatch), `daemon ${d.pid} still running`).toBe(false);
      console.info(`lab-etp-story (${mode}): ${((Date.now() - started) / 1000).toFixed(1)}s`);
    }, 30_000);

    it('daemons run; under Cluster the LB sends to every node and the pod sees node IPs', async () => {
      expect(state.nodes.every((n) => n.healthServer && procCmdline(n.healthServer.pid)?.includes('kube-proxy-healthz.js'))).toBe(true);
      expect(state.lb.controller && procCmdline(state.lb.controller.pid)?.includes('lb-controller.js')).toBe(true);
      expect(state.lb.mode).toBe('forward');
      expect(await labWaitLb({ prefix })).toEqual({ 'default/loadbalancer': ['node1', 'node2', 'node3'] });
      const results = await curlMany(6, 'client', 'loadbalancer@lb');
      for (const r of results) {
        expect(r.ok, show(r)).toBe(true);
        expect(NODE_IPS4, show(r)).toContain(r.client_address);
      }
      // No health check under Cluster: kube-proxy does not listen on the healthCheckNodePort.
      const hz = await labHealthz('node1', 'loadbalancer', { prefix });
      expect(hz.status).toBeNull();
      expect(hz.error).toMatch(/ECONNREFUSED/);
    });

    it('patch to Local: /healthz 200 on node1 and 503 elsewhere; the LB converges on node1; the client IP survives', async () => {
      await labPatch('loadbalancer', 'Local', { prefix, waitForLb: false });
      const patchedAt = Date.now();
      // Right after the patch the LB still sends to every node (their checks have not failed yet).
      expect(readLabState(prefix)?.lb.targets['default/loadbalancer']).toEqual(['node1', 'node2', 'node3']);

      const [h1, h2, h3] = await Promise.all(['node1', 'node2', 'node3'].map((n) => labHealthz(n, 'loadbalancer', { prefix })));
      expect(h1).toMatchObject({ ok: true, status: 200, body: healthBody(1) });
      expect(h1!.headers).toMatchObject({ 'Content-Type': 'application/json', 'X-Content-Type-Options': 'nosniff' });
      for (const h of [h2, h3]) expect(h).toMatchObject({ ok: false, status: 503, body: healthBody(0) });
      // The CLI, as in the tutorial (curl localhost:32122/healthz on a node).
      const cli = await pexec(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), 'lab', 'healthz', 'node2', 'loadbalancer', '--prefix', prefix, '--json'], {
        timeout: 20_000,
      }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
      expect(JSON.parse(cli.stdout)).toMatchObject({ node: 'node2', status: 503, body: healthBody(0) });

      const targets = await labWaitLb({ prefix, timeoutMs: 10_000 });
      const tookMs = Date.now() - patchedAt;
      expect(targets).toEqual({ 'default/loadbalancer': ['node1'] });
      expect(tookMs).toBeLessThan(10_000);
      const st = requireLabState(prefix);
      expect(st.lb.targets['default/loadbalancer']).toEqual(['node1']);
      expect(st.lb.health?.services['default/loadbalancer']?.nodes['node2']).toMatchObject({ healthy: false, lastStatus: 503, lastLocalEndpoints: 0 });
      expect(st.lb.health?.services['default/loadbalancer']?.nodes['node1']).toMatchObject({ healthy: true, lastStatus: 200, lastLocalEndpoints: 1 });
      const route = await nsRun(st.lb.netns, 'ip', ['route', 'show', '203.0.113.140']);
      expect(route.stdout).toContain('via 10.240.0.3');
      expect(route.stdout).not.toMatch(/10\.240\.0\.[45]/);

      const results = [...(await curlMany(6, 'client', 'loadbalancer@lb')), ...(await curlMany(2, 'client', 'loadbalancer@lb', { family: 6 }))];
      for (const r of results) {
        expect(r.ok, show(r)).toBe(true);
        expect(r.client_address, show(r)).toBe(r.family === 6 ? '2001:db8:5100::79' : CLIENT4);
      }

      // NodePort under Local on a node without the endpoint: dropped.
      await labPatch('nodeport', 'Local', { prefix });
      const dropped = await curl('client', 'nodeport@node2', { timeoutMs: 700 });
      expect(dropped.ok, show(dropped)).toBe(false);
      expect(dropped.error).toMatch(/timeout/);
      expect((await curl('client', 'nodeport@node1')).client_address).toBe(CLIENT4);
      await labPatch('nodeport', 'Cluster', { prefix });
    });

    it('patch back to Cluster: every node again, no health check', async () => {
      await labPatch('loadbalancer', 'Cluster', { prefix });
      expect(requireLabState(prefix).lb.targets['default/loadbalancer']).toEqual(['node1', 'node2', 'node3']);
      const results = await curlMany(6, 'client', 'loadbalancer@lb');
      for (const r of results) {
        expect(r.ok, show(r)).toBe(true);
        expect(NODE_IPS4, show(r)).toContain(r.client_address);
      }
      expect((await labHealthz('node1', 'loadbalancer', { prefix })).error).toMatch(/ECONNREFUSED/);
    });

    it('terminating: the serving-terminating endpoint is used only while no ready one exists', async () => {
      const node1 = requireLabState(prefix).nodes.find((n) => n.name === 'node1')!;
      await labTerminate('source-ip-app', { prefix });
      const st = requireLabState(prefix);
      expect(st.pods.find((p) => p.name === 'source-ip-app')?.terminating).toBe(true);
      expect(st.services.find((s) => s.name === 'clusterip')?.endpoints).toEqual([
        expect.objectContaining({ pod: 'source-ip-app', ready: false, serving: true, terminating: true }),
      ]);
      // The only endpoint is terminating: kube-proxy falls back to it.
      for (const r of await curlMany(3, 'busybox-1', 'clusterip')) {
        expect(r.ok, show(r)).toBe(true);
        expect(r.client_address).toBe('10.180.1.8');
        expect(podOf(r)).toBe('source-ip-app');
      }
      expect(await dumpKubeProxy(st, node1)).toMatch(DNAT_136);

      // The health check does not count it: every node fails, the LB fails open.
      await labPatch('loadbalancer', 'Local', { prefix });
      expect((await labHealthz('node1', 'loadbalancer', { prefix })).body).toBe(healthBody(0));
      const lb = requireLabState(prefix).lb;
      expect(lb.targets['default/loadbalancer']).toEqual(['node1', 'node2', 'node3']);
      expect(lb.health?.services['default/loadbalancer']?.failOpen).toBe(true);
      await labPatch('loadbalancer', 'Cluster', { prefix });

      // A second, ready pod: traffic avoids the terminating one.
      await labAddPods([{ name: 'source-ip-app-2', node: 'node2', labels: { app: 'source-ip-app' } }], { prefix });
      for (const r of await curlMany(8, 'busybox-1', 'clusterip')) {
        expect(r.ok, show(r)).toBe(true);
        expect(podOf(r), show(r)).toBe('source-ip-app-2');
      }
      expect(await dumpKubeProxy(requireLabState(prefix), node1)).not.toMatch(DNAT_136);

      // Restored: both serve again.
      await labRestore('source-ip-app', { prefix });
      expect(requireLabState(prefix).services.find((s) => s.name === 'clusterip')?.endpoints.every((e) => e.ready && !e.terminating)).toBe(true);
      expect(await dumpKubeProxy(requireLabState(prefix), node1)).toMatch(DNAT_136);
      const pods = new Set<string | undefined>();
      for (const r of await curlMany(16, 'busybox-1', 'clusterip')) {
        expect(r.ok, show(r)).toBe(true);
        pods.add(podOf(r));
      }
      expect([...pods].sort()).toEqual(['source-ip-app', 'source-ip-app-2']);
    });
  });
}
