/**
 * The collector's storage: hops, stitched connections and agent loss in ClickHouse, either embedded
 * (chdb, one data directory per process) or on a server by URL. The same @clickhouse/client code
 * drives both; only the insert path differs, because chdb's connection turns insert bodies into
 * UTF-8 text, which would corrupt RowBinary.
 */
import { mkdir, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { ClickHouseLogLevel, createClient, type ClickHouseClient, type ClickHouseClientConfigOptions } from '@clickhouse/client';
import type { Addr16, CaptureGapRecord, ConnectionRecord, Hop, HopKind, LossSample, Proto, StitchStatus } from '../hop.js';
import { formatIPv6 } from '../../probe/ip-format.js';
import { backoffDelay, type BackoffOptions } from '../../util/backoff.js';
import { NatlensError, describeError } from '../../util/errors.js';
import { RowBinaryWriter } from './row-binary.js';
import {
  agentLossPerCpuTable,
  agentLossTable,
  ALL_TABLES,
  captureGapsTable,
  cpuLossRows,
  columnList,
  connectionsTable,
  createDatabaseSql,
  createTableSql,
  encodeRows,
  healthChecksTable,
  hopsTable,
  isValidDatabaseName,
  podHistoryTable,
  serviceHistoryTable,
  type HealthCheckRow,
  type PodHistoryRow,
  type ServiceHistoryRow,
  lossRows,
  qualified,
  structureOf,
  ttlExpression,
  type TableDef,
} from './schema.js';

/** A storage operation failed: the message names the operation and table, `cause` has the engine's error. */
export class StoreError extends NatlensError {}

/** The store is not reachable yet (or any more): the operation may succeed later. */
export class StoreUnavailableError extends StoreError {
  /** Queries answer UNAVAILABLE (see stream-server.ts): ask again later. */
  readonly grpcCode = 14;
}

/** The store holds tables this version cannot use: retrying will not help (exit code 2). */
export class StoreSchemaError extends StoreError {}

/** connecting: not reached yet (retrying); ready; failed: a configuration problem, no retry; closed. */
export type StoreState = 'connecting' | 'ready' | 'failed' | 'closed';

export interface ConnectOptions {
  /** Delays between attempts. Default 250 ms doubling to 5 s, with jitter. */
  backoff?: BackoffOptions;
  /** An attempt failed; the next one comes after delayMs. `store` names the store (no password). */
  onRetry?(info: { store: string; attempt: number; delayMs: number; error: Error }): void;
}

export const DEFAULT_STORE_BACKOFF: BackoffOptions = { initialMs: 250, maxMs: 5000 };

export interface StoreOptions {
  /** Embedded mode: chdb on this directory (created if missing). Exactly one of dataDir and url. */
  dataDir?: string;
  /** Server mode: ClickHouse HTTP(S) URL, e.g. http://user:password@clickhouse:8123. */
  url?: string;
  /** Default `natlens`. */
  database?: string;
  /** Rows older than this are dropped (at insert, and by merges later). Default 7. */
  ttlDays?: number;
  /** Server mode: per-request timeout. Default 30 s. */
  requestTimeoutMs?: number;
}

export interface WhoQuery {
  /** The pod address, or every address the pod had (NAMESPACE/POD targets). */
  endpoint: Addr16 | readonly Addr16[];
  /** Only connections to this pod port. */
  port?: number;
  /** Only connections whose first hop is at or after this time (ns). */
  sinceNs: bigint;
  /** Windows [from, to) in ns during which the pod was terminating: connections in them are counted apart. */
  terminating?: ReadonlyArray<readonly [bigint, bigint]>;
}

/** One group of connections to the pod that share who called, what the pod saw, and the path. */
export interface WhoRowData {
  /** The caller as the kernel saw it at the first hop, null when that hop was not captured. IPv4 as a.b.c.d. */
  client: string | null;
  /** The real client a PROXY protocol header named (then `client` is the proxy), else null. */
  proxyClient: string | null;
  /** 1 or 2 when proxyClient is set, else 0. */
  proxyVersion: number;
  /** The source address the pod saw. */
  seenAs: string;
  /** What the client dialled at the first hop (ClusterIP, node address, LB address, or the pod). */
  dialled: string;
  dialledPort: number;
  /** The pod address these connections reached. */
  endpoint: string;
  connections: number;
  /** Of connections, those whose first hop fell in a `terminating` window. */
  whileTerminating: number;
  ingressNode: string;
  endpointNode: string;
  snat: boolean;
  firstSeenNs: bigint;
  lastSeenNs: bigint;
  protocols: string[];
  stitched: boolean;
}

export interface WhoResult {
  /** Most connections first. */
  rows: WhoRowData[];
  /** Connections in `rows` whose hops could not all be stitched. */
  unstitched: number;
}

export interface LossSummary {
  /** Events lost by all agents within the window. */
  total: number;
  byStage: Record<string, number>;
  /** Nodes whose agents reported within the window. */
  nodes: string[];
}

/** Ring-buffer loss of one CPU of one node within a window. */
export interface CpuLossSummary {
  node: string;
  cpu: number;
  ringbufFull: number;
}

/** A time a node was not captured, as stored (one per node, from and to, whoever reported it). */
export interface CaptureGapSummary {
  node: string;
  fromNs: bigint;
  toNs: bigint;
  cause: string;
  reason: string;
}

const DEFAULT_DATABASE = 'natlens';
const DEFAULT_TTL_DAYS = 7;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/**
 * Readers dedupe by conn_id themselves, so collapsing duplicates inside each inserted block is
 * wasted work: about a fifth of the engine's insert time on this machine.
 */
const INSERT_SETTINGS = {
  optimize_on_insert: 0,
  // Rows of many days (a long TTL, an agent's backlog) make a part per day: more than 100 must
  // not fail the insert of every agent's batch, again at each retry.
  throw_on_max_partitions_per_insert_block: 0,
} as const;
const INSERT_SETTINGS_SQL = Object.entries(INSERT_SETTINGS).map(([k, v]) => `${k} = ${v}`).join(', ');
/** Kept writers (each holds one batch's worth of memory) for the next inserts. */
const WRITER_POOL_SIZE = 2;
/** A writer grown by an unusually large batch is dropped rather than kept. */
const MAX_POOLED_WRITER_BYTES = 32 << 20;

/** Text form of an IPv6 column: IPv4-mapped addresses as plain a.b.c.d (NULL stays NULL). */
/** SQL text of an IPv6 column as people write it: IPv4-mapped as a.b.c.d. Used by every reader of the store. */
export function ipText(expr: string): string {
  const s = `toString(${expr})`;
  // Only ::ffff:0:0/96 is printed with a dotted tail, so prefix + '.' identifies it exactly.
  return `if(startsWith(${s}, '::ffff:') AND position(${s}, '.') > 0, substring(${s}, 8), ${s})`;
}

type Backend =
  | { kind: 'embedded'; dataDir: string; ingestDir: string }
  /** `url` without its password. */
  | { kind: 'server'; url: string };

interface Opened {
  client: ClickHouseClient;
  backend: Backend;
}

export class ClickHouseStore {
  readonly database: string;
  /** Rows older than this many days are dropped at insert (and by merges later). */
  ttlDays = DEFAULT_TTL_DAYS;
  /** Set once connected (and the schema checked); null before. */
  #client: ClickHouseClient | null = null;
  readonly #backend: Backend;
  readonly #writers: RowBinaryWriter[] = [];
  readonly #inflight = new Set<Promise<unknown>>();
  #state: StoreState = 'connecting';
  #lastError: Error | null = null;
  #connected: Promise<void> = Promise.resolve();
  #wakeRetry: (() => void) | null = null;
  #closed = false;
  #fileSeq = 0;
  /** Told of every insert that ran: table, seconds taken, whether it failed (the collector's metrics). */
  onInsert: ((table: string, seconds: number, failed: boolean) => void) | undefined;

  private constructor(backend: Backend, database: string) {
    this.#backend = backend;
    this.database = database;
  }

  /** Opens the store, or fails at once (unreachable, directory locked, bad options). */
  static async open(opts: StoreOptions): Promise<ClickHouseStore> {
    const { database, ttlDays, backend } = checkOptions(opts);
    const { client } = opts.dataDir !== undefined ? await openEmbedded(opts.dataDir) : await openServer(opts.url ?? '', opts.requestTimeoutMs);
    const store = new ClickHouseStore(backend, database);
    store.#client = client;
    store.ttlDays = ttlDays;
    try {
      await store.#ensureSchema(ttlDays);
    } catch (err) {
      await client.close().catch(() => undefined);
      throw err;
    }
    store.#state = 'ready';
    return store;
  }

  /**
   * Returns at once and connects in the background, retrying with backoff (and jitter) until it
   * succeeds, the store is closed, or the problem is one of configuration (bad URL, foreign schema:
   * state 'failed'). Operations before that fail with StoreUnavailableError. Bad options throw here.
   */
  static connect(opts: StoreOptions, co: ConnectOptions = {}): ClickHouseStore {
    const { database, ttlDays, backend } = checkOptions(opts);
    const store = new ClickHouseStore(backend, database);
    store.ttlDays = ttlDays;
    store.#connected = store.#connectLoop(opts, ttlDays, co);
    store.#connected.catch(() => undefined); // reported through whenConnected() and state
    return store;
  }

  /** Resolves once usable; rejects when the store fails for good or is closed first. */
  whenConnected(): Promise<void> {
    return this.#connected;
  }

  get state(): StoreState {
    return this.#state;
  }

  /** The last error of connecting or of an operation (null once an operation succeeds again). */
  get lastError(): Error | null {
    return this.#lastError;
  }

  /** Which store this is, for messages: the data directory, or the URL without its password. */
  describe(): string {
    return this.#describeBackend();
  }

  async #connectLoop(opts: StoreOptions, ttlDays: number, co: ConnectOptions): Promise<void> {
    const backoff = co.backoff ?? DEFAULT_STORE_BACKOFF;
    for (let attempt = 0; ; attempt++) {
      if (this.#closed) throw new StoreUnavailableError(`${this.#describeBackend()}: closed before it could be reached`);
      let client: ClickHouseClient | null = null;
      try {
        ({ client } = opts.dataDir !== undefined ? await openEmbedded(opts.dataDir) : await openServer(opts.url ?? '', opts.requestTimeoutMs));
        if (this.#closed) throw new StoreUnavailableError(`${this.#describeBackend()}: closed before it could be reached`);
        this.#client = client;
        await this.#ensureSchema(ttlDays);
        this.#state = 'ready';
        this.#lastError = null;
        return;
      } catch (err) {
        this.#client = null;
        await client?.close().catch(() => undefined);
        const e = err instanceof Error ? err : new StoreError(describeError(err));
        this.#lastError = e;
        if (this.#closed) throw e;
        if (e instanceof StoreSchemaError || (e instanceof NatlensError && e.exitCode === 2)) {
          this.#state = 'failed';
          throw e;
        }
        const delayMs = backoffDelay(attempt, backoff);
        co.onRetry?.({ store: this.#describeBackend(), attempt: attempt + 1, delayMs, error: e });
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, delayMs);
          this.#wakeRetry = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.#wakeRetry = null;
      }
    }
  }

  async insertHops(hops: Hop[]): Promise<void> {
    await this.#insert(hopsTable, hops);
  }

  async insertConnections(c: ConnectionRecord[]): Promise<void> {
    await this.#insert(connectionsTable, c);
  }

  async insertHealthChecks(rows: HealthCheckRow[]): Promise<void> {
    if (rows.length) await this.#insert(healthChecksTable, rows);
  }

  async insertServiceHistory(rows: ServiceHistoryRow[]): Promise<void> {
    if (rows.length) await this.#insert(serviceHistoryTable, rows);
  }

  async insertPodHistory(rows: PodHistoryRow[]): Promise<void> {
    if (rows.length) await this.#insert(podHistoryTable, rows);
  }

  /** `db`.`table` of this store, for queries built elsewhere (src/collector/etp.ts). */
  tableName(table: TableDef<never>): string {
    return qualified(this.database, table);
  }

  /**
   * A read-only query built elsewhere; every caller value must be a {name:Type} parameter in
   * `params` (never spliced into the text). `op` names it in errors.
   */
  async select<T>(op: string, table: TableDef<never>, query: string, params: Record<string, unknown>): Promise<T[]> {
    return this.#select<T>(op, table, query, params);
  }

  async insertLoss(s: LossSample[]): Promise<void> {
    if (s.length === 0) return;
    await this.#insert(agentLossTable, lossRows(s));
    await this.#insert(agentLossPerCpuTable, cpuLossRows(s));
  }

  async insertCaptureGaps(gaps: CaptureGapRecord[]): Promise<void> {
    await this.#insert(captureGapsTable, gaps);
  }

  /**
   * Ring-buffer loss by node and CPU since `sinceNs`, read like lossSince (cumulative per agent_id
   * and CPU): the counts of a node sum to its share of lossSince's ringbuf_full.
   */
  async lossPerCpuSince(sinceNs: bigint): Promise<CpuLossSummary[]> {
    const table = qualified(this.database, agentLossPerCpuTable);
    const since = 'fromUnixTimestamp64Nano({since:Int64})';
    const query = `
      SELECT node, cpu, toString(sum(inc)) AS lost
      FROM (
        SELECT agent_id, cpu, argMax(node, ts) AS node,
          greatest(toInt64(maxIf(ringbuf_full, ts >= ${since})) - if(countIf(ts < ${since}) > 0, toInt64(argMaxIf(ringbuf_full, ts, ts < ${since})), 0), 0) AS inc
        FROM ${table}
        GROUP BY agent_id, cpu
        HAVING countIf(ts >= ${since}) > 0
      )
      WHERE inc > 0
      GROUP BY node, cpu
      ORDER BY node, cpu`;
    const rows = await this.#select<{ node: string; cpu: number; lost: string }>('loss per CPU', agentLossPerCpuTable, query, { since: sinceNs.toString() });
    return rows.map((r) => ({ node: r.node, cpu: Number(r.cpu), ringbufFull: Number(r.lost) }));
  }

  /** Gaps that end at or after `sinceNs` (so overlap the window up to now), oldest first. */
  async captureGapsSince(sinceNs: bigint): Promise<CaptureGapSummary[]> {
    const table = qualified(this.database, captureGapsTable);
    const query = `
      SELECT node, toString(toUnixTimestamp64Nano(from_ts)) AS from_ns, toString(toUnixTimestamp64Nano(ts)) AS to_ns,
             any(cause) AS cause, any(reason) AS reason
      FROM ${table}
      WHERE ts >= fromUnixTimestamp64Nano({since:Int64})
      GROUP BY node, from_ts, ts
      ORDER BY from_ts, node`;
    const rows = await this.#select<{ node: string; from_ns: string; to_ns: string; cause: string; reason: string }>('capture gaps', captureGapsTable, query, { since: sinceNs.toString() });
    return rows.map((r) => ({ node: r.node, fromNs: BigInt(r.from_ns), toNs: BigInt(r.to_ns), cause: r.cause, reason: r.reason }));
  }

  /**
   * Who called the pod at `endpoint`: its connections since `sinceNs`, each conn_id counted once at
   * its highest version (none if that is 'superseded': another record holds the connection),
   * grouped by caller, source seen by the pod, path and stitch status.
   */
  async who(q: WhoQuery): Promise<WhoResult> {
    const endpoints = q.endpoint instanceof Uint8Array ? [q.endpoint] : [...q.endpoint];
    if (endpoints.length === 0 || endpoints.some((e) => !(e instanceof Uint8Array) || e.length !== 16)) {
      throw new StoreError('who: endpoints must be 16-byte addresses', { exitCode: 2 });
    }
    if (q.port !== undefined && (!Number.isInteger(q.port) || q.port < 0 || q.port > 65535)) throw new StoreError(`who: invalid port ${q.port}`, { exitCode: 2 });
    const windows = q.terminating ?? [];
    const params: Record<string, unknown> = {
      endpoints: endpoints.map((e) => formatIPv6(e, 0)),
      since: q.sinceNs.toString(),
      term_from: windows.map((w) => w[0].toString()),
      term_to: windows.map((w) => w[1].toString()),
    };
    if (q.port !== undefined) params['port'] = q.port;
    const portFilter = q.port === undefined ? '' : 'AND endpoint_port = {port:UInt16}';
    const since = 'fromUnixTimestamp64Nano({since:Int64})';
    const table = qualified(this.database, connectionsTable);
    const hops = qualified(this.database, hopsTable);
    // Dedupe before filtering on time: the winning version decides the ts. A conn_id whose winner is
    // in the window has a row in the window, so candidates come from the primary key range and only
    // their versions are read (a conn_id keeps its endpoint): cost follows the window, not the TTL.
    // A PROXY header (a 'proxy' hop on the endpoint's node) belongs to the connection whose pod-side
    // tuple it was captured on: the closest one at or after the connection's first hop (ASOF), with
    // a second of slack for clocks of different nodes.
    const query = `
      SELECT
        ${ipText('client')} AS client_text,
        if(proxy_version > 0, ${ipText('proxy_client')}, NULL) AS proxy_client_text,
        proxy_version,
        ${ipText('seen_as')} AS seen_as_text,
        ${ipText('service')} AS dialled_text, service_port AS dialled_port,
        ${ipText('endpoint')} AS endpoint_text,
        ingress_node, endpoint_node, snat, stitched,
        toString(count()) AS connections,
        toString(countIf(arrayExists((f, t) -> conn_ns >= toInt64(f) AND conn_ns < toInt64(t), {term_from:Array(String)}, {term_to:Array(String)}))) AS while_terminating,
        toString(toUnixTimestamp64Nano(min(first_ts))) AS first_ns,
        toString(toUnixTimestamp64Nano(max(last_ts))) AS last_ns,
        arraySort(groupUniqArray(toString(proto))) AS protocols
      FROM (
        SELECT c.*, toUnixTimestamp64Nano(c.first_ts) AS conn_ns,
          if(p.p_version > 0 AND p.p_ts <= c.first_ts + INTERVAL 30 SECOND, p.p_client, NULL) AS proxy_client,
          if(p.p_version > 0 AND p.p_ts <= c.first_ts + INTERVAL 30 SECOND, p.p_version, 0) AS proxy_version
        FROM (
          SELECT endpoint, w.1 AS first_ts, w.2 AS last_ts, w.3 AS proto, w.4 AS endpoint_port, w.5 AS client, w.6 AS seen_as,
                 w.7 AS ingress_node, w.8 AS endpoint_node, w.9 AS snat, w.10 AS status, status = 'complete' AS stitched,
                 w.11 AS seen_as_port, w.12 AS service, w.13 AS service_port, first_ts - INTERVAL 1 SECOND AS match_from
          FROM (
            SELECT endpoint, argMax((ts, last_ts, proto, endpoint_port, client, seen_as, ingress_node, endpoint_node, snat, status,
                                     seen_as_port, service, service_port), version) AS w
            FROM ${table}
            WHERE endpoint IN {endpoints:Array(IPv6)}
              AND conn_id IN (SELECT conn_id FROM ${table} WHERE endpoint IN {endpoints:Array(IPv6)} AND ts >= ${since} ${portFilter})
            GROUP BY conn_id, endpoint
          )
          WHERE first_ts >= ${since} ${portFilter} AND status != 'superseded'
        ) AS c
        ASOF LEFT JOIN (
          SELECT endpoint AS p_endpoint, orig_src AS p_src, orig_sport AS p_sport, orig_dport AS p_dport, ts AS p_ts,
                 reply_src AS p_client, proxy_version AS p_version
          FROM ${hops}
          WHERE endpoint IN {endpoints:Array(IPv6)} AND kind = 'proxy' AND ts >= ${since} - INTERVAL 1 MINUTE
        ) AS p
        ON c.endpoint = p.p_endpoint AND c.seen_as = p.p_src AND c.seen_as_port = p.p_sport AND c.endpoint_port = p.p_dport
           AND p.p_ts >= c.match_from
      )
      GROUP BY client, proxy_client, proxy_version, seen_as, service, service_port, endpoint, ingress_node, endpoint_node, snat, stitched
      ORDER BY count() DESC, max(last_ts) DESC, client_text, seen_as_text`;
    interface Raw {
      client_text: string | null;
      proxy_client_text: string | null;
      proxy_version: number;
      seen_as_text: string;
      dialled_text: string;
      dialled_port: number;
      endpoint_text: string;
      ingress_node: string;
      endpoint_node: string;
      snat: boolean | number;
      stitched: boolean | number;
      connections: string;
      while_terminating: string;
      first_ns: string;
      last_ns: string;
      protocols: string[];
    }
    const raw = await this.#select<Raw>('who', connectionsTable, query, params);
    let unstitched = 0;
    const rows = raw.map((r): WhoRowData => {
      const row: WhoRowData = {
        client: r.client_text,
        proxyClient: r.proxy_client_text,
        proxyVersion: Number(r.proxy_version),
        seenAs: r.seen_as_text,
        dialled: r.dialled_text,
        dialledPort: Number(r.dialled_port),
        endpoint: r.endpoint_text,
        connections: Number(r.connections),
        whileTerminating: Number(r.while_terminating),
        ingressNode: r.ingress_node,
        endpointNode: r.endpoint_node,
        snat: Boolean(r.snat),
        firstSeenNs: BigInt(r.first_ns),
        lastSeenNs: BigInt(r.last_ns),
        protocols: r.protocols,
        stitched: Boolean(r.stitched),
      };
      if (!row.stitched) unstitched += row.connections;
      return row;
    });
    return { rows, unstitched };
  }

  /**
   * Events the agents lost since `sinceNs`. Counters are cumulative per agent_id, so the loss within
   * the window is the last value in it minus the last value before it (0 for an agent that started
   * within the window; a restarted agent has a new agent_id).
   */
  async lossSince(sinceNs: bigint): Promise<LossSummary> {
    const table = qualified(this.database, agentLossTable);
    const since = 'fromUnixTimestamp64Nano({since:Int64})';
    const params = { since: sinceNs.toString() };
    const byStageQuery = `
      SELECT stage, toString(sum(inc)) AS lost
      FROM (
        SELECT agent_id, stage,
          greatest(toInt64(maxIf(lost, ts >= ${since})) - if(countIf(ts < ${since}) > 0, toInt64(argMaxIf(lost, ts, ts < ${since})), 0), 0) AS inc
        FROM ${table}
        GROUP BY agent_id, stage
        HAVING countIf(ts >= ${since}) > 0
      )
      WHERE stage != ''
      GROUP BY stage
      ORDER BY stage`;
    const nodesQuery = `SELECT DISTINCT node FROM ${table} WHERE ts >= ${since} ORDER BY node`;
    const [stages, nodes] = await Promise.all([
      this.#select<{ stage: string; lost: string }>('loss', agentLossTable, byStageQuery, params),
      this.#select<{ node: string }>('loss', agentLossTable, nodesQuery, params),
    ]);
    const byStage: Record<string, number> = {};
    let total = 0;
    for (const s of stages) {
      const n = Number(s.lost);
      byStage[s.stage] = n;
      total += n;
    }
    return { total, byStage, nodes: nodes.map((n) => n.node) };
  }

  /** A trivial query: the engine or server answers. Throws StoreError when it does not. */
  async ping(): Promise<void> {
    await this.#track('ping', () => this.#command('ping', 'SELECT 1'));
  }

  // --- recovery reads: what a restarted collector takes back (see Collector.recover) ------------

  /**
   * The capture time (ns) of the newest hop of the last two days, ignoring clocks more than 10 s
   * ahead of this one; null when there is none.
   */
  async latestHopNs(): Promise<bigint | null> {
    const table = qualified(this.database, hopsTable);
    const rows = await this.#select<{ t: string; n: string }>('latest hop', hopsTable, `
      SELECT toString(toUnixTimestamp64Nano(max(ts))) AS t, toString(count()) AS n
      FROM ${table}
      WHERE toDate(ts) >= yesterday() AND ts <= now64(9) + INTERVAL 10 SECOND`, {});
    const r = rows[0];
    return r && r.n !== '0' ? BigInt(r.t) : null;
  }

  /** The 'conn' hops captured at or after `sinceNs`, newest first, each hop_id once, at most `limit`. */
  async recentConnHops(sinceNs: bigint, limit: number): Promise<Hop[]> {
    const table = qualified(this.database, hopsTable);
    const rows = await this.#select<HopRow>('recent hops', hopsTable, `
      SELECT ${HOP_ROW_COLUMNS}
      FROM ${table}
      WHERE kind = 'conn' AND ts >= fromUnixTimestamp64Nano({since:Int64})
      ORDER BY ts DESC
      LIMIT 1 BY hop_id
      LIMIT {limit:UInt32}`, { since: sinceNs.toString(), limit });
    return rows.map(hopFromRow);
  }

  /**
   * The stored record (its highest version) of each conn_id in `ids`, among rows at or after
   * `sinceNs`.
   */
  async connectionsByIds(ids: ReadonlySet<bigint>, sinceNs: bigint): Promise<Map<bigint, ConnectionRecord>> {
    const out = new Map<bigint, ConnectionRecord>();
    if (ids.size === 0) return out;
    const table = qualified(this.database, connectionsTable);
    // The window's records, filtered here: the ids would not fit in a query's parameters.
    const rows = await this.#select<ConnectionRow>('recent connections', connectionsTable, `
      SELECT ${CONNECTION_ROW_COLUMNS}
      FROM ${table}
      WHERE ts >= fromUnixTimestamp64Nano({since:Int64})
      ORDER BY conn_id, version DESC
      LIMIT 1 BY conn_id`, { since: sinceNs.toString() });
    for (const r of rows) {
      const id = BigInt(r.id);
      if (ids.has(id)) out.set(id, connectionFromRow(id, r));
    }
    return out;
  }

  /** Waits for operations in progress, then releases the engine (embedded) or the sockets (server). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#state = 'closed';
    this.#wakeRetry?.();
    await this.#connected.catch(() => undefined);
    await Promise.allSettled([...this.#inflight]);
    try {
      await this.#client?.close();
    } catch (err) {
      throw new StoreError(`close store (${this.#describeBackend()})`, { cause: err });
    }
  }

  // --- internals ------------------------------------------------------------------------------

  #describeBackend(): string {
    return this.#backend.kind === 'embedded' ? `data directory ${this.#backend.dataDir}` : `ClickHouse at ${this.#backend.url}`;
  }

  /** Runs `op` unless closed or not connected yet, and lets close() wait for it. */
  async #track<T>(what: string, op: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new StoreError(`${what}: the store is closed`);
    if (this.#state !== 'ready') {
      const why = this.#lastError ? `: ${describeError(this.#lastError)}` : '';
      throw new StoreUnavailableError(`${what}: ${this.#describeBackend()} is not reachable yet${why}`);
    }
    const p = op();
    this.#inflight.add(p);
    try {
      return await p;
    } finally {
      this.#inflight.delete(p);
    }
  }

  async #insert<R>(table: TableDef<R>, rows: readonly R[]): Promise<void> {
    if (rows.length === 0) return;
    const name = `${this.database}.${table.name}`;
    const started = process.hrtime.bigint();
    let failed = true;
    try {
      await this.#insertRows(table, rows, name);
      failed = false;
    } finally {
      this.onInsert?.(table.name, Number(process.hrtime.bigint() - started) / 1e9, failed);
    }
  }

  async #insertRows<R>(table: TableDef<R>, rows: readonly R[], name: string): Promise<void> {
    await this.#track(`insert into ${name}`, async () => {
      const w = this.#writers.pop() ?? new RowBinaryWriter(1 << 20);
      try {
        try {
          encodeRows(table, rows, w);
        } catch (err) {
          throw new StoreError(`insert of ${rows.length} rows into ${name}: a value does not fit its column`, { cause: err });
        }
        try {
          if (this.#backend.kind === 'embedded') await this.#insertViaFile(table, w.bytes(), this.#backend.ingestDir);
          else await this.#insertViaHttp(table, w.bytes());
        } catch (err) {
          throw new StoreError(`insert of ${rows.length} rows into ${name} failed (${this.#describeBackend()})`, { cause: err });
        }
      } finally {
        w.reset();
        if (this.#writers.length < WRITER_POOL_SIZE && w.capacity <= MAX_POOLED_WRITER_BYTES) this.#writers.push(w);
      }
    });
  }

  /** chdb reads the batch from a file: its insert path would re-encode binary bodies as UTF-8. */
  async #insertViaFile(table: TableDef<never>, bytes: Buffer, ingestDir: string): Promise<void> {
    const file = path.join(ingestDir, `${process.pid}-${++this.#fileSeq}.rowbinary`);
    await writeFile(file, bytes);
    try {
      await this.#client!.command({
        query: `INSERT INTO ${qualified(this.database, table)} ${columnList(table)} SELECT * FROM file({path:String}, 'RowBinary', {structure:String}) SETTINGS ${INSERT_SETTINGS_SQL}`,
        query_params: { path: file, structure: structureOf(table) },
      });
    } finally {
      await unlink(file).catch(() => undefined);
    }
  }

  async #insertViaHttp(table: TableDef<never>, bytes: Buffer): Promise<void> {
    const result = await this.#client!.exec({
      query: `INSERT INTO ${qualified(this.database, table)} ${columnList(table)} FORMAT RowBinary`,
      values: Readable.from([bytes]),
      clickhouse_settings: INSERT_SETTINGS,
    });
    // The response body is empty for an INSERT; reading it to the end frees the keep-alive socket.
    result.stream.resume();
    await finished(result.stream);
  }

  async #select<T>(op: string, table: TableDef<never>, query: string, params: Record<string, unknown>): Promise<T[]> {
    return this.#track(`${op} on ${this.database}.${table.name}`, async () => {
      try {
        const rs = await this.#client!.query({ query, query_params: params, format: 'JSONEachRow' });
        return await rs.json<T>();
      } catch (err) {
        throw new StoreError(`${op}: query on ${this.database}.${table.name} failed (${this.#describeBackend()})`, { cause: err });
      }
    });
  }

  async #command(what: string, query: string, params?: Record<string, unknown>): Promise<void> {
    try {
      await this.#client!.command(params === undefined ? { query } : { query, query_params: params });
    } catch (err) {
      throw new StoreError(`${what} failed (${this.#describeBackend()})`, { cause: err });
    }
  }

  /**
   * Idempotent: creates what is missing, refuses tables whose columns differ from this version's
   * declaration, and applies a changed ttlDays to existing tables.
   */
  async #ensureSchema(ttlDays: number): Promise<void> {
    const db = this.database;
    await this.#command(`create database ${db}`, createDatabaseSql(db));
    for (const t of ALL_TABLES) await this.#command(`create table ${db}.${t.name}`, createTableSql(db, t, ttlDays));

    const columns = await this.#metaSelect<{ table: string; name: string; type: string }>(
      `SELECT table, name, type FROM system.columns WHERE database = {db:String} ORDER BY table, position`,
    );
    const tables = await this.#metaSelect<{ name: string; engine_full: string }>(
      `SELECT name, engine_full FROM system.tables WHERE database = {db:String}`,
    );
    for (const t of ALL_TABLES) {
      const have = columns.filter((c) => c.table === t.name).map((c) => `${c.name} ${c.type}`);
      const want = t.columns.map((c) => `${c.name} ${c.type}`);
      if (have.join(', ') !== want.join(', ')) {
        throw new StoreSchemaError(
          `open store: table ${db}.${t.name} (${this.#describeBackend()}) has columns [${have.join(', ')}], ` +
            `this natlens expects [${want.join(', ')}]: use another database or drop the table`,
        );
      }
      const engine = tables.find((x) => x.name === t.name)?.engine_full ?? '';
      if (!engine.includes(`toIntervalDay(${ttlDays})`)) {
        await this.#command(`set TTL of ${db}.${t.name} to ${ttlDays} days`, `ALTER TABLE ${qualified(db, t)} MODIFY TTL ${ttlExpression(t, ttlDays)}`);
      }
    }
  }

  async #metaSelect<T>(query: string): Promise<T[]> {
    try {
      const rs = await this.#client!.query({ query, query_params: { db: this.database }, format: 'JSONEachRow' });
      return await rs.json<T>();
    } catch (err) {
      throw new StoreError(`open store: reading the schema of ${this.database} failed (${this.#describeBackend()})`, { cause: err });
    }
  }
}

