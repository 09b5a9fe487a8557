import { Command, Option } from 'commander';
import { Agent } from '../agent/agent.js';
import { serializeEvent, type AgentEvent } from '../agent/events.js';
import { AGENT_SETTINGS, CONFIG_ENV, configFileFor, resolveConfig, settingsHelp } from '../config.js';
import { UsageError } from '../util/errors.js';
import { JsonLineEncoder } from '../agent/json-line-encoder.js';
import { CollectorOutput, type CollectorOutputOptions } from '../agent/collector-output.js';
import { loadKubeConfig } from '../k8s/kube-config.js';
import { Logger } from '../observability/log.js';
import { Conditions, startMetricsServer, type MetricsServer } from '../observability/metrics-server.js';
import { newRegistry } from '../observability/registry.js';
import { agentReadiness, registerAgentMetrics } from '../observability/agent-metrics.js';
import { addSecurityOptions, securityFlags } from './security-options.js';
import { resolveTransportSecurity, type TransportSecurity } from '../transport/tls.js';
import { checkAgentCapabilities } from '../agent/capabilities.js';

export function registerAgentCommand(program: Command): void {
  const cmd = program
    .command('agent')
    .summary('capture Service connections on this node and stream them')
    .description(
      'Attaches natlens\'s eBPF programs (tc/clsact) to every interface of the node\'s network namespace\n' +
        'and reports each connection with the tuple the client used (orig, pre-NAT) and the tuple the\n' +
        'pod saw (reply, post-NAT), dropped attempts, and connection ends.\n\n' +
        'Output (--stdout): one JSON object per line: {"type":"ready",...} once capture is live, then\n' +
        '"conn", "drop", "end", "proxy" and "stats" events, and a "gap" event after "ready" when the previous\n' +
        'agent on this namespace crashed or was stopped (see docs/capture.md). Flags override NATLENS_* environment variables.',
    )
    .option('--node <name>', `node name reported with every event (env ${AGENT_SETTINGS.node.env}; default: hostname)`)
    .option('--netns <path>', 'capture inside this network namespace, e.g. /run/netns/nl-node1 (env NATLENS_NETNS)')
    .option('--stdout', 'write events to stdout as JSON lines')
    .option('--collector <host:port>', 'stream events to a natlens collector (env NATLENS_COLLECTOR)')
    .option('--batch-events <n>', 'events per batch sent to the collector (default 1000)')
    .option('--queue-events <n>', 'events held while the collector is slow or away (default 200000); beyond, counted lost')
    .addOption(new Option('--mode <mode>', 'capture mode (env NATLENS_CAPTURE_MODE)').choices(['auto', 'tc', 'ctnetlink']))
    .option('--no-udp', 'capture TCP only')
    .option('--no-attempts', 'do not track dropped connection attempts')
    .option('--no-ends', 'do not report connection ends (spares the kernel its conntrack DESTROY events; see docs/benchmarks.md)')
    .option('--no-proxy-protocol', 'do not report PROXY protocol headers (the real client behind a proxy load balancer)')
    .option('--ifaces <regex>', 'only attach to interfaces whose name matches')
    .option('--exclude <regex>', 'never attach to interfaces whose name matches')
    .option('--ring-kb <n>', 'ring buffer size in KiB, a power of two from 4 (default 8192)')
    .option('--wakeup-kb <n>', 'batched wake-up threshold in KiB (default 64)')
    .option('--drain <duration>', 'drain the ring buffer at least this often (default 5ms)')
    .option('--drop-after <duration>', 'an unanswered attempt counts as dropped after this long (default 1s)')
    .option('--stats-interval <duration>', 'emit a stats event at least this often (default 10s)')
    .option('--lock-dir <dir>', 'per-namespace agent locks, which keep the capture state across restarts (default /run/natlens)')
    .option('--kubernetes', 'watch Kubernetes (in-cluster, else $KUBECONFIG or ~/.kube/config) and read this node\'s health-check node ports')
    .option('--kubeconfig <path>', 'the same through this kubeconfig (e.g. the lab\'s: natlens lab api-server)')
    .option('--health-check-interval <duration>', 'read health-check node ports this often (default 2s)')
    .option('--config <file>', `read settings from this YAML file (env ${CONFIG_ENV}); the environment and flags override it`)
    .option('--metrics-listen <host:port>', 'serve /metrics, /healthz and /readyz here (env NATLENS_METRICS_LISTEN; default: off)')
    .addOption(new Option('--log-level <level>', 'least severe log lines written to stderr (env NATLENS_LOG_LEVEL; default info)').choices(['debug', 'info', 'warn', 'error']));
  addSecurityOptions(cmd, 'agent')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  # one agent per lab node (see: natlens lab up)\n' +
        '  natlens agent --node node2 --netns /run/netns/nl-node2 --stdout\n' +
        '  # stream to a collector (see: natlens collector --help)\n' +
        '  natlens agent --node node2 --netns /run/netns/nl-node2 --collector 127.0.0.1:7070 --plaintext\n' +
        '  # over mutual TLS (certificates: natlens certs --help, docs/security.md)\n' +
        '  natlens agent --collector collector.example:7070 --tls-ca ca.crt --tls-cert node2.crt --tls-key node2.key\n' +
        '  # only the NodePort-relevant events\n' +
        '  natlens agent --node node2 --netns /run/netns/nl-node2 --stdout | jq -c \'select(.snat)\'\n\n' +
        'Settings: config file key (--config FILE, YAML "key: value" lines), environment variable.\n' +
        'Flags override the environment, which overrides the file (see docs/configuration.md):\n' +
        settingsHelp(AGENT_SETTINGS),
    )
    .action(async (opts: Record<string, string | boolean | undefined>) => {
      const file = configFileFor(AGENT_SETTINGS, opts.config as string | undefined, process.env);
      const cfg = resolveConfig(AGENT_SETTINGS, {
        node: opts.node as string | undefined, netns: opts.netns as string | undefined, mode: opts.mode as string | undefined,
        udp: opts.udp === false ? false : undefined, attempts: opts.attempts === false ? false : undefined,
        ctEnd: opts.ends === false ? false : undefined, proxyProtocol: opts.proxyProtocol === false ? false : undefined,
        ifaces: opts.ifaces as string | undefined, exclude: opts.exclude as string | undefined,
        ringKb: opts.ringKb as string | undefined, wakeupKb: opts.wakeupKb as string | undefined,
        drainMs: opts.drain as string | undefined, dropAfterMs: opts.dropAfter as string | undefined,
        statsIntervalMs: opts.statsInterval as string | undefined, lockDir: opts.lockDir as string | undefined,
        collector: opts.collector as string | undefined, batchEvents: opts.batchEvents as string | undefined,
        queueEvents: opts.queueEvents as string | undefined,
        kubernetes: opts.kubernetes as boolean | undefined, kubeconfig: opts.kubeconfig as string | undefined,
        healthIntervalMs: opts.healthCheckInterval as string | undefined,
        metricsListen: opts.metricsListen as string | undefined, logLevel: opts.logLevel as string | undefined,
        ...securityFlags(opts),
      }, process.env, { drainMs: '--drain', dropAfterMs: '--drop-after', statsIntervalMs: '--stats-interval', healthIntervalMs: '--health-check-interval' }, file);
      if (!opts.stdout === !cfg.collector) throw new UsageError('agent: choose one output: --collector HOST:PORT or --stdout');
      const kubernetes = cfg.kubernetes || cfg.kubeconfig
        ? { kubeConfig: loadKubeConfig({ kubeconfig: cfg.kubeconfig }), healthIntervalMs: cfg.healthIntervalMs }
        : undefined;
      if (kubernetes && !cfg.collector) throw new UsageError('agent: --kubernetes/--kubeconfig need --collector (health-check readings go to the collector)');
      const log = new Logger('agent', { level: cfg.logLevel });
      const observe = { log, metricsListen: cfg.metricsListen };
      const security = cfg.collector ? resolveTransportSecurity(cfg, 'agent', 'agent') : undefined;
      // Before anything is attached: what is missing is said at once, each capability with its use.
      checkAgentCapabilities({ netns: cfg.netns, mode: cfg.mode });
      if (cfg.collector) await runAgentToCollector(new Agent(cfg), cfg.collector, cfg.batchEvents, cfg.queueEvents, kubernetes, observe, security);
      else await runAgentToStdout(new Agent(cfg), observe);
    });
}

