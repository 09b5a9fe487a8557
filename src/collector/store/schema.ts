/**
 * The one place the collector's ClickHouse tables are declared. Each column is declared once, as a
 * name, a ClickHouse type, and how to read its value from a record; the DDL, the `file()` structure
 * string and the RowBinary encoder are all derived from that, so they cannot drift apart.
 */
import type { Addr16, CaptureGapRecord, ConnectionRecord, Hop, HopKind, LossSample, Proto, StitchStatus } from '../hop.js';
import type { RowBinaryWriter } from './row-binary.js';

/** A ClickHouse type and how one value of it is written in RowBinary. */
export interface ChType<V> {
  readonly sql: string;
  readonly write: (w: RowBinaryWriter, v: V) => void;
}

function enum8<K extends string>(values: Readonly<Record<K, number>>): ChType<K> {
  const entries = Object.entries(values) as Array<[K, number]>;
  const codes = new Map<string, number>(entries);
  return {
    sql: `Enum8(${entries.map(([k, v]) => `'${k}' = ${v}`).join(', ')})`,
    write: (w, v) => {
      const code = codes.get(v);
      if (code === undefined) throw new RangeError(`not a value of ${entries.map(([k]) => k).join('|')}: ${String(v)}`);
      w.int8(code);
    },
  };
}

function nullable<V>(inner: ChType<V>): ChType<V | null> {
  return {
    sql: `Nullable(${inner.sql})`,
    write: (w, v) => {
      w.nullMarker(v === null);
      if (v !== null) inner.write(w, v);
    },
  };
}

function array<V>(inner: ChType<V>): ChType<readonly V[]> {
  return {
    sql: `Array(${inner.sql})`,
    write: (w, vs) => {
      w.varUInt(vs.length);
      for (const v of vs) inner.write(w, v);
    },
  };
}

/** The ClickHouse types the tables use. */
export const T = {
  UInt8: { sql: 'UInt8', write: (w, v) => w.uint8(v) } as ChType<number>,
  UInt16: { sql: 'UInt16', write: (w, v) => w.uint16(v) } as ChType<number>,
  UInt32: { sql: 'UInt32', write: (w, v) => w.uint32(v) } as ChType<number>,
  Int32: { sql: 'Int32', write: (w, v) => w.int32(v) } as ChType<number>,
  /** From a JS number: the byte and packet counters, which stay far below 2^53. */
  UInt64: { sql: 'UInt64', write: (w, v) => w.uint64(v) } as ChType<number>,
  UInt64Big: { sql: 'UInt64', write: (w, v) => w.uint64Big(v) } as ChType<bigint>,
  /** Nanoseconds since the epoch; stored in UTC. */
  DateTime64ns: { sql: 'DateTime64(9)', write: (w, v) => w.dateTime64ns(v) } as ChType<bigint>,
  IPv6: { sql: 'IPv6', write: (w, v) => w.ipv6(v) } as ChType<Addr16>,
  Bool: { sql: 'Bool', write: (w, v) => w.bool(v) } as ChType<boolean>,
  String: { sql: 'String', write: (w, v) => w.string(v) } as ChType<string>,
  /** Same bytes as String in RowBinary; the dictionary is built by the engine. */
  LowCardinalityString: { sql: 'LowCardinality(String)', write: (w, v) => w.string(v) } as ChType<string>,
  Enum8: enum8,
  Nullable: nullable,
  Array: array,
} as const;

const PROTO = T.Enum8<Proto>({ tcp: 6, udp: 17 });
const HOP_KIND = T.Enum8<HopKind>({ conn: 1, drop: 2, end: 3, proxy: 4 });
const STITCH_STATUS = T.Enum8<StitchStatus>({ complete: 1, unstitched: 2, superseded: 3 });

export interface Column<R> {
  readonly name: string;
  /** ClickHouse type, as written in DDL. */
  readonly type: string;
  readonly write: (w: RowBinaryWriter, row: R) => void;
}

