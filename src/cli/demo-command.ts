/**
 * natlens demo: the "Using Source IP" tutorial on a lab cluster, `natlens who` next to
 * what the echo server saw. Everything it creates is removed at the end, also on failure.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../agent/agent.js';
import { CollectorOutput } from '../agent/collector-output.js';
import { AGENT_SETTINGS, COLLECTOR_SETTINGS, resolveConfig } from '../config.js';
import { labCurl, labDown, labPatch, labUp, type LabState, type ProxyMode } from '../lab/lab.js';
import type { EtpResponse, WhoResponse } from '../transport/proto.generated.js';
import { QueryClient } from '../transport/query-client.js';
import { startCollectorService, type CollectorService } from './collector-command.js';
import { formatWho } from './who-command.js';
import { formatEtp } from '../query/etp-format.js';
import { loadKubeConfig } from '../k8s/kube-config.js';
import { startLabApiServer, type LabApiServer } from '../lab/lab-api-server.js';

const PREFIX = 'nldemo';

interface Step {
  title: string;
  /** kubectl-like command the step stands for, printed before it. */
  kubectl?: string;
  before?: () => Promise<unknown>;
  requests: { label: string; from: string; target: string; timeoutMs?: number }[];
}

function steps(state: LabState): Step[] {
  const nodes = state.nodes.map((n) => n.name);
  return [
    {
      title: 'ClusterIP: from a pod on the same node and from a pod on another node (DNAT only: the pod sees its real caller)',
      requests: [
        { label: 'busybox-1 (node1)', from: 'busybox-1', target: 'clusterip' },
        { label: 'busybox-2 (node2)', from: 'busybox-2', target: 'clusterip' },
      ],
    },
    {
      title: 'NodePort, externalTrafficPolicy: Cluster, from the external client via every node (SNAT: the pod sees a node)',
      requests: nodes.map((n) => ({ label: `via ${n}`, from: 'client', target: `nodeport@${n}` })),
    },
    {
      title: 'NodePort, externalTrafficPolicy: Local (client IP kept; nodes without an endpoint drop)',
      kubectl: `kubectl patch svc nodeport -p '{"spec":{"externalTrafficPolicy":"Local"}}'`,
      before: () => labPatch('nodeport', 'Local', { prefix: PREFIX }),
      requests: nodes.map((n) => ({ label: `via ${n}`, from: 'client', target: `nodeport@${n}`, timeoutMs: 1500 })),
    },
    {
      title: 'LoadBalancer, externalTrafficPolicy: Cluster (a packet-forwarding LB spreads over all nodes; SNAT)',
      requests: [1, 2, 3].map((i) => ({ label: `request ${i}`, from: 'client', target: 'loadbalancer@lb' })),
    },
    {
      title: 'LoadBalancer, externalTrafficPolicy: Local (the LB only uses nodes whose health check passes: the client IP is kept)',
      kubectl: `kubectl patch svc loadbalancer -p '{"spec":{"externalTrafficPolicy":"Local"}}'`,
      before: () => labPatch('loadbalancer', 'Local', { prefix: PREFIX }),
      requests: [
        ...[1, 2, 3].map((i) => ({ label: `request ${i}`, from: 'client', target: 'loadbalancer@lb' })),
        // What the LB no longer does, a client may still do: the Service's NodePort on a node without
        // an endpoint drops it (natlens etp counts it from that node's kernel).
        { label: 'via node2 NodePort', from: 'client', target: 'loadbalancer@node2', timeoutMs: 1500 },
      ],
    },
    {
      title: 'LoadBalancer rolled back to externalTrafficPolicy: Cluster (every node takes traffic again; SNAT again)',
      kubectl: `kubectl patch svc loadbalancer -p '{"spec":{"externalTrafficPolicy":"Cluster"}}'`,
      before: () => labPatch('loadbalancer', 'Cluster', { prefix: PREFIX }),
      requests: [1, 2, 3].map((i) => ({ label: `request ${i}`, from: 'client', target: 'loadbalancer@lb' })),
    },
  ];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The demo's natlens: an embedded-store collector and one agent per lab node, in this process. */
class DemoPipeline {
  private readonly outputs: CollectorOutput[] = [];
  private service: CollectorService | undefined;
  private api: LabApiServer | undefined;
  readonly dataDir = mkdtempSync(join(tmpdir(), 'natlens-demo-'));
  address = '';

  async start(state: LabState, out: (line: string) => void): Promise<void> {
    // The lab plays the Kubernetes API server: the collector records Services' history from it,
    // the agents learn their Services' health-check node ports from it.
    this.api = await startLabApiServer({ prefix: PREFIX, listen: '127.0.0.1:0' });
    out(`  kubernetes: the lab serves the API on ${this.api.url} (kubeconfig ${this.api.kubeconfigPath})`);
    // The collector's defaults, on loopback and a short hold: each step's answer is shown at once.
    // Plain text: everything stays on this machine's loopback, inside one process.
    const cfg = resolveConfig(COLLECTOR_SETTINGS, { listen: '127.0.0.1:0', data: this.dataDir, holdMs: '1s', flushMs: '200ms', kubeconfig: this.api.kubeconfigPath, plaintext: true }, {});
    this.service = await startCollectorService(cfg);
    await this.service.store.whenConnected();
    this.service.collector.on('warn', (w: string) => out(`  collector: warning: ${w}`));
    this.address = `127.0.0.1:${this.service.server.port}`;
    out(`  collector: listening on ${this.address}, embedded ClickHouse in ${this.dataDir}`);
    const agentCfg = { ...resolveConfig(AGENT_SETTINGS, {}, process.env), dropAfterMs: 700 };
    for (const node of state.nodes) {
      const agent = new Agent({ ...agentCfg, node: node.name, netns: node.netnsPath });
      agent.on('warn', (w: string) => out(`  agent ${node.name}: warning: ${w}`));
      this.outputs.push(new CollectorOutput(agent, {
        target: this.address, batchEvents: agentCfg.batchEvents, queueEvents: agentCfg.queueEvents, security: { mode: 'plaintext' },
        kubernetes: { kubeConfig: loadKubeConfig({ kubeconfig: this.api.kubeconfigPath }), healthIntervalMs: 500 },
      }));
    }
    await Promise.all(this.outputs.map((o) => o.start()));
    out(`  agents: ${state.nodes.map((n) => n.name).join(', ')} capturing and streaming to the collector`);
  }

  /** `natlens who` over the real query API, waiting (bounded) until `expected` connections are in. */
  async who(target: string, sinceMs: number, expected: number): Promise<WhoResponse> {
    const client = new QueryClient(this.address, undefined, { security: { mode: 'plaintext' } });
    try {
      const deadline = Date.now() + 8000;
      for (;;) {
        const res = await client.who({ target, sinceMs: BigInt(sinceMs), forwarded: false });
        const n = res.rows.reduce((a, r) => a + Number(r.connections), 0);
        if (n >= expected || Date.now() > deadline) return res;
        await sleep(250);
      }
    } finally {
      client.close();
    }
  }

  /** `natlens etp` over the real query API. */
  async etp(service: string, sinceMs: number): Promise<EtpResponse> {
    const client = new QueryClient(this.address, undefined, { security: { mode: 'plaintext' } });
    try {
      return await client.etp({ service, sinceMs: BigInt(sinceMs), forwarded: false });
    } finally {
      client.close();
    }
  }

  async stop(): Promise<void> {
    await Promise.allSettled(this.outputs.map((o) => o.stop(3000)));
    await this.service?.close();
    await this.api?.close();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

export async function runDemo(opts: { proxyMode: ProxyMode; out?: (line: string) => void }): Promise<void> {
  const out = opts.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  out(`natlens demo: the Kubernetes "Using Source IP" tutorial on a lab cluster (kube-proxy ${opts.proxyMode} mode)`);
  out('');
  const pipeline = new DemoPipeline();
  let stopping = false;
  const cleanup = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await pipeline.stop().catch((e: Error) => out(`  cleanup: ${e.message}`));
    await labDown({ prefix: PREFIX });
  };
  const onSignal = (): void => void cleanup().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const state = await labUp({ prefix: PREFIX, proxyMode: opts.proxyMode, force: true, progress: (l) => out(`  lab: ${l}`) });
    const app = state.pods.find((p) => p.labels.app === 'source-ip-app')!;
    const podIp = app.ips[0]!;
    out(`  client ${state.client.ips[0]}; nodes ${state.nodes.map((n) => `${n.name} ${n.internalIPs[0]}`).join(', ')}; source-ip-app on ${app.node} (${podIp})`);
    await pipeline.start(state, out);
    const demoStart = Date.now();
    let answered = 0;

    for (const [i, step] of steps(state).entries()) {
      out('');
      out(`${i + 1}. ${step.title}`);
      if (step.kubectl) out(`   $ ${step.kubectl}`);
      await step.before?.();
      const stepStart = Date.now();
      let ok = 0;
      // One at a time, like the tutorial's loop.
      for (const req of step.requests) {
        const r = await labCurl(req.from, req.target, { prefix: PREFIX, timeoutMs: req.timeoutMs ?? 2000 });
        if (r.ok) ok++;
        out(`   ${req.label.padEnd(18)} the pod saw: ${r.ok ? `client_address=${r.client_address}` : `nothing (no answer: ${r.error})`}`);
      }
      answered += ok;
      const res = await pipeline.who(podIp, Date.now() - stepStart + 500, ok);
      out(`   $ natlens who ${podIp} --since ${Math.ceil((Date.now() - stepStart) / 1000) + 1}s`);
      for (const line of formatWho(res).trimEnd().split('\n').slice(1)) out(line ? `   ${line}` : '');
    }
    const podName = `${app.namespace}/${app.name}`;
    const total = await pipeline.who(podName, Date.now() - demoStart + 1000, answered);
    out('');
    out(`The whole demo: $ natlens who ${podName}`);
    for (const line of formatWho(total).trimEnd().split('\n').slice(1)) out(line ? `   ${line}` : '');
    out('');
    out('What the externalTrafficPolicy rollout (and its rollback) changed: $ natlens etp default/loadbalancer');
    await sleep(1500); // the last drops and health readings reach the store
    const report = await pipeline.etp('default/loadbalancer', Date.now() - demoStart + 1000);
    for (const line of formatEtp(report).trimEnd().split('\n').slice(1)) out(line ? `   ${line}` : '');
    out('');
    out('CLIENT is who really called; SEEN AS is what the pod saw. Under Cluster policy the pod sees a node,');
    out('and natlens joins that node\'s record with the pod node\'s (same tuple, same TCP ISN) to name the client.');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
    out('lab and collector removed.');
  }
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .summary('run the source-IP tutorial on a lab cluster: what the pod saw next to who really called')
    .description('Builds the lab (network namespaces, real kube-proxy rules; the lab also serves the Kubernetes API),\nstarts a collector on the embedded ClickHouse store and one agent per node, walks through the\ntutorial (ClusterIP; NodePort under Cluster, then Local; LoadBalancer under Cluster, Local, and\nback) and prints, for each step, what the echo server saw next to what `natlens who` reports, then\n`natlens etp default/loadbalancer`: the rollout period by period with a before/after summary.\nNeeds root. Removes everything it created when it ends.')
    .addOption(new Option('--proxy-mode <mode>', 'kube-proxy mode of the lab').choices(['iptables', 'nftables']).default('iptables'))
    .action(async (opts: { proxyMode: ProxyMode }) => {
      await runDemo({ proxyMode: opts.proxyMode });
    });
}
