// ClickHouseStore against the real embedded engine (chdb) in a temp directory: schema, round trips,
// the `who` answer (dedupe by conn_id, filters, address text), loss accounting, hostile strings,
// and the failures a user must be able to act on (unreachable server, data directory in use).
// chdb binds one data directory per process: one directory at a time here, closed before the next.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient, type ClickHouseClientConfigOptions } from '@clickhouse/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Addr16, ConnectionRecord, Hop, LossSample } from '../../src/collector/hop.js';
import { ClickHouseStore, StoreError, StoreSchemaError, StoreUnavailableError, type WhoRowData } from '../../src/collector/store/clickhouse-store.js';
import { ALL_TABLES, type ServiceHistoryRow } from '../../src/collector/store/schema.js';

const REPO = join(import.meta.dirname, '..', '..');
const NS_PER_MIN = 60_000_000_000n;
/** Relative to now: TTL drops older rows at insert. */
const NOW = BigInt(Date.now()) * 1_000_000n;
const ago = (minutes: number) => NOW - BigInt(minutes) * NS_PER_MIN;

function v4(text: string): Addr16 {
  const a = new Uint8Array(16);
  a[10] = 0xff;
  a[11] = 0xff;
  text.split('.').forEach((p, i) => { a[12 + i] = Number(p); });
  return a;
}

/** Full-form IPv6 only ("2001:db8:0:0:0:0:0:5"); enough for fixtures. */
function v6(text: string): Addr16 {
  const a = new Uint8Array(16);
  text.split(':').forEach((g, i) => {
    const n = parseInt(g, 16);
    a[2 * i] = n >> 8;
    a[2 * i + 1] = n & 0xff;
  });
  return a;
}

const POD = v4('10.180.1.5');
const OTHER_POD = v4('10.180.1.6');
const VIP = v4('10.96.0.10');
const NODE1_IP = v4('10.240.0.1');

let nextId = 1000n;
function conn(over: Partial<ConnectionRecord> = {}): ConnectionRecord {
  return {
    connId: nextId++, version: 1, tsNs: ago(10), lastTsNs: ago(10) + 1_000_000n, proto: 'tcp', family: 4,
    endpoint: POD, endpointPort: 8080, service: VIP, servicePort: 80,
    client: v4('192.168.1.10'), clientPort: 40000, seenAs: NODE1_IP, seenAsPort: 31000,
    ingressNode: 'node-1', endpointNode: 'node-2', snat: true, status: 'complete', hopNodes: ['node-1', 'node-2'], isn: 12345,
    ...over,
  };
}

/** A query on the same data directory through a second connection of this process's engine. */
async function raw<T>(dir: string, query: string): Promise<T[]> {
  const { createChdbConnection } = await import('chdb/connection');
  const client = createClient({ connection: createChdbConnection({ path: dir }) as unknown as ClickHouseClientConfigOptions['connection'] });
  try {
    const rs = await client.query({ query, format: 'JSONEachRow' });
    return await rs.json<T>();
  } finally {
    await client.close();
  }
}

function findRow(rows: WhoRowData[], client: string | null, seenAs?: string): WhoRowData | undefined {
  return rows.find((r) => r.client === client && (seenAs === undefined || r.seenAs === seenAs));
}