/** Columns of a table whose rows are `R`: `c(name, type, get)` declares one. */
function columnsOf<R>(declare: (c: <V>(name: string, type: ChType<V>, get: (r: R) => V) => Column<R>) => Column<R>[]): readonly Column<R>[] {
  return declare((name, type, get) => {
    const write = type.write;
    return { name, type: type.sql, write: (w, r) => write(w, get(r)) };
  });
}

export interface TableDef<R> {
  readonly name: string;
  readonly columns: readonly Column<R>[];
  readonly engine: string;
  readonly orderBy: readonly string[];
  /** Every table is partitioned by day of `ts` and expires by it, so TTL drops whole parts. */
  readonly timeColumn: 'ts';
}

const ZERO_ADDR: Addr16 = new Uint8Array(16);

/**
 * The pod address a hop is about: the post-DNAT destination (reply source) for conn/end, the
 * original destination for drops, which never reached conntrack's reply direction, and for PROXY
 * hops, whose orig is the connection as the pod sees it.
 */
export function hopEndpoint(h: Hop): Addr16 {
  return h.kind === 'drop' || h.kind === 'proxy' || h.reply === null ? h.orig.dst : h.reply.src;
}

export const hopsTable: TableDef<Hop> = {
  name: 'hops',
  engine: 'ReplacingMergeTree',
  orderBy: ['endpoint', 'ts', 'hop_id'],
  timeColumn: 'ts',
  columns: columnsOf<Hop>((c) => [
    c('ts', T.DateTime64ns, (h) => h.tsNs),
    c('node', T.LowCardinalityString, (h) => h.node),
    c('kind', HOP_KIND, (h) => h.kind),
    c('proto', PROTO, (h) => h.proto),
    c('family', T.UInt8, (h) => h.family),
    c('orig_src', T.IPv6, (h) => h.orig.src),
    c('orig_sport', T.UInt16, (h) => h.orig.sport),
    c('orig_dst', T.IPv6, (h) => h.orig.dst),
    c('orig_dport', T.UInt16, (h) => h.orig.dport),
    // Drops have no reply direction: zeros (:: and port 0), not NULL, to keep the columns plain.
    c('reply_src', T.IPv6, (h) => h.reply?.src ?? ZERO_ADDR),
    c('reply_sport', T.UInt16, (h) => h.reply?.sport ?? 0),
    c('reply_dst', T.IPv6, (h) => h.reply?.dst ?? ZERO_ADDR),
    c('reply_dport', T.UInt16, (h) => h.reply?.dport ?? 0),
    c('endpoint', T.IPv6, hopEndpoint),
    c('ct_status', T.UInt32, (h) => h.ctStatus),
    c('isn', T.Nullable(T.UInt32), (h) => h.isn),
    c('ifname', T.LowCardinalityString, (h) => h.ifname),
    c('delivered_local', T.Bool, (h) => h.deliveredLocal),
    c('packets_orig', T.UInt64, (h) => h.packetsOrig),
    c('bytes_orig', T.UInt64, (h) => h.bytesOrig),
    c('packets_reply', T.UInt64, (h) => h.packetsReply),
    c('bytes_reply', T.UInt64, (h) => h.bytesReply),
    c('hop_id', T.UInt64Big, (h) => h.id),
    c('proxy_version', T.UInt8, (h) => h.proxyVersion),
  ]),
};

/**
 * The same conn_id is stored again whenever a late hop changes the record, with a higher version
 * and possibly a different ts: readers must keep the highest version per conn_id themselves
 * (ReplacingMergeTree only collapses rows that merge into the same part and sort key), then skip
 * 'superseded' winners, which are counted under the record that absorbed them.
 */
