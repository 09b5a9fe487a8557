import { Command, Option } from 'commander';
import { Collector, type StoreRetry } from '../collector/collector.js';
import { PeerRing } from '../collector/peer-ring.js';
import { ClickHouseStore } from '../collector/store/clickhouse-store.js';
import { COLLECTOR_SETTINGS, CONFIG_ENV, configFileFor, resolveConfig, settingsHelp, type ConfigOf } from '../config.js';
import { startTransportServer, type TransportServer } from '../transport/stream-server.js';
import { UsageError, describeError } from '../util/errors.js';
import { ClusterMetadata } from '../k8s/cluster-metadata.js';
import { ClusterWatch } from '../k8s/cluster-watch.js';
import { loadKubeConfig } from '../k8s/kube-config.js';
import { NATLENS_VERSION } from '../util/paths.js';
import { Logger } from '../observability/log.js';
import { Conditions, startMetricsServer, type MetricsServer } from '../observability/metrics-server.js';
import { newRegistry } from '../observability/registry.js';
import { CollectorMetrics } from '../observability/collector-metrics.js';
import { addSecurityOptions, securityFlags } from './security-options.js';
import { resolveTransportSecurity } from '../transport/tls.js';
import { QueryTokens, type ServerSecurity } from '../transport/auth.js';

export function registerCollectorCommand(program: Command): void {
  const cmd = program
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
    .option('--config <file>', `read settings from this YAML file (env ${CONFIG_ENV}); the environment and flags override it`)
    .option('--metrics-listen <host:port>', 'serve /metrics, /healthz and /readyz here (env NATLENS_METRICS_LISTEN; default: off)')
    .addOption(new Option('--log-level <level>', 'least severe log lines written to stderr (env NATLENS_LOG_LEVEL; default info)').choices(['debug', 'info', 'warn', 'error']))
    .option('--max-buffered-hops <n>', 'hops held while the store is slow or away (default 100000, about 1.2 KB each); beyond, agents wait')
    .option('--clickhouse-timeout <duration>', 'give up on a ClickHouse server request after this long, then retry (default 30s)');
  addSecurityOptions(cmd, 'collector')
    .addHelpText('after',
      '\nExamples:\n' +
        '  natlens collector --data /var/lib/natlens --plaintext           # embedded store, lab (no TLS, no auth)\n' +
        '  natlens collector --listen 0.0.0.0:7070 --clickhouse-url http://clickhouse:8123 \\\n' +
        '      --tls-ca ca.crt --tls-cert collector.crt --tls-key collector.key --query-token-file tokens\n' +
        '  # two collectors behind one address: both hops of a connection meet at the one owning its pod\n' +
        '  natlens collector --id c1 --listen 10.0.0.5:7070 --peers c1=10.0.0.5:7070,c2=10.0.0.6:7070 --data /var/lib/natlens \\\n' +
        '      --tls-ca ca.crt --tls-cert c1.crt --tls-key c1.key       # a collector certificate naming 10.0.0.5\n\n' +
        'Settings: config file key (--config FILE, YAML "key: value" lines), environment variable.\n' +
        'Flags override the environment, which overrides the file (see docs/configuration.md):\n' +
        settingsHelp(COLLECTOR_SETTINGS))
    .action(async (opts: Record<string, string | undefined>) => {
      const file = configFileFor(COLLECTOR_SETTINGS, opts.config, process.env);
      const cfg = resolveConfig(COLLECTOR_SETTINGS, {
        listen: opts.listen, data: opts.data, clickhouseUrl: opts.clickhouseUrl, database: opts.database, ttlDays: opts.ttlDays,
        id: opts.id, peers: opts.peers, holdMs: opts.hold, windowMs: opts.window, retentionMs: opts.retention, flushMs: opts.flushInterval,
        kubernetes: opts.kubernetes as string | boolean | undefined, kubeconfig: opts.kubeconfig,
        metricsListen: opts.metricsListen, logLevel: opts.logLevel,
        maxBufferedHops: opts.maxBufferedHops, clickhouseTimeoutMs: opts.clickhouseTimeout,
        ...securityFlags(opts),
      }, process.env, { holdMs: '--hold', windowMs: '--window', retentionMs: '--retention', flushMs: '--flush-interval', clickhouseTimeoutMs: '--clickhouse-timeout' }, file);
      await runCollector(cfg);
    });
}

export interface CollectorService {
  collector: Collector;
  store: ClickHouseStore;
  server: TransportServer;
  ring: PeerRing;
  /** The Kubernetes watch, when configured. */
  watch?: ClusterWatch;
  /** TLS or plain text, and the query tokens. */
  security: ServerSecurity;
  /** Stops taking streams, stores what is held, closes the store. */
  close(): Promise<void>;
}

/** How the service reports on itself: its log, and its metrics when they are served. */
export interface CollectorObservability {
  log?: Logger;
  metrics?: CollectorMetrics;
}

/**
 * Store + collector + gRPC server from one configuration: `natlens collector` and the demo. Does not
 * wait for the store: the collector serves (not ready) and retries with backoff until it is reached.
 */