// --- rows read back into the collector's shapes (the columns are declared in schema.ts) ---------

/** 16 bytes from hex(IPv6). */
function addrFromHex(hex: string): Addr16 {
  return Uint8Array.from(Buffer.from(hex, 'hex'));
}

interface HopRow {
  id: string; node: string; kind: HopKind; proto: Proto; family: number; ts_ns: string;
  os: string; osp: number; od: string; odp: number; rs: string; rsp: number; rd: string; rdp: number;
  ct_status: number; isn: number | null; ifname: string; delivered_local: boolean | number;
  po: string; bo: string; pr: string; br: string; proxy_version: number;
}

// Aliases never repeat a column name: ClickHouse would read the alias in WHERE.
const HOP_ROW_COLUMNS = `toString(hop_id) AS id, node, kind, proto, family, toString(toUnixTimestamp64Nano(ts)) AS ts_ns,
  hex(orig_src) AS os, orig_sport AS osp, hex(orig_dst) AS od, orig_dport AS odp,
  hex(reply_src) AS rs, reply_sport AS rsp, hex(reply_dst) AS rd, reply_dport AS rdp,
  ct_status, isn, ifname, delivered_local,
  toString(packets_orig) AS po, toString(bytes_orig) AS bo, toString(packets_reply) AS pr, toString(bytes_reply) AS br, proxy_version`;

