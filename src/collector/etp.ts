/**
 * `natlens etp NAMESPACE/SERVICE`: what a Service's traffic looked like in each period between
 * changes of its externalTrafficPolicy, from the store alone (so it reads the past, across
 * collector restarts): the Service's recorded history gives the periods and what the client could
 * dial (frontends); stitched connections give who came in where and whether SNAT hid the client;
 * drop hops give the attempts a node's kernel saw die; health-check readings give what each node's
 * healthCheckNodePort told the load balancer.
 */
import { formatTimestamp } from '../agent/events.js';
import { formatAddr, parseAddr } from './addr.js';
import type { Addr16 } from './hop.js';
import { ipText, type ClickHouseStore } from './store/clickhouse-store.js';
import { connectionsTable, healthChecksTable, hopsTable, serviceHistoryTable } from './store/schema.js';
import type { EtpEndpoint, EtpHealthCheck, EtpNode, EtpPeriod } from '../transport/proto.generated.js';
import { createEtpHealthCheck, createEtpNode, createEtpPeriod } from '../transport/proto.generated.js';

/** One recorded state of the Service (a service_history row, parsed). */
export interface ServiceStateRow {
  tsNs: bigint;
  type: string;
  externalTrafficPolicy: string;
  healthCheckNodePort: number;
  clusterIps: string[];
  nodePorts: number[];
  ports: Array<{ name?: string; protocol?: string; port: number; nodePort?: number }>;
  loadBalancerIngress: Array<{ ip: string; ipMode?: string }>;
  endpoints: Array<{ pod: string | null; node: string; addresses: string[]; ready: boolean; serving: boolean; terminating: boolean }>;
  deleted: boolean;
}

export interface EtpQuery {
  namespace: string;
  name: string;
  sinceNs: bigint;
  nowNs: bigint;
  /** Every address of every node (node name -> addresses): NodePort frontends. */
  nodeAddresses: ReadonlyMap<string, readonly string[]>;
}

export interface EtpReport {
  /** No history row for the Service at all: it was never seen. */
  known: boolean;
  periods: EtpPeriod[];
}

function parseJson<T>(text: string, fallback: T): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback;
  }
}

/** service_history columns as loadServiceStates and parseServiceState read them. */
export const SERVICE_STATE_COLUMNS = `toString(toUnixTimestamp64Nano(ts)) AS ts_ns, type, external_traffic_policy, health_check_node_port,
    arrayMap(a -> ${ipText('a')}, cluster_ips) AS cluster_ips, node_ports, ports, load_balancer_ingress, endpoints, deleted`;

export interface ServiceStateRaw {
  ts_ns: string;
  type: string;
  external_traffic_policy: string;
  health_check_node_port: number;
  cluster_ips: string[];
  node_ports: number[];
  ports: string;
  load_balancer_ingress: string;
  endpoints: string;
  deleted: boolean | number;
}

export function parseServiceState(r: ServiceStateRaw): ServiceStateRow {
  return {
    tsNs: BigInt(r.ts_ns),
    type: r.type,
    externalTrafficPolicy: r.external_traffic_policy,
    healthCheckNodePort: Number(r.health_check_node_port),
    clusterIps: r.cluster_ips,
    nodePorts: r.node_ports.map(Number),
    ports: parseJson(r.ports, []),
    loadBalancerIngress: parseJson(r.load_balancer_ingress, []),
    endpoints: parseJson(r.endpoints, []),
    deleted: Boolean(r.deleted),
  };
}

