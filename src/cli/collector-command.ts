import { Command } from 'commander';
import { Collector, type StoreRetry } from '../collector/collector.js';
import { PeerRing } from '../collector/peer-ring.js';
import { ClickHouseStore } from '../collector/store/clickhouse-store.js';
import { COLLECTOR_SETTINGS, resolveConfig, type ConfigOf } from '../config.js';
import { startTransportServer, type TransportServer } from '../transport/stream-server.js';
import { UsageError, describeError } from '../util/errors.js';
import { ClusterMetadata } from '../k8s/cluster-metadata.js';
import { ClusterWatch } from '../k8s/cluster-watch.js';
import { loadKubeConfig } from '../k8s/kube-config.js';
import { NATLENS_VERSION } from '../util/paths.js';

export function registerCollectorCommand(program: Command): void {
  program
    .command('collector')
    .summary('receive agents\' streams, stitch SNAT hops, store them in ClickHouse, answer queries')
    .description(
      'Serves the agent stream and the query API (gRPC) on --listen. Every connection\'s hops\n' +
        '(one per node it crossed) are joined into one record with its real client, and stored with\n' +
        'the raw hops in ClickHouse: embedded (--data DIR, the ClickHouse engine in this process)\n' +
        'or a server (--clickhouse-url). Status lines go to stderr as JSON.',
    )
    .option('--listen <host:port>', 'serve agents and queries here (default 127.0.0.1:7070)')
    .option('--data <dir>', 'embedded ClickHouse data directory (one collector per directory)')
    .option('--clickhouse-url <url>', 'ClickHouse server, e.g. http://natlens:secret@clickhouse:8123')
    .option('--database <name>', 'ClickHouse database (default natlens)')
    .option('--ttl-days <n>', 'keep stored data this many days (default 7)')
    .option('--id <id>', 'this collector\'s id among its peers (default c1)')
    .option('--peers <list>', 'every collector sharing the work, id=host:port,... including this one')
    .option('--hold <duration>', 'wait this long for a missing hop before storing a connection as unstitched (default 2s)')
    .option('--window <duration>', 'largest time difference between two hops of one connection (default 5s)')
    .option('--retention <duration>', 'keep stitching late hops this long after storing a connection (default 15s)')
    .option('--flush-interval <duration>', 'store received events at least this often (default 250ms)')
    .option('--kubernetes', 'watch Kubernetes (in-cluster, else $KUBECONFIG or ~/.kube/config): pod and Service names, Service history for etp')
    .option('--kubeconfig <path>', 'watch Kubernetes through this kubeconfig (e.g. the lab\'s: natlens lab api-server)')
    .option('--max-buffered-hops <n>', 'hops held while the store is slow or away (default 100000, about 1.2 KB each); beyond, agents wait')
    .option('--clickhouse-timeout <duration>', 'give up on a ClickHouse server request after this long, then retry (default 30s)')
    .addHelpText('after',
      '\nExamples:\n' +
        '  natlens collector --data /var/lib/natlens                       # embedded store\n' +
        '  natlens collector --listen 0.0.0.0:7070 --clickhouse-url http://clickhouse:8123\n' +
        '  # two collectors behind one address: both hops of a connection meet at the one owning its pod\n' +
        '  natlens collector --id c1 --listen 10.0.0.5:7070 --peers c1=10.0.0.5:7070,c2=10.0.0.6:7070 --data /var/lib/natlens\n\n' +
        'Environment (overridden by flags):\n' +
        Object.values(COLLECTOR_SETTINGS).map((s) => `  ${s.env.padEnd(26)} ${s.help}`).join('\n'))
    .action(async (opts: Record<string, string | undefined>) => {
      const cfg = resolveConfig(COLLECTOR_SETTINGS, {
        listen: opts.listen, data: opts.data, clickhouseUrl: opts.clickhouseUrl, database: opts.database, ttlDays: opts.ttlDays,
        id: opts.id, peers: opts.peers, holdMs: opts.hold, windowMs: opts.window, retentionMs: opts.retention, flushMs: opts.flushInterval,
        kubernetes: opts.kubernetes as string | boolean | undefined, kubeconfig: opts.kubeconfig,
        maxBufferedHops: opts.maxBufferedHops, clickhouseTimeoutMs: opts.clickhouseTimeout,
      }, process.env, { holdMs: '--hold', windowMs: '--window', retentionMs: '--retention', flushMs: '--flush-interval', clickhouseTimeoutMs: '--clickhouse-timeout' });
      await runCollector(cfg);
    });
}

const status = (event: string, fields: Record<string, unknown> = {}): void => {
  process.stderr.write(`${JSON.stringify({ event, ...fields, ts: new Date().toISOString() })}\n`);
};

