// natlens observing itself, on a real lab (root): a collector and one agent per node run as
// processes with --metrics-listen on free loopback ports; NodePort traffic goes through; their
// /metrics must account for it (captured, sent = acked, nothing lost, hops stored, SNAT'd
// connections stitched, store latency observed), /readyz must say ready, every log line must be
// JSON; once the collector is gone, the agents must say why they are not ready and show what
// they queue.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labCurl, labDown, labUp, type LabCurlResult, type LabState } from '../../src/lab/lab.js';
import { skipReason } from './support/requirements.js';
import { waitFor } from './support/agents.js';
import { startAgents, startCollector, type NatlensProcess, type RunningCollector } from './support/processes.js';
import { parsePrometheusText, samplesOf, valueOf, type Exposition } from '../support/prometheus-text.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/observability.test.ts: skipped: ${skip}`);

const ROUNDS = 3;

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.text() };
}

async function scrape(port: number): Promise<Exposition> {
  const r = await get(port, '/metrics');
  expect(r.status).toBe(200);
  return parsePrometheusText(r.body);
}

/** The port a process's metrics endpoint bound (it logs it: --metrics-listen 127.0.0.1:0). */
async function metricsPort(p: NatlensProcess): Promise<number> {
  const s = await p.waitStatus('metrics-listening', 30_000);
  expect(s.address).toBe('127.0.0.1:0');
  return s.port as number;
}