export async function loadServiceStates(store: ClickHouseStore, q: Pick<EtpQuery, 'namespace' | 'name' | 'sinceNs'>): Promise<ServiceStateRow[]> {
  const table = store.tableName(serviceHistoryTable);
  const cols = SERVICE_STATE_COLUMNS;
  const params = { ns: q.namespace, name: q.name, since: q.sinceNs.toString() };
  // The state in force when the window opens, then every change inside it.
  const query = `
    SELECT * FROM (
      SELECT ${cols} FROM ${table}
      WHERE namespace = {ns:String} AND name = {name:String} AND ts < fromUnixTimestamp64Nano({since:Int64})
      ORDER BY ts DESC LIMIT 1
    )
    UNION ALL
    SELECT ${cols} FROM ${table}
    WHERE namespace = {ns:String} AND name = {name:String} AND ts >= fromUnixTimestamp64Nano({since:Int64})
    ORDER BY ts_ns`;
  const raw = await store.select<ServiceStateRaw>('etp: service history', serviceHistoryTable, query, params);
  return raw.map(parseServiceState).sort((a, b) => (a.tsNs < b.tsNs ? -1 : a.tsNs > b.tsNs ? 1 : 0));
}

/** Every address:port a client could have dialled to reach the Service in any of `states`. */
export function frontendsOf(states: readonly ServiceStateRow[], nodeAddresses: ReadonlyMap<string, readonly string[]>): Array<[string, number]> {
  const seen = new Set<string>();
  const out: Array<[string, number]> = [];
  const add = (ip: string, port: number): void => {
    const a = parseAddr(ip);
    if (!a || !port) return;
    const key = `${formatAddr(a)}|${port}`;
    if (seen.has(key)) return;
    seen.add(key);
    out.push([ip, port]);
  };
  const allNodeAddrs = [...nodeAddresses.values()].flat();
  for (const s of states) {
    for (const p of s.ports) {
      for (const ip of s.clusterIps) add(ip, p.port);
      for (const ing of s.loadBalancerIngress) add(ing.ip, p.port);
      if (p.nodePort) for (const ip of allNodeAddrs) add(ip, p.nodePort);
    }
  }
  return out;
}

interface Period {
  fromNs: bigint;
  /** Exclusive; null while in force. */
  toNs: bigint | null;
  state: ServiceStateRow;
  /** Indexes into the states list of the rows this period covers (an endpoint change splits no period). */
  rows: number[];
}

/** Consecutive states with the same type and policy form one period. */
export function periodsOf(states: readonly ServiceStateRow[], sinceNs: bigint): Period[] {
  const periods: Period[] = [];
  states.forEach((s, i) => {
    const last = periods[periods.length - 1];
    const from = s.tsNs < sinceNs ? sinceNs : s.tsNs;
    if (last && !s.deleted && last.state.externalTrafficPolicy === s.externalTrafficPolicy && last.state.type === s.type && !last.state.deleted) {
      last.rows.push(i);
      return;
    }
    if (last) last.toNs = from;
    periods.push({ fromNs: from, toNs: null, state: s, rows: [i] });
  });
  return periods.filter((p) => !p.state.deleted);
}

/** Which history row (index) was in force at each connection: bounds[i] = start of row i. */
function boundsOf(states: readonly ServiceStateRow[], sinceNs: bigint): string[] {
  return states.map((s) => (s.tsNs < sinceNs ? sinceNs : s.tsNs).toString());
}

