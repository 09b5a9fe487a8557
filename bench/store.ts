// The store benchmark (node dist/bench/store.js): how fast ClickHouseStore takes connection records
// and answers `who`, on the embedded engine (chdb) in a temp directory, or on a server by URL.
//
// Inserts 1,000,000 synthetic ConnectionRecords (timestamps within the last hour, ~2,000 distinct
// endpoints) in batches of 20,000, timing insertConnections only (record generation excluded), and
// separately the RowBinary encoding alone, to split JavaScript cost from engine cost. Then runs
// `who` (last hour) for 50 random endpoints, one at a time, and reports p50/p99 latency.
//
// stdout: a few lines, and as the LAST line one JSON object. Knobs (environment, all optional):
// NATLENS_BENCH_ROWS (1000000), NATLENS_BENCH_BATCH (20000), NATLENS_BENCH_ENDPOINTS (2000),
// NATLENS_BENCH_QUERIES (50), NATLENS_BENCH_STORE_URL (a ClickHouse server instead of chdb; the
// bench writes to database natlens_bench there).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Addr16, ConnectionRecord } from '../src/collector/hop.js';
import { ClickHouseStore } from '../src/collector/store/clickhouse-store.js';
import { RowBinaryWriter } from '../src/collector/store/row-binary.js';
import { connectionsTable, encodeRows } from '../src/collector/store/schema.js';

function envInt(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name}='${raw}': expected a whole number ${min}..${max}`);
  return n;
}

const ROWS = envInt('NATLENS_BENCH_ROWS', 1_000_000, 1, 100_000_000);
const BATCH = envInt('NATLENS_BENCH_BATCH', 20_000, 1, 1_000_000);
const ENDPOINTS = envInt('NATLENS_BENCH_ENDPOINTS', 2_000, 1, 60_000);
const QUERIES = envInt('NATLENS_BENCH_QUERIES', 50, 1, 10_000);
const URL = process.env['NATLENS_BENCH_STORE_URL'];

/** Deterministic, so runs are comparable. */
let seed = 0x2545f491;
function rand(n: number): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) % n;
}

function v4(a: number, b: number, c: number, d: number): Addr16 {
  return new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]);
}

const endpoints = Array.from({ length: ENDPOINTS }, (_, i) => v4(10, 180, i >> 8, i & 255));
const services = Array.from({ length: 200 }, (_, i) => v4(10, 96, i >> 8, i & 255));
const clients = Array.from({ length: 5_000 }, (_, i) => v4(192, 168, i >> 8, i & 255));
const nodes = Array.from({ length: 10 }, (_, i) => ({ name: `node-${i}`, addr: v4(10, 240, 0, i + 1) }));

const nowNs = BigInt(Date.now()) * 1_000_000n;
const HOUR_NS = 3_600_000_000_000;

function makeBatch(start: number, n: number): ConnectionRecord[] {
  const out: ConnectionRecord[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const ep = rand(ENDPOINTS);
    const ingress = nodes[rand(nodes.length)]!;
    const target = nodes[ep % nodes.length]!;
    const snat = rand(4) === 0;
    const ts = nowNs - BigInt(rand(HOUR_NS / 1000) * 1000) - 1_000_000_000n;
    out[i] = {
      connId: BigInt(start + i) * 2654435761n,
      version: (2 << 24) | (2 << 16) | 1,
      tsNs: ts,
      lastTsNs: ts + BigInt(rand(5_000_000)),
      proto: rand(10) === 0 ? 'udp' : 'tcp',
      family: 4,
      endpoint: endpoints[ep]!,
      endpointPort: 8080,
      service: services[ep % services.length]!,
      servicePort: 80,
      client: rand(50) === 0 ? null : clients[rand(clients.length)]!,
      clientPort: 32768 + rand(28000),
      seenAs: snat ? ingress.addr : clients[rand(clients.length)]!,
      seenAsPort: 32768 + rand(28000),
      ingressNode: ingress.name,
      endpointNode: target.name,
      snat,
      status: rand(100) === 0 ? 'unstitched' : 'complete',
      hopNodes: ingress === target ? [ingress.name] : [ingress.name, target.name],
      isn: rand(2 ** 31),
    };
  }
  return out;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function main(): Promise<void> {
  const dir = URL === undefined ? mkdtempSync(join(tmpdir(), 'natlens-bench-store-')) : undefined;
  const store = await ClickHouseStore.open(dir !== undefined ? { dataDir: dir } : { url: URL, database: 'natlens_bench' });
  try {
    let insertMs = 0;
    let encodeMs = 0;
    const w = new RowBinaryWriter(1 << 22);
    for (let done = 0; done < ROWS; done += BATCH) {
      const batch = makeBatch(done, Math.min(BATCH, ROWS - done));
      const e0 = performance.now();
      encodeRows(connectionsTable, batch, w);
      encodeMs += performance.now() - e0;
      w.reset();
      const t0 = performance.now();
      await store.insertConnections(batch);
      insertMs += performance.now() - t0;
      if ((done / BATCH) % 10 === 0) process.stderr.write(`inserted ${done + batch.length}\n`);
    }
    const rowsPerS = ROWS / (insertMs / 1000);
    console.log(`insert: ${ROWS} rows in batches of ${BATCH}: ${(insertMs / 1000).toFixed(2)} s, ${Math.round(rowsPerS)} rows/s (RowBinary encoding alone: ${(encodeMs / 1000).toFixed(2)} s)`);

    const lat: number[] = [];
    let totalRows = 0;
    for (let q = 0; q < QUERIES; q++) {
      const t0 = performance.now();
      const res = await store.who({ endpoint: endpoints[rand(ENDPOINTS)]!, sinceNs: nowNs - BigInt(HOUR_NS) - 10_000_000_000n });
      lat.push(performance.now() - t0);
      totalRows += res.rows.reduce((s, r) => s + r.connections, 0);
    }
    const sorted = [...lat].sort((a, b) => a - b);
    const p50 = percentile(sorted, 50);
    const p99 = percentile(sorted, 99);
    console.log(`who: ${QUERIES} random endpoints (last hour, ~${Math.round(totalRows / QUERIES)} connections each): p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, first ${lat[0]!.toFixed(1)} ms`);
    console.log(JSON.stringify({
      backend: URL === undefined ? 'chdb' : 'server', rows: ROWS, batch: BATCH, endpoints: ENDPOINTS,
      insert_s: +(insertMs / 1000).toFixed(3), insert_rows_per_s: Math.round(rowsPerS), encode_s: +(encodeMs / 1000).toFixed(3),
      who_queries: QUERIES, who_p50_ms: +p50.toFixed(2), who_p99_ms: +p99.toFixed(2),
    }));
  } finally {
    await store.close();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
