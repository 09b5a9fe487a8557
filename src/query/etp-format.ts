/**
 * `natlens etp` output: the --json shape (snake_case, plain numbers) and the text report, whose
 * last part is a before/after summary of every policy change in the window.
 */
import type { EtpPeriod, EtpResponse } from '../transport/proto.generated.js';
import { captureFaultLines, captureFaultsJson } from './completeness-format.js';

export function etpJson(res: EtpResponse) {
  const periods = res.periods.map(periodJson);
  return {
    service: res.service,
    since: res.since,
    periods,
    changes: changesOf(periods),
    complete: {
      events_lost: Number(res.complete?.eventsLost ?? 0n),
      lost_by_stage: Object.fromEntries(Object.entries(res.complete?.lostByStage ?? {}).map(([k, v]) => [k, Number(v)])),
      nodes_reporting: res.complete?.nodesReporting ?? [],
      collectors: res.complete?.collectors ?? [],
      ...captureFaultsJson(res.complete),
    },
  };
}

type PeriodJson = ReturnType<typeof periodJson>;

function periodJson(p: EtpPeriod) {
  return {
    from: p.from,
    to: p.to || null,
    external_traffic_policy: p.externalTrafficPolicy,
    type: p.type,
    health_check_node_port: p.healthCheckNodePort || null,
    connections: Number(p.connections),
    snat: Number(p.snat),
    snat_share: round(p.snatShare),
    dropped: Number(p.dropped),
    while_terminating: Number(p.whileTerminating),
    distinct_clients: Number(p.distinctClients),
    distinct_seen_as: Number(p.distinctSeenAs),
    endpoint_imbalance: round(p.endpointImbalance),
    per_node: p.perNode.map((n) => ({
      node: n.node,
      connections: Number(n.connections),
      snat: Number(n.snat),
      dropped: Number(n.dropped),
      endpoint_connections: Number(n.endpointConnections),
      health_check: n.healthCheck
        ? {
            last_status: n.healthCheck.lastStatus,
            last_at: n.healthCheck.lastAt,
            answers: Object.fromEntries(Object.entries(n.healthCheck.answers).map(([k, v]) => [k, Number(v)])),
            changes: n.healthCheck.changes.map((c) => ({ at: c.at, status: c.status, local_endpoints: c.localEndpoints })),
          }
        : null,
    })),
    per_endpoint: p.perEndpoint.map((e) => ({
      address: e.address,
      pod: e.pod || null,
      node: e.node || null,
      connections: Number(e.connections),
      while_terminating: Number(e.whileTerminating),
    })),
  };
}

const round = (x: number): number => Math.round(x * 1000) / 1000;
const pct = (x: number): string => `${Math.round(x * 100)}%`;

/** One entry per policy change: the period before, the period after, and what moved. */
function changesOf(periods: PeriodJson[]) {
  const out = [];
  for (let i = 1; i < periods.length; i++) {
    const a = periods[i - 1]!;
    const b = periods[i]!;
    if (a.external_traffic_policy === b.external_traffic_policy) continue;
    out.push({
      at: b.from,
      from_policy: a.external_traffic_policy,
      to_policy: b.external_traffic_policy,
      snat_share: { before: a.snat_share, after: b.snat_share },
      dropped: { before: a.dropped, after: b.dropped },
      connections: { before: a.connections, after: b.connections },
      distinct_seen_as: { before: a.distinct_seen_as, after: b.distinct_seen_as },
      nodes_with_traffic: { before: nodesWithTraffic(a), after: nodesWithTraffic(b) },
      nodes_dropping: { before: nodesDropping(a), after: nodesDropping(b) },
      health_checks_after: Object.fromEntries(b.per_node.filter((n) => n.health_check).map((n) => [n.node, n.health_check!.last_status])),
    });
  }
  return out;
}

