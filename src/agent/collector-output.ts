/**
 * The agent's collector output: probe records -> HopEvents -> batched gRPC stream with acks
 * (CollectorStreamClient: bounded queue, reconnect, resend of what was not acknowledged). Capture
 * never waits for the collector: what the queue cannot hold is counted as lost (queue_overflow)
 * and reported upstream with the kernel's own loss counters.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { parseAddr } from '../collector/addr.js';
import { CollectorStreamClient } from '../transport/stream-client.js';
import { NATLENS_VERSION } from '../util/paths.js';
import type { Agent } from './agent.js';
import type { AgentEvent } from './events.js';
import { hopEventFromRecord } from './hop-event-encoder.js';
import { NodeNetworkWatch } from './node-network.js';
import { HealthProber } from './health-prober.js';
import { ClusterWatch } from '../k8s/cluster-watch.js';
import type { KubeConfig } from '@kubernetes/client-node';
import type { TransportSecurity } from '../transport/tls.js';

export interface CollectorOutputOptions {
  target: string;
  batchEvents: number;
  queueEvents: number;
  /** Watch Kubernetes (this node, Services) and read the node's health-check node ports. */
  kubernetes?: { kubeConfig: KubeConfig; healthIntervalMs: number };
  /** Mutual TLS (the agent's certificate) or plain text; tls.ts. */
  security?: TransportSecurity;
}

/** Events: 'status' ({ event, ...fields }) for the CLI to log. */
export class CollectorOutput extends EventEmitter {
  readonly agentId = randomUUID();
  private client: CollectorStreamClient | undefined;
  private readonly network: NodeNetworkWatch;
  private captured = 0;
  private watch: ClusterWatch | undefined;
  private prober: HealthProber | undefined;
  /** Why the last stream to the collector ended (for readiness). */
  lastDisconnect: string | undefined;

  constructor(private readonly agent: Agent, private readonly options: CollectorOutputOptions) {
    super();
    this.network = new NodeNetworkWatch(agent.options.netns);
  }

  /** Reads the node's network, connects the stream, starts capture. */
  async start(): Promise<void> {
    const net = await this.network.start();
    const agent = this.agent;
    const client = new CollectorStreamClient({
      target: this.options.target,
      security: this.options.security,
      hello: {
        node: agent.options.node,
        agentId: this.agentId,
        version: NATLENS_VERSION,
        nodeAddresses: net.addresses.map((a) => parseAddr(a)).filter((a): a is Uint8Array => a !== null),
      },
      maxBatchEvents: this.options.batchEvents,
      maxQueuedEvents: this.options.queueEvents,
      lossProvider: () => {
        const s = agent.stats();
        // Kernel ring buffer, pending-attempt map, netlink socket, undecodable records; the client adds its queue_overflow.
        const lost: Record<string, number> = {};
        if (s) for (const [k, v] of Object.entries(s.lost)) if (k !== 'total') lost[k] = v;
        const gaps = agent.gaps.map((g) => ({ fromNs: g.fromNs, toNs: g.toNs, cause: g.cause, reason: g.reason, previousPid: g.previousPid }));
        return { lost, captured: this.captured, ringbufFullPerCpu: s?.ringbuf_full_per_cpu ?? {}, gaps };
      },
    });
    this.client = client;
    // Loss that grew and gaps found at start go out now, not with the next captured event.
    agent.on('event', (ev: AgentEvent) => {
      if (ev.type === 'gap' || (ev.type === 'stats' && ev.lost.total > 0)) client.lossChanged();
    });
    client.on('connected', () => this.emit('status', { event: 'connected', collector: this.options.target }));
    client.on('disconnected', (reason: unknown) => {
      this.lastDisconnect = String(reason);
      this.emit('status', { event: 'disconnected', collector: this.options.target, reason: String(reason) });
    });
    if (this.options.kubernetes) await this.startHealthChecks(this.options.kubernetes, net.addresses, client);
    agent.flowSink = (buf, off) => {
      const ev = hopEventFromRecord(buf, off, (i) => agent.interfaceName(i), (n) => this.network.deliversLocally(n));
      this.captured++;
      client.push(ev);
    };
    await agent.start();
  }

  /** Watches this node's Services and reads their health-check node ports into the stream. */
  private async startHealthChecks(k: NonNullable<CollectorOutputOptions['kubernetes']>, nodeAddresses: string[], client: CollectorStreamClient): Promise<void> {
    const node = this.agent.options.node;
    this.watch = await ClusterWatch.start({
      kubeConfig: k.kubeConfig,
      resources: ['Service', 'Node'],
      nodeName: node,
      log: (fields) => this.emit('status', { event: 'k8s', ...fields }),
    });
    const metadata = this.watch.metadata;
    this.prober = new HealthProber({
      netns: this.agent.options.netns,
      // The address a cloud load balancer would probe: the node's InternalIP (IPv4 first).
      nodeAddress: () => {
        const known = metadata.node(node)?.addresses ?? nodeAddresses;
        return known.find((a) => !a.includes(':')) ?? known[0];
      },
      targets: () => metadata.services()
        .filter((s) => s.type === 'LoadBalancer' && s.externalTrafficPolicy === 'Local' && s.healthCheckNodePort > 0)
        .map((s) => ({ namespace: s.namespace, name: s.name, port: s.healthCheckNodePort })),
      intervalMs: k.healthIntervalMs,
      timeoutMs: Math.min(1000, k.healthIntervalMs),
      onReading: (r) => client.pushHealthCheck(r),
    });
    this.prober.start();
  }

  stats() {
    return { captured: this.captured, ...this.client?.stats() };
  }

  /** The collector address this output streams to. */
  get target(): string {
    return this.options.target;
  }

  /** What the stream client lost, by stage (empty before start()). */
  clientLoss(): Partial<ReturnType<CollectorStreamClient['lossCounts']>> {
    return this.client?.lossCounts() ?? {};
  }

  /** Stops capture (filters detached), then sends what is queued; returns events never acknowledged. */
  async stop(drainTimeoutMs = 5000): Promise<number> {
    await this.prober?.stop();
    await this.watch?.stop();
    await this.agent.stop();
    this.network.stop();
    return (await this.client?.close({ drainTimeoutMs })) ?? 0;
  }
}
