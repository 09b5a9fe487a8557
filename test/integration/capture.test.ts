// The capture contract, on a real lab (root): for every scenario of the "Using Source IP" tutorial,
// TCP and UDP, IPv4 and IPv6, both kube-proxy modes, every connection the client made is reported
// once by the agent of the node that translated it, with `orig` = the client's socket tuple and
// `reply` consistent with the address the echo server saw. Drops under Local policy are reported
// by the node that dropped them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labCurl, labDown, labPatch, labUp, type LabCurlResult, type LabState, type ProxyMode } from '../../src/lab/lab.js';
import { connsFor, dropsFor, nextHopOf } from '../../src/lab/evidence.js';
import type { ConnEvent } from '../../src/agent/events.js';
import { AgentFleet, waitFor } from './support/agents.js';
import { skipReason } from './support/requirements.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/capture.test.ts: skipped: ${skip}`);

const FAMILIES = [4, 6] as const;
const PROTOS = ['tcp', 'udp'] as const;
const matrix = FAMILIES.flatMap((family) => PROTOS.map((proto) => ({ family, proto })));

const ipOf = (list: string[], family: 4 | 6): string => {
  const ip = list.find((a) => (family === 6) === a.includes(':'));
  if (!ip) throw new Error(`no IPv${family} address in ${list.join(', ')}`);
  return ip;
};
const show = (r: LabCurlResult): string => `${r.from} -> ${r.target} ${r.proto}/v${r.family} local=${JSON.stringify(r.local)} ok=${r.ok} saw=${r.client_address} err=${r.error}`;

