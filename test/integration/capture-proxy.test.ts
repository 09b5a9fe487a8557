// PROXY protocol capture, on a real lab (root): a client opens TCP connections to the nodeport
// service (through the endpoint node and through another node, which SNATs them to the pod) and
// starts each with a PROXY v1 header, a v2 header (IPv4 and IPv6), or plain HTTP. The agents
// (`natlens agent --stdout`, as a user runs them) must report exactly one proxy event per PROXY
// connection on the node that delivers it to the pod, with the header's addresses and the tuple the
// pod saw; nothing for plain HTTP or a v2 LOCAL header; unchanged conn events; and nothing at all
// with --no-proxy-protocol (or NATLENS_PROXY_PROTOCOL=false).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { labDown, labUp, type LabNode, type LabPod, type LabState } from '../../src/lab/lab.js';
import { nsRun } from '../../src/lab/exec.js';
import type { AgentEvent, ConnEvent, ProxyEvent, StatsEvent } from '../../src/agent/events.js';
import { probeArgs, type ProbeOptions } from '../../src/probe/probe-process.js';
import { encodeProxyHeader, PROXY_V2_SIGNATURE } from '../../src/util/proxy-protocol.js';
import { natlens, type NatlensProcess } from './support/processes.js';
import { waitFor } from './support/agents.js';
import { skipReason } from './support/requirements.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/capture-proxy.test.ts: skipped: ${skip}`);

const PREFIX = 'pcap';
const NODEPORT = 30080;

/** What the client sends first on one connection. */
type Opening =
  | { kind: 'v1' | 'v2'; headerFamily: 4 | 6 }
  | { kind: 'local' } // v2 LOCAL: a health check, no client to report
  | { kind: 'http' };

interface Case {
  id: number;
  /** Family of the TCP connection. */
  family: 4 | 6;
  /** The node whose InternalIP:nodePort the client connects to. */
  via: LabNode;
  opening: Opening;
}

/** The header's claimed client: documentation addresses, a port per case so events map back to cases. */
function claimed(c: Case, headerFamily: 4 | 6): { family: 4 | 6; src: string; sport: number; dst: string; dport: number } {
  return headerFamily === 4
    ? { family: 4, src: '192.0.2.10', sport: 40000 + c.id, dst: '203.0.113.140', dport: 80 }
    : { family: 6, src: '2001:db8:c11e::10', sport: 40000 + c.id, dst: '2001:db8:203::140', dport: 443 };
}

function payloadOf(c: Case): Buffer {
  const http = Buffer.from('GET / HTTP/1.0\r\nHost: natlens\r\n\r\n', 'latin1');
  switch (c.opening.kind) {
    case 'v1':
      return Buffer.concat([encodeProxyHeader(1, claimed(c, c.opening.headerFamily)), http]);
    case 'v2':
      return encodeProxyHeader(2, claimed(c, c.opening.headerFamily));
    case 'local':
      return Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
    case 'http':
      return http;
  }
}

interface ClientResult {
  id: number;
  local: { ip: string; port: number } | null;
  remote: { ip: string; port: number };
  reply: string;
  error: string | null;
}

// Runs in the client namespace: one connection per job, the opening bytes in one write, then reads
// whatever comes back for a bounded time. Prints the socket tuples as one JSON array.
const CLIENT_SCRIPT = `
const net = require('node:net');
const jobs = JSON.parse(process.argv[1]);
Promise.all(jobs.map((j) => new Promise((resolve) => {
  const out = { id: j.id, local: null, remote: { ip: j.host, port: j.port }, reply: '', error: null };
  const s = net.connect({ host: j.host, port: j.port });
  let t;
  const done = () => { clearTimeout(t); s.destroy(); resolve(out); };
  t = setTimeout(done, j.waitMs);
  s.on('connect', () => { out.local = { ip: s.localAddress, port: s.localPort }; s.write(Buffer.from(j.payload, 'base64')); });
  s.on('data', (d) => { out.reply += d.toString('latin1'); });
  s.on('error', (e) => { out.error = e.message; done(); });
  s.on('close', done);
}))).then((r) => process.stdout.write(JSON.stringify(r)));
`;