function hopFromRow(r: HopRow): Hop {
  // Only 'conn' hops are read back, and they always have a reply direction.
  return {
    id: BigInt(r.id), node: r.node, kind: r.kind, proto: r.proto, family: Number(r.family) === 6 ? 6 : 4, tsNs: BigInt(r.ts_ns),
    orig: { src: addrFromHex(r.os), sport: Number(r.osp), dst: addrFromHex(r.od), dport: Number(r.odp) },
    reply: { src: addrFromHex(r.rs), sport: Number(r.rsp), dst: addrFromHex(r.rd), dport: Number(r.rdp) },
    ctStatus: Number(r.ct_status), isn: r.isn === null ? null : Number(r.isn), ifname: r.ifname, deliveredLocal: Boolean(r.delivered_local),
    packetsOrig: Number(r.po), bytesOrig: Number(r.bo), packetsReply: Number(r.pr), bytesReply: Number(r.br), proxyVersion: Number(r.proxy_version),
  };
}

interface ConnectionRow {
  id: string; version: number; ts_ns: string; last_ts_ns: string; proto: Proto; family: number; endpoint_hex: string; endpoint_port: number;
  service_hex: string; service_port: number; client_hex: string | null; client_port: number; seen_as_hex: string; seen_as_port: number;
  ingress_node: string; endpoint_node: string; snat: boolean | number; status: StitchStatus; hop_nodes: string[]; isn: number | null;
}

