// Scale-out and churn, on a real lab (root):
// - two collectors behind one address (a round-robin TCP balancer, as a Service would be): agents
//   land on either, hops of one connection meet at the collector owning its pod, and `who` gives
//   the same answer whichever collector the balancer picks;
// - thousands of short connections from four clients through one SNAT'ing node, with client and
//   SNAT ports reused: every connection is attributed to the client that made it (0 false).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labAddPods, labAddService, labCurl, labDown, labUp, requireLabState, type LabState } from '../../src/lab/lab.js';
import { ipBatch, nsRun, sysctl } from '../../src/lab/exec.js';
import { LOAD_BIN } from '../../src/util/paths.js';
import { skipReason } from './support/requirements.js';
import { startAgents, startCollector, who, type NatlensProcess, type RunningCollector, type WhoJson } from './support/processes.js';
import { TcpBalancer, freePorts } from './support/tcp-balancer.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/who-scale.test.ts: skipped: ${skip}`);

const CHURN_SOURCES = ['198.51.100.80', '198.51.100.81', '198.51.100.82', '198.51.100.83'];
// Unequal shares: a misattribution would move connections between clients and show in the counts.
const CHURN_CONNS = [200, 400, 600, 800];

const rowsOf = (w: WhoJson) => w.rows.map((r) => ({ client: r.client, seen_as: r.seen_as, connections: r.connections, ingress_node: r.ingress_node, endpoint_node: r.endpoint_node, snat: r.snat }))
  .sort((a, b) => `${a.client}${a.seen_as}${a.ingress_node}`.localeCompare(`${b.client}${b.seen_as}${b.ingress_node}`));

