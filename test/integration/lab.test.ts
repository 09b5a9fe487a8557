// The "Using Source IP" tutorial, asserted end to end on a real lab (root only):
// network namespaces, veth pairs, kube-proxy's iptables / nftables rules, a
// packet-forwarding load balancer. Needs the compiled echo server and client
// (npm run build:ts).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  labAddPods,
  labAddService,
  labCurl,
  labDown,
  labPatch,
  labScriptPath,
  labUp,
  readLabState,
  type LabCurlResult,
  type LabState,
  type ProxyMode,
} from '../../src/lab/lab.js';
import { listNetns } from '../../src/lab/exec.js';

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn('test/integration/lab.test.ts: skipped: the lab needs root (network namespaces, iptables/nft)');

const CLIENT = ['198.51.100.79', '2001:db8:5100::79'];
const FAMILIES = [4, 6] as const;
const PROTOS = [false, true] as const; // udp?

function ipOf(list: string[], family: 4 | 6): string {
  const ip = list.find((a) => (family === 6) === a.includes(':'));
  if (!ip) throw new Error(`no IPv${family} in ${list.join(',')}`);
  return ip;
}

function describeCurl(r: LabCurlResult): string {
  return `${r.from} -> ${r.target} ${r.proto}/v${r.family}: ok=${r.ok} client_address=${r.client_address} error=${r.error}`;
}

