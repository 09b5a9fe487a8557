/**
 * natlens demo: the "Using Source IP" tutorial on a lab cluster, with the kernel's evidence next to
 * what the echo server saw. Everything it creates is removed at the end, also on failure.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { Agent } from '../agent/agent.js';
import type { AgentEvent } from '../agent/events.js';
import { AGENT_SETTINGS, resolveConfig } from '../config.js';
import { labCurl, labDown, labPatch, labUp, type LabCurlResult, type LabState, type ProxyMode } from '../lab/lab.js';
import { connsFor, dropsFor, formatTuple, natLabel, nextHopOf } from '../lab/evidence.js';

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
      requests: [1, 2, 3].map((i) => ({ label: `request ${i}`, from: 'client', target: 'loadbalancer@lb' })),
    },
  ];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) for the kernel's record of this request: a conn (or, for failures, a drop). */
async function evidenceFor(events: AgentEvent[], r: LabCurlResult, dropAfterMs: number): Promise<string[]> {
  const deadline = Date.now() + (r.ok ? 1000 : dropAfterMs + 1500);
  for (;;) {
    const conns = connsFor(events, r).filter((e) => e.dnat || e.snat);
    const drops = dropsFor(events, r);
    if (conns.length || drops.length || Date.now() > deadline) {
      const lines: string[] = [];
      for (const c of conns) {
        lines.push(`${c.node} translated ${formatTuple(c.orig)}  =>  ${formatTuple({ src: c.reply.dst, sport: c.reply.dport, dst: c.reply.src, dport: c.reply.sport })}  [${natLabel(c)}]`);
        const next = nextHopOf(events, c);
        if (next) lines.push(`${next.node} delivered it to the pod (same TCP ISN ${next.isn}): the pod saw ${next.orig.src}`);
      }
      for (const d of drops) lines.push(`${d.node} DROPPED ${formatTuple(d.orig)} (${d.attempts} attempt${d.attempts === 1 ? '' : 's'}, no local endpoint)`);
      if (!lines.length) lines.push('no kernel record found (see natlens doctor)');
      return lines;
    }
    await sleep(50);
  }
}

export async function runDemo(opts: { proxyMode: ProxyMode; out?: (line: string) => void }): Promise<void> {
  const out = opts.out ?? ((line: string) => process.stdout.write(`${line}\n`));
  out(`natlens demo: the Kubernetes "Using Source IP" tutorial on a lab cluster (kube-proxy ${opts.proxyMode} mode)`);
  out('');
  const agents: Agent[] = [];
  const events: AgentEvent[] = [];
  let stopping = false;
  const cleanup = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await Promise.allSettled(agents.map((a) => a.stop()));
    await labDown({ prefix: PREFIX });
  };
  const onSignal = (): void => void cleanup().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const state = await labUp({ prefix: PREFIX, proxyMode: opts.proxyMode, force: true, progress: (l) => out(`  lab: ${l}`) });
    const app = state.pods.find((p) => p.labels.app === 'source-ip-app');
    out(`  client ${state.client.ips[0]}; nodes ${state.nodes.map((n) => `${n.name} ${n.internalIPs[0]}`).join(', ')}; source-ip-app on ${app?.node} (${app?.ips[0]})`);
    const dropAfterMs = 700;
    const cfg = { ...resolveConfig(AGENT_SETTINGS, {}, process.env), dropAfterMs };
    for (const node of state.nodes) {
      const agent = new Agent({ ...cfg, node: node.name, netns: node.netnsPath });
      agent.on('event', (e: AgentEvent) => events.push(e));
      agent.on('warn', (w: string) => out(`  agent ${node.name}: warning: ${w}`));
      agents.push(agent);
    }
    await Promise.all(agents.map((a) => a.start()));
    out(`  agents: ${agents.map((a) => `${a.options.node} (${a.mode})`).join(', ')} capturing`);

    for (const [i, step] of steps(state).entries()) {
      out('');
      out(`${i + 1}. ${step.title}`);
      if (step.kubectl) out(`   $ ${step.kubectl}`);
      await step.before?.();
      // One at a time, like the tutorial's loop; each answer is shown with the kernel's record of it.
      for (const req of step.requests) {
        const r = await labCurl(req.from, req.target, { prefix: PREFIX, timeoutMs: req.timeoutMs ?? 2000 });
        const seen = r.ok ? `client_address=${r.client_address}` : `no answer (${r.error})`;
        out(`   ${req.label.padEnd(18)} echo server: ${seen}`);
        for (const line of await evidenceFor(events, r, dropAfterMs)) out(`   ${''.padEnd(18)} kernel:      ${line}`);
      }
    }
    const lost = agents.reduce((n, a) => n + (a.stats()?.lost.total ?? 0), 0);
    out('');
    out(`events: ${events.filter((e) => e.type === 'conn').length} connections, ${events.filter((e) => e.type === 'drop').length} drops recorded; ${lost} lost`);
    out('Next: the collector stitches these hops into one record per connection and answers `natlens who <pod>`.');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
    out('lab removed.');
  }
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .summary('run the source-IP tutorial on a lab cluster and show the kernel\'s evidence')
    .description('Builds the lab (network namespaces, real kube-proxy rules), starts one agent per node, walks\nthrough the tutorial (ClusterIP; NodePort under Cluster, then Local; LoadBalancer under both) and\nprints, for each request, what the echo server saw next to what the kernel recorded. Needs root.\nRemoves everything it created when it ends.')
    .addOption(new Option('--proxy-mode <mode>', 'kube-proxy mode of the lab').choices(['iptables', 'nftables']).default('iptables'))
    .action(async (opts: { proxyMode: ProxyMode }) => {
      await runDemo({ proxyMode: opts.proxyMode });
    });
}