export const connectionsTable: TableDef<ConnectionRecord> = {
  name: 'connections',
  engine: 'ReplacingMergeTree(version)',
  orderBy: ['endpoint', 'ts', 'conn_id'],
  timeColumn: 'ts',
  columns: columnsOf<ConnectionRecord>((c) => [
    c('conn_id', T.UInt64Big, (r) => r.connId),
    c('version', T.UInt32, (r) => r.version),
    c('ts', T.DateTime64ns, (r) => r.tsNs),
    c('last_ts', T.DateTime64ns, (r) => r.lastTsNs),
    c('proto', PROTO, (r) => r.proto),
    c('family', T.UInt8, (r) => r.family),
    c('endpoint', T.IPv6, (r) => r.endpoint),
    c('endpoint_port', T.UInt16, (r) => r.endpointPort),
    c('service', T.IPv6, (r) => r.service),
    c('service_port', T.UInt16, (r) => r.servicePort),
    c('client', T.Nullable(T.IPv6), (r) => r.client),
    c('client_port', T.UInt16, (r) => r.clientPort),
    c('seen_as', T.IPv6, (r) => r.seenAs),
    c('seen_as_port', T.UInt16, (r) => r.seenAsPort),
    c('ingress_node', T.LowCardinalityString, (r) => r.ingressNode),
    c('endpoint_node', T.LowCardinalityString, (r) => r.endpointNode),
    c('snat', T.Bool, (r) => r.snat),
    c('status', STITCH_STATUS, (r) => r.status),
    c('hop_nodes', T.Array(T.LowCardinalityString), (r) => r.hopNodes),
    c('isn', T.Nullable(T.UInt32), (r) => r.isn),
  ]),
};

/**
 * One row of agent_loss: one stage of one LossSample. A sample with no stages is stored as a single
 * row with stage '' and lost 0, so that the node still counts as having reported.
 */
export interface LossRow {
  sample: LossSample;
  stage: string;
  lost: number;
}

export function lossRows(samples: readonly LossSample[]): LossRow[] {
  const rows: LossRow[] = [];
  for (const sample of samples) {
    const stages = Object.entries(sample.lost);
    if (stages.length === 0) rows.push({ sample, stage: '', lost: 0 });
    for (const [stage, lost] of stages) rows.push({ sample, stage, lost });
  }
  return rows;
}

export const agentLossTable: TableDef<LossRow> = {
  name: 'agent_loss',
  engine: 'MergeTree',
  orderBy: ['ts', 'node'],
  timeColumn: 'ts',
  columns: columnsOf<LossRow>((c) => [
    c('ts', T.DateTime64ns, (r) => r.sample.tsNs),
    c('node', T.LowCardinalityString, (r) => r.sample.node),
    c('agent_id', T.String, (r) => r.sample.agentId),
    c('stage', T.LowCardinalityString, (r) => r.stage),
    // Cumulative since the agent (agent_id) started; readers take differences.
    c('lost', T.UInt64, (r) => r.lost),
    c('captured', T.UInt64, (r) => r.sample.captured),
  ]),
};

/** One row of agent_loss_per_cpu: one CPU of one LossSample's ringbuf_full. */
export interface CpuLossRow {
  sample: LossSample;
  cpu: number;
  ringbufFull: number;
}

export function cpuLossRows(samples: readonly LossSample[]): CpuLossRow[] {
  const rows: CpuLossRow[] = [];
  for (const sample of samples) {
    for (const [cpu, n] of Object.entries(sample.ringbufFullPerCpu ?? {})) rows.push({ sample, cpu: Number(cpu), ringbufFull: n });
  }
  return rows;
}

/** Where the kernel's ring buffer overflowed: written with agent_loss, read the same way (cumulative per agent_id). */
export const agentLossPerCpuTable: TableDef<CpuLossRow> = {
  name: 'agent_loss_per_cpu',
  engine: 'MergeTree',
  orderBy: ['ts', 'node'],
  timeColumn: 'ts',
  columns: columnsOf<CpuLossRow>((c) => [
    c('ts', T.DateTime64ns, (r) => r.sample.tsNs),
    c('node', T.LowCardinalityString, (r) => r.sample.node),
    c('agent_id', T.String, (r) => r.sample.agentId),
    c('cpu', T.UInt32, (r) => r.cpu),
    // Cumulative since the agent (agent_id) started; readers take differences.
    c('ringbuf_full', T.UInt64, (r) => r.ringbufFull),
  ]),
};

/**
 * Times nodes were not captured (proto CaptureGap). `ts` is when capture resumed, so a window's
 * gaps are a primary-key range. Every loss report of an agent repeats its gaps: the collector
 * stores each once per run, and readers group duplicates (a collector restart stores them again).
 */
