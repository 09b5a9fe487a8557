// The transport benchmark (node dist/bench/transport.js): how many HopEvents/s one agent stream
// carries over real gRPC on 127.0.0.1 when the collector's sink costs nothing.
//
// The collector runs in a worker thread (its own event loop and core, like a real collector
// process); the main thread is the agent: it pushes 1,000,000 synthetic events through
// CollectorStreamClient.push(), yielding whenever the send queue is half full (as a capture loop
// would be paced by the kernel), and the clock stops when the last event is acked. Encoding,
// validation, HTTP/2 and the collector's decoding are all inside the measurement.
//
// Knobs (environment): NATLENS_BENCH_EVENTS (1000000), NATLENS_BENCH_BATCHES (100,1000,5000),
// NATLENS_BENCH_WINDOWS (collector HTTP/2 receive windows to compare, bytes; default: the transport
// default, then 65535 = plain grpc-js).
// stdout: one line per run, then one JSON object as the last line.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { CollectorStreamClient } from '../src/transport/stream-client.js';
import { DEFAULT_FLOW_CONTROL_WINDOW_BYTES } from '../src/transport/grpc-services.js';
import { startTransportServer } from '../src/transport/stream-server.js';
import { HopKind, createHopEvent, type HopEvent } from '../src/transport/proto.generated.js';

interface ServerData {
  window: number;
}

async function serverMain(data: ServerData): Promise<void> {
  let events = 0;
  const srv = await startTransportServer({
    listen: '127.0.0.1:0',
    collectorId: 'bench',
    maxBatchEvents: 5000,
    flowControlWindowBytes: data.window,
    agentSink: {
      accept: (_s, batch) => {
        events += batch.events.length;
        return Promise.resolve();
      },
    },
  });
  parentPort?.postMessage({ port: srv.port });
  parentPort?.on('message', (m: string) => {
    if (m === 'stop') {
      void srv.close({ timeoutMs: 1000 }).then(() => parentPort?.postMessage({ events }));
    }
  });
}

function envList(name: string, def: number[]): number[] {
  const raw = process.env[name];
  if (!raw) return def;
  return raw.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}='${raw}': expected positive integers`);
    return n;
  });
}

/** A pool of distinct realistic events, reused cyclically (identity does not matter here). */
function eventPool(n: number): HopEvent[] {
  const ts0 = BigInt(Date.now()) * 1_000_000n;
  return Array.from({ length: n }, (_, i) =>
    createHopEvent({
      kind: HopKind.CONN,
      tsNs: ts0 + BigInt(i) * 1000n,
      ipProto: 6,
      orig: { src: Uint8Array.of(198, 51, (i >> 8) & 255, i & 255), dst: Uint8Array.of(198, 51, 100, 2), sport: 1024 + (i % 60000), dport: 30080 },
      reply: { src: Uint8Array.of(10, 180, 1, 136 + (i % 4)), dst: Uint8Array.of(10, 240, 0, 3), sport: 8080, dport: 1024 + (i % 60000) },
      ctStatus: 0x1b8,
      tcpIsn: (i * 2654435761) >>> 0,
      hasIsn: true,
      ifname: 'veth1a2b3c',
      deliveredLocal: false,
    }),
  );
}

async function runOnce(total: number, batch: number, window: number, pool: HopEvent[]): Promise<{ eps: number; ms: number; acked: number; overflow: number }> {
  const worker = new Worker(fileURLToPath(import.meta.url), { workerData: { window } satisfies ServerData });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      worker.once('message', (m: { port: number }) => resolve(m.port));
      worker.once('error', reject);
    });
    const maxQueued = Math.max(200_000, batch * 80);
    const client = new CollectorStreamClient({
      target: `127.0.0.1:${port}`,
      hello: { node: 'bench-node', agentId: 'bench', version: 'bench', nodeAddresses: [] },
      maxBatchEvents: batch,
      maxQueuedEvents: maxQueued,
    });
    await new Promise<void>((resolve) => client.once('connected', () => resolve()));
    const t0 = performance.now();
    let pushed = 0;
    while (pushed < total) {
      const s = client.stats();
      if (s.queuedEvents + s.inflightEvents > maxQueued / 2) {
        await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      const end = Math.min(total, pushed + Math.min(10_000, maxQueued / 4));
      for (; pushed < end; pushed++) client.push(pool[pushed % pool.length] as HopEvent);
    }
    client.flush();
    while (client.stats().ackedEvents + client.stats().overflowEvents < total) await new Promise<void>((r) => setTimeout(r, 1));
    const ms = performance.now() - t0;
    const st = client.stats();
    await client.close({ drainTimeoutMs: 1000 });
    worker.postMessage('stop');
    await new Promise<void>((resolve) => worker.once('message', () => resolve()));
    return { eps: st.ackedEvents / (ms / 1000), ms, acked: st.ackedEvents, overflow: st.overflowEvents };
  } finally {
    await worker.terminate();
  }
}

async function main(): Promise<void> {
  const total = envList('NATLENS_BENCH_EVENTS', [1_000_000])[0] as number;
  const batches = envList('NATLENS_BENCH_BATCHES', [100, 1000, 5000]);
  const windows = envList('NATLENS_BENCH_WINDOWS', [DEFAULT_FLOW_CONTROL_WINDOW_BYTES, 65_535]);
  const pool = eventPool(4096);
  const results: Array<{ batch: number; window: number; eventsPerSec: number; ms: number; overflow: number }> = [];
  for (const window of windows) {
    for (const batch of batches) {
      const r = await runOnce(total, batch, window, pool);
      results.push({ batch, window, eventsPerSec: Math.round(r.eps), ms: Math.round(r.ms), overflow: r.overflow });
      process.stdout.write(
        `batch ${String(batch).padStart(5)}  window ${String(window).padStart(8)} B  ${(r.eps / 1e6).toFixed(2)}M events/s  (${r.acked} acked in ${r.ms.toFixed(0)} ms, ${r.overflow} dropped)\n`,
      );
    }
  }
  process.stdout.write(JSON.stringify({ events: total, results }) + '\n');
}

if (isMainThread) {
  main().catch((err: unknown) => {
    process.stderr.write(`bench transport: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
} else {
  void serverMain(workerData as ServerData);
}