const ipOf = (list: string[], family: 4 | 6): string => {
  const ip = list.find((a) => (family === 6) === a.includes(':'));
  if (!ip) throw new Error(`no IPv${family} address in ${list.join(', ')}`);
  return ip;
};

/** An agent process and the events of its stdout. */
class StdoutAgent {
  constructor(readonly node: string, readonly proc: NatlensProcess) {}

  get events(): AgentEvent[] {
    const lines = this.proc.stdout.split('\n');
    lines.pop(); // partial line
    return lines.filter((l) => l.trim()).map((l) => JSON.parse(l) as AgentEvent);
  }

  async ready(): Promise<void> {
    await waitFor(() => {
      if (this.proc.exitCode !== undefined) throw new Error(`agent ${this.node} exited (${this.proc.exitCode}):\n${this.proc.stderr.join('\n')}`);
      return this.events.find((e) => e.type === 'ready');
    }, 30_000, `agent ${this.node} ready`);
  }

  lastStats(): StatsEvent | undefined {
    return this.events.filter((e): e is StatsEvent => e.type === 'stats').pop();
  }
}

function startAgents(state: LabState, extra: (node: LabNode) => { args: string[]; env?: NodeJS.ProcessEnv }): StdoutAgent[] {
  return state.nodes.map((n) => {
    const x = extra(n);
    return new StdoutAgent(n.name, natlens(`agent ${n.name}`, [
      'agent', '--node', n.name, '--netns', n.netnsPath, '--stdout', '--stats-interval', '300ms', '--drop-after', '500ms', ...x.args,
    ], x.env ?? {}));
  });
}

async function stopAgents(agents: StdoutAgent[]): Promise<void> {
  await Promise.all(agents.map((a) => a.proc.stop()));
}

async function connect(state: LabState, cases: Case[]): Promise<Map<number, ClientResult>> {
  const jobs = cases.map((c) => ({
    id: c.id, host: ipOf(c.via.internalIPs, c.family), port: NODEPORT, payload: payloadOf(c).toString('base64'), waitMs: 1500,
  }));
  const r = await nsRun(state.client.netns, process.execPath, ['-e', CLIENT_SCRIPT, JSON.stringify(jobs)], { timeoutMs: 15_000 });
  const results = JSON.parse(r.stdout) as ClientResult[];
  return new Map(results.map((x) => [x.id, x]));
}

const all = (agents: StdoutAgent[]): AgentEvent[] => agents.flatMap((a) => a.events);
const conns = (events: AgentEvent[]): ConnEvent[] => events.filter((e): e is ConnEvent => e.type === 'conn');
const proxies = (events: AgentEvent[]): ProxyEvent[] => events.filter((e): e is ProxyEvent => e.type === 'proxy');

/** The entry node's conn event of the client's socket (translated: SNAT+DNAT to the pod). */
function entryConn(events: AgentEvent[], r: ClientResult): ConnEvent[] {
  return conns(events).filter((e) => e.proto === 'tcp' && e.dnat && e.orig.src === r.local?.ip && e.orig.sport === r.local?.port &&
    e.orig.dst === r.remote.ip && e.orig.dport === r.remote.port);
}