export const captureGapsTable: TableDef<CaptureGapRecord> = {
  name: 'capture_gaps',
  engine: 'ReplacingMergeTree',
  orderBy: ['ts', 'node', 'from_ts'],
  timeColumn: 'ts',
  columns: columnsOf<CaptureGapRecord>((c) => [
    c('ts', T.DateTime64ns, (r) => r.toNs),
    c('from_ts', T.DateTime64ns, (r) => r.fromNs),
    c('node', T.LowCardinalityString, (r) => r.node),
    c('agent_id', T.String, (r) => r.agentId),
    c('cause', T.LowCardinalityString, (r) => r.cause),
    c('reason', T.String, (r) => r.reason),
    c('previous_pid', T.UInt32, (r) => r.previousPid),
  ]),
};

/**
 * One observed state of a Kubernetes Service with its endpoints (written by the collector's
 * Kubernetes watch whenever any of these changes): read a past connection against the row in force
 * at its time.
 */
export interface ServiceHistoryRow {
  tsNs: bigint;
  namespace: string;
  name: string;
  type: string;
  externalTrafficPolicy: string;
  internalTrafficPolicy: string;
  healthCheckNodePort: number;
  clusterIps: readonly Addr16[];
  nodePorts: readonly number[];
  /** JSON text: [{name, protocol, port, targetPort, nodePort}] (spec.ports). */
  ports: string;
  /** JSON text: [{ip, ipMode}] (status.loadBalancer.ingress; ipMode "VIP" or "Proxy"). */
  loadBalancerIngress: string;
  /** JSON text of ServiceEndpoint[] (src/k8s): [{pod, node, addresses, ready, serving, terminating}]. */
  endpoints: string;
  /** The Service was deleted at tsNs (the other fields repeat its last state). */
  deleted: boolean;
}

export const serviceHistoryTable: TableDef<ServiceHistoryRow> = {
  name: 'service_history',
  engine: 'ReplacingMergeTree',
  orderBy: ['namespace', 'name', 'ts'],
  timeColumn: 'ts',
  columns: columnsOf<ServiceHistoryRow>((c) => [
    c('ts', T.DateTime64ns, (r) => r.tsNs),
    c('namespace', T.LowCardinalityString, (r) => r.namespace),
    c('name', T.LowCardinalityString, (r) => r.name),
    c('type', T.LowCardinalityString, (r) => r.type),
    c('external_traffic_policy', T.LowCardinalityString, (r) => r.externalTrafficPolicy),
    c('internal_traffic_policy', T.LowCardinalityString, (r) => r.internalTrafficPolicy),
    c('health_check_node_port', T.UInt16, (r) => r.healthCheckNodePort),
    c('cluster_ips', T.Array(T.IPv6), (r) => r.clusterIps),
    c('node_ports', T.Array(T.UInt16), (r) => r.nodePorts),
    c('ports', T.String, (r) => r.ports),
    c('load_balancer_ingress', T.String, (r) => r.loadBalancerIngress),
    c('endpoints', T.String, (r) => r.endpoints),
    c('deleted', T.Bool, (r) => r.deleted),
  ]),
};

/** One observed state of a Pod (written on every change of its IPs, node or conditions). */
export interface PodHistoryRow {
  tsNs: bigint;
  namespace: string;
  name: string;
  uid: string;
  node: string;
  /** status.podIPs. */
  ips: readonly Addr16[];
  phase: string;
  ready: boolean;
  /** metadata.deletionTimestamp is set. */
  terminating: boolean;
  deleted: boolean;
}

export const podHistoryTable: TableDef<PodHistoryRow> = {
  name: 'pod_history',
  engine: 'ReplacingMergeTree',
  orderBy: ['namespace', 'name', 'ts'],
  timeColumn: 'ts',
  columns: columnsOf<PodHistoryRow>((c) => [
    c('ts', T.DateTime64ns, (r) => r.tsNs),
    c('namespace', T.LowCardinalityString, (r) => r.namespace),
    c('name', T.String, (r) => r.name),
    c('uid', T.String, (r) => r.uid),
    c('node', T.LowCardinalityString, (r) => r.node),
    c('ips', T.Array(T.IPv6), (r) => r.ips),
    c('phase', T.LowCardinalityString, (r) => r.phase),
    c('ready', T.Bool, (r) => r.ready),
    c('terminating', T.Bool, (r) => r.terminating),
    c('deleted', T.Bool, (r) => r.deleted),
  ]),
};

