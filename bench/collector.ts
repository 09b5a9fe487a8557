// npm run bench:collector — the collector on the embedded store, measured on this machine.
//
// 1. Preload: NATLENS_BENCH_STORED (default 10,000,000) stitched connections over the last hour,
//    spread over 2,000 pods, written through the store's own insert path.
// 2. Stream: a `natlens collector` process on that store; three synthetic agents (the real
//    CollectorStreamClient, one per node) offer NodePort-shaped hops (an SNAT hop on the ingress
//    node + the endpoint node's hop, or one hop when they are the same node) at
//    NATLENS_BENCH_RATE events/s (default 100,000) for NATLENS_BENCH_SECONDS (default 20).
//    Reported: events/s acknowledged (= stored), connections stitched, events lost (agent queue
//    overflow) and events never acknowledged.
// 3. Query: `who` over the query API for 200 random pods (p50/p99), while nothing else runs.
// The last line is one JSON object with the figures.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { recordVersion } from '../src/collector/stitcher.js';
import { hash64 } from '../src/collector/hop-id.js';
import { formatAddr, toAddr16 } from '../src/collector/addr.js';
import type { ConnectionRecord } from '../src/collector/hop.js';
import { ClickHouseStore } from '../src/collector/store/clickhouse-store.js';
import { CollectorStreamClient } from '../src/transport/stream-client.js';
import { QueryClient } from '../src/transport/query-client.js';
import { HopKind, createHopEvent, createTuple, type HopEvent } from '../src/transport/proto.generated.js';
import { PACKAGE_ROOT } from '../src/util/paths.js';

const env = (name: string, def: number): number => {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}='${v}' must be a non-negative number`);
  return n;
};
const STORED = env('NATLENS_BENCH_STORED', 10_000_000);
const RATE = env('NATLENS_BENCH_RATE', 100_000);
const SECONDS = Math.min(env('NATLENS_BENCH_SECONDS', 20), 300);
const PODS = 2000;
const NODES = ['node1', 'node2', 'node3'];
const log = (msg: string): void => void process.stderr.write(`bench:collector: ${msg}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const v4 = (a: number, b: number, c: number, d: number): Uint8Array => Uint8Array.of(a, b, c, d);
const nodeIp = (n: number): Uint8Array => v4(10, 240, 0, 3 + n);
const podIp = (p: number): Uint8Array => v4(10, 180, 1 + (p % 3), 2 + Math.floor(p / 3) % 250);
const podNode = (p: number): number => p % 3;
const clientIp = (c: number): Uint8Array => v4(198, 51, (c >> 8) & 255, c & 255);