export async function startCollectorService(cfg: ConfigOf<typeof COLLECTOR_SETTINGS>, observe: CollectorObservability = {}): Promise<CollectorService> {
  const { metrics } = observe;
  const log = observe.log ?? new Logger('collector');
  if (!cfg.data === !cfg.clickhouseUrl) throw new UsageError('collector: give exactly one store: --data DIR (embedded) or --clickhouse-url URL');
  // Before the store opens: a collector without a security choice never listens.
  const security = collectorSecurity(cfg);
  const ring = new PeerRing(cfg.id, PeerRing.parsePeers(cfg.peers));
  let collector: Collector | undefined;
  const store = ClickHouseStore.connect(
    { dataDir: cfg.data, url: cfg.clickhouseUrl, database: cfg.database, ttlDays: cfg.ttlDays, requestTimeoutMs: cfg.clickhouseTimeoutMs },
    // Reported like failed writes (attempts only fail after the collector exists: they are asynchronous).
    { onRetry: (r) => collector?.emit('store-retry', { store: r.store, attempt: r.attempt, retryInMs: r.delayMs, error: describeError(r.error), bufferedHops: 0 } satisfies StoreRetry) },
  );
  metrics?.observeStore(store);
  collector = new Collector({
    ring, store, version: NATLENS_VERSION, flushIntervalMs: cfg.flushMs, maxBufferedHops: cfg.maxBufferedHops, peerSecurity: security.transport,
    stitcher: { holdMs: cfg.holdMs, windowMs: cfg.windowMs, retentionMs: cfg.retentionMs, maxChains: 2_000_000 },
  });
  metrics?.observeCollector(collector);
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
        log: (fields) => log.child('k8s').log(/error|expired/.test(String(fields.event)) ? 'warn' : 'info', String(fields.event ?? 'k8s'), fields),
      });
    }
    server = await startTransportServer({
      listen: cfg.listen, agentSink: metrics ? metrics.agentSink(collector) : collector, querySink: metrics ? metrics.querySink(collector) : collector, collectorId: cfg.id,
      maxBatchEvents: cfg.maxBatchEvents, maxMessageBytes: cfg.maxMessageBytes,
      // Acks wait for the store (a few hundred ms): keep enough batches in flight to cover that.
      maxInflightBatchesPerStream: 64,
      security,
    });
  } catch (err) {
    await watch?.stop();
    await collector.close();
    await store.close();
    throw err;
  }
  return {
    collector, store, server, ring, watch, security,
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
  const log = new Logger('collector', { level: cfg.logLevel });
  // The endpoint comes up first: /healthz answers while the store opens (which can take a while), /readyz says why not yet.
  const readiness = new Conditions();
  readiness.set('store', () => 'opening the store');
  readiness.set('server', () => 'not listening yet');
  const metrics = cfg.metricsListen ? new CollectorMetrics(newRegistry({ processMetrics: true })) : undefined;
  let endpoint: MetricsServer | undefined;
  if (metrics && cfg.metricsListen) {
    endpoint = await startMetricsServer({ listen: cfg.metricsListen, registry: metrics.registry, readiness });
    log.info('metrics-listening', { address: cfg.metricsListen, port: endpoint.port });
  }
  let service: CollectorService;
  try {
    service = await startCollectorService(cfg, { log, metrics });
  } catch (err) {
    await endpoint?.close();
    throw err;
  }
  const { collector, server, ring } = service;
  const pings = metrics?.storeReadiness(readiness, collector, service.store);
  readiness.set('server', () => null);
  collector.on('warn', (msg: string) => log.warn('warn', { msg }));
  const { transport, queryTokens } = service.security;
  if (transport.mode === 'plaintext') {
    log.warn('warn', {
      msg: queryTokens
        ? 'plain text (--plaintext): agents\' streams are unencrypted and unauthenticated, tokens travel in clear; for a lab only'
        : 'unauthenticated lab mode (--plaintext without --query-token-file): anyone who reaches this port can stream events and query; for a lab only',
    });
  } else {
    log.info('tls', { cert: transport.material.files.cert, expires: transport.material.expires, clientCertificates: queryTokens ? 'requested (queries may use a token instead)' : 'required', queryTokens: queryTokens?.size ?? 0 });
  }
  let lastStoreLog = 0;
  let unlogged = 0;
  collector.on('store-retry', (r: StoreRetry) => {
    const now = Date.now();
    if (r.attempt > 1 && now - lastStoreLog < STORE_LOG_INTERVAL_MS) {
      unlogged++;
      return;
    }
    log.warn('store_unavailable', { ...r, unlogged });
    lastStoreLog = now;
    unlogged = 0;
  });
  collector.on('store-recovered', (r: Record<string, unknown>) => log.info('store_recovered', r));
  collector.on('restored', (r: Record<string, unknown>) => log.info('restored', r));
  log.info('listening', { address: cfg.listen, port: server.port, id: cfg.id, store: cfg.data ? { embedded: cfg.data } : { url: redact(cfg.clickhouseUrl!) }, peers: ring.peers.map((p) => p.id) });
  const statsTimer = setInterval(() => log.info('stats', collector.stats()), 10_000);
  statsTimer.unref();
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info('stopping', { signal: sig });
      readiness.set('server', () => 'shutting down');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    // A store that can never be used (bad URL, foreign tables): say so and stop.
    service.store.whenConnected().catch((err: unknown) => {
      if (service.store.state !== 'failed') return;
      log.error('error', { msg: describeError(err) });
      process.exitCode = 2;
      stop('store');
    });
  });
  clearInterval(statsTimer);
  pings?.stop();
  try {
    await service.close();
  } finally {
    await endpoint?.close();
  }
  log.info('stopped', collector.stats());
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

/** TLS (or the explicit --plaintext) and the query tokens, checked before anything listens. */
export function collectorSecurity(cfg: ConfigOf<typeof COLLECTOR_SETTINGS>): ServerSecurity {
  const transport = resolveTransportSecurity(cfg, 'collector', 'collector');
  const queryTokens = cfg.queryTokenFile === undefined ? undefined : QueryTokens.load(cfg.queryTokenFile);
  return { transport, queryTokens };
}