const nodesWithTraffic = (p: PeriodJson): string[] => p.per_node.filter((n) => n.connections > 0).map((n) => n.node);
const nodesDropping = (p: PeriodJson): string[] => p.per_node.filter((n) => n.dropped > 0).map((n) => n.node);

function table(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(head), ...rows.map(line)];
}

function healthCell(h: PeriodJson['per_node'][number]['health_check']): string {
  if (!h) return '-';
  const answers = Object.entries(h.answers).map(([k, v]) => `${k === '0' ? 'no answer' : k}×${v}`).join(' ');
  const history = h.changes.map((c) => (c.status === 0 ? 'none' : String(c.status))).join('→');
  return `${history} (${answers})`;
}

export function formatEtp(res: EtpResponse): string {
  const j = etpJson(res);
  const out: string[] = [`externalTrafficPolicy history of ${j.service} since ${j.since}`];
  if (j.periods.length === 0) out.push('  no recorded state in the window');
  for (const p of j.periods) {
    out.push(
      '',
      `${p.external_traffic_policy} (${p.type}${p.health_check_node_port ? `, healthCheckNodePort ${p.health_check_node_port}` : ''}) from ${p.from} ${p.to ? `to ${p.to}` : '(in force)'}`,
      `  ${p.connections} connections, ${pct(p.snat_share)} with the client address replaced by SNAT, ${p.dropped} attempts dropped` +
        `${p.while_terminating ? `, ${p.while_terminating} to terminating endpoints` : ''}; pods saw ${p.distinct_seen_as} source addresses for ${p.distinct_clients} clients`,
    );
    const nodes = table(
      ['NODE', 'CONNS IN', 'SNAT', 'DROPPED', 'TO PODS HERE', 'HEALTH CHECK'],
      p.per_node.map((n) => [n.node, String(n.connections), String(n.snat), String(n.dropped), String(n.endpoint_connections), healthCell(n.health_check)]),
    );
    out.push(...nodes.map((l) => `  ${l}`));
    const eps = table(
      ['ENDPOINT', 'POD', 'NODE', 'CONNS', 'TERMINATING'],
      p.per_endpoint.map((e) => [e.address, e.pod ?? '?', e.node ?? '?', String(e.connections), String(e.while_terminating)]),
    );
    out.push(...eps.map((l) => `  ${l}`));
    if (p.per_endpoint.length > 1) out.push(`  endpoint imbalance: busiest endpoint has ${p.endpoint_imbalance}× the mean`);
  }
  if (j.changes.length) {
    out.push('', 'before / after:');
    for (const c of j.changes) {
      out.push(
        `  ${c.from_policy} -> ${c.to_policy} at ${c.at}:`,
        `    client address replaced by SNAT: ${pct(c.snat_share.before)} -> ${pct(c.snat_share.after)}`,
        `    source addresses the pods saw:   ${c.distinct_seen_as.before} -> ${c.distinct_seen_as.after}`,
        `    nodes taking traffic:            ${c.nodes_with_traffic.before.join(', ') || 'none'} -> ${c.nodes_with_traffic.after.join(', ') || 'none'}`,
        `    attempts dropped:                ${c.dropped.before} -> ${c.dropped.after}${c.nodes_dropping.after.length ? ` (on ${c.nodes_dropping.after.join(', ')})` : ''}`,
      );
      const hc = Object.entries(c.health_checks_after);
      if (hc.length) out.push(`    health checks after:             ${hc.map(([n, s]) => `${n} ${s === 0 ? 'no answer' : s}`).join(', ')}`);
    }
  }
  const c = j.complete;
  const stages = Object.entries(c.lost_by_stage).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ');
  out.push('', `complete: ${c.events_lost} events lost${stages ? ` (${stages})` : ''}; agents reporting: ${c.nodes_reporting.join(', ') || 'none'}; collectors: ${c.collectors.join(', ')}`);
  out.push(...captureFaultLines(c).map((l) => `  ${l}`));
  return `${out.join('\n')}\n`;
}
