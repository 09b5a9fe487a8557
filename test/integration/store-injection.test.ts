// SQL injection against the real embedded store (chdb in a temp directory): every reader of the
// store (pod history, Service history, etp, who, loss) and the query entry points (Collector.who
// and .etp, `natlens who` / `natlens etp`) get hostile values: quotes, backslashes, comment and
// statement tricks, {param:Type} placeholders, unicode, NUL bytes, very long strings. Answers are
// clean errors or exactly the rows whose stored text equals the value; tables and row counts are
// intact afterwards. (The guard in test/unit/sql-guard.test.ts keeps values out of SQL text.)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAddr } from '../../src/collector/addr.js';
import { Collector, QueryError } from '../../src/collector/collector.js';
import { etpReport, loadServiceStates } from '../../src/collector/etp.js';
import type { Addr16, ConnectionRecord } from '../../src/collector/hop.js';
import { latestServiceStates, podTimeline } from '../../src/collector/k8s-history.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import { ClickHouseStore, StoreError } from '../../src/collector/store/clickhouse-store.js';
import { ALL_TABLES, type PodHistoryRow, type ServiceHistoryRow } from '../../src/collector/store/schema.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

const NOW = BigInt(Date.now()) * 1_000_000n;
const MIN = 60_000_000_000n;
const SINCE = NOW - 60n * MIN;
const ip = (text: string): Addr16 => parseAddr(text)!;

const HOSTILE = [
  "'", '\\', "\\'", "''", '"', '`', "') OR 1=1 --", "' OR '1'='1", "x' OR name != '",
  "'; DROP TABLE natlens.hops; --", "x'); DROP TABLE natlens.pod_history; --", 'x\\\'; DROP TABLE natlens.connections; --',
  '{ns:String}', '{name:String}', '{since:Int64}', '{ip:String}', '%', '*', '_',
  'ünïcødé ✓ 🚀', 'nul\u0000byte', 'line\nbreak\ttab\r', '\u001b]0;title\u0007', 'a'.repeat(100_000),
];

const root = mkdtempSync(join(tmpdir(), 'natlens-store-injection-'));
let store: ClickHouseStore;
let collector: Collector;

function pod(namespace: string, name: string, address: string): PodHistoryRow {
  return { tsNs: NOW - 10n * MIN, namespace, name, uid: `uid-${name.length}-${address}`, node: 'node-1', ips: [ip(address)], phase: 'Running', ready: true, terminating: false, deleted: false };
}

function service(namespace: string, name: string, policy: string): ServiceHistoryRow {
  return {
    tsNs: NOW - 10n * MIN, namespace, name, type: 'LoadBalancer', externalTrafficPolicy: policy, internalTrafficPolicy: 'Cluster', healthCheckNodePort: 0,
    clusterIps: [ip('10.96.0.10')], nodePorts: [30080], ports: JSON.stringify([{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30080 }]),
    loadBalancerIngress: '[]', endpoints: JSON.stringify([{ pod: `${namespace}/${name}`, node: 'node-1', addresses: ['10.180.9.1'], ready: true, serving: true, terminating: false }]), deleted: false,
  };
}

function conn(connId: bigint): ConnectionRecord {
  return {
    connId, version: 1, tsNs: NOW - 5n * MIN, lastTsNs: NOW - 5n * MIN, proto: 'tcp', family: 4, endpoint: ip('10.180.9.1'), endpointPort: 8080,
    service: ip('10.96.0.10'), servicePort: 80, client: ip('192.168.1.10'), clientPort: 40000, seenAs: ip('10.240.0.1'), seenAsPort: 31000,
    ingressNode: 'node-1', endpointNode: 'node-1', snat: true, status: 'complete', hopNodes: ['node-1'], isn: 1,
  };
}

/** Row count of every table (they must not change, whatever the queries were given). */
async function counts(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const t of ALL_TABLES) {
    const [row] = await store.select<{ n: string }>('count', t, `SELECT toString(count()) AS n FROM ${store.tableName(t)}`, {});
    out[t.name] = row!.n;
  }
  return out;
}