/**
 * Streams JSON lines to stdout. Flow records are encoded straight from the probe's bytes
 * (JsonLineEncoder) and written once per event-loop turn: a write per line cost a syscall and a
 * reader wake-up each. When stdout cannot keep up, capture is paused; the kernel then counts
 * what it could not buffer.
 */
export async function runAgentToStdout(agent: Agent, observe: AgentObservability = {}): Promise<void> {
  const log = observe.log ?? new Logger('agent');
  const out = process.stdout;
  const encoder = new JsonLineEncoder(agent.options.node, (i) => agent.interfaceName(i));
  let paused = false;
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (encoder.length === 0) return;
    if (!out.write(encoder.take()) && !paused) {
      paused = true;
      agent.pause();
      out.once('drain', () => {
        paused = false;
        agent.resume();
      });
    }
  };
  const scheduleFlush = (): void => {
    if (encoder.length >= 256 * 1024) flush();
    else if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  agent.flowSink = (buf, off) => {
    encoder.encode(buf, off);
    scheduleFlush();
  };
  agent.on('event', (ev: AgentEvent) => {
    encoder.appendLine(serializeEvent(ev));
    scheduleFlush();
  });
  agent.on('warn', (msg: string) => log.warn('warn', { msg }));
  const metrics = await startAgentMetrics(agent, undefined, observe, log);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void agent.stop();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  out.on('error', stop); // EPIPE: the reader went away
  try {
    await agent.start();
    const code = await agent.wait();
    flush();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    if (!stopping && code !== 0) process.exitCode = 1;
    if (!stopping) log.error('probe-exited', { msg: `natlens-probe exited unexpectedly (code ${code})`, code });
  } finally {
    await metrics?.close();
  }
}