const CONNECTION_ROW_COLUMNS = `toString(conn_id) AS id, version, toString(toUnixTimestamp64Nano(ts)) AS ts_ns, toString(toUnixTimestamp64Nano(last_ts)) AS last_ts_ns,
  proto, family, hex(endpoint) AS endpoint_hex, endpoint_port, hex(service) AS service_hex, service_port, hex(client) AS client_hex, client_port,
  hex(seen_as) AS seen_as_hex, seen_as_port, ingress_node, endpoint_node, snat, status, hop_nodes, isn`;

function connectionFromRow(connId: bigint, r: ConnectionRow): ConnectionRecord {
  return {
    connId, version: Number(r.version), tsNs: BigInt(r.ts_ns), lastTsNs: BigInt(r.last_ts_ns), proto: r.proto, family: Number(r.family) === 6 ? 6 : 4,
    endpoint: addrFromHex(r.endpoint_hex), endpointPort: Number(r.endpoint_port), service: addrFromHex(r.service_hex), servicePort: Number(r.service_port),
    client: r.client_hex === null ? null : addrFromHex(r.client_hex), clientPort: Number(r.client_port), seenAs: addrFromHex(r.seen_as_hex), seenAsPort: Number(r.seen_as_port),
    ingressNode: r.ingress_node, endpointNode: r.endpoint_node, snat: Boolean(r.snat), status: r.status, hopNodes: r.hop_nodes,
    isn: r.isn === null ? null : Number(r.isn),
  };
}

