import { describe, expect, it } from 'vitest';
import { formatAddr, parseAddr } from '../../src/collector/addr.js';
import { hash64 } from '../../src/collector/hop-id.js';
import type { ConnectionRecord, Hop, WireTuple } from '../../src/collector/hop.js';
import { Stitcher, recordVersion } from '../../src/collector/stitcher.js';

const SNAT = 0x10;
const DNAT = 0x20;
const T0 = BigInt(Date.now()) * 1_000_000n;

const ip = (s: string) => parseAddr(s)!;
const tuple = (src: string, sport: number, dst: string, dport: number): WireTuple => ({ src: ip(src), sport, dst: ip(dst), dport });

let seq = 0;
function hop(node: string, orig: WireTuple, reply: WireTuple, o: Partial<Hop> = {}): Hop {
  const tsNs = o.tsNs ?? T0 + BigInt(seq) * 1000n;
  return {
    id: hash64([node, tsNs, seq++]),
    node, kind: 'conn', proto: 'tcp', family: 4, tsNs, orig, reply, ctStatus: 0, isn: 111, ifname: 'eth0',
    deliveredLocal: false, packetsOrig: 0, bytesOrig: 0, packetsReply: 0, bytesReply: 0, proxyVersion: 0, ...o,
  };
}

// The tutorial's addresses: client, nodes, the source-ip-app pod on node1, busybox-2 on node2.
const C = '198.51.100.79';
const N1 = '10.240.0.3';
const N2 = '10.240.0.4';
const N3 = '10.240.0.5';
const POD = '10.180.1.136';
const BB2 = '10.180.2.8';
const NODES = new Map([[N1, 'node1'], [N2, 'node2'], [N3, 'node3']]);
const nodeOf = (a: Uint8Array) => NODES.get(formatAddr(a));

/** NodePort under Cluster policy, entering node2, endpoint on node1: node2 SNATs, node1 delivers. */
function nodePortViaNode2(cport: number, snatPort: number, isn: number, tsNs = T0): [Hop, Hop] {
  return [
    hop('node2', tuple(C, cport, N2, 30080), tuple(POD, 8080, N2, snatPort), { ctStatus: SNAT | DNAT, isn, tsNs }),
    hop('node1', tuple(N2, snatPort, POD, 8080), tuple(POD, 8080, N2, snatPort), { isn, tsNs: tsNs + 50_000n, deliveredLocal: true }),
  ];
}

const opts = { holdMs: 2000, windowMs: 5000, retentionMs: 15_000, maxChains: 100_000 };
const view = (r: ConnectionRecord) => ({
  client: r.client ? formatAddr(r.client) : null, seenAs: formatAddr(r.seenAs), endpoint: `${formatAddr(r.endpoint)}:${r.endpointPort}`,
  ingress: r.ingressNode, endpointNode: r.endpointNode, snat: r.snat, status: r.status, hops: r.hopNodes,
});