export async function etpReport(store: ClickHouseStore, q: EtpQuery): Promise<EtpReport> {
  const states = await loadServiceStates(store, q);
  if (states.length === 0) return { known: false, periods: [] };
  const periods = periodsOf(states, q.sinceNs);
  const frontends = frontendsOf(states, q.nodeAddresses);
  const bounds = boundsOf(states, q.sinceNs);
  const params = {
    since: q.sinceNs.toString(),
    fe_ip: frontends.map(([ip]) => ip),
    fe_port: frontends.map(([, port]) => port),
    bounds,
    pbounds: periods.map((p) => p.fromNs.toString()),
  };
  const since = 'fromUnixTimestamp64Nano({since:Int64})';
  const isFrontend = (ip: string, port: string): string => `has(arrayZip({fe_ip:Array(IPv6)}, {fe_port:Array(UInt16)}), (${ip}, ${port}))`;
  // 1-based index of the last bound at or before t: the history row (or period) in force.
  // Bounds travel as strings: the client quotes array elements, which Array(Int64) does not parse.
  const slot = (t: string, b: string): string => `arrayCount(x -> toInt64(x) <= toUnixTimestamp64Nano(${t}), {${b}:Array(String)})`;
  const conns = store.tableName(connectionsTable);
  const hops = store.tableName(hopsTable);
  const health = store.tableName(healthChecksTable);
  // Connections, deduped by conn_id at their highest version (as in who), that dialled a frontend.
  const dedupedConnections = `
    SELECT w.1 AS ts, w.2 AS endpoint, w.3 AS ingress_node, w.4 AS endpoint_node, w.5 AS snat, w.6 AS client, w.7 AS seen_as,
           w.8 AS service, w.9 AS service_port, w.10 AS status
    FROM (
      SELECT argMax((ts, endpoint, ingress_node, endpoint_node, snat, client, seen_as, service, service_port, status), version) AS w
      FROM ${conns}
      WHERE conn_id IN (SELECT conn_id FROM ${conns} WHERE ts >= ${since} AND ${isFrontend('service', 'service_port')})
      GROUP BY conn_id
    )
    WHERE ts >= ${since} AND status != 'superseded'`;
  const connQuery = `
    SELECT ${slot('ts', 'bounds')} AS row, ${ipText('endpoint')} AS endpoint_text, ingress_node, endpoint_node, snat,
           toString(count()) AS n
    FROM (${dedupedConnections})
    GROUP BY row, endpoint, ingress_node, endpoint_node, snat`;
  const distinctQuery = `
    SELECT ${slot('ts', 'pbounds')} AS period, toString(uniqExact(client)) AS clients, toString(uniqExact(seen_as)) AS seen_as
    FROM (${dedupedConnections})
    GROUP BY period`;
  // A hop resent after a collector restart is stored twice until a merge: count hop ids.
  const dropQuery = `
    SELECT ${slot('ts', 'pbounds')} AS period, node, toString(uniqExact(hop_id)) AS n
    FROM ${hops}
    WHERE kind = 'drop' AND ts >= ${since} AND ${isFrontend('orig_dst', 'orig_dport')}
    GROUP BY period, node`;
  // Readings ride in agents' batches: a batch resent after a collector restart repeats them.
  const healthQuery = `
    SELECT ${slot('ts', 'pbounds')} AS period, node, toString(toUnixTimestamp64Nano(ts)) AS ts_ns, status_code, local_endpoints
    FROM ${health}
    WHERE namespace = {ns:String} AND service = {name:String} AND ts >= ${since}
    GROUP BY node, ts, status_code, local_endpoints
    ORDER BY node, ts
    LIMIT 200000`;
  interface ConnRaw { row: number; endpoint_text: string; ingress_node: string; endpoint_node: string; snat: boolean | number; n: string }
  interface DistinctRaw { period: number; clients: string; seen_as: string }
  interface DropRaw { period: number; node: string; n: string }
  interface HealthRaw { period: number; node: string; ts_ns: string; status_code: number; local_endpoints: number }
  const [connRows, distinctRows, dropRows, healthRows] = await Promise.all([
    store.select<ConnRaw>('etp: connections', connectionsTable, connQuery, params),
    store.select<DistinctRaw>('etp: clients', connectionsTable, distinctQuery, params),
    store.select<DropRaw>('etp: drops', hopsTable, dropQuery, params),
    store.select<HealthRaw>('etp: health checks', healthChecksTable, healthQuery, { ...params, ns: q.namespace, name: q.name }),
  ]);

  // History row index -> period index; endpoint terminating per row.
  const periodOfRow = new Map<number, number>();
  periods.forEach((p, pi) => p.rows.forEach((r) => periodOfRow.set(r, pi)));
  const periodOfSlot = (slot1: number): number | undefined => periodOfRow.get(slot1 - 1);

  const out = periods.map((p): Agg => newAgg(p));
  for (const r of connRows) {
    const pi = periodOfSlot(Number(r.row));
    if (pi === undefined) continue;
    const agg = out[pi]!;
    const n = Number(r.n);
    const snat = Boolean(r.snat);
    agg.connections += n;
    if (snat) agg.snat += n;
    const node = nodeAgg(agg, r.ingress_node || '?');
    node.connections += n;
    if (snat) node.snat += n;
    if (r.endpoint_node) nodeAgg(agg, r.endpoint_node).endpoint_connections += n;
    const row = states[Number(r.row) - 1]!;
    const ep = row.endpoints.find((e) => e.addresses.includes(r.endpoint_text));
    const e = endpointAgg(agg, r.endpoint_text, ep?.pod ?? '', ep?.node ?? r.endpoint_node);
    e.connections += n;
    if (ep?.terminating) {
      e.while_terminating += n;
      agg.whileTerminating += n;
    }
  }
  for (const r of distinctRows) {
    const agg = out[Number(r.period) - 1];
    if (!agg) continue;
    agg.distinctClients = Number(r.clients);
    agg.distinctSeenAs = Number(r.seen_as);
  }
  for (const r of dropRows) {
    const agg = out[Number(r.period) - 1];
    if (!agg) continue;
    const n = Number(r.n);
    agg.dropped += n;
    nodeAgg(agg, r.node).dropped += n;
  }
  for (const r of healthRows) {
    const agg = out[Number(r.period) - 1];
    if (!agg) continue;
    const hc = healthAgg(nodeAgg(agg, r.node));
    const status = Number(r.status_code);
    const key = String(status);
    hc.answers[key] = (hc.answers[key] ?? 0n) + 1n;
    const at = formatTimestamp(BigInt(r.ts_ns));
    const prev = hc.changes[hc.changes.length - 1];
    if (!prev || prev.status !== status) hc.changes.push({ at, status, localEndpoints: Number(r.local_endpoints) });
    hc.lastStatus = status;
    hc.lastAt = at;
  }
  return { known: true, periods: out.map(finish) };
}