const root = mkdtempSync(join(tmpdir(), 'natlens-store-test-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('ClickHouseStore (embedded chdb)', () => {
  const dir = join(root, 'data');
  let store: ClickHouseStore;

  beforeAll(async () => {
    store = await ClickHouseStore.open({ dataDir: dir });
  });
  afterAll(async () => {
    await store?.close();
  });

  it('creates the schema idempotently: reopening the same directory keeps tables and rows', async () => {
    await store.insertConnections([conn({ endpoint: v4('10.99.0.1') })]);
    await store.close();
    store = await ClickHouseStore.open({ dataDir: dir });
    await store.close();
    store = await ClickHouseStore.open({ dataDir: dir });
    const tables = await raw<{ name: string; engine_full: string }>(dir, "SELECT name, engine_full FROM system.tables WHERE database = 'natlens' ORDER BY name");
    expect(tables.map((t) => t.name)).toEqual(ALL_TABLES.map((t) => t.name).sort());
    for (const t of tables) {
      expect(t.engine_full).toContain('PARTITION BY toDate(ts)');
      expect(t.engine_full).toContain('TTL toDateTime(ts) + toIntervalDay(7)');
    }
    expect(tables.find((t) => t.name === 'connections')?.engine_full).toMatch(/^ReplacingMergeTree\(version\) PARTITION BY toDate\(ts\) ORDER BY \(endpoint, ts, conn_id\)/);
    expect(tables.find((t) => t.name === 'hops')?.engine_full).toMatch(/ORDER BY \(endpoint, ts, hop_id\)/);
    const n = await raw<{ n: string }>(dir, "SELECT toString(count()) n FROM natlens.connections WHERE endpoint = toIPv6('::ffff:10.99.0.1')");
    expect(n).toEqual([{ n: '1' }]);
  });

  it('applies a changed ttlDays to existing tables', async () => {
    await store.close();
    store = await ClickHouseStore.open({ dataDir: dir, ttlDays: 3 });
    const tables = await raw<{ engine_full: string }>(dir, "SELECT engine_full FROM system.tables WHERE database = 'natlens'");
    for (const t of tables) expect(t.engine_full).toContain('toIntervalDay(3)');
    await store.close();
    store = await ClickHouseStore.open({ dataDir: dir });
  });

  it('round-trips hops of every kind, deriving the endpoint and zeroing the reply of drops', async () => {
    const base = { proto: 'tcp' as const, ctStatus: 0x1a8, ifname: 'eth0', packetsOrig: 3, bytesOrig: 180, packetsReply: 2, bytesReply: 2 ** 40, proxyVersion: 0 };
    const hops: Hop[] = [
      {
        ...base, id: 2n ** 64n - 2n, node: 'node-1', kind: 'conn', family: 4, tsNs: ago(5), isn: 4_000_000_000, deliveredLocal: false,
        orig: { src: v4('192.168.1.10'), sport: 40000, dst: VIP, dport: 80 },
        reply: { src: v4('10.180.7.7'), sport: 8080, dst: NODE1_IP, dport: 31000 },
      },
      {
        ...base, id: 7n, node: 'node-2', kind: 'drop', family: 4, tsNs: ago(4), isn: null, deliveredLocal: true,
        orig: { src: v4('192.168.1.11'), sport: 40001, dst: v4('10.180.7.8'), dport: 8080 }, reply: null,
      },
      {
        ...base, id: 8n, node: 'node-3', kind: 'end', proto: 'udp', family: 6, tsNs: ago(3), isn: null, deliveredLocal: true,
        orig: { src: v6('2001:db8:0:0:0:0:0:a'), sport: 5353, dst: v6('fd00:0:0:0:0:0:0:10'), dport: 53 },
        reply: { src: v6('fd00:0:0:0:0:0:1:7'), sport: 53, dst: v6('2001:db8:0:0:0:0:0:a'), dport: 5353 },
      },
    ];
    await store.insertHops(hops);
    const rows = await raw<Record<string, unknown>>(dir, `
      SELECT toString(hop_id) id, node, kind, proto, family, toString(orig_src) orig_src, orig_sport, toString(orig_dst) orig_dst, orig_dport,
             toString(reply_src) reply_src, reply_sport, toString(reply_dst) reply_dst, reply_dport, toString(endpoint) endpoint,
             ct_status, isn, ifname, delivered_local, toString(packets_orig) po, toString(bytes_reply) br, toString(toUnixTimestamp64Nano(ts)) ts
      FROM natlens.hops ORDER BY ts`);
    expect(rows).toEqual([
      {
        id: (2n ** 64n - 2n).toString(), node: 'node-1', kind: 'conn', proto: 'tcp', family: 4,
        orig_src: '::ffff:192.168.1.10', orig_sport: 40000, orig_dst: '::ffff:10.96.0.10', orig_dport: 80,
        reply_src: '::ffff:10.180.7.7', reply_sport: 8080, reply_dst: '::ffff:10.240.0.1', reply_dport: 31000,
        endpoint: '::ffff:10.180.7.7', ct_status: 0x1a8, isn: 4_000_000_000, ifname: 'eth0', delivered_local: false,
        po: '3', br: String(2 ** 40), ts: ago(5).toString(),
      },
      {
        id: '7', node: 'node-2', kind: 'drop', proto: 'tcp', family: 4,
        orig_src: '::ffff:192.168.1.11', orig_sport: 40001, orig_dst: '::ffff:10.180.7.8', orig_dport: 8080,
        reply_src: '::', reply_sport: 0, reply_dst: '::', reply_dport: 0,
        endpoint: '::ffff:10.180.7.8', ct_status: 0x1a8, isn: null, ifname: 'eth0', delivered_local: true,
        po: '3', br: String(2 ** 40), ts: ago(4).toString(),
      },
      {
        id: '8', node: 'node-3', kind: 'end', proto: 'udp', family: 6,
        orig_src: '2001:db8::a', orig_sport: 5353, orig_dst: 'fd00::10', orig_dport: 53,
        reply_src: 'fd00::1:7', reply_sport: 53, reply_dst: '2001:db8::a', reply_dport: 5353,
        endpoint: 'fd00::1:7', ct_status: 0x1a8, isn: null, ifname: 'eth0', delivered_local: true,
        po: '3', br: String(2 ** 40), ts: ago(3).toString(),
      },
    ]);
    expect(readdirSync(join(dir, 'ingest'))).toEqual([]);
  });

  it('round-trips connection records', async () => {
    const a = conn({ endpoint: v4('10.99.0.2'), connId: 2n ** 63n + 5n, version: 0x02030001, client: null, isn: null, hopNodes: [], status: 'unstitched', snat: false, endpointNode: '' });
    const b = conn({ endpoint: v4('10.99.0.2'), proto: 'udp', family: 6, client: v6('2001:db8:0:0:0:0:0:a'), seenAs: v6('fd00:0:0:0:0:0:0:1'), hopNodes: ['n1', 'n2', 'n3'] });
    await store.insertConnections([a, b]);
    const rows = await raw<Record<string, unknown>>(dir, `
      SELECT toString(conn_id) id, version, toString(toUnixTimestamp64Nano(ts)) ts, toString(toUnixTimestamp64Nano(last_ts)) last_ts, proto, family,
             toString(endpoint) endpoint, endpoint_port, toString(service) service, service_port, toString(client) client, client_port,
             toString(seen_as) seen_as, seen_as_port, ingress_node, endpoint_node, snat, status, hop_nodes, isn
      FROM (SELECT * FROM natlens.connections WHERE endpoint = toIPv6('::ffff:10.99.0.2')) ORDER BY proto`);
    expect(rows).toEqual([
      {
        id: (2n ** 63n + 5n).toString(), version: 0x02030001, ts: a.tsNs.toString(), last_ts: a.lastTsNs.toString(), proto: 'tcp', family: 4,
        endpoint: '::ffff:10.99.0.2', endpoint_port: 8080, service: '::ffff:10.96.0.10', service_port: 80, client: null, client_port: 40000,
        seen_as: '::ffff:10.240.0.1', seen_as_port: 31000, ingress_node: 'node-1', endpoint_node: '', snat: false, status: 'unstitched', hop_nodes: [], isn: null,
      },
      {
        id: b.connId.toString(), version: 1, ts: b.tsNs.toString(), last_ts: b.lastTsNs.toString(), proto: 'udp', family: 6,
        endpoint: '::ffff:10.99.0.2', endpoint_port: 8080, service: '::ffff:10.96.0.10', service_port: 80, client: '2001:db8::a', client_port: 40000,
        seen_as: 'fd00::1', seen_as_port: 31000, ingress_node: 'node-1', endpoint_node: 'node-2', snat: true, status: 'complete', hop_nodes: ['n1', 'n2', 'n3'], isn: 12345,
      },
    ]);
  });

  describe('who', () => {
    beforeAll(async () => {
      const records: ConnectionRecord[] = [
        // 3 connections: 192.168.1.10 via node-1, SNAT'd to node-1's address
        conn({ tsNs: ago(30), lastTsNs: ago(29) }), conn({ tsNs: ago(20) }), conn({ tsNs: ago(10), lastTsNs: ago(9) }),
        // 2 from 192.168.1.11, tcp and udp, same path
        conn({ client: v4('192.168.1.11') }), conn({ client: v4('192.168.1.11'), proto: 'udp' }),
        // 1 not stitched: caller unknown
        conn({ client: null, seenAs: v4('10.240.0.2'), ingressNode: 'node-2', endpointNode: 'node-2', snat: false, status: 'unstitched', hopNodes: ['node-2'] }),
        // another port of the same pod, another pod
        conn({ client: v4('192.168.1.12'), endpointPort: 9090 }),
        conn({ client: v4('192.168.1.13'), endpoint: OTHER_POD }),
        // outside a 1h window
        conn({ client: v4('192.168.1.14'), tsNs: ago(120), lastTsNs: ago(119) }),
      ];
      // conn_id 1 stored twice: the higher version wins although it has an earlier ts, and it was inserted first
      records.push(conn({ connId: 1n, version: 5, tsNs: ago(15), client: v4('192.168.1.10') }));
      records.push(conn({ connId: 1n, version: 2, tsNs: ago(12), client: v4('192.168.1.99'), status: 'unstitched' }));
      // conn_id 2: winner outside the window, loser inside: not counted
      records.push(conn({ connId: 2n, version: 1, tsNs: ago(5), client: v4('192.168.1.98') }));
      records.push(conn({ connId: 2n, version: 2, tsNs: ago(90), client: v4('192.168.1.98') }));
      // conn_id 3: loser outside the window, winner inside: counted (with 192.168.1.11)
      records.push(conn({ connId: 3n, version: 1, tsNs: ago(90), client: v4('192.168.1.97') }));
      records.push(conn({ connId: 3n, version: 2, tsNs: ago(8), client: v4('192.168.1.11') }));
      // conn_id 4: absorbed into another record: not counted
      records.push(conn({ connId: 4n, version: 1, client: v4('192.168.1.96') }));
      records.push(conn({ connId: 4n, version: 3 << 24, client: v4('192.168.1.96'), status: 'superseded' }));
      // conn_id 5: the winning version has no client (NULL must win, not be skipped)
      records.push(conn({ connId: 5n, version: 1, client: v4('192.168.1.95'), snat: false }));
      records.push(conn({ connId: 5n, version: 2, client: null, snat: false }));
      // Two separate inserts, so the versions sit in different parts as in production.
      await store.insertConnections(records.slice(0, 11));
      await store.insertConnections(records.slice(11));
    });

    it('groups deduped connections by caller and path, most connections first', async () => {
      const { rows, unstitched } = await store.who({ endpoint: POD, port: 8080, sinceNs: ago(60) });
      expect(rows.map((r) => [r.client, r.connections])).toEqual([
        ['192.168.1.10', 4],
        ['192.168.1.11', 3],
        // equal counts: most recent last_ts first
        [null, 1],
        [null, 1],
      ]);
      const top = rows[0]!;
      expect(top).toEqual({
        client: '192.168.1.10', proxyClient: null, proxyVersion: 0, seenAs: '10.240.0.1', dialled: '10.96.0.10', dialledPort: 80,
        endpoint: '10.180.1.5', connections: 4, whileTerminating: 0, ingressNode: 'node-1', endpointNode: 'node-2', snat: true,
        firstSeenNs: ago(30), lastSeenNs: ago(9), protocols: ['tcp'], stitched: true,
      });
      expect(findRow(rows, '192.168.1.11')?.protocols).toEqual(['tcp', 'udp']);
      const lost = findRow(rows, null, '10.240.0.2')!;
      expect(lost).toMatchObject({ connections: 1, stitched: false, snat: false, ingressNode: 'node-2' });
      expect(findRow(rows, null, '10.240.0.1')).toMatchObject({ connections: 1, snat: false, stitched: true });
      expect(unstitched).toBe(1);
      for (const gone of ['192.168.1.99', '192.168.1.98', '192.168.1.97', '192.168.1.96', '192.168.1.95', '192.168.1.12', '192.168.1.13', '192.168.1.14']) {
        expect(findRow(rows, gone)).toBeUndefined();
      }
    });

    it('filters by port only when one is given', async () => {
      const { rows } = await store.who({ endpoint: POD, sinceNs: ago(60) });
      expect(findRow(rows, '192.168.1.12')?.connections).toBe(1);
      const only9090 = await store.who({ endpoint: POD, port: 9090, sinceNs: ago(60) });
      expect(only9090.rows.map((r) => r.client)).toEqual(['192.168.1.12']);
      expect((await store.who({ endpoint: POD, port: 1, sinceNs: ago(60) })).rows).toEqual([]);
    });

    it('filters by time on the winning version', async () => {
      const wide = await store.who({ endpoint: POD, port: 8080, sinceNs: ago(180) });
      expect(findRow(wide.rows, '192.168.1.14')?.connections).toBe(1);
      // conn_id 2's winner (90 min ago) is now in the window
      expect(findRow(wide.rows, '192.168.1.98')?.connections).toBe(1);
      const narrow = await store.who({ endpoint: POD, port: 8080, sinceNs: ago(11) });
      expect(findRow(narrow.rows, '192.168.1.10')?.connections).toBe(1);
      expect((await store.who({ endpoint: POD, sinceNs: NOW + NS_PER_MIN })).rows).toEqual([]);
    });

    it('returns IPv4 as a.b.c.d and IPv6 in its short form', async () => {
      const pod6 = v6('fd00:0:0:0:0:0:1:9');
      await store.insertConnections([
        conn({ endpoint: pod6, family: 6, client: v6('2001:db8:0:0:0:0:0:a'), seenAs: v6('fd00:0:0:0:0:0:0:1') }),
        // Starts like a mapped address but is not one: must stay IPv6 text.
        conn({ endpoint: pod6, family: 6, client: v6('0:0:0:0:ffff:1:2:3'), seenAs: v4('10.240.0.3') }),
      ]);
      const { rows } = await store.who({ endpoint: pod6, sinceNs: ago(60) });
      expect(rows.map((r) => [r.client, r.seenAs]).sort()).toEqual([
        ['2001:db8::a', 'fd00::1'],
        ['::ffff:1:2:3', '10.240.0.3'],
      ]);
    });

    it('answers concurrent inserts and queries', async () => {
      const pod = v4('10.180.2.1');
      const batches = Array.from({ length: 8 }, (_, i) => Array.from({ length: 250 }, () => conn({ endpoint: pod, client: v4(`172.16.0.${i}`) })));
      await Promise.all([...batches.map((b) => store.insertConnections(b)), ...batches.map(() => store.who({ endpoint: pod, sinceNs: ago(60) }))]);
      const { rows } = await store.who({ endpoint: pod, sinceNs: ago(60) });
      expect(rows.length).toBe(8);
      expect(rows.every((r) => r.connections === 250)).toBe(true);
    });
  });

  it('computes loss per stage across agents, windows and restarts', async () => {
    const s = (minutes: number, node: string, agentId: string, lost: Record<string, number>): LossSample => ({ tsNs: ago(minutes), node, agentId, lost, captured: 1000 });
    await store.insertLoss([
      // agent a1: running before the window -> increase within it
      s(120, 'node-1', 'a1', { ring: 10, decode: 1 }), s(30, 'node-1', 'a1', { ring: 15, decode: 1 }), s(10, 'node-1', 'a1', { ring: 25, decode: 3 }),
      // agent a2: first sample in the window -> everything it reports counts
      s(20, 'node-2', 'a2', { ring: 4 }), s(5, 'node-2', 'a2', { ring: 7 }),
      // node-3 restarted its agent: old id before and in the window, new id from 0
      s(100, 'node-3', 'a3-old', { ring: 100 }), s(40, 'node-3', 'a3-old', { ring: 120 }), s(15, 'node-3', 'a3-new', { ring: 5 }),
      // node-4's agent last reported before the window
      s(90, 'node-4', 'a4', { ring: 50 }),
      // node-5 reported no stages at all
      s(3, 'node-5', 'a5', {}),
    ]);
    expect(await store.lossSince(ago(60))).toEqual({ total: 15 + 7 + 20 + 5 + 2, byStage: { decode: 2, ring: 47 }, nodes: ['node-1', 'node-2', 'node-3', 'node-5'] });
    expect(await store.lossSince(ago(180))).toEqual({ total: 25 + 7 + 120 + 5 + 50 + 3, byStage: { decode: 3, ring: 207 }, nodes: ['node-1', 'node-2', 'node-3', 'node-4', 'node-5'] });
    expect(await store.lossSince(NOW + NS_PER_MIN)).toEqual({ total: 0, byStage: {}, nodes: [] });
  });

  it('stores hostile strings as data: they never reach SQL text', async () => {
    const evil = ["x'); DROP TABLE natlens.connections; --", '{endpoint:IPv6}', '\\\'"`;\n\t\u0000', 'ünïcødé ✓'];
    const pod = v4('10.180.3.1');
    await store.insertConnections(evil.map((e) => conn({ endpoint: pod, ingressNode: e, endpointNode: e, hopNodes: [e, e] })));
    await store.insertLoss([{ tsNs: ago(1), node: evil[0]!, agentId: evil[1]!, lost: { [evil[2]!]: 1 }, captured: 0 }]);
    const { rows } = await store.who({ endpoint: pod, sinceNs: ago(60) });
    expect(rows.map((r) => r.ingressNode).sort()).toEqual([...evil].sort());
    expect((await store.lossSince(ago(2))).byStage).toEqual({ [evil[2]!]: 1 });
    const tables = await raw<{ name: string }>(dir, "SELECT name FROM system.tables WHERE database = 'natlens'");
    expect(tables.length).toBe(ALL_TABLES.length);
  });

  it('rejects values that do not fit, naming table and column, and stores nothing of the batch', async () => {
    const pod = v4('10.180.4.1');
    const err = await store.insertConnections([conn({ endpoint: pod }), conn({ endpoint: pod, endpointPort: 70000 })]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect((err as StoreError).message).toMatch(/insert of 2 rows into natlens\.connections/);
    expect(String((err as StoreError).cause)).toMatch(/column endpoint_port/);
    expect((await store.who({ endpoint: pod, sinceNs: ago(60) })).rows).toEqual([]);
  });

  it('refuses a second process on the same data directory with a clear StoreError', async () => {
    // The child loads the store compiled from these sources (no type check: tsc runs separately).
    const out = join(root, 'compiled');
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'package.json'), '{"type":"module"}');
    symlinkSync(join(REPO, 'node_modules'), join(out, 'node_modules'));
    const tsc = await run(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '--outDir', out, '--rootDir', REPO,
      '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--noCheck', '--types', 'node',
      join(REPO, 'src', 'collector', 'store', 'clickhouse-store.ts')]);
    expect(tsc.code, tsc.stdout + tsc.stderr).toBe(0);
    const script = `
      import { ClickHouseStore } from ${JSON.stringify(join(out, 'src', 'collector', 'store', 'clickhouse-store.js'))};
      try {
        const s = await ClickHouseStore.open({ dataDir: process.argv[1] });
        await s.close();
        console.log(JSON.stringify({ opened: true }));
      } catch (e) {
        console.log(JSON.stringify({ name: e.name, message: e.message, exitCode: e.exitCode }));
      }`;
    const child = await run(process.execPath, ['--input-type=module', '-e', script, dir]);
    expect(child.code, child.stderr).toBe(0);
    const result = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}') as { name?: string; message?: string; exitCode?: number };
    expect(result.name).toBe('StoreError');
    expect(result.message).toContain(dir);
    expect(result.message).toMatch(/another natlens collector may be using it/);
    expect(result.exitCode).toBe(1);
    // The holder is unaffected.
    expect((await store.who({ endpoint: POD, port: 8080, sinceNs: ago(60) })).rows.length).toBeGreaterThan(0);
  });

  it('waits for work in progress on close, then refuses new work', async () => {
    const pod = v4('10.180.5.1');
    const pending = store.insertConnections(Array.from({ length: 1000 }, () => conn({ endpoint: pod })));
    const closing = store.close();
    await pending;
    await closing;
    await expect(store.who({ endpoint: pod, sinceNs: ago(60) })).rejects.toThrow(/store is closed/);
    store = await ClickHouseStore.open({ dataDir: dir });
    expect((await store.who({ endpoint: pod, sinceNs: ago(60) })).rows[0]?.connections).toBe(1000);
  });
});