/** What a node's health-check node port answered (proto HealthCheckReading). */
export interface HealthCheckRow {
  tsNs: bigint;
  node: string;
  namespace: string;
  service: string;
  port: number;
  /** 0: no answer (see error). */
  statusCode: number;
  /** -1: the answer did not say. */
  localEndpoints: number;
  error: string;
}

export const healthChecksTable: TableDef<HealthCheckRow> = {
  name: 'health_checks',
  engine: 'MergeTree',
  orderBy: ['namespace', 'service', 'ts', 'node'],
  timeColumn: 'ts',
  columns: columnsOf<HealthCheckRow>((c) => [
    c('ts', T.DateTime64ns, (r) => r.tsNs),
    c('node', T.LowCardinalityString, (r) => r.node),
    c('namespace', T.LowCardinalityString, (r) => r.namespace),
    c('service', T.LowCardinalityString, (r) => r.service),
    c('port', T.UInt16, (r) => r.port),
    c('status_code', T.UInt16, (r) => r.statusCode),
    c('local_endpoints', T.Int32, (r) => r.localEndpoints),
    c('error', T.String, (r) => r.error),
  ]),
};

export const ALL_TABLES: ReadonlyArray<TableDef<never>> = [hopsTable, connectionsTable, agentLossTable, serviceHistoryTable, podHistoryTable, healthChecksTable,
  agentLossPerCpuTable, captureGapsTable];

// --- SQL derived from the declarations -------------------------------------------------------

/**
 * Database names are identifiers, which cannot be bound as parameters in every statement (an HTTP
 * `INSERT ... FORMAT RowBinary` has none), so they are validated once and then quoted.
 */
export function isValidDatabaseName(db: string): boolean {
  return /^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(db);
}

/** `db`.`table`, for a validated database name. */
export function qualified(db: string, table: TableDef<never>): string {
  return `\`${db}\`.\`${table.name}\``;
}

export function ttlExpression(table: TableDef<never>, ttlDays: number): string {
  return `toDateTime(${table.timeColumn}) + INTERVAL ${ttlDays} DAY`;
}

export function createDatabaseSql(db: string): string {
  return `CREATE DATABASE IF NOT EXISTS \`${db}\``;
}

export function createTableSql(db: string, table: TableDef<never>, ttlDays: number): string {
  const cols = table.columns.map((c) => `  \`${c.name}\` ${c.type}`).join(',\n');
  return [
    `CREATE TABLE IF NOT EXISTS ${qualified(db, table)} (\n${cols}\n)`,
    `ENGINE = ${table.engine}`,
    `PARTITION BY toDate(${table.timeColumn})`,
    `ORDER BY (${table.orderBy.join(', ')})`,
    `TTL ${ttlExpression(table, ttlDays)}`,
  ].join('\n');
}

/** `(a, b, ...)`: the explicit column list of an INSERT, in declaration (= RowBinary) order. */
export function columnList(table: TableDef<never>): string {
  return `(${table.columns.map((c) => `\`${c.name}\``).join(', ')})`;
}

/** The structure argument of `file(path, 'RowBinary', structure)`. */
export function structureOf(table: TableDef<never>): string {
  return table.columns.map((c) => `${c.name} ${c.type}`).join(', ');
}

/**
 * Appends `rows` to `w` in RowBinary. A value that does not fit its column throws, naming the row
 * and column; the caller discards the partial batch.
 */
export function encodeRows<R>(table: TableDef<R>, rows: readonly R[], w: RowBinaryWriter): void {
  const cols = table.columns;
  let i = 0;
  let j = 0;
  try {
    for (i = 0; i < rows.length; i++) {
      const row = rows[i] as R;
      for (j = 0; j < cols.length; j++) (cols[j] as Column<R>).write(w, row);
    }
  } catch (err) {
    const col = cols[j]?.name ?? '?';
    throw new RangeError(`${table.name} row ${i}, column ${col}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
