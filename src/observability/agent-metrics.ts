/**
 * The agent's metrics and readiness, read at scrape time from the counters the agent, the probe
 * (its STATS record) and the collector stream client already keep. Names: docs/observability.md.
 */
import type { Registry } from 'prom-client';
import type { Agent } from '../agent/agent.js';
import type { CollectorOutput } from '../agent/collector-output.js';
import { NATLENS_VERSION } from '../util/paths.js';
import type { Conditions } from './metrics-server.js';
import { one, readCounter, readGauge, type Samples } from './registry.js';

/** Kernel counters of records the BPF program / probe produced, by kind. */
const PROBE_KINDS = { conn: 'conn_seen', drop: 'drop_seen', end: 'end_seen', proxy: 'proxy_seen' } as const;
/** Kernel counters of packets deliberately not reported (not losses: see docs/observability.md). */
const SKIP_REASONS = ['ct_miss', 'parse_skip'] as const;
/** Loss stages the agent's stats event always has (the PROXY ones only once PROXY records were counted). */
const BASE_LOSS_STAGES = ['ringbuf_full', 'pending_full', 'netlink_lost', 'decode_errors'] as const;

export function registerAgentMetrics(registry: Registry, agent: Agent, output?: CollectorOutput): void {
  const kernel = () => agent.stats()?.counters;
  const client = () => output?.stats();

  readGauge(registry, 'natlens_agent_info', 'Always 1; labels say which node, capture mode and version this agent runs.', ['node', 'mode', 'version'],
    () => [[{ node: agent.options.node, mode: agent.mode ?? 'starting', version: NATLENS_VERSION }, 1]]);
  readCounter(registry, 'natlens_agent_events_captured_total', 'Records the agent took from the probe, by kind (conn, drop, end, proxy).', ['kind'],
    () => Object.entries(agent.captured).map(([kind, n]) => [{ kind }, n] as const));
  readCounter(registry, 'natlens_agent_probe_events_total', 'Records the kernel side (BPF program, ctnetlink reader) produced, by kind: the probe\'s own counters.', ['kind'],
    () => {
      const c = kernel();
      return c ? Object.entries(PROBE_KINDS).map(([kind, ctr]) => [{ kind }, c[ctr]] as const) : [];
    });
  readCounter(registry, 'natlens_agent_events_lost_total', 'Events lost, by the stage that lost them (kernel ring buffer, pending-attempt map, netlink socket, decoding, PROXY headers, the stream queue, ...).', ['stage'],
    () => lossByStage(agent, output));
  readCounter(registry, 'natlens_agent_probe_skipped_total', 'Packets the probe deliberately did not report, by reason (ct_miss: no conntrack entry; parse_skip: headers it does not parse).', ['reason'],
    () => {
      const c = kernel();
      return SKIP_REASONS.map((reason) => [{ reason }, c?.[reason] ?? 0] as const);
    });
  readGauge(registry, 'natlens_agent_interfaces_attached', 'Interfaces the probe\'s programs are attached to.', [], () => one(agent.interfaceCount));
  readCounter(registry, 'natlens_agent_probe_starts_total', 'natlens-probe processes started (more than 1: the probe was restarted).', [], () => one(agent.probeStarts));

  if (!output) return;
  readCounter(registry, 'natlens_agent_events_sent_total', 'Events written to the collector stream, resends included.', [], () => one(client()?.sentEvents ?? 0));
  readCounter(registry, 'natlens_agent_events_acked_total', 'Events the collector acknowledged (stored).', [], () => one(client()?.ackedEvents ?? 0));
  readCounter(registry, 'natlens_agent_batches_sent_total', 'Batches written to the collector stream, resends included.', [], () => one(client()?.sentBatches ?? 0));
  readCounter(registry, 'natlens_agent_batches_acked_total', 'Batches the collector acknowledged.', [], () => one(client()?.ackedBatches ?? 0));
  readGauge(registry, 'natlens_agent_events_queued', 'Events waiting to be sent (while the collector is slow or away).', [], () => one(client()?.queuedEvents ?? 0));
  readGauge(registry, 'natlens_agent_events_inflight', 'Events sent on the current stream and not yet acknowledged.', [], () => one(client()?.inflightEvents ?? 0));
  readCounter(registry, 'natlens_agent_collector_reconnects_total', 'Streams to the collector re-established after the first.', [], () => one(client()?.reconnects ?? 0));
  readGauge(registry, 'natlens_agent_collector_connected', '1 while the stream to the collector is up (welcomed), else 0.', [], () => one(client()?.connected ? 1 : 0));
}

function lossByStage(agent: Agent, output?: CollectorOutput): Samples<'stage'> {
  const out = new Map<string, number>(BASE_LOSS_STAGES.map((s) => [s, 0]));
  const lost = agent.stats()?.lost;
  if (lost) for (const [stage, n] of Object.entries(lost)) if (stage !== 'total' && n !== undefined) out.set(stage, n);
  if (output) for (const [stage, n] of Object.entries(output.clientLoss())) out.set(stage, n ?? 0);
  return [...out].map(([stage, n]) => [{ stage }, n] as const);
}

/** Ready: capture is live and, when streaming, the collector has welcomed the stream. */
export function agentReadiness(readiness: Conditions, agent: Agent, output?: CollectorOutput): void {
  readiness.set('capture', () => {
    if (agent.attached) return null;
    return agent.probeStarts === 0 ? 'natlens-probe is starting' : 'natlens-probe is not attached (it exited)';
  });
  if (!output) return;
  readiness.set('collector', () => {
    if (output.stats().connected) return null;
    const last = output.lastDisconnect;
    return `not connected to the collector at ${output.target}${last ? ` (last: ${last})` : ' yet'}`;
  });
}
