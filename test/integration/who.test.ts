// "Who really called this pod", end to end on a real lab (root): one agent process per node streams
// to a collector process on the embedded store; the tutorial's scenarios run, TCP and UDP, IPv4 and
// IPv6, in both kube-proxy modes; `natlens who POD --json` must name exactly the clients that
// connected (as the lab client's sockets say), with the address the echo server saw, the right
// counts, and the nodes the connections entered and ended on.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labCurl, labDown, labPatch, labUp, type LabCurlResult, type LabState, type ProxyMode } from '../../src/lab/lab.js';
import { skipReason } from './support/requirements.js';
import { startAgents, startCollector, who, type NatlensProcess, type RunningCollector, type WhoJson } from './support/processes.js';


const skip = skipReason();
if (skip) console.warn(`test/integration/who.test.ts: skipped: ${skip}`);

const FAMILIES = [4, 6] as const;
const PROTOS = ['tcp', 'udp'] as const;
const matrix = FAMILIES.flatMap((family) => PROTOS.map((proto) => ({ family, proto })));
const show = (r: LabCurlResult): string => `${r.from} -> ${r.target} ${r.proto}/v${r.family} ok=${r.ok} saw=${r.client_address} err=${r.error}`;

interface Row { client: string; seen_as: string; ingress_node: string; endpoint_node: string; snat: boolean; connections: number }
const rowKey = (r: Omit<Row, 'connections'>) => `${r.client} as ${r.seen_as} via ${r.ingress_node} -> ${r.endpoint_node} snat=${r.snat}`;

for (const mode of ['iptables', 'nftables'] as ProxyMode[]) {
  describe.skipIf(!!skip)(`who (kube-proxy ${mode} mode)`, () => {
    const prefix = `w${mode[0]}${process.pid % 100000}`;
    let state: LabState;
    let collector: RunningCollector | undefined;
    let agents: NatlensProcess[] = [];
    const ok: LabCurlResult[] = [];

    beforeAll(async () => {
      state = await labUp({ prefix, proxyMode: mode, force: true });
      collector = await startCollector();
      agents = await startAgents(state.nodes.map((n) => ({ name: n.name, netnsPath: n.netnsPath })), collector.address);
    }, 120_000);

    afterAll(async () => {
      await Promise.all(agents.map((a) => a.stop()));
      await collector?.stop();
      await labDown({ prefix });
    }, 60_000);

    const curl = async (from: string, target: string, c: { family: 4 | 6; proto: 'tcp' | 'udp' }, expectOk = true): Promise<void> => {
      const r = await labCurl(from, target, { prefix, family: c.family, udp: c.proto === 'udp', timeoutMs: expectOk ? 3000 : 1200 });
      expect(r.ok, show(r)).toBe(expectOk);
      if (r.ok) ok.push(r);
    };

    /** Which node a connection entered the Service path on, from what the lab knows. */
    function expectedRow(r: LabCurlResult): Omit<Row, 'connections'> {
      const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
      const seenAs = r.client_address!;
      const client = r.local!.ip;
      const snatNode = state.nodes.find((n) => n.internalIPs.includes(seenAs));
      const clientPod = state.pods.find((p) => p.ips.includes(client));
      const ingress = snatNode?.name ?? clientPod?.node ?? app.node; // no SNAT from outside: Local policy, endpoint node
      return { client, seen_as: seenAs, ingress_node: ingress, endpoint_node: app.node, snat: client !== seenAs };
    }

    it('runs the tutorial: ClusterIP, NodePort and LoadBalancer under Cluster, then under Local', async () => {
      for (const c of matrix) {
        for (const from of ['busybox-1', 'busybox-2']) await curl(from, 'clusterip', c);
        for (const n of state.nodes) await curl('client', `nodeport@${n.name}`, c);
        await curl('client', 'loadbalancer@lb', c);
        await curl('client', 'loadbalancer@lb', c);
      }
      await labPatch('nodeport', 'Local', { prefix });
      await labPatch('loadbalancer', 'Local', { prefix });
      const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
      for (const c of matrix) {
        for (const n of state.nodes) await curl('client', `nodeport@${n.name}`, c, n.name === app.node);
        await curl('client', 'loadbalancer@lb', c);
      }
    }, 120_000);

    for (const family of FAMILIES) {
      it(`natlens who <pod IPv${family}> names exactly the clients that connected, as the pod saw them`, async () => {
        const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
        const podIp = app.ips.find((a) => (family === 6) === a.includes(':'))!;
        const expected = new Map<string, number>();
        for (const r of ok.filter((x) => x.family === family)) {
          const k = rowKey(expectedRow(r));
          expected.set(k, (expected.get(k) ?? 0) + 1);
        }
        const total = [...expected.values()].reduce((a, b) => a + b, 0);
        expect(total).toBe(18); // 2 protocols x (2 ClusterIP + 3 NodePort + 2 LB under Cluster; 1 NodePort + 1 LB under Local)
        // Results are complete within seconds of the traffic: wait until every connection is in.
        let answer: WhoJson | undefined;
        const deadline = Date.now() + 10_000;
        for (;;) {
          answer = await who(podIp, collector!.address, ['--since', '10m']);
          const n = answer.rows.reduce((a, r) => a + r.connections, 0);
          if (n >= total || Date.now() > deadline) break;
          await new Promise((res) => setTimeout(res, 500));
        }
        const got = new Map<string, number>();
        for (const r of answer.rows) {
          expect(r.stitched, JSON.stringify(r)).toBe(true);
          // Rows are also split by the Service the client dialled: add them up per path.
          const k = rowKey({ client: r.client!, seen_as: r.seen_as, ingress_node: r.ingress_node!, endpoint_node: r.endpoint_node!, snat: r.snat });
          got.set(k, (got.get(k) ?? 0) + r.connections);
        }
        expect(Object.fromEntries(got)).toEqual(Object.fromEntries(expected));
        expect(answer.complete.events_lost).toBe(0);
        expect(answer.complete.unstitched).toBe(0);
        expect(answer.complete.nodes_reporting).toEqual(state.nodes.map((n) => n.name).sort());
      }, 30_000);
    }
  });
}