/** The agent's own logs and metrics endpoint (off unless metricsListen is set). */
export interface AgentObservability {
  log?: Logger;
  metricsListen?: string;
}

/** Serves the agent's /metrics, /healthz and /readyz when asked to; logs where. */
async function startAgentMetrics(agent: Agent, output: CollectorOutput | undefined, observe: AgentObservability, log: Logger): Promise<MetricsServer | undefined> {
  if (!observe.metricsListen) return undefined;
  const registry = newRegistry({ processMetrics: true });
  const readiness = new Conditions();
  registerAgentMetrics(registry, agent, output);
  agentReadiness(readiness, agent, output);
  const server = await startMetricsServer({ listen: observe.metricsListen, registry, readiness });
  log.info('metrics-listening', { address: observe.metricsListen, port: server.port });
  return server;
}

/** Status events of the collector output: a lost stream is worth a warning, the rest is information. */
const statusLevel = (event: unknown): 'info' | 'warn' =>
  event === 'disconnected' || (typeof event === 'string' && /error|expired/.test(event)) ? 'warn' : 'info';

/** Streams to a collector until SIGTERM/SIGINT, then drains what is queued (up to 5 s). */
export async function runAgentToCollector(
  agent: Agent,
  target: string,
  batchEvents: number,
  queueEvents: number,
  kubernetes?: CollectorOutputOptions['kubernetes'],
  observe: AgentObservability = {},
  security?: TransportSecurity,
): Promise<void> {
  const log = observe.log ?? new Logger('agent');
  const output = new CollectorOutput(agent, { target, batchEvents, queueEvents, kubernetes, security });
  if (security?.mode === 'plaintext') log.warn('warn', { msg: `plain text to ${target}: events travel unencrypted and unauthenticated (--plaintext, for a lab only)` });
  else if (security) log.info('tls', { cert: security.material.files.cert, expires: security.material.expires, serverName: security.serverName });
  output.on('status', (fields: Record<string, unknown>) => log.log(statusLevel(fields.event), String(fields.event), fields));
  agent.on('warn', (msg: string) => log.warn('warn', { msg }));
  agent.on('event', (ev: AgentEvent) => {
    if (ev.type === 'ready') log.info('ready', { node: ev.node, mode: ev.mode, interfaces: ev.interfaces });
  });
  const metrics = await startAgentMetrics(agent, output, observe, log);
  // --log-level debug: the stream's counters now and then (info stays quiet while all is well).
  const statsTimer = log.enabled('debug') ? setInterval(() => log.debug('stats', output.stats()), agent.options.statsIntervalMs) : undefined;
  statsTimer?.unref();
  let stopping = false;
  const stopped = new Promise<void>((resolve) => {
    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    agent.once('exit', stop);
  });
  try {
    await output.start();
    await stopped;
    const unacked = await output.stop();
    log.log(unacked > 0 ? 'warn' : 'info', 'stopped', { ...output.stats(), unacked });
    if (unacked > 0) process.exitCode = 1;
  } finally {
    clearInterval(statsTimer);
    await metrics?.close();
  }
}