interface Agg {
  period: Period;
  connections: number;
  snat: number;
  dropped: number;
  whileTerminating: number;
  distinctClients: number;
  distinctSeenAs: number;
  nodes: Map<string, { node: string; connections: number; dropped: number; snat: number; endpoint_connections: number; health?: EtpHealthCheck }>;
  endpoints: Map<string, { address: string; pod: string; node: string; connections: number; while_terminating: number }>;
}

function newAgg(p: Period): Agg {
  const agg: Agg = { period: p, connections: 0, snat: 0, dropped: 0, whileTerminating: 0, distinctClients: 0, distinctSeenAs: 0, nodes: new Map(), endpoints: new Map() };
  // Every endpoint the Service had in the period counts for the imbalance, with or without traffic.
  for (const e of p.state.endpoints) for (const a of e.addresses) endpointAgg(agg, a, e.pod ?? '', e.node);
  return agg;
}

function nodeAgg(agg: Agg, node: string) {
  let n = agg.nodes.get(node);
  if (!n) agg.nodes.set(node, (n = { node, connections: 0, dropped: 0, snat: 0, endpoint_connections: 0 }));
  return n;
}

function healthAgg(n: { health?: EtpHealthCheck }): EtpHealthCheck {
  if (!n.health) n.health = createEtpHealthCheck({ answers: {}, changes: [] });
  return n.health;
}

function endpointAgg(agg: Agg, address: string, pod: string, node: string) {
  let e = agg.endpoints.get(address);
  if (!e) agg.endpoints.set(address, (e = { address, pod, node, connections: 0, while_terminating: 0 }));
  if (!e.pod && pod) e.pod = pod;
  if (!e.node && node) e.node = node;
  return e;
}