let before: Record<string, string>;

beforeAll(async () => {
  store = await ClickHouseStore.open({ dataDir: join(root, 'data') });
  collector = new Collector({
    ring: new PeerRing('c1', []), store, version: 'test', flushIntervalMs: 1000, maxBufferedHops: 1000,
    stitcher: { holdMs: 100, windowMs: 1000, retentionMs: 1000, maxChains: 1000 },
  });
  // Legitimate rows, and rows whose names are the hostile values themselves (stored as data).
  await store.insertPodHistory([pod('team-a', 'web-1', '10.180.9.1'), pod('team-b', 'api-1', '10.180.9.2'), ...HOSTILE.map((h, i) => pod(h, h, `10.180.10.${i + 1}`))]);
  await store.insertServiceHistory([service('team-a', 'web', 'Cluster'), service('team-b', 'api', 'Local'), ...HOSTILE.map((h) => service(h, h, 'Local'))]);
  await store.insertConnections([conn(1n), conn(2n), conn(3n)]);
  await store.insertHealthChecks(HOSTILE.map((h) => ({ tsNs: NOW - MIN, node: h, namespace: h, service: h, port: 30000, statusCode: 503, localEndpoints: 0, error: h })));
  await store.insertLoss([{ tsNs: NOW - MIN, node: 'node-1', agentId: 'agent-1', lost: Object.fromEntries(HOSTILE.slice(0, 5).map((h, i) => [h, i + 1])), captured: 10 }]);
  before = await counts();
  expect(Number(before.pod_history)).toBe(2 + HOSTILE.length);
});

afterAll(async () => {
  await collector?.close();
  await store?.close();
  rmSync(root, { recursive: true, force: true });
});

/** Runs a read; a StoreError is a clean refusal, anything else fails the test. */
async function readOrRefuse<T>(f: () => Promise<T>): Promise<T | StoreError> {
  try {
    return await f();
  } catch (err) {
    expect(err).toBeInstanceOf(StoreError);
    return err as StoreError;
  }
}

describe('hostile values reach the store only as query parameters', () => {
  it.each(HOSTILE.map((h, i) => [JSON.stringify(h.length > 40 ? `${h.slice(0, 40)}...(${h.length})` : h), i] as const))('%s', async (_shown, i) => {
    const h = HOSTILE[i]!;
    // Pod history by name: exactly the row stored under that very text, nothing of any other row.
    const byName = await podTimeline(store, { namespace: h, name: h, sinceNs: SINCE });
    expect(byName.map((p) => [p.namespace, p.name, p.ips])).toEqual([[h, h, [`10.180.10.${i + 1}`]]]);
    expect(await podTimeline(store, { namespace: 'team-a', name: h, sinceNs: SINCE })).toEqual([]);
    expect(await podTimeline(store, { namespace: h, name: 'web-1', sinceNs: SINCE })).toEqual([]);
    // Pod history by address: a value that is no address is refused (or finds nothing).
    const byIp = await readOrRefuse(() => podTimeline(store, { ip: h, sinceNs: SINCE }));
    if (!(byIp instanceof StoreError)) expect(byIp).toEqual([]);
    // Service history and the etp report.
    const states = await loadServiceStates(store, { namespace: h, name: h, sinceNs: SINCE });
    expect(states.map((s) => s.externalTrafficPolicy)).toEqual(['Local']);
    expect(await loadServiceStates(store, { namespace: 'team-a', name: h, sinceNs: SINCE })).toEqual([]);
    const report = await etpReport(store, { namespace: h, name: h, sinceNs: SINCE, nowNs: NOW, nodeAddresses: new Map() });
    expect(report.known).toBe(true);
    expect(report.periods.map((p) => p.externalTrafficPolicy)).toEqual(['Local']);
    // Its health checks (stored under node = the hostile text) and the connections to its ClusterIP; nothing of the other Services'.
    const nodes = report.periods[0]!.perNode;
    expect(nodes.map((n) => n.node).sort()).toEqual(['node-1', h].sort());
    expect(nodes.find((n) => n.node === h)?.healthCheck?.lastStatus).toBe(503);
    expect((await etpReport(store, { namespace: h, name: 'web', sinceNs: SINCE, nowNs: NOW, nodeAddresses: new Map() })).known).toBe(false);
    // The query entry points refuse the value before any SQL runs.
    await expect(collector.who({ target: h, sinceMs: 0n, forwarded: false })).rejects.toMatchObject({ grpcCode: 3, message: expect.stringMatching(/is not|target is/) });
    await expect(collector.etp({ service: h, sinceMs: 0n, forwarded: false })).rejects.toBeInstanceOf(QueryError);
    await expect(collector.etp({ service: `team-a/${h}`, sinceMs: 0n, forwarded: false })).rejects.toMatchObject({ grpcCode: 3 });
    await expect(collector.who({ target: `team-a/${h}`, sinceMs: 0n, forwarded: false })).rejects.toMatchObject({ grpcCode: 3 });
  });

  it('legitimate reads still answer, and every table and row count is intact', async () => {
    const web = await podTimeline(store, { namespace: 'team-a', name: 'web-1', sinceNs: SINCE });
    expect(web.map((p) => p.name)).toEqual(['web-1']);
    expect((await podTimeline(store, { ip: '10.180.9.2', sinceNs: SINCE })).map((p) => p.name)).toEqual(['api-1']);
    const who = await collector.who({ target: 'team-a/web-1', sinceMs: 0n, forwarded: false });
    expect(who.rows.map((r) => Number(r.connections))).toEqual([3]);
    expect((await store.lossSince(SINCE)).byStage).toEqual(Object.fromEntries(HOSTILE.slice(0, 5).map((h, i) => [h, i + 1])));
    const services = await latestServiceStates(store, SINCE);
    expect(services.length).toBe(2 + HOSTILE.length);
    expect(await counts()).toEqual(before);
    const tables = await store.select<{ name: string }>('tables', ALL_TABLES[0]!, 'SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name', { db: store.database });
    expect(tables.map((t) => t.name)).toEqual(ALL_TABLES.map((t) => t.name).sort());
  });
});

