// `natlens lab ...`: build and drive the "Using Source IP" tutorial's cluster
// out of network namespaces on this machine.

import { Command, Option } from 'commander';
import { parseDuration } from '../util/duration.js';
import { NatlensError, UsageError } from '../util/errors.js';
import { dumpKubeProxy } from './kube-proxy-apply.js';
import { DEFAULT_PREFIX, labCurl, labDown, labPatch, labStatus, labUp, requireLabState, type LabState } from './lab.js';
import { byFamily } from './topology.js';
import type { ProxyMode, TrafficPolicy } from './types.js';

const progress = (line: string): void => {
  process.stderr.write(`natlens lab: ${line}\n`);
};

function prefixOption(): Option {
  return new Option('--prefix <prefix>', 'name prefix of the lab\'s namespaces (run several labs side by side)').default(DEFAULT_PREFIX);
}

function summary(state: LabState): string {
  const lines: string[] = [];
  lines.push(`lab "${state.prefix}" (kube-proxy mode: ${state.proxyMode})`, '');
  lines.push('NODE     NETNS                INTERNAL-IP                      POD-CIDR');
  for (const n of state.nodes) {
    lines.push(`${n.name.padEnd(8)} ${n.netns.padEnd(20)} ${n.internalIPs.join(',').padEnd(32)} ${n.podCIDRs.join(',')}`);
  }
  lines.push('', 'POD              NODE     IP');
  for (const p of state.pods) lines.push(`${p.name.padEnd(16)} ${p.node.padEnd(8)} ${p.ips.join(',')}`);
  lines.push('', 'SERVICE          TYPE          CLUSTER-IP                      EXTERNAL-IP                      PORT(S)                     POLICY');
  for (const s of state.services) {
    const ports = s.ports.map((p) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol}`).join(',');
    lines.push(
      `${s.name.padEnd(16)} ${s.type.padEnd(13)} ${s.clusterIPs.join(',').padEnd(31)} ${(s.loadBalancerIPs.join(',') || '<none>').padEnd(32)} ${ports.padEnd(27)} ${s.type === 'ClusterIP' ? '' : s.externalTrafficPolicy}`,
    );
  }
  lines.push('', `client: ${state.client.netns} ${state.client.ips.join(',')}   load balancer: ${state.lb.netns} ${state.lb.ips.join(',')}`);
  return lines.join('\n') + '\n';
}

export function registerLabCommands(program: Command): void {
  const lab = program
    .command('lab')
    .description('build the Kubernetes "Using Source IP" tutorial\'s cluster out of network namespaces and real kube-proxy NAT rules')
    .addHelpText(
      'after',
      `
The lab is the tutorial's cluster on one machine: a client (198.51.100.79), a
router, a packet-forwarding load balancer (203.0.113.140), three nodes
(10.240.0.3-5) running kube-proxy's real iptables or nftables rules, the
source-ip-app echo server on node1 (10.180.1.136) and busybox client pods.
Everything is dual-stack; every Service has a TCP and a UDP port 80 -> 8080.

Walk through the tutorial:
  natlens lab up                                   # build it (--proxy-mode nftables for the nftables proxier)
  natlens lab curl busybox-1 clusterip             # ClusterIP: client_address is the pod's IP
  natlens lab curl client nodeport@node2           # NodePort: SNAT, client_address is a node IP
  natlens lab patch nodeport --external-traffic-policy Local
  natlens lab curl client nodeport@node1           # Local: client_address=198.51.100.79
  natlens lab curl client nodeport@node2           # Local on a node without endpoints: dropped (timeout)
  natlens lab curl client loadbalancer@lb          # LoadBalancer through the LB
  natlens lab down`,
    );

  lab
    .command('up')
    .description('create the lab (namespaces, veth pairs, routes, kube-proxy rules, echo servers)')
    .addOption(new Option('--proxy-mode <mode>', 'kube-proxy mode to program on the nodes').choices(['iptables', 'nftables']).default('iptables'))
    .addOption(prefixOption())
    .option('--force', 'tear down an existing lab with the same prefix first')
    .option('--json', 'print the lab state as JSON')
    .addHelpText(
      'after',
      `
Examples:
  natlens lab up
  natlens lab up --proxy-mode nftables --prefix nft
The state is written to /run/natlens/lab-<prefix>.json.`,
    )
    .action(async (opts: { proxyMode: ProxyMode; prefix: string; force?: boolean; json?: boolean }) => {
      const state = await labUp({ prefix: opts.prefix, proxyMode: opts.proxyMode, force: !!opts.force, progress });
      if (opts.json) process.stdout.write(JSON.stringify(state, null, 2) + '\n');
      else {
        process.stdout.write(summary(state));
        process.stdout.write(`\nnext: natlens lab curl client nodeport@node2${opts.prefix === DEFAULT_PREFIX ? '' : ` --prefix ${opts.prefix}`}\n`);
      }
    });

  lab
    .command('down')
    .description('remove every namespace of the lab and stop the servers it started')
    .addOption(prefixOption())
    .option('--json', 'print what was removed as JSON')
    .action(async (opts: { prefix: string; json?: boolean }) => {
      const res = await labDown({ prefix: opts.prefix, progress });
      if (opts.json) process.stdout.write(JSON.stringify(res) + '\n');
      else process.stdout.write(`removed ${res.removedNamespaces.length} namespaces, stopped ${res.killedPids.length} servers\n`);
    });

  lab
    .command('status')
    .description('show the lab: nodes, pods, services and whether everything is still there')
    .addOption(prefixOption())
    .option('--json', 'print the status (with the full lab state) as JSON')
    .action((opts: { prefix: string; json?: boolean }) => {
      const st = labStatus(opts.prefix);
      if (opts.json) {
        process.stdout.write(JSON.stringify(st, null, 2) + '\n');
        return;
      }
      if (!st.state) {
        process.stdout.write(`no lab with prefix "${opts.prefix}" (start one with: natlens lab up)\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(summary(st.state));
      for (const s of st.servers) process.stdout.write(`server in ${s.pod}: pid ${s.pid} ${s.running ? 'running' : 'NOT RUNNING'}\n`);
      if (st.missingNamespaces.length) process.stdout.write(`missing namespaces: ${st.missingNamespaces.join(', ')}\n`);
      if (!st.up) process.exitCode = 1;
    });

  lab
    .command('patch')
    .description('change a Service\'s externalTrafficPolicy (like kubectl patch svc) and reprogram kube-proxy and the load balancer')
    .argument('<service>', 'Service name: nodeport or loadbalancer')
    .addOption(new Option('--external-traffic-policy <policy>', 'Local or Cluster').choices(['Local', 'Cluster']).makeOptionMandatory())
    .addOption(prefixOption())
    .addHelpText(
      'after',
      `
Examples (the tutorial's kubectl patch svc nodeport -p '{"spec":{"externalTrafficPolicy":"Local"}}'):
  natlens lab patch nodeport --external-traffic-policy Local
  natlens lab patch loadbalancer --external-traffic-policy Local   # the LB then only sends to node1
  natlens lab patch nodeport --external-traffic-policy Cluster`,
    )
    .action(async (service: string, opts: { externalTrafficPolicy: TrafficPolicy; prefix: string }) => {
      const svc = await labPatch(service, opts.externalTrafficPolicy, { prefix: opts.prefix });
      process.stdout.write(`service/${svc.name} patched (externalTrafficPolicy: ${svc.externalTrafficPolicy})\n`);
      if (svc.type === 'LoadBalancer' && svc.externalTrafficPolicy === 'Local' && svc.healthCheckNodePort) {
        process.stdout.write(`healthCheckNodePort: ${svc.healthCheckNodePort}\n`);
      }
    });

  lab
    .command('curl')
    .description('send one HTTP request (or UDP datagram) from inside the lab and print what the echo server saw')
    .argument('<from>', 'where to send from: client, a pod (busybox-1, busybox-2, source-ip-app) or a node (node1..node3)')
    .argument('<target>', 'SERVICE (its ClusterIP), SERVICE@NODE (node InternalIP + nodePort), SERVICE@lb (load-balancer IP), IP:PORT or [IPv6]:PORT')
    .option('-6, --ipv6', 'use the IPv6 addresses of the Service / node / load balancer')
    .option('--udp', 'send a UDP datagram to the Service\'s UDP port instead of HTTP over TCP')
    .option('--timeout <duration>', 'give up after this long (a drop under Local policy shows up as a timeout)', '2s')
    .option('--path <path>', 'HTTP path to request', '/')
    .option('--json', 'print {from,target,proto,family,local,remote,ok,client_address,response,error}')
    .addOption(prefixOption())
    .addHelpText(
      'after',
      `
Examples, following the tutorial:
  natlens lab curl busybox-1 clusterip                # wget -qO - 10.0.170.92 from a pod: client_address=10.180.1.8
  natlens lab curl busybox-2 clusterip -6 --udp       # from the other node, IPv6, UDP
  for n in node1 node2 node3; do natlens lab curl client nodeport@$n | grep client_address; done
  natlens lab curl client loadbalancer@lb             # curl 203.0.113.140
  natlens lab curl client 10.240.0.4:30080 --timeout 1s --json`,
    )
    .action(
      async (
        from: string,
        target: string,
        opts: { ipv6?: boolean; udp?: boolean; timeout: string; path: string; json?: boolean; prefix: string },
      ) => {
        const timeoutMs = parseDuration(opts.timeout, '--timeout');
        if (timeoutMs <= 0 || timeoutMs > 120_000) throw new UsageError('--timeout must be between 1ms and 2m');
        const res = await labCurl(from, target, { prefix: opts.prefix, family: opts.ipv6 ? 6 : 4, udp: !!opts.udp, timeoutMs, path: opts.path });
        if (opts.json) {
          process.stdout.write(JSON.stringify(res) + '\n');
          if (!res.ok) process.exitCode = 1;
          return;
        }
        if (res.ok) process.stdout.write(res.response ?? '');
        else {
          process.stderr.write(`natlens lab curl: ${res.remote.ip}:${res.remote.port} (${res.proto}): ${res.error}\n`);
          process.exitCode = 1;
        }
      },
    );

  lab
    .command('rules')
    .description('print the kube-proxy rules installed on a node (iptables-save or nft list table)')
    .argument('<node>', 'node1, node2 or node3')
    .addOption(prefixOption())
    .action(async (nodeName: string, opts: { prefix: string }) => {
      const state = requireLabState(opts.prefix);
      const node = state.nodes.find((n) => n.name === nodeName || n.netns === nodeName);
      if (!node) throw new NatlensError(`no node "${nodeName}" (nodes: ${state.nodes.map((n) => n.name).join(', ')})`);
      process.stdout.write(`# ${node.name} (${byFamily(node.internalIPs, 4)}), kube-proxy mode ${state.proxyMode}\n`);
      process.stdout.write(await dumpKubeProxy(state, node));
    });
}