function finish(agg: Agg): EtpPeriod {
  const p = agg.period;
  const perNode: EtpNode[] = [...agg.nodes.values()]
    .sort((a, b) => a.node.localeCompare(b.node))
    .map((n) => createEtpNode({
      node: n.node, connections: BigInt(n.connections), dropped: BigInt(n.dropped), snat: BigInt(n.snat),
      endpointConnections: BigInt(n.endpoint_connections), ...(n.health ? { healthCheck: n.health } : {}),
    }));
  const perEndpoint: EtpEndpoint[] = [...agg.endpoints.values()]
    .sort((a, b) => b.connections - a.connections || a.address.localeCompare(b.address))
    .map((e) => ({ address: e.address, pod: e.pod, node: e.node, connections: BigInt(e.connections), whileTerminating: BigInt(e.while_terminating) }));
  // Endpoints are counted once per pod (a dual-stack pod has two addresses).
  const byPod = new Map<string, number>();
  for (const e of agg.endpoints.values()) byPod.set(e.pod || e.address, (byPod.get(e.pod || e.address) ?? 0) + e.connections);
  const counts = [...byPod.values()];
  const mean = counts.length ? counts.reduce((a, b) => a + b, 0) / counts.length : 0;
  return createEtpPeriod({
    from: formatTimestamp(p.fromNs),
    to: p.toNs === null ? '' : formatTimestamp(p.toNs),
    externalTrafficPolicy: p.state.externalTrafficPolicy || 'Cluster',
    type: p.state.type,
    healthCheckNodePort: p.state.healthCheckNodePort,
    connections: BigInt(agg.connections),
    snat: BigInt(agg.snat),
    snatShare: agg.connections ? agg.snat / agg.connections : 0,
    dropped: BigInt(agg.dropped),
    perNode,
    perEndpoint,
    endpointImbalance: mean > 0 ? Math.max(...counts) / mean : 0,
    whileTerminating: BigInt(agg.whileTerminating),
    distinctClients: BigInt(agg.distinctClients),
    distinctSeenAs: BigInt(agg.distinctSeenAs),
  });
}

/** Adds peers' answers for the same periods (same count, same policies); null when they disagree. */
export function mergeEtpPeriods(parts: EtpPeriod[][]): EtpPeriod[] | null {
  const [first, ...rest] = parts;
  if (!first) return [];
  const out = first.map((p) => structuredClone(p));
  for (const other of rest) {
    if (other.length !== out.length || other.some((p, i) => p.externalTrafficPolicy !== out[i]!.externalTrafficPolicy)) return null;
    other.forEach((p, i) => {
      const m = out[i]!;
      m.connections += p.connections;
      m.snat += p.snat;
      m.dropped += p.dropped;
      m.whileTerminating += p.whileTerminating;
      m.distinctClients = m.distinctClients > p.distinctClients ? m.distinctClients : p.distinctClients;
      m.distinctSeenAs = m.distinctSeenAs > p.distinctSeenAs ? m.distinctSeenAs : p.distinctSeenAs;
      for (const n of p.perNode) {
        const have = m.perNode.find((x) => x.node === n.node);
        if (!have) {
          m.perNode.push(n);
          continue;
        }
        have.connections += n.connections;
        have.dropped += n.dropped;
        have.snat += n.snat;
        have.endpointConnections += n.endpointConnections;
        if (n.healthCheck && (!have.healthCheck || n.healthCheck.lastAt > have.healthCheck.lastAt)) have.healthCheck = n.healthCheck;
      }
      for (const e of p.perEndpoint) {
        const have = m.perEndpoint.find((x) => x.address === e.address);
        if (!have) m.perEndpoint.push(e);
        else {
          have.connections += e.connections;
          have.whileTerminating += e.whileTerminating;
        }
      }
    });
  }
  for (const m of out) {
    m.snatShare = m.connections ? Number(m.snat) / Number(m.connections) : 0;
    m.perNode.sort((a, b) => a.node.localeCompare(b.node));
  }
  return out;
}

export type { Addr16 };