describe('stitcher', () => {
  it('joins an SNAT hop with the endpoint node hop, in either arrival order, as soon as both are there', () => {
    for (const order of [[0, 1], [1, 0]]) {
      const s = new Stitcher(nodeOf, opts);
      const hops = nodePortViaNode2(40000, 61000, 7);
      s.ingest(hops[order[0]!]!, 0);
      expect(s.tick(10)).toEqual([]); // half a connection is held, not emitted
      s.ingest(hops[order[1]!]!, 20);
      const out = s.tick(30);
      expect(out.map(view)).toEqual([{
        client: C, seenAs: N2, endpoint: `${POD}:8080`, ingress: 'node2', endpointNode: 'node1', snat: true, status: 'complete', hops: ['node2', 'node1'],
      }]);
    }
  });

  it('emits a Local-policy connection (one hop, client IP kept) at once', () => {
    const s = new Stitcher(nodeOf, opts);
    s.ingest(hop('node1', tuple(C, 40001, N1, 30080), tuple(POD, 8080, C, 40001), { ctStatus: DNAT, deliveredLocal: true }), 0);
    expect(s.tick(1).map(view)).toEqual([{
      client: C, seenAs: C, endpoint: `${POD}:8080`, ingress: 'node1', endpointNode: 'node1', snat: false, status: 'complete', hops: ['node1'],
    }]);
  });

  it('joins ClusterIP traffic from a pod on another node (DNAT only)', () => {
    const s = new Stitcher(nodeOf, opts);
    s.ingest(hop('node1', tuple(BB2, 5000, POD, 8080), tuple(POD, 8080, BB2, 5000), { deliveredLocal: true }), 0);
    // The endpoint's hop alone (no NAT, from another host) waits for the hop it came from.
    expect(s.tick(1)).toEqual([]);
    s.ingest(hop('node2', tuple(BB2, 5000, '10.0.170.92', 80), tuple(POD, 8080, BB2, 5000), { ctStatus: DNAT }), 1);
    expect(s.tick(2).map(view)).toEqual([{
      client: BB2, seenAs: BB2, endpoint: `${POD}:8080`, ingress: 'node2', endpointNode: 'node1', snat: false, status: 'complete', hops: ['node2', 'node1'],
    }]);
  });

  it('never guesses: a missing SNAT hop leaves the client unknown; a missing endpoint hop leaves the endpoint node unknown', () => {
    const s = new Stitcher(nodeOf, opts);
    const [a] = nodePortViaNode2(40000, 61000, 7);
    const [, b] = nodePortViaNode2(40001, 61001, 8);
    s.ingest(b, 0);
    s.ingest(a, 0);
    expect(s.tick(1999)).toEqual([]);
    const out = s.tick(2000).map(view);
    expect(out).toContainEqual({ client: null, seenAs: N2, endpoint: `${POD}:8080`, ingress: 'node2', endpointNode: 'node1', snat: true, status: 'unstitched', hops: ['node1'] });
    expect(out).toContainEqual({ client: C, seenAs: N2, endpoint: `${POD}:8080`, ingress: 'node2', endpointNode: '', snat: true, status: 'unstitched', hops: ['node2'] });
  });

  it('stitches a late hop into an emitted record under the same id, with a version that outranks it', () => {
    const s = new Stitcher(nodeOf, opts);
    const [a, b] = nodePortViaNode2(40000, 61000, 7);
    s.ingest(b, 0);
    const [partial] = s.tick(3000);
    expect(partial!.status).toBe('unstitched');
    s.ingest(a, 9000); // within retention
    const [full] = s.tick(9001);
    expect(view(full!)).toMatchObject({ client: C, status: 'complete', hops: ['node2', 'node1'] });
    expect(full!.connId).toBe(partial!.connId);
    expect(full!.version).toBeGreaterThan(partial!.version);
  });

  it('joins two emitted partial chains through their middle hop and supersedes one of them', () => {
    const s = new Stitcher(nodeOf, opts);
    // node3 SNATs (egress gateway), node2 DNATs to the Service endpoint on node1.
    const h3 = hop('node3', tuple(C, 1000, '10.0.170.92', 80), tuple('10.0.170.92', 80, N3, 2000), { ctStatus: SNAT, isn: 9 });
    const h2 = hop('node2', tuple(N3, 2000, '10.0.170.92', 80), tuple(POD, 8080, N3, 2000), { ctStatus: DNAT, isn: 9 });
    const h1 = hop('node1', tuple(N3, 2000, POD, 8080), tuple(POD, 8080, N3, 2000), { isn: 9, deliveredLocal: true });
    s.ingest(h3, 0);
    s.ingest(h1, 0);
    const partials = s.tick(2500);
    expect(partials.map((r) => r.status)).toEqual(['unstitched', 'unstitched']);
    s.ingest(h2, 3000);
    const out = s.tick(3001);
    const complete = out.filter((r) => r.status === 'complete');
    const superseded = out.filter((r) => r.status === 'superseded');
    expect(complete.map(view)).toEqual([{ client: C, seenAs: N3, endpoint: `${POD}:8080`, ingress: 'node3', endpointNode: 'node1', snat: true, status: 'complete', hops: ['node3', 'node2', 'node1'] }]);
    expect(superseded).toHaveLength(1);
    // Every emitted id ends at exactly one live record: the superseded one outranks its partial.
    const ids = new Set(partials.map((r) => r.connId));
    expect(ids).toEqual(new Set([complete[0]!.connId, superseded[0]!.connId]));
    const supersededPartial = partials.find((r) => r.connId === superseded[0]!.connId)!;
    expect(superseded[0]!.version).toBeGreaterThan(supersededPartial.version);
  });

  it('does not take a DNAT hop whose source is another node for the origin: waits for that node\'s hop', () => {
    const s = new Stitcher(nodeOf, opts);
    const h3 = hop('node3', tuple(C, 1000, '10.0.170.92', 80), tuple('10.0.170.92', 80, N3, 2000), { ctStatus: SNAT, isn: 9 });
    const h2 = hop('node2', tuple(N3, 2000, '10.0.170.92', 80), tuple(POD, 8080, N3, 2000), { ctStatus: DNAT, isn: 9 });
    const h1 = hop('node1', tuple(N3, 2000, POD, 8080), tuple(POD, 8080, N3, 2000), { isn: 9, deliveredLocal: true });
    s.ingest(h2, 0);
    s.ingest(h1, 0);
    expect(s.tick(500)).toEqual([]);
    s.ingest(h3, 600);
    expect(s.tick(601).map(view)).toEqual([{ client: C, seenAs: N3, endpoint: `${POD}:8080`, ingress: 'node3', endpointNode: 'node1', snat: true, status: 'complete', hops: ['node3', 'node2', 'node1'] }]);
  });

  it('ignores duplicates of a hop (resent after a reconnect)', () => {
    const s = new Stitcher(nodeOf, opts);
    const [a, b] = nodePortViaNode2(40000, 61000, 7);
    s.ingest(a, 0);
    s.ingest({ ...a }, 1);
    s.ingest(b, 2);
    s.ingest({ ...b }, 3);
    expect(s.tick(4)).toHaveLength(1);
    expect(s.stats().duplicates).toBe(2);
  });

  it('under churn with SNAT ports reused, never attributes a connection to another client', () => {
    const s = new Stitcher(nodeOf, opts);
    const truth = new Map<bigint, string>(); // connId (derived from the terminal hop's id) -> real client
    const arrivals: Array<[Hop, number]> = [];
    let rnd = 12345;
    const rand = (n: number) => ((rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0) % n);
    const CONNS = 5000;
    for (let i = 0; i < CONNS; i++) {
      const client = `198.51.100.${1 + (i % 50)}`;
      const t = T0 + BigInt(i) * 200_000n; // 5000 connections/s
      const snatPort = 32768 + rand(8); // 8 ports: every wire tuple recurs hundreds of times
      const isn = rand(2 ** 32);
      const a = hop('node2', tuple(client, 40000 + (i % 7), N2, 30080), tuple(POD, 8080, N2, snatPort), { ctStatus: SNAT | DNAT, isn, tsNs: t });
      const b = hop('node1', tuple(N2, snatPort, POD, 8080), tuple(POD, 8080, N2, snatPort), { isn, tsNs: t + 30_000n, deliveredLocal: true });
      truth.set(hash64([b.id]), client);
      // Agents are independent: each hop arrives up to 1 s late, in any order.
      arrivals.push([a, i / 5 + rand(1000)], [b, i / 5 + rand(1000)]);
    }
    arrivals.sort((x, y) => x[1] - y[1]);
    const records = new Map<bigint, ConnectionRecord>();
    const take = (rs: ConnectionRecord[]) => rs.forEach((r) => {
      const prev = records.get(r.connId);
      if (!prev || prev.version < r.version) records.set(r.connId, r);
    });
    for (const [h, at] of arrivals) {
      s.ingest(h, at);
      take(s.tick(at));
    }
    take(s.flush(1e9));
    const live = [...records.values()].filter((r) => r.status !== 'superseded');
    let wrong = 0;
    let complete = 0;
    for (const r of live) {
      if (r.status !== 'complete') continue;
      complete++;
      if (formatAddr(r.client!) !== truth.get(r.connId)) wrong++;
    }
    expect(wrong).toBe(0);
    expect(complete).toBe(CONNS);
    expect(live).toHaveLength(CONNS);
  });

  it('refuses to choose between two UDP flows that share a wire tuple within the window', () => {
    const s = new Stitcher(nodeOf, opts);
    const udp = { proto: 'udp' as const, isn: null };
    s.ingest(hop('node2', tuple('198.51.100.1', 5000, N2, 30080), tuple(POD, 8080, N2, 7000), { ...udp, ctStatus: SNAT | DNAT }), 0);
    s.ingest(hop('node3', tuple('198.51.100.2', 5000, N2, 30080), tuple(POD, 8080, N2, 7000), { ...udp, ctStatus: SNAT | DNAT }), 0);
    s.ingest(hop('node1', tuple(N2, 7000, POD, 8080), tuple(POD, 8080, N2, 7000), { ...udp, deliveredLocal: true }), 0);
    const out = s.tick(5000);
    expect(out.filter((r) => r.status === 'complete')).toEqual([]);
    expect(s.stats().ambiguous).toBeGreaterThan(0);
  });

  it('orders versions: complete outranks unstitched, superseded outranks both', () => {
    expect(recordVersion('complete', 1, 1)).toBeGreaterThan(recordVersion('unstitched', 3, 9));
    expect(recordVersion('superseded', 0, 1)).toBeGreaterThan(recordVersion('complete', 3, 9));
  });

  it('forgets emitted chains after retention and stays bounded', () => {
    const s = new Stitcher(nodeOf, { ...opts, retentionMs: 1000, maxChains: 100 });
    for (let i = 0; i < 1000; i++) {
      const [a, b] = nodePortViaNode2(40000 + i, 1024 + i, i, T0 + BigInt(i) * 1_000_000n);
      s.ingest(a, i);
      s.ingest(b, i);
      s.tick(i);
    }
    const st = s.stats();
    expect(st.emitted).toBe(1000);
    expect(st.retained + st.pending).toBeLessThanOrEqual(100);
  });
});