describe('ClickHouseStore (what a restarted collector reads, and readers before merges)', () => {
  const dir = join(root, 'restart');
  let store: ClickHouseStore;
  beforeAll(async () => {
    store = await ClickHouseStore.open({ dataDir: dir });
  });
  afterAll(async () => {
    await store?.close();
  });
  const SEC = 1_000_000_000n;
  const base = { kind: 'conn' as const, proto: 'tcp' as const, ctStatus: 0x1b0, ifname: 'eth0', packetsOrig: 3, bytesOrig: 180, packetsReply: 2, bytesReply: 2 ** 40, proxyVersion: 0 };

  it('reads back recent conn hops and stored records exactly as written, each once, newest hop first', async () => {
    const h1: Hop = {
      ...base, id: 2n ** 64n - 3n, node: 'node-2', family: 4, tsNs: NOW - 20n * SEC, isn: 4_000_000_000, deliveredLocal: false,
      orig: { src: v4('198.51.100.79'), sport: 40000, dst: NODE1_IP, dport: 30080 },
      reply: { src: v4('10.180.9.9'), sport: 8080, dst: NODE1_IP, dport: 61000 },
    };
    const h2: Hop = {
      ...base, id: 12n, node: 'node-1', family: 6, tsNs: NOW - 10n * SEC, isn: null, deliveredLocal: true,
      orig: { src: v6('2001:db8:0:0:0:0:0:a'), sport: 5353, dst: v6('fd00:0:0:0:0:0:1:7'), dport: 53 },
      reply: { src: v6('fd00:0:0:0:0:0:1:7'), sport: 53, dst: v6('2001:db8:0:0:0:0:0:a'), dport: 5353 },
    };
    const old: Hop = { ...h2, id: 13n, tsNs: NOW - 120n * SEC };
    const drop: Hop = { ...h1, id: 14n, kind: 'drop', reply: null, tsNs: NOW - 15n * SEC };
    // h1 twice, as after a resend: not merged yet.
    await store.insertHops([h1, old, drop]);
    await store.insertHops([h1, h2]);
    expect(await store.latestHopNs()).toBe(h2.tsNs);
    expect(await store.recentConnHops(NOW - 60n * SEC, 100)).toEqual([h2, h1]);
    expect(await store.recentConnHops(NOW - 60n * SEC, 1)).toEqual([h2]);

    const a = conn({ connId: 2n ** 63n + 9n, version: 0x01010001, tsNs: NOW - 20n * SEC, lastTsNs: NOW - 20n * SEC, client: null, isn: null, status: 'unstitched', hopNodes: ['node-1'], endpointNode: '' });
    const a2 = { ...a, version: 0x02020002, status: 'complete' as const, client: v4('198.51.100.79'), hopNodes: ['node-2', 'node-1'], endpointNode: 'node-1' };
    const b = conn({ connId: 77n, tsNs: NOW - 10n * SEC, lastTsNs: NOW - 9n * SEC, family: 6, client: v6('2001:db8:0:0:0:0:0:a'), seenAs: v6('fd00:0:0:0:0:0:0:1') });
    await store.insertConnections([a, b]);
    await store.insertConnections([a2, b]);
    const byId = await store.connectionsByIds(new Set([a.connId, b.connId, 999n]), NOW - 60n * SEC);
    expect([...byId.keys()].sort()).toEqual([77n, a.connId]);
    expect(byId.get(a.connId)).toEqual(a2);
    expect(byId.get(77n)).toEqual(b);
  });

  it('counts a resent hop, record, health reading or loss sample once, before any merge', async () => {
    const pod = v4('10.180.8.8');
    const nodeIp = '10.240.0.9';
    const svc: ServiceHistoryRow = {
      tsNs: NOW - 30n * SEC, namespace: 'default', name: 'resent', type: 'NodePort', externalTrafficPolicy: 'Cluster', internalTrafficPolicy: 'Cluster',
      healthCheckNodePort: 0, clusterIps: [v4('10.0.9.9')], nodePorts: [30099],
      ports: JSON.stringify([{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30099 }]),
      loadBalancerIngress: '[]', endpoints: JSON.stringify([{ pod: 'default/resent-1', node: 'node-1', addresses: ['10.180.8.8'], ready: true, serving: true, terminating: false }]), deleted: false,
    };
    await store.insertServiceHistory([svc]);
    const dropHop: Hop = {
      ...base, id: 21n, kind: 'drop', node: 'node-9', family: 4, tsNs: NOW - 5n * SEC, isn: null, deliveredLocal: false,
      orig: { src: v4('198.51.100.80'), sport: 1234, dst: v4(nodeIp), dport: 30099 }, reply: null,
    };
    const record = conn({ connId: 4242n, endpoint: pod, service: v4(nodeIp), servicePort: 30099, tsNs: NOW - 5n * SEC, lastTsNs: NOW - 5n * SEC });
    const reading = { tsNs: NOW - 4n * SEC, node: 'node-9', namespace: 'default', service: 'resent', port: 32000, statusCode: 200, localEndpoints: 1, error: '' };
    const sample: LossSample = { tsNs: NOW - 4n * SEC, node: 'node-9', agentId: 'resent-agent', lost: { queue_overflow: 5 }, captured: 100 };
    // Everything twice, as a batch resent to a restarted collector would store it.
    for (let i = 0; i < 2; i++) {
      await store.insertHops([dropHop]);
      await store.insertConnections([record]);
      await store.insertHealthChecks([reading]);
      await store.insertLoss([sample]);
    }
    const who = await store.who({ endpoint: pod, sinceNs: NOW - 60n * SEC });
    expect(who.rows.map((r) => r.connections)).toEqual([1]);
    const { etpReport } = await import('../../src/collector/etp.js');
    const report = await etpReport(store, { namespace: 'default', name: 'resent', sinceNs: NOW - 60n * SEC, nowNs: NOW, nodeAddresses: new Map([['node-9', [nodeIp]]]) });
    const period = report.periods.at(-1)!;
    expect(period.connections).toBe(1n);
    expect(period.dropped).toBe(1n);
    expect(period.perNode.find((n) => n.node === 'node-9')?.healthCheck?.answers).toEqual({ 200: 1n });
    const loss = await store.lossSince(NOW - 60n * SEC);
    expect(loss.byStage.queue_overflow).toBe(5);
  });
});