/** Polls `pick` (which may throw while the condition does not hold yet) until it returns a value. */
async function eventually<T>(pick: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await pick();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe.skipIf(!!skip)('natlens metrics, health and logs (lab, iptables)', () => {
  const prefix = `o${process.pid % 100000}`;
  let state: LabState;
  let collector: RunningCollector | undefined;
  let collectorPort = 0;
  let agents: NatlensProcess[] = [];
  const agentPorts = new Map<string, number>();
  const ok: LabCurlResult[] = [];

  beforeAll(async () => {
    state = await labUp({ prefix, proxyMode: 'iptables', force: true });
    collector = await startCollector(['--metrics-listen', '127.0.0.1:0']);
    collectorPort = await metricsPort(collector.process);
    agents = await startAgents(state.nodes.map((n) => ({ name: n.name, netnsPath: n.netnsPath })), collector.address, ['--metrics-listen', '127.0.0.1:0']);
    for (const [i, a] of agents.entries()) agentPorts.set(state.nodes[i]!.name, await metricsPort(a));
  }, 180_000);

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await collector?.stop();
    await labDown({ prefix });
  }, 90_000);

  it('accounts for NodePort traffic on the agents and the collector, and both are ready', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      for (const n of state.nodes) {
        const r = await labCurl('client', `nodeport@${n.name}`, { prefix, timeoutMs: 3000 });
        expect(r.ok, `${r.target}: ${r.error}`).toBe(true);
        ok.push(r);
      }
    }
    const n = ok.length;
    const snatted = ok.filter((r) => r.client_address !== r.local!.ip).length;
    expect(snatted).toBeGreaterThan(0);

    // Everything sent is acknowledged once the queues are empty.
    const byNode = await eventually(async () => {
      const out = new Map<string, Exposition>();
      for (const [node, port] of agentPorts) {
        const e = await scrape(port);
        if (valueOf(e, 'natlens_agent_events_queued') + valueOf(e, 'natlens_agent_events_inflight') > 0) return undefined;
        if (valueOf(e, 'natlens_agent_events_sent_total') !== valueOf(e, 'natlens_agent_events_acked_total')) return undefined;
        out.set(node, e);
      }
      return out;
    }, 20_000, 'every agent\'s queue drained and acked');

    let capturedConns = 0;
    let acked = 0;
    for (const [node, e] of byNode) {
      capturedConns += valueOf(e, 'natlens_agent_events_captured_total', { kind: 'conn' });
      acked += valueOf(e, 'natlens_agent_events_acked_total');
      expect(valueOf(e, 'natlens_agent_events_sent_total'), node).toBe(valueOf(e, 'natlens_agent_events_acked_total'));
      // drained: every record the agent took is acknowledged (no PROXY traffic here, so every one is sent)
      expect(valueOf(e, 'natlens_agent_events_acked_total'), node).toBe(valueOf(e, 'natlens_agent_events_captured_total'));
      expect(valueOf(e, 'natlens_agent_events_lost_total'), `${node} lost by stage: ${JSON.stringify(samplesOf(e, 'natlens_agent_events_lost_total'))}`).toBe(0);
      for (const stage of ['ringbuf_full', 'pending_full', 'netlink_lost', 'decode_errors', 'queue_overflow', 'invalid_event', 'collector_rejected', 'health_overflow']) {
        expect(samplesOf(e, 'natlens_agent_events_lost_total', { stage }), `${node} stage ${stage}`).toHaveLength(1);
      }
      expect(valueOf(e, 'natlens_agent_collector_connected'), node).toBe(1);
      expect(valueOf(e, 'natlens_agent_collector_reconnects_total'), node).toBe(0);
      expect(valueOf(e, 'natlens_agent_interfaces_attached'), node).toBeGreaterThan(0);
      expect(valueOf(e, 'natlens_agent_probe_starts_total'), node).toBe(1);
      expect(valueOf(e, 'natlens_agent_info', { node }), node).toBe(1);
      expect(e.types.get('natlens_agent_events_captured_total')).toBe('counter');
      expect(e.types.get('natlens_agent_events_queued')).toBe('gauge');
      // the kernel produced at least what the agent took (its counters come once a second)
      const took = valueOf(e, 'natlens_agent_events_captured_total', { kind: 'conn' });
      await eventually(async () => (valueOf(await scrape(agentPorts.get(node)!), 'natlens_agent_probe_events_total', { kind: 'conn' }) >= took ? true : undefined), 5000, `${node}: the probe's conn_seen >= ${took}`);
    }
    // every connection entered through one node's NodePort and was captured there (and again where it was delivered)
    expect(capturedConns).toBeGreaterThanOrEqual(n);
    for (const node of state.nodes) expect(valueOf(byNode.get(node.name)!, 'natlens_agent_events_captured_total', { kind: 'conn' }), node.name).toBeGreaterThanOrEqual(ROUNDS);

    // The collector stored what it acknowledged and stitched the SNAT'd connections (after --hold 1s).
    const c = await eventually(async () => {
      const e = await scrape(collectorPort);
      return valueOf(e, 'natlens_collector_stitched_connections_total', { outcome: 'complete' }) >= snatted ? e : undefined;
    }, 20_000, `at least ${snatted} complete stitches`);
    expect(valueOf(c, 'natlens_collector_events_received_total')).toBe(acked);
    expect(valueOf(c, 'natlens_collector_hops_stored_total')).toBe(acked);
    expect(valueOf(c, 'natlens_collector_batches_received_total')).toBeGreaterThan(0);
    expect(valueOf(c, 'natlens_collector_store_insert_duration_seconds_count', { table: 'hops' })).toBeGreaterThan(0);
    expect(valueOf(c, 'natlens_collector_store_insert_duration_seconds_sum', { table: 'hops' })).toBeGreaterThan(0);
    expect(samplesOf(c, 'natlens_collector_store_errors_total')).toEqual([]);
    expect(valueOf(c, 'natlens_collector_store_up')).toBe(1);
    expect(valueOf(c, 'natlens_collector_connections_stored_total')).toBeGreaterThanOrEqual(snatted);
    for (const node of state.nodes) {
      expect(valueOf(c, 'natlens_collector_connected_agents', { node: node.name }), node.name).toBe(1);
      expect(valueOf(c, 'natlens_collector_agent_events_captured_total', { node: node.name }), node.name).toBeGreaterThan(0);
    }
    expect(valueOf(c, 'natlens_collector_agent_events_lost_total')).toBe(0);

    expect(await get(collectorPort, '/readyz')).toEqual({ status: 200, body: '{"ready":true,"unmet":{}}\n' });
    expect(await get(collectorPort, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
    for (const [node, port] of agentPorts) {
      expect(await get(port, '/readyz'), node).toEqual({ status: 200, body: '{"ready":true,"unmet":{}}\n' });
      expect((await get(port, '/healthz')).status, node).toBe(200);
    }
  }, 120_000);

  it('writes every log line as JSON with ts, level, component and event', () => {
    const processes = [collector!.process, ...agents];
    for (const p of processes) {
      expect(p.stderr.length, p.name).toBeGreaterThan(0);
      for (const line of p.stderr) {
        const obj = JSON.parse(line) as Record<string, unknown>;
        expect(Number.isNaN(Date.parse(obj.ts as string)), `${p.name}: ${line}`).toBe(false);
        expect(obj.level, line).toMatch(/^(debug|info|warn|error)$/);
        expect(obj.component, line).toMatch(/^(agent|collector|k8s)$/);
        expect(typeof obj.event, line).toBe('string');
      }
    }
    for (const a of agents) for (const event of ['metrics-listening', 'ready', 'connected']) expect(a.statusOf(event), `${a.name} ${event}`).toMatchObject({ level: 'info', component: 'agent' });
    expect(collector!.process.statusOf('listening')).toMatchObject({ level: 'info', component: 'collector' });
  });

  it('once the collector is gone, agents are not ready (naming it) and queue what they capture', async () => {
    const address = collector!.address;
    await collector!.stop();
    collector = undefined;
    for (const [node, port] of agentPorts) {
      const r = await eventually(async () => {
        const res = await get(port, '/readyz');
        return res.status === 503 ? res : undefined;
      }, 15_000, `${node} /readyz 503`);
      const body = JSON.parse(r.body) as { ready: boolean; unmet: Record<string, string> };
      expect(body.ready).toBe(false);
      expect(Object.keys(body.unmet), node).toEqual(['collector']);
      expect(body.unmet.collector, node).toContain(`not connected to the collector at ${address}`);
      expect((await get(port, '/healthz')).status, node).toBe(200); // alive all the same
    }
    for (let round = 0; round < ROUNDS; round++) {
      const r = await labCurl('client', 'nodeport@node1', { prefix, timeoutMs: 3000 });
      expect(r.ok, `${r.target}: ${r.error}`).toBe(true);
    }
    const e = await eventually(async () => {
      const x = await scrape(agentPorts.get('node1')!);
      return valueOf(x, 'natlens_agent_events_queued') > 0 ? x : undefined;
    }, 10_000, 'node1 queueing events');
    expect(valueOf(e, 'natlens_agent_events_queued')).toBeGreaterThanOrEqual(ROUNDS);
    expect(valueOf(e, 'natlens_agent_collector_connected')).toBe(0);
    expect(valueOf(e, 'natlens_agent_events_lost_total')).toBe(0);
    for (const a of agents) expect(a.status.some((s) => s.event === 'disconnected' && s.level === 'warn'), a.name).toBe(true);
  }, 60_000);
});