/** Validates options (usage errors, exit code 2) and names the backend they describe. */
function checkOptions(opts: StoreOptions): { database: string; ttlDays: number; backend: Backend } {
  const database = opts.database ?? DEFAULT_DATABASE;
  const ttlDays = opts.ttlDays ?? DEFAULT_TTL_DAYS;
  if ((opts.dataDir === undefined) === (opts.url === undefined)) {
    throw new StoreError('open store: give exactly one of dataDir (embedded chdb) or url (ClickHouse server)', { exitCode: 2 });
  }
  if (!isValidDatabaseName(database)) {
    throw new StoreError(`open store: invalid database name ${JSON.stringify(database)} (letters, digits and _ only)`, { exitCode: 2 });
  }
  if (!Number.isInteger(ttlDays) || ttlDays < 1 || ttlDays > 36500) {
    throw new StoreError(`open store: ttlDays must be a whole number of days >= 1, got ${ttlDays}`, { exitCode: 2 });
  }
  if (opts.dataDir !== undefined) {
    const dataDir = path.resolve(opts.dataDir);
    return { database, ttlDays, backend: { kind: 'embedded', dataDir, ingestDir: path.join(dataDir, 'ingest') } };
  }
  try {
    new URL(opts.url ?? '');
  } catch (err) {
    throw new StoreError(`open store: invalid ClickHouse URL ${redactUrl(opts.url ?? '')}`, { cause: err, exitCode: 2 });
  }
  return { database, ttlDays, backend: { kind: 'server', url: redactUrl(opts.url ?? '') } };
}