export interface CollectorService {
  collector: Collector;
  store: ClickHouseStore;
  server: TransportServer;
  ring: PeerRing;
  /** The Kubernetes watch, when configured. */
  watch?: ClusterWatch;
  /** Stops taking streams, stores what is held, closes the store. */
  close(): Promise<void>;
}

/**
 * Store + collector + gRPC server from one configuration: `natlens collector` and the demo. Does not
 * wait for the store: the collector serves (not ready) and retries with backoff until it is reached.
 */
export async function startCollectorService(cfg: ConfigOf<typeof COLLECTOR_SETTINGS>): Promise<CollectorService> {
  if (!cfg.data === !cfg.clickhouseUrl) throw new UsageError('collector: give exactly one store: --data DIR (embedded) or --clickhouse-url URL');
  const ring = new PeerRing(cfg.id, PeerRing.parsePeers(cfg.peers));
  let collector: Collector | undefined;
  const store = ClickHouseStore.connect(
    { dataDir: cfg.data, url: cfg.clickhouseUrl, database: cfg.database, ttlDays: cfg.ttlDays, requestTimeoutMs: cfg.clickhouseTimeoutMs },
    // Reported like failed writes (attempts only fail after the collector exists: they are asynchronous).
    { onRetry: (r) => collector?.emit('store-retry', { store: r.store, attempt: r.attempt, retryInMs: r.delayMs, error: describeError(r.error), bufferedHops: 0 } satisfies StoreRetry) },
  );
  collector = new Collector({
    ring, store, version: NATLENS_VERSION, flushIntervalMs: cfg.flushMs, maxBufferedHops: cfg.maxBufferedHops,
    stitcher: { holdMs: cfg.holdMs, windowMs: cfg.windowMs, retentionMs: cfg.retentionMs, maxChains: 2_000_000 },
  });
  collector.start();
  let server: TransportServer;
  let watch: ClusterWatch | undefined;
  try {
    if (cfg.kubernetes || cfg.kubeconfig) {
      // Rows emitted during the initial sync are kept: they are the state in force from now on.
      const metadata = new ClusterMetadata();
      metadata.on('service-history', (row) => collector.recordServiceHistory(row));
      metadata.on('pod-history', (row) => collector.recordPodHistory(row));
      watch = await ClusterWatch.start({
        kubeConfig: loadKubeConfig({ kubeconfig: cfg.kubeconfig }),
        resources: ['Pod', 'Service', 'EndpointSlice', 'Node'],
        metadata,
        log: (fields) => status('k8s', fields),
      });
    }
    server = await startTransportServer({
      listen: cfg.listen, agentSink: collector, querySink: collector, collectorId: cfg.id,
      maxBatchEvents: cfg.maxBatchEvents, maxMessageBytes: cfg.maxMessageBytes,
      // Acks wait for the store (a few hundred ms): keep enough batches in flight to cover that.
      maxInflightBatchesPerStream: 64,
    });
  } catch (err) {
    await watch?.stop();
    await collector.close();
    await store.close();
    throw err;
  }
  return {
    collector, store, server, ring, watch,
    async close() {
      await watch?.stop();
      await server.close();
      await collector.close();
      await store.close();
    },
  };
}

/** Store failures are logged at most this often (the first at once), with how many were not. */
const STORE_LOG_INTERVAL_MS = 5000;

export async function runCollector(cfg: ConfigOf<typeof COLLECTOR_SETTINGS>): Promise<void> {
  const service = await startCollectorService(cfg);
  const { collector, server, ring } = service;
  collector.on('warn', (msg: string) => status('warn', { msg }));
  let lastStoreLog = 0;
  let unlogged = 0;
  collector.on('store-retry', (r: StoreRetry) => {
    const now = Date.now();
    if (r.attempt > 1 && now - lastStoreLog < STORE_LOG_INTERVAL_MS) {
      unlogged++;
      return;
    }
    status('store_unavailable', { ...r, unlogged });
    lastStoreLog = now;
    unlogged = 0;
  });
  collector.on('store-recovered', (r: Record<string, unknown>) => status('store_recovered', r));
  collector.on('restored', (r: Record<string, unknown>) => status('restored', r));
  status('listening', { address: cfg.listen, port: server.port, id: cfg.id, store: cfg.data ? { embedded: cfg.data } : { url: redact(cfg.clickhouseUrl!) }, peers: ring.peers.map((p) => p.id) });
  const statsTimer = setInterval(() => status('stats', collector.stats()), 10_000);
  statsTimer.unref();
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      status('stopping', { signal: sig });
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    // A store that can never be used (bad URL, foreign tables): say so and stop.
    service.store.whenConnected().catch((err: unknown) => {
      if (service.store.state !== 'failed') return;
      status('error', { msg: describeError(err) });
      process.exitCode = 2;
      stop('store');
    });
  });
  clearInterval(statsTimer);
  await service.close();
  status('stopped', collector.stats());
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable URL)';
  }
}