async function preload(dataDir: string): Promise<void> {
  const store = await ClickHouseStore.open({ dataDir });
  const now = BigInt(Date.now()) * 1_000_000n;
  const started = performance.now();
  const BATCH = 50_000;
  try {
    for (let done = 0; done < STORED; done += BATCH) {
      const rows: ConnectionRecord[] = [];
      for (let i = done; i < Math.min(STORED, done + BATCH); i++) {
        const pod = i % PODS;
        const ingress = (i >> 3) % 3;
        const endpoint = podNode(pod);
        const client = clientIp(i % 5000);
        const snat = ingress !== endpoint || i % 2 === 0;
        const ts = now - BigInt((i * 7919) % 3_500_000) * 1_000_000n; // within the last hour
        rows.push({
          connId: hash64([i]), version: recordVersion('complete', ingress === endpoint ? 1 : 2, 1), tsNs: ts, lastTsNs: ts,
          proto: 'tcp', family: 4, endpoint: toAddr16(podIp(pod)), endpointPort: 8080, service: toAddr16(nodeIp(ingress)), servicePort: 30080,
          client: toAddr16(client), clientPort: 1024 + (i % 60000), seenAs: toAddr16(snat ? nodeIp(ingress) : client), seenAsPort: 1024 + (i % 60000),
          ingressNode: NODES[ingress]!, endpointNode: NODES[endpoint]!, snat, status: 'complete',
          hopNodes: ingress === endpoint ? [NODES[ingress]!] : [NODES[ingress]!, NODES[endpoint]!], isn: i >>> 0,
        });
      }
      await store.insertConnections(rows);
      if ((done / BATCH) % 20 === 19) log(`preload: ${done + rows.length} / ${STORED} connections (${Math.round((done + rows.length) / ((performance.now() - started) / 1000))} rows/s)`);
    }
  } finally {
    await store.close();
  }
  log(`preload: ${STORED} connections in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

/** The hops one synthetic connection produces, by agent (node index). */
function connectionHops(i: number, tsNs: bigint): Array<[number, HopEvent]> {
  const pod = i % PODS;
  const ingress = (i >> 2) % 3;
  const endpoint = podNode(pod);
  const client = clientIp(i % 60000);
  const cport = 1024 + (i % 64000);
  const snatPort = 1024 + ((i * 13) % 64000);
  const isn = (Math.imul(i, 2654435761) >>> 0);
  const p = podIp(pod);
  const n = nodeIp(ingress);
  const first = createHopEvent({
    kind: HopKind.CONN, tsNs, ipProto: 6, ctStatus: 0x10 | 0x20, tcpIsn: isn, hasIsn: true, ifname: ingress === endpoint ? 'vethpod' : 'eth0',
    deliveredLocal: ingress === endpoint,
    orig: createTuple({ src: client, sport: cport, dst: n, dport: 30080 }),
    reply: createTuple({ src: p, sport: 8080, dst: n, dport: snatPort }),
  });
  if (ingress === endpoint) return [[ingress, first]];
  const second = createHopEvent({
    kind: HopKind.CONN, tsNs: tsNs + 40_000n, ipProto: 6, tcpIsn: isn, hasIsn: true, ifname: 'vethpod', deliveredLocal: true,
    orig: createTuple({ src: n, sport: snatPort, dst: p, dport: 8080 }),
    reply: createTuple({ src: p, sport: 8080, dst: n, dport: snatPort }),
  });
  return [[ingress, first], [endpoint, second]];
}

async function stream(address: string): Promise<{ offered: number; acked: number; lost: number; unacked: number; seconds: number }> {
  const agents = NODES.map((node, k) => new CollectorStreamClient({
    target: address,
    hello: { node, agentId: `bench-${node}-${process.pid}`, version: 'bench', nodeAddresses: [nodeIp(k)] },
    maxBatchEvents: 1000,
    maxQueuedEvents: 200_000,
  }));
  let offered = 0;
  let conn = 0;
  const started = performance.now();
  const TICK_MS = 10;
  const end = started + SECONDS * 1000;
  while (performance.now() < end) {
    const due = Math.floor(((performance.now() - started) / 1000) * RATE);
    while (offered < due) {
      const ts = BigInt(Date.now()) * 1_000_000n;
      for (const [k, ev] of connectionHops(conn++, ts)) {
        agents[k]!.push(ev);
        offered++;
      }
    }
    await sleep(TICK_MS);
  }
  const sendSeconds = (performance.now() - started) / 1000;
  log(`offered ${offered} events in ${sendSeconds.toFixed(1)} s; draining`);
  const unacked = (await Promise.all(agents.map((a) => a.close({ drainTimeoutMs: 30_000 })))).reduce((a, b) => a + b, 0);
  const seconds = (performance.now() - started) / 1000;
  const stats = agents.map((a) => a.stats());
  const acked = stats.reduce((a, s) => a + s.ackedEvents, 0);
  const lost = stats.reduce((a, s) => a + s.overflowEvents, 0);
  return { offered, acked, lost, unacked, seconds };
}

async function whoLatency(address: string): Promise<{ p50: number; p99: number }> {
  const q = new QueryClient(address, undefined, { security: { mode: 'plaintext' } });
  const times: number[] = [];
  try {
    for (let i = 0; i < 200; i++) {
      const pod = (i * 37) % PODS;
      const t0 = performance.now();
      const res = await q.who({ target: formatAddr(toAddr16(podIp(pod))), sinceMs: 3_600_000n, forwarded: false });
      times.push(performance.now() - t0);
      if (i === 0) log(`who ${formatAddr(toAddr16(podIp(pod)))}: ${res.rows.length} rows, ${res.rows.reduce((a, r) => a + Number(r.connections), 0)} connections`);
    }
  } finally {
    q.close();
  }
  times.sort((a, b) => a - b);
  return { p50: times[Math.floor(times.length * 0.5)]!, p99: times[Math.floor(times.length * 0.99)]! };
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'natlens-bench-collector-'));
  let collector: ReturnType<typeof spawn> | undefined;
  let collectorLog = '';
  try {
    if (STORED > 0) await preload(dataDir);
    collector = spawn(process.execPath, [...(process.env.NATLENS_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), join(PACKAGE_ROOT, 'bin', 'natlens'), 'collector', '--listen', '127.0.0.1:0', '--data', dataDir, '--plaintext'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const address = await new Promise<string>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`collector did not start: ${buf}`)), 60_000);
      collector!.stderr!.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        collectorLog += d;
        const m = /"event":"listening".*?"port":(\d+)/.exec(buf);
        if (m) {
          clearTimeout(timer);
          resolve(`127.0.0.1:${m[1]}`);
        }
      });
      collector!.on('exit', (code) => reject(new Error(`collector exited (${code}): ${buf}`)));
    });
    log(`collector on ${address}; streaming ${RATE} events/s for ${SECONDS} s`);
    const s = await stream(address);
    const eventsPerS = s.acked / s.seconds;
    log(`acknowledged ${s.acked} of ${s.offered} events: ${Math.round(eventsPerS)} events/s; lost ${s.lost}; unacked ${s.unacked}`);
    await sleep(2500); // let the last chains emit before measuring queries
    const w = await whoLatency(address);
    log(`who: p50 ${w.p50.toFixed(1)} ms, p99 ${w.p99.toFixed(1)} ms over ${STORED} preloaded connections (+ streamed)`);
    collector.kill('SIGTERM');
    await new Promise((r) => collector!.once('exit', r));
    const stopped = collectorLog.split('\n').filter((l) => l.includes('"event":"stopped"')).map((l) => JSON.parse(l) as { storedHops: number; storedConnections: number; stitcher: { emitted: number; links: number } })[0];
    if (!stopped) throw new Error(`collector did not report its final counters:\n${collectorLog.slice(-2000)}`);
    log(`collector: stored ${stopped.storedHops} hops and ${stopped.storedConnections} connection records; ${stopped.stitcher.links} hop links`);
    const summary = {
      events_per_s: Math.round(eventsPerS),
      offered_events_per_s: RATE,
      lost: s.offered - s.acked, // dropped by the agents' queues (s.lost) or never acknowledged (s.unacked)
      who_p50_ms: Number(w.p50.toFixed(2)),
      who_p99_ms: Number(w.p99.toFixed(2)),
      stored_connections: STORED,
      streamed_events: s.acked,
      stored_hops: stopped.storedHops,
      stitched_connections: stopped.stitcher.emitted,
      seconds: Number(s.seconds.toFixed(1)),
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    if (collector && collector.exitCode === null) {
      collector.kill('SIGTERM');
      await new Promise((r) => collector!.once('exit', r));
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench:collector: failed: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