async function openEmbedded(dataDirOpt: string): Promise<Opened> {
  const dataDir = path.resolve(dataDirOpt);
  // Batches are read back with file(), which expands glob characters in the path.
  if (/[*?{}[\]]/.test(dataDir)) {
    throw new StoreError(`open store: data directory ${dataDir} must not contain any of * ? { } [ ]`, { exitCode: 2 });
  }
  const ingestDir = path.join(dataDir, 'ingest');
  try {
    await mkdir(dataDir, { recursive: true });
  } catch (err) {
    throw new StoreError(`open store: cannot create data directory ${dataDir}`, { cause: err });
  }
  let chdb: typeof import('chdb/connection');
  try {
    // Loaded only here: the agent must never pull in the embedded engine.
    chdb = await import('chdb/connection');
  } catch (err) {
    throw new StoreError('open store: embedded mode needs the chdb package, which failed to load', { cause: err });
  }
  let connection: ReturnType<typeof chdb.createChdbConnection>;
  try {
    connection = chdb.createChdbConnection({ path: dataDir });
  } catch (err) {
    throw new StoreError(
      `open store: cannot open or lock data directory ${dataDir}: another natlens collector may be using it ` +
        `(chdb allows one process per directory, and one directory per process)`,
      { cause: err },
    );
  }
  // chdb's Connection type comes from its own copy of @clickhouse/client-common; same shape.
  const client = createClient({ connection: connection as unknown as ClickHouseClientConfigOptions['connection'] });
  // Leftovers of a crashed process; safe to remove because the engine lock is now ours.
  try {
    await rm(ingestDir, { recursive: true, force: true });
    await mkdir(ingestDir, { recursive: true });
  } catch (err) {
    await client.close().catch(() => undefined);
    throw new StoreError(`open store: cannot prepare ${ingestDir}`, { cause: err });
  }
  return { client, backend: { kind: 'embedded', dataDir, ingestDir } };
}

/** The URL without its password, for messages. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '(invalid URL)';
  }
}

async function openServer(url: string, requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS): Promise<Opened> {
  const shown = redactUrl(url);
  let client: ClickHouseClient;
  try {
    new URL(url);
    client = createClient({
      url,
      request_timeout: requestTimeoutMs,
      // Errors reach the caller as StoreErrors with context; the client's own log would repeat them.
      log: { level: ClickHouseLogLevel.OFF },
    });
  } catch (err) {
    throw new StoreError(`open store: invalid ClickHouse URL ${shown}`, { cause: err, exitCode: 2 });
  }
  // SELECT 1 rather than /ping: it also checks the credentials.
  const ping = await client.ping({ select: true });
  if (ping.success === false) {
    const cause = ping.error;
    await client.close().catch(() => undefined);
    throw new StoreError(`open store: cannot reach ClickHouse at ${shown}`, { cause });
  }
  return { client, backend: { kind: 'server', url: shown } };
}