describe('ClickHouseStore.connect (in the background, with backoff)', () => {
  it('retries an unreachable server with growing delays, fails operations as unavailable meanwhile, stops on close', async () => {
    const port = await freePort();
    const retries: Array<{ attempt: number; delayMs: number; store: string; error: Error }> = [];
    const store = ClickHouseStore.connect(
      { url: `http://natlens:s3cret@127.0.0.1:${port}`, requestTimeoutMs: 500 },
      { backoff: { initialMs: 20, maxMs: 160 }, onRetry: (r) => retries.push(r) },
    );
    expect(store.state).toBe('connecting');
    await new Promise((r) => setTimeout(r, 1200));
    expect(store.state).toBe('connecting');
    expect(retries.length).toBeGreaterThanOrEqual(4);
    expect(retries.map((r) => r.attempt)).toEqual(retries.map((_, i) => i + 1));
    // Jittered within [d/2, d] of d = 20, 40, 80, 160, 160, ...
    retries.forEach((r, i) => {
      const d = Math.min(160, 20 * 2 ** i);
      expect(r.delayMs).toBeGreaterThanOrEqual(d / 2);
      expect(r.delayMs).toBeLessThanOrEqual(d);
    });
    expect(retries[0]!.store).toBe(`ClickHouse at http://natlens:***@127.0.0.1:${port}/`);
    expect(String(retries[0]!.error.cause)).toMatch(/ECONNREFUSED/);
    const err = await store.lossSince(0n).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as StoreUnavailableError).grpcCode).toBe(14);
    expect((err as Error).message).not.toContain('s3cret');
    await store.close();
    expect(store.state).toBe('closed');
    const n = retries.length;
    await new Promise((r) => setTimeout(r, 400));
    expect(retries.length).toBe(n);
    await expect(store.whenConnected()).rejects.toBeInstanceOf(StoreError);
  });

  it('fails for good, without retrying, on a configuration problem', async () => {
    // Bad options: at once.
    for (const opts of [{ url: 'not a url' }, { dataDir: join(root, 'x'), ttlDays: 0 }]) {
      expect(() => ClickHouseStore.connect(opts), JSON.stringify(opts)).toThrow(expect.objectContaining({ exitCode: 2 }));
    }
    // Tables of another schema: found once connected, not retried.
    const dir = join(root, 'foreign-schema');
    await raw(dir, 'CREATE DATABASE IF NOT EXISTS natlens');
    await raw(dir, 'CREATE TABLE natlens.hops (hop_id UInt64) ENGINE = MergeTree ORDER BY hop_id');
    const retries: unknown[] = [];
    const store = ClickHouseStore.connect({ dataDir: dir }, { onRetry: (r) => retries.push(r) });
    await expect(store.whenConnected()).rejects.toBeInstanceOf(StoreSchemaError);
    expect(store.state).toBe('failed');
    expect(retries).toEqual([]);
    await store.close();
  });
});