for (const mode of ['iptables', 'nftables'] as ProxyMode[]) {
  describe.skipIf(!!skip)(`capture (kube-proxy ${mode} mode)`, () => {
    const prefix = `c${mode[0]}${process.pid % 100000}`;
    const fleet = new AgentFleet();
    let state: LabState;
    let app: { ips: string[]; node: string };

    beforeAll(async () => {
      state = await labUp({ prefix, proxyMode: mode, force: true });
      app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
      await fleet.start(state.nodes.map((n) => ({ name: n.name, netnsPath: n.netnsPath })));
    }, 90_000);

    afterAll(async () => {
      await fleet.stop();
      await labDown({ prefix });
      if (fleet.warnings.length) console.warn(fleet.warnings.join('\n'));
    }, 60_000);

    const curl = (from: string, target: string, c: { family: 4 | 6; proto: 'tcp' | 'udp' }, timeoutMs = 3000): Promise<LabCurlResult> =>
      labCurl(from, target, { prefix, family: c.family, udp: c.proto === 'udp', timeoutMs });

    /** The one translated connection record for this request (fails on none or duplicates). */
    async function translatedBy(r: LabCurlResult): Promise<ConnEvent> {
      expect(r.local, show(r)).not.toBeNull();
      const found = await waitFor(() => {
        const c = connsFor(fleet.events, r).filter((e) => e.dnat);
        return c.length ? c : undefined;
      }, 3000, `the conn record of ${show(r)}`);
      await new Promise((res) => setTimeout(res, 100)); // a duplicate would arrive in the same drain
      const all = connsFor(fleet.events, r).filter((e) => e.dnat);
      expect(all, `exactly one translated record for ${show(r)}`).toHaveLength(1);
      return found[0]!;
    }

    function expectReplyMatchesServer(e: ConnEvent, r: LabCurlResult, family: 4 | 6): void {
      // The pod answered from its own address and port 8080, to the address it saw as the client.
      expect(e.reply.src).toBe(ipOf(app.ips, family));
      expect(e.reply.sport).toBe(8080);
      expect(e.reply.dst, show(r)).toBe(r.client_address);
      expect(e.family).toBe(family);
      expect(e.proto).toBe(r.proto);
      if (r.proto === 'tcp') expect(e.isn).toEqual(expect.any(Number));
      else expect(e.isn).toBeNull();
    }

    it('ClusterIP from a pod on the same node and on another node: DNAT on the client pod\'s node, no SNAT', async () => {
      const cases = ['busybox-1', 'busybox-2'].flatMap((from) => matrix.map((c) => ({ from, ...c })));
      const results = await Promise.all(cases.map((c) => curl(c.from, 'clusterip', c)));
      for (const [i, r] of results.entries()) {
        const c = cases[i]!;
        const pod = state.pods.find((p) => p.name === c.from)!;
        expect(r.ok, show(r)).toBe(true);
        const e = await translatedBy(r);
        expect(e.node).toBe(pod.node);
        expect(e.snat).toBe(false);
        expect(e.orig.dst).toBe(ipOf(state.services.find((s) => s.name === 'clusterip')!.clusterIPs, c.family));
        expectReplyMatchesServer(e, r, c.family);
        expect(r.client_address).toBe(ipOf(pod.ips, c.family));
      }
    });

    it('NodePort under Cluster via every node: SNAT+DNAT on the entry node; the endpoint node sees the SNAT\'d hop with the same ISN', async () => {
      const cases = state.nodes.flatMap((n) => matrix.map((c) => ({ node: n, ...c })));
      const results = await Promise.all(cases.map((c) => curl('client', `nodeport@${c.node.name}`, c)));
      for (const [i, r] of results.entries()) {
        const c = cases[i]!;
        expect(r.ok, show(r)).toBe(true);
        const e = await translatedBy(r);
        expect(e.node).toBe(c.node.name);
        expect(e.snat && e.dnat).toBe(true);
        expect(e.orig).toEqual({ src: r.local!.ip, sport: r.local!.port, dst: ipOf(c.node.internalIPs, c.family), dport: 30080 });
        expectReplyMatchesServer(e, r, c.family);
        expect(r.client_address).toBe(ipOf(c.node.internalIPs, c.family));
        if (c.node.name !== app.node) {
          const hop = await waitFor(() => nextHopOf(fleet.events, e), 3000, `the endpoint node's record of ${show(r)}`);
          expect(hop.node).toBe(app.node);
          expect(hop.snat || hop.dnat).toBe(false);
        }
      }
    });

    it('LoadBalancer under Cluster: the node the LB chose translates, the pod sees that node', async () => {
      const cases = matrix.flatMap((c) => [c, c]);
      const results = await Promise.all(cases.map((c) => curl('client', 'loadbalancer@lb', c)));
      for (const [i, r] of results.entries()) {
        const c = cases[i]!;
        expect(r.ok, show(r)).toBe(true);
        const e = await translatedBy(r);
        expect(e.orig.dst).toBe(ipOf(state.services.find((s) => s.name === 'loadbalancer')!.loadBalancerIPs, c.family));
        expect(e.snat).toBe(true);
        expectReplyMatchesServer(e, r, c.family);
        expect(r.client_address).toBe(ipOf(state.nodes.find((n) => n.name === e.node)!.internalIPs, c.family));
      }
    });

    it('NodePort under Local: node1 keeps the client IP (DNAT only); node2 and node3 drop, and say so', async () => {
      await labPatch('nodeport', 'Local', { prefix });
      const cases = state.nodes.flatMap((n) => matrix.map((c) => ({ node: n, ...c })));
      const results = await Promise.all(cases.map((c) => curl('client', `nodeport@${c.node.name}`, c, c.node.name === app.node ? 3000 : 1500)));
      for (const [i, r] of results.entries()) {
        const c = cases[i]!;
        if (c.node.name === app.node) {
          expect(r.ok, show(r)).toBe(true);
          const e = await translatedBy(r);
          expect(e.node).toBe(app.node);
          expect(e.snat).toBe(false);
          expectReplyMatchesServer(e, r, c.family);
          expect(r.client_address).toBe(r.local!.ip);
        } else {
          expect(r.ok, show(r)).toBe(false);
          expect(r.local, `the client socket's tuple is known even when dropped: ${show(r)}`).not.toBeNull();
          const drop = await waitFor(() => dropsFor(fleet.events, r)[0], 4000, `the drop record of ${show(r)}`);
          expect(drop.node).toBe(c.node.name);
          expect(drop.attempts).toBeGreaterThanOrEqual(1);
          expect(connsFor(fleet.events, r).filter((e) => e.dnat)).toEqual([]);
        }
      }
    });

    it('LoadBalancer under Local: only the endpoint node receives traffic and the pod sees the real client', async () => {
      await labPatch('loadbalancer', 'Local', { prefix });
      const cases = matrix.flatMap((c) => [c, c]);
      const results = await Promise.all(cases.map((c) => curl('client', 'loadbalancer@lb', c)));
      for (const [i, r] of results.entries()) {
        const c = cases[i]!;
        expect(r.ok, show(r)).toBe(true);
        const e = await translatedBy(r);
        expect(e.node).toBe(app.node);
        expect(e.snat).toBe(false);
        expectReplyMatchesServer(e, r, c.family);
        expect(r.client_address).toBe(r.local!.ip);
      }
    });

    it('lost nothing', async () => {
      // Stats arrive every second; wait for one newer than the traffic above.
      const before = fleet.events.filter((e) => e.type === 'stats').length;
      await waitFor(() => (fleet.events.filter((e) => e.type === 'stats').length > before ? true : undefined), 5000, 'a stats event');
      expect(fleet.lost()).toBe(0);
    });
  });
}