for (const mode of ['iptables', 'nftables'] as ProxyMode[]) {
  describe.skipIf(!isRoot)(`lab (${mode} mode): the tutorial's source IPs`, () => {
    const prefix = `t${mode[0]}${process.pid % 100000}`;
    let state: LabState;

    beforeAll(async () => {
      labScriptPath('echo-server'); // fails clearly when the build output is missing
      state = await labUp({ prefix, proxyMode: mode, force: true });
    }, 60_000);

    afterAll(async () => {
      await labDown({ prefix });
      expect(listNetns().filter((n) => n.startsWith(`${prefix}-`))).toEqual([]);
      expect(readLabState(prefix)).toBeNull();
    }, 30_000);

    const curl = (from: string, target: string, family: 4 | 6, udp: boolean, timeoutMs = 3000): Promise<LabCurlResult> =>
      labCurl(from, target, { prefix, family, udp, timeoutMs });

    it('ClusterIP: the server sees the client pod IP, same node and other node', async () => {
      const cases = ['busybox-1', 'busybox-2'].flatMap((from) =>
        FAMILIES.flatMap((family) => PROTOS.map((udp) => ({ from, family, udp }))),
      );
      const results = await Promise.all(cases.map((c) => curl(c.from, 'clusterip', c.family, c.udp)));
      results.forEach((r, i) => {
        const c = cases[i]!;
        const podIP = ipOf(state.pods.find((p) => p.name === c.from)!.ips, c.family);
        expect(r.ok, describeCurl(r)).toBe(true);
        expect(r.client_address, describeCurl(r)).toBe(podIP);
        expect(r.local?.ip).toBe(podIP);
        expect(r.response).toMatch(/^CLIENT VALUES:\nclient_address=/);
        expect(r.response).toContain(`client_port=${r.local?.port}`);
      });
    });

    it('NodePort under Cluster: SNAT to the node the request entered, never the client IP', async () => {
      const cases = state.nodes.flatMap((n) => FAMILIES.flatMap((family) => PROTOS.map((udp) => ({ node: n, family, udp }))));
      const results = await Promise.all(cases.map((c) => curl('client', `nodeport@${c.node.name}`, c.family, c.udp)));
      results.forEach((r, i) => {
        const c = cases[i]!;
        expect(r.ok, describeCurl(r)).toBe(true);
        expect(r.client_address, describeCurl(r)).toBe(ipOf(c.node.internalIPs, c.family));
        expect(r.client_address).not.toBe(ipOf(CLIENT, c.family));
        expect(r.local?.ip).toBe(ipOf(CLIENT, c.family));
      });
    });

    it('LoadBalancer under Cluster: the server sees a node IP', async () => {
      const cases = FAMILIES.flatMap((family) => PROTOS.flatMap((udp) => [0, 1].map(() => ({ family, udp }))));
      const results = await Promise.all(cases.map((c) => curl('client', 'loadbalancer@lb', c.family, c.udp)));
      results.forEach((r, i) => {
        const c = cases[i]!;
        expect(r.ok, describeCurl(r)).toBe(true);
        expect(state.nodes.map((n) => ipOf(n.internalIPs, c.family)), describeCurl(r)).toContain(r.client_address);
      });
    });

    it('NodePort under Local: only node1 answers, with the client IP; node2 and node3 drop', async () => {
      await labPatch('nodeport', 'Local', { prefix });
      expect(readLabState(prefix)?.services.find((s) => s.name === 'nodeport')?.externalTrafficPolicy).toBe('Local');
      const cases = state.nodes.flatMap((n) => FAMILIES.flatMap((family) => PROTOS.map((udp) => ({ node: n, family, udp }))));
      const results = await Promise.all(
        cases.map((c) => curl('client', `nodeport@${c.node.name}`, c.family, c.udp, c.node.name === 'node1' ? 3000 : 700)),
      );
      results.forEach((r, i) => {
        const c = cases[i]!;
        if (c.node.name === 'node1') {
          expect(r.ok, describeCurl(r)).toBe(true);
          expect(r.client_address, describeCurl(r)).toBe(ipOf(CLIENT, c.family));
        } else {
          expect(r.ok, describeCurl(r)).toBe(false);
          expect(r.error).toMatch(/timeout/);
        }
      });
      // Pod traffic to a node port is short-circuited (not subject to the policy).
      const fromPod = await curl('busybox-2', 'nodeport@node2', 4, false);
      expect(fromPod.client_address, describeCurl(fromPod)).toBe('10.180.2.8');
    });

    it('LoadBalancer under Local: the LB only forwards to node1 and the server sees the client IP', async () => {
      await labPatch('loadbalancer', 'Local', { prefix });
      expect(readLabState(prefix)?.lb.targets['default/loadbalancer']).toEqual(['node1']);
      const cases = FAMILIES.flatMap((family) => PROTOS.flatMap((udp) => [0, 1, 2].map(() => ({ family, udp }))));
      const results = await Promise.all(cases.map((c) => curl('client', 'loadbalancer@lb', c.family, c.udp)));
      results.forEach((r, i) => {
        expect(r.ok, describeCurl(r)).toBe(true);
        expect(r.client_address, describeCurl(r)).toBe(ipOf(CLIENT, cases[i]!.family));
      });
    });

    it('back to Cluster: node2 answers again with its own IP', async () => {
      await labPatch('nodeport', 'Cluster', { prefix });
      const r = await curl('client', 'nodeport@node2', 4, false);
      expect(r.client_address, describeCurl(r)).toBe('10.240.0.4');
    });

    it('runtime backends: a NodePort Service over pods added on node2 and node3', async () => {
      const pods = await labAddPods(
        [
          { name: 'bench-a', node: 'node2', labels: { app: 'bench' } },
          { name: 'bench-b', node: 'node3', labels: { app: 'bench' } },
        ],
        { prefix },
      );
      expect(pods.map((p) => p.ips[0])).toEqual(['10.180.2.10', '10.180.3.10']);
      const svc = await labAddService({ name: 'bench', type: 'NodePort', selector: { app: 'bench' } }, { prefix });
      expect(svc.endpoints.map((e) => e.pod).sort()).toEqual(['bench-a', 'bench-b']);
      const results = await Promise.all(Array.from({ length: 12 }, () => curl('client', 'bench@node1', 4, false)));
      const servedBy = new Set<string>();
      for (const r of results) {
        expect(r.ok, describeCurl(r)).toBe(true);
        expect(r.client_address).toBe('10.240.0.3');
        servedBy.add(/pod_name=(\S+)/.exec(r.response ?? '')?.[1] ?? '?');
      }
      expect([...servedBy].every((p) => p === 'bench-a' || p === 'bench-b')).toBe(true);
    });
  });
}