describe('ClickHouseStore (options and data directory)', () => {
  it('takes a data directory whose path looks like SQL through query parameters', async () => {
    const dir = join(root, "it's'); DROP TABLE natlens.hops; -- x");
    const store = await ClickHouseStore.open({ dataDir: dir, database: 'natlens_alt' });
    try {
      await store.insertConnections([conn()]);
      expect((await store.who({ endpoint: POD, sinceNs: ago(60) })).rows[0]?.connections).toBe(1);
      expect(readdirSync(join(dir, 'ingest'))).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('refuses a table whose columns differ from this version, naming it', async () => {
    const dir = join(root, 'old-schema');
    await raw(dir, 'CREATE DATABASE IF NOT EXISTS natlens');
    await raw(dir, 'CREATE TABLE natlens.connections (conn_id UInt64, ts DateTime64(9)) ENGINE = MergeTree ORDER BY conn_id');
    const err = await ClickHouseStore.open({ dataDir: dir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect((err as StoreError).message).toMatch(/table natlens\.connections .* has columns \[conn_id UInt64, ts DateTime64\(9\)\], this natlens expects \[conn_id UInt64, version UInt32/);
    // The failed open released the directory.
    const again = await ClickHouseStore.open({ dataDir: dir, database: 'natlens_new' });
    await again.close();
  });

  it('rejects bad options before touching anything', async () => {
    for (const opts of [{}, { dataDir: join(root, 'x'), url: 'http://127.0.0.1:1' }, { dataDir: join(root, 'x'), database: 'x; DROP DATABASE natlens' }, { dataDir: join(root, 'x'), ttlDays: 0 }, { dataDir: join(root, 'x{1,2}') }]) {
      const err = await ClickHouseStore.open(opts).catch((e: unknown) => e);
      expect(err, JSON.stringify(opts)).toBeInstanceOf(StoreError);
      expect((err as StoreError).exitCode).toBe(2);
    }
  });
});

describe('ClickHouseStore (server URL)', () => {
  it('reports an unreachable server clearly and quickly, without the password', async () => {
    const port = await freePort();
    const started = Date.now();
    const err = await ClickHouseStore.open({ url: `http://natlens:s3cret@127.0.0.1:${port}`, requestTimeoutMs: 2000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    const msg = (err as StoreError).message;
    expect(msg).toMatch(new RegExp(`cannot reach ClickHouse at http://natlens:\\*\\*\\*@127\\.0\\.0\\.1:${port}`));
    expect(msg).not.toContain('s3cret');
    expect(String((err as StoreError).cause)).toMatch(/ECONNREFUSED/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('gives up on a server that accepts but never answers after requestTimeoutMs', async () => {
    const sockets: Socket[] = [];
    const server: Server = createServer((s) => sockets.push(s));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const started = Date.now();
      const err = await ClickHouseStore.open({ url: `http://127.0.0.1:${port}`, requestTimeoutMs: 500 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StoreError);
      expect((err as StoreError).message).toMatch(/cannot reach ClickHouse/);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('rejects an invalid URL as a usage error', async () => {
    const err = await ClickHouseStore.open({ url: 'not a url' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect((err as StoreError).exitCode).toBe(2);
  });
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