describe('an insert whose rows span many days', () => {
  it('is stored, not refused for touching more than 100 partitions (it would fail every retry)', async () => {
    await collector.close();
    await store.close();
    store = await ClickHouseStore.open({ dataDir: join(root, 'data'), ttlDays: 3650 });
    const day = 86_400_000_000_000n;
    await store.insertConnections(Array.from({ length: 150 }, (_, d) => ({ ...conn(1000n + BigInt(d)), tsNs: NOW - BigInt(d) * day, lastTsNs: NOW - BigInt(d) * day })));
    const [row] = await store.select<{ n: string }>('count', ALL_TABLES[1]!, `SELECT toString(count()) AS n FROM ${store.tableName(ALL_TABLES[1]!)} WHERE conn_id >= 1000`, {});
    expect(row!.n).toBe('150');
  });
});

describe('the CLI refuses hostile targets before asking anyone (exit 2, the value quoted)', () => {
  const natlens = (...args: string[]) => spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), ...args, '--collector', '127.0.0.1:9'], { encoding: 'utf8', timeout: 20_000 });

  it.each([
    ['who', "10.0.0.1') OR 1=1 --", /who: "10\.0\.0\.1'\) OR 1=1 --" is not an IP address/],
    ['who', "default/x'; DROP TABLE natlens.hops; --", /who: "default\/x'; DROP TABLE natlens\.hops; --" is not NAMESPACE\/POD/],
    ['who', '{ip:String}', /who: "\{ip:String\}" is not an IP address/],
    ['who', 'a\u001b]0;x\u0007b', /who: "a\\u001b\]0;x\\u0007b" is not an IP address/],
    ['etp', "default/web' OR '1'='1", /etp: "default\/web' OR '1'='1" is not NAMESPACE\/SERVICE/],
    ['etp', 'x'.repeat(5000), /etp: "x{100}\.\.\." is not NAMESPACE\/SERVICE/],
  ])('%s %j', (command, value, message) => {
    const r = natlens(command, value);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toContain('\u001b');
  });
});