describe.skipIf(!!skip)('who with two collectors behind one address, under churn', () => {
  const prefix = `ws${process.pid % 100000}`;
  let state: LabState;
  let collectors: RunningCollector[] = [];
  let agents: NatlensProcess[] = [];
  let balancer: TcpBalancer | undefined;
  let address = '';
  let peers: string[] = [];

  beforeAll(async () => {
    state = await labUp({ prefix, proxyMode: 'iptables', force: true });
    // A natlens-load server on node1 behind NodePort 30090: the churn target.
    await labAddPods([{ name: 'churn-1', node: 'node1', labels: { app: 'churn' }, server: { command: [LOAD_BIN, 'serve', '--port', '8080', '--max-seconds', '600'], readyPort: 8080, cmdlineMatch: `${LOAD_BIN} serve --port 8080 --max-seconds 600` } }], { prefix });
    await labAddService({ name: 'churn', type: 'NodePort', selector: { app: 'churn' }, ports: [{ name: 'tcp', protocol: 'TCP', port: 90, targetPort: 8080, nodePort: 30090 }] }, { prefix });
    state = requireLabState(prefix);

    const ports = await freePorts(2);
    peers = ports.map((p, i) => `c${i + 1}=127.0.0.1:${p}`);
    const started = await Promise.allSettled(ports.map((port, i) => startCollector(['--id', `c${i + 1}`, '--peers', peers.join(',')], `127.0.0.1:${port}`)));
    // Keep whichever started, so that afterAll stops it even if the other failed.
    collectors = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    for (const r of started) if (r.status === 'rejected') throw r.reason;
    balancer = new TcpBalancer(ports.map((p) => `127.0.0.1:${p}`));
    address = await balancer.start();
    agents = await startAgents(state.nodes.map((n) => ({ name: n.name, netnsPath: n.netnsPath })), address);
  }, 120_000);

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await Promise.all(collectors.map((c) => c.stop()));
    await balancer?.stop();
    await labDown({ prefix });
  }, 60_000);

  it('spreads the agents over both collectors', () => {
    expect(new Set(balancer!.picks.slice(0, agents.length)).size).toBe(2);
  });

  it('answers the same, and right, whichever collector the query lands on', async () => {
    const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
    const podIp = app.ips.find((a) => !a.includes(':'))!;
    const truth = new Map<string, number>();
    for (const target of ['nodeport@node1', 'nodeport@node2', 'nodeport@node3', 'nodeport@node2']) {
      const r = await labCurl('client', target, { prefix, family: 4, timeoutMs: 3000 });
      expect(r.ok, `${target}: ${r.error}`).toBe(true);
      const node = state.nodes.find((n) => n.internalIPs.includes(r.client_address!))!.name;
      const k = `${r.local!.ip} as ${r.client_address} via ${node}`;
      truth.set(k, (truth.get(k) ?? 0) + 1);
    }
    for (const from of ['busybox-1', 'busybox-2']) {
      const r = await labCurl(from, 'clusterip', { prefix, family: 4, timeoutMs: 3000 });
      expect(r.ok).toBe(true);
      const node = state.pods.find((p) => p.name === from)!.node;
      const k = `${r.local!.ip} as ${r.client_address} via ${node}`;
      truth.set(k, (truth.get(k) ?? 0) + 1);
    }
    const expected = [...truth.values()].reduce((a, b) => a + b, 0);
    // Both collectors, directly and through the balancer: identical answers.
    const ask = async (at: string) => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const w = await who(podIp, at, ['--since', '10m']);
        if (w.rows.reduce((a, r) => a + r.connections, 0) >= expected || Date.now() > deadline) return w;
        await new Promise((r) => setTimeout(r, 500));
      }
    };
    const answers = [];
    for (const at of [...peers.map((p) => p.split('=')[1]!), address, address]) answers.push(await ask(at));
    const got = new Map(answers[0]!.rows.map((r) => [`${r.client} as ${r.seen_as} via ${r.ingress_node}`, r.connections]));
    expect(Object.fromEntries(got)).toEqual(Object.fromEntries(truth));
    for (const a of answers) {
      expect(rowsOf(a)).toEqual(rowsOf(answers[0]!));
      expect(a.rows.every((r) => r.endpoint_node === app.node && r.stitched)).toBe(true);
      expect(a.complete.collectors.sort()).toEqual(['c1', 'c2']);
      expect(a.complete.unstitched).toBe(0);
      expect(a.complete.nodes_reporting).toEqual(['node1', 'node2', 'node3']);
    }
  }, 60_000);

  it('attributes thousands of short connections with reused ports to the right clients (0 false)', async () => {
    const churnPod = state.pods.find((p) => p.name === 'churn-1')!;
    const podIp = churnPod.ips.find((a) => !a.includes(':'))!;
    const node2 = state.nodes.find((n) => n.name === 'node2')!;
    const node2Ip = node2.internalIPs.find((a) => !a.includes(':'))!;
    // Extra client addresses sharing one small port range: their connections collide on node2's SNAT
    // address and, with conntrack's TIME_WAIT cut to 1 s there, the same SNAT ports (wire tuples) recur.
    await ipBatch(state.client.netns, CHURN_SOURCES.map((a) => `addr add ${a}/24 dev eth0`));
    await sysctl(state.client.netns, { 'net.ipv4.ip_local_port_range': '20000 20999', 'net.ipv4.tcp_tw_reuse': 1 });
    for (const n of state.nodes) await sysctl(n.netns, { 'net.netfilter.nf_conntrack_tcp_timeout_time_wait': 1 });
    const runs = await Promise.all(CHURN_SOURCES.map((src, i) => nsRun(state.client.netns, LOAD_BIN, [
      'client', '--target', `${node2Ip}:30090`, '--source', src, '--concurrency', '8', '--duration-s', '20', '--max-conns', String(CHURN_CONNS[i]), '--json',
    ], { timeoutMs: 40_000 })));
    const results = runs.map((r) => JSON.parse(r.stdout.trim().split('\n').pop()!) as { connections: number; failed: number });
    // Every attempt got through: who counts connections, the load tool counts answered ones.
    results.forEach((r, i) => expect(r, `client ${CHURN_SOURCES[i]}`).toMatchObject({ connections: CHURN_CONNS[i], failed: 0 }));
    const made = results.map((r) => r.connections);
    const total = made.reduce((a, b) => a + b, 0);
    const deadline = Date.now() + 15_000;
    let w: WhoJson;
    for (;;) {
      w = await who(podIp, address, ['--since', '10m']);
      if (w.rows.reduce((a, r) => a + r.connections, 0) >= total || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const got = Object.fromEntries(w.rows.map((r) => [`${r.client} as ${r.seen_as} via ${r.ingress_node} -> ${r.endpoint_node}`, r.connections]));
    const want = Object.fromEntries(CHURN_SOURCES.map((s, i) => [`${s} as ${node2Ip} via node2 -> node1`, made[i]!]));
    expect(got).toEqual(want);
    expect(w.complete.unstitched).toBe(0);
    expect(w.complete.events_lost).toBe(0);
  }, 120_000);
});