describe.skipIf(!!skip)('PROXY protocol capture (natlens agent --stdout on a lab)', () => {
  let state: LabState | undefined;
  let agents: StdoutAgent[] = [];
  let app: LabPod;
  let appNode: LabNode;
  let otherNode: LabNode;
  const netnsBefore = readdirSync('/run/netns').filter((n) => n.startsWith(`${PREFIX}-`));

  beforeAll(async () => {
    expect(netnsBefore, `a lab with prefix ${PREFIX} is already up`).toEqual([]);
    state = await labUp({ prefix: PREFIX, proxyMode: 'iptables', force: true });
    app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
    appNode = state.nodes.find((n) => n.name === app.node)!;
    otherNode = state.nodes.find((n) => n.name !== app.node)!;
  }, 90_000);

  afterAll(async () => {
    await stopAgents(agents);
    if (state) await labDown({ prefix: PREFIX });
    expect(readdirSync('/run/netns').filter((n) => n.startsWith(`${PREFIX}-`))).toEqual([]);
  }, 60_000);

  it('reports one proxy event per PROXY connection on the node that delivers it, with the header\'s client and the tuple the pod saw', async () => {
    const s = state!;
    agents = startAgents(s, () => ({ args: [] }));
    await Promise.all(agents.map((a) => a.ready()));

    let id = 0;
    const cases: Case[] = [];
    for (const family of [4, 6] as const) {
      for (const via of [appNode, otherNode]) {
        cases.push({ id: id++, family, via, opening: { kind: 'v1', headerFamily: family } });
        cases.push({ id: id++, family, via, opening: { kind: 'v2', headerFamily: family } });
        cases.push({ id: id++, family, via, opening: { kind: 'http' } });
      }
    }
    // A v2 header of the other family than the connection's (an IPv4 client behind an IPv6 proxy), and a health check.
    cases.push({ id: id++, family: 6, via: appNode, opening: { kind: 'v2', headerFamily: 4 } });
    cases.push({ id: id++, family: 4, via: appNode, opening: { kind: 'v2', headerFamily: 6 } });
    cases.push({ id: id++, family: 4, via: appNode, opening: { kind: 'local' } });

    const results = await connect(s, cases);
    const proxyCases = cases.filter((c) => c.opening.kind === 'v1' || c.opening.kind === 'v2');
    // Every PROXY connection's event has reached the endpoint node's agent (or the wait fails).
    await waitFor(() => {
      const seen = new Set(proxies(all(agents)).filter((e) => e.node === app.node).map((e) => e.proxy.sport));
      return proxyCases.every((c) => seen.has(40000 + c.id)) ? true : undefined;
    }, 5000, 'a proxy event for every PROXY connection');
    await new Promise((r) => setTimeout(r, 800)); // duplicates, stats
    const events = all(agents);

    for (const c of cases) {
      const r = results.get(c.id)!;
      const what = `case ${c.id} (${c.opening.kind}${'headerFamily' in c.opening ? `/v${c.opening.headerFamily}` : ''} over IPv${c.family} via ${c.via.name}): ${JSON.stringify(r)}`;
      expect(r.local, what).not.toBeNull();

      // The SYN path is unchanged: one translated conn event on the entry node.
      const entry = entryConn(events, r);
      expect(entry, what).toHaveLength(1);
      const e = entry[0]!;
      expect(e.node).toBe(c.via.name);
      expect(e.snat && e.dnat).toBe(true);
      expect(e.reply.src).toBe(ipOf(app.ips, c.family));
      expect(e.reply.sport).toBe(8080);
      // The tuple the pod saw: on the entry node it is the conn's reply tuple, reversed; through another
      // node the endpoint node's conn of the SNAT'd hop (same ISN) has it as its original tuple.
      const podSaw = { src: e.reply.dst, sport: e.reply.dport, dst: e.reply.src, dport: e.reply.sport };
      if (c.via !== appNode) {
        const hop = conns(events).filter((h) => h.node === app.node && h.isn === e.isn && h.orig.src === podSaw.src && h.orig.sport === podSaw.sport);
        expect(hop, `the endpoint node's conn of ${what}`).toHaveLength(1);
        expect(hop[0]!.orig).toEqual(podSaw);
      }
      if (c.opening.kind === 'http') {
        // The echo server's own view agrees with the kernel's.
        expect(r.reply, what).toContain(`client_address=${podSaw.src}`);
        expect(r.reply, what).toContain(`client_port=${podSaw.sport}`);
      }

      const mine = proxies(events).filter((p) => p.orig.src === podSaw.src && p.orig.sport === podSaw.sport);
      if (c.opening.kind === 'v1' || c.opening.kind === 'v2') {
        const onApp = mine.filter((p) => p.node === app.node);
        expect(onApp, `exactly one proxy event on ${app.node} for ${what}`).toHaveLength(1);
        const p = onApp[0]!;
        const h = claimed(c, c.opening.headerFamily);
        expect(p.proxy).toEqual({ version: c.opening.kind === 'v1' ? 1 : 2, src: h.src, sport: h.sport, dst: h.dst, dport: h.dport });
        expect(p.orig).toEqual(podSaw);
        expect(p.family).toBe(c.family);
        expect(p.isn).toBe(e.isn);
        expect(p.ifname).toBe(app.hostVeth); // the pod's host-side veth
        // Elsewhere (the SNAT'ing node) the same segment may be seen leaving by its uplink, never towards a pod.
        for (const other of mine.filter((x) => x.node !== app.node)) {
          expect(other.node).toBe(c.via.name);
          expect(other.ifname).toBe(c.via.uplink);
        }
        expect(mine.filter((x) => x.node !== app.node).length).toBeLessThanOrEqual(1);
      } else {
        expect(mine, `no proxy event for ${what}`).toEqual([]);
      }
    }
    expect(proxies(events).filter((p) => p.node === app.node)).toHaveLength(proxyCases.length);

    // The health check's LOCAL header was counted, not reported; nothing was lost.
    const stats = await waitFor(() => {
      const st = agents.find((a) => a.node === app.node)!.lastStats();
      return st && st.proxy && st.proxy.local >= 1 && st.proxy.reported >= proxyCases.length ? st : undefined;
    }, 5000, `${app.node}'s stats counting the LOCAL header`);
    expect(stats.proxy).toEqual({ reported: proxyCases.length, local: 1, truncated: 0, invalid: 0 });
    expect(stats.lost.total).toBe(0);
    expect(stats.counters.proxy_seen).toBe(proxyCases.length + 1);
    expect(stats.counters.proxy_watched).toBeGreaterThanOrEqual(cases.length);

    await stopAgents(agents);
  }, 60_000);

  it('reports nothing with --no-proxy-protocol (node flag) or NATLENS_PROXY_PROTOCOL=false (env); conn events unchanged', async () => {
    const s = state!;
    agents = startAgents(s, (n) => (n === appNode ? { args: ['--no-proxy-protocol'] } : { args: [], env: { NATLENS_PROXY_PROTOCOL: 'false' } }));
    await Promise.all(agents.map((a) => a.ready()));
    let id = 100;
    const cases: Case[] = [];
    for (const family of [4, 6] as const) {
      for (const via of [appNode, otherNode]) {
        cases.push({ id: id++, family, via, opening: { kind: 'v1', headerFamily: family } });
        cases.push({ id: id++, family, via, opening: { kind: 'v2', headerFamily: family } });
      }
    }
    const results = await connect(s, cases);
    await waitFor(() => (cases.every((c) => entryConn(all(agents), results.get(c.id)!).length === 1) ? true : undefined), 5000, 'the conn events');
    await new Promise((r) => setTimeout(r, 800));
    const events = all(agents);
    expect(proxies(events)).toEqual([]);
    for (const c of cases) expect(entryConn(events, results.get(c.id)!)).toHaveLength(1);
    // Once natlens-probe is told (ProbeOptions.proxyProtocol -> --no-proxy-protocol), the kernel watches nothing either.
    const told = probeArgs({ mode: 'tc', proxyProtocol: false } as ProbeOptions).includes('--no-proxy-protocol');
    if (told) {
      const st = await waitFor(() => agents.find((a) => a.node === app.node)!.lastStats(), 3000, 'stats');
      expect(st.counters.proxy_watched).toBe(0);
      expect(st.counters.proxy_seen).toBe(0);
    }
    await stopAgents(agents);
  }, 60_000);
});
