// `natlens lab ...`: build and drive the "Using Source IP" tutorial's cluster
// out of network namespaces on this machine.

import { Command, Option } from 'commander';
import { parseDuration } from '../util/duration.js';
import { NatlensError, UsageError } from '../util/errors.js';
import { registerLabApiServerCommand } from './api-server-command.js';
import { dumpKubeProxy } from './kube-proxy-apply.js';
import {
  DEFAULT_PREFIX,
  labCurl,
  labDown,
  labHealthz,
  labPatch,
  labRestore,
  labSetLbMode,
  labStatus,
  labTerminate,
  labUp,
  labWaitLb,
  readLabState,
  requireLabState,
  type LabState,
} from './lab.js';
import { byFamily } from './topology.js';
import type { LbMode, ProxyMode, ProxyProtocolMode, TrafficPolicy } from './types.js';

const progress = (line: string): void => {
  process.stderr.write(`natlens lab: ${line}\n`);
};

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer, not "${text}"`);
  return n;
}

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
  for (const p of state.pods) lines.push(`${p.name.padEnd(16)} ${p.node.padEnd(8)} ${p.ips.join(',')}${p.terminating ? '   (Terminating: endpoints serving, not ready)' : ''}`);
  lines.push('', 'SERVICE          TYPE          CLUSTER-IP                      EXTERNAL-IP                      PORT(S)                     POLICY');
  for (const s of state.services) {
    const ports = s.ports.map((p) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol}`).join(',');
    lines.push(
      `${s.name.padEnd(16)} ${s.type.padEnd(13)} ${s.clusterIPs.join(',').padEnd(31)} ${(s.loadBalancerIPs.join(',') || '<none>').padEnd(32)} ${ports.padEnd(27)} ${s.type === 'ClusterIP' ? '' : s.externalTrafficPolicy}`,
    );
  }
  lines.push('', `client: ${state.client.netns} ${state.client.ips.join(',')}   load balancer: ${state.lb.netns} ${state.lb.ips.join(',')}`);
  lines.push(...lbLines(state));
  return lines.join('\n') + '\n';
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** The load balancer: mode, targets, health per node. */
function lbLines(state: LabState): string[] {
  const lb = state.lb;
  const lines = [
    `load balancer mode: ${lb.mode}${lb.mode === 'proxy' ? ` (PROXY protocol: ${lb.proxyProtocol})` : ''}` +
      (lb.health ? `, health checks every ${lb.health.healthCheck.intervalMs}ms (out after ${plural(lb.health.healthCheck.unhealthyThreshold, 'failure')}, back after ${plural(lb.health.healthCheck.healthyThreshold, 'success', 'successes')})` : ''),
  ];
  for (const [key, targets] of Object.entries(lb.targets)) {
    const h = lb.health?.services[key];
    const detail = h
      ? h.healthCheckNodePort
        ? ` (Local, /healthz on :${h.healthCheckNodePort}${h.failOpen ? ', every node failing: fail-open' : ''})`
        : ` (${h.externalTrafficPolicy}: every node, not health-checked)`
      : '';
    lines.push(`  ${key} -> ${targets.join(', ') || '<none>'}${detail}`);
    for (const [node, n] of Object.entries(h?.nodes ?? {})) {
      const last = n.lastStatus !== null ? `HTTP ${n.lastStatus}${n.lastLocalEndpoints !== null ? ` localEndpoints=${n.lastLocalEndpoints}` : ''}` : (n.lastError ?? 'not checked yet');
      lines.push(`    ${node.padEnd(8)} ${n.healthy ? 'healthy  ' : 'UNHEALTHY'} last check: ${last} (${n.consecutiveSuccesses} ok / ${n.consecutiveFailures} failed in a row)`);
    }
  }
  return lines;
}

export function registerLabCommands(program: Command): void {
  const lab = program
    .command('lab')
    .description('build the Kubernetes "Using Source IP" tutorial\'s cluster out of network namespaces and real kube-proxy NAT rules')
    .addHelpText(
      'after',
      `
The lab is the tutorial's cluster on one machine: a client (198.51.100.79), a
router, a load balancer (203.0.113.140; packet-forwarding, or a TCP proxy with
--lb-mode proxy), three nodes (10.240.0.3-5) running kube-proxy's real iptables
or nftables rules and its health check server, the source-ip-app echo server on
node1 (10.180.1.136) and busybox client pods. The load balancer health-checks
the nodes like a cloud LB (GET /healthz on the healthCheckNodePort).
Everything is dual-stack; every Service has a TCP and a UDP port 80 -> 8080.

Walk through the tutorial:
  natlens lab up                                   # build it (--proxy-mode nftables for the nftables proxier)
  natlens lab curl busybox-1 clusterip             # ClusterIP: client_address is the pod's IP
  natlens lab curl client nodeport@node2           # NodePort: SNAT, client_address is a node IP
  natlens lab patch nodeport --external-traffic-policy Local
  natlens lab curl client nodeport@node1           # Local: client_address=198.51.100.79
  natlens lab curl client nodeport@node2           # Local on a node without endpoints: dropped (timeout)
  natlens lab curl client loadbalancer@lb          # LoadBalancer through the LB: client_address is a node IP
  natlens lab patch loadbalancer --external-traffic-policy Local
  natlens lab healthz node1 loadbalancer           # curl localhost:32122/healthz on node1: 200, localEndpoints 1
  natlens lab healthz node2 loadbalancer           # 503 on the nodes without an endpoint
  natlens lab status                               # the LB takes node2/node3 out after 2 failed checks
  natlens lab curl client loadbalancer@lb          # then: client_address=198.51.100.79
Beyond the tutorial:
  natlens lab lb --mode proxy --proxy-protocol v2  # a proxy LB: the pod sees the LB/node IP, plus the PROXY header's client
  natlens lab terminate source-ip-app              # the pod's grace period: serving-terminating endpoint
  natlens lab restore source-ip-app
  natlens lab down`,
    );

  lab
    .command('up')
    .description('create the lab (namespaces, veth pairs, routes, kube-proxy rules, echo servers)')
    .addOption(new Option('--proxy-mode <mode>', 'kube-proxy mode to program on the nodes').choices(['iptables', 'nftables']).default('iptables'))
    .addOption(
      new Option('--lb-mode <mode>', 'load balancer: forward (packet-forwarding, ECMP to the nodes) or proxy (TCP proxy to the nodes\' nodePorts)')
        .choices(['forward', 'proxy'])
        .default('forward'),
    )
    .addOption(new Option('--proxy-protocol <version>', 'with --lb-mode proxy: PROXY protocol header the proxy writes').choices(['none', 'v1', 'v2']).default('none'))
    .option('--lb-interval <duration>', 'load balancer health-check interval', '1s')
    .option('--lb-timeout <duration>', 'load balancer health-check timeout', '800ms')
    .option('--lb-unhealthy-threshold <n>', 'consecutive failed checks before the LB takes a node out', '2')
    .option('--lb-healthy-threshold <n>', 'consecutive good checks before the LB puts a node back', '1')
    .addOption(prefixOption())
    .option('--force', 'tear down an existing lab with the same prefix first')
    .option('--json', 'print the lab state as JSON')
    .addHelpText(
      'after',
      `
Examples:
  natlens lab up
  natlens lab up --proxy-mode nftables --prefix nft
  natlens lab up --lb-mode proxy --proxy-protocol v1     # a proxy LB writing PROXY v1 headers
  natlens lab up --lb-interval 250ms                     # faster health checks
The state is written to /run/natlens/lab-<prefix>.json, the load balancer's
live targets and health to /run/natlens/lab-<prefix>-lb.json. In proxy mode
only TCP is proxied: UDP to the load-balancer IP is refused.`,
    )
    .action(
      async (opts: {
        proxyMode: ProxyMode;
        lbMode: LbMode;
        proxyProtocol: ProxyProtocolMode;
        lbInterval: string;
        lbTimeout: string;
        lbUnhealthyThreshold: string;
        lbHealthyThreshold: string;
        prefix: string;
        force?: boolean;
        json?: boolean;
      }) => {
        const state = await labUp({
          prefix: opts.prefix,
          proxyMode: opts.proxyMode,
          force: !!opts.force,
          progress,
          lbMode: opts.lbMode,
          proxyProtocol: opts.proxyProtocol,
          lbHealthCheck: {
            intervalMs: parseDuration(opts.lbInterval, '--lb-interval'),
            timeoutMs: parseDuration(opts.lbTimeout, '--lb-timeout'),
            unhealthyThreshold: positiveInt(opts.lbUnhealthyThreshold, '--lb-unhealthy-threshold'),
            healthyThreshold: positiveInt(opts.lbHealthyThreshold, '--lb-healthy-threshold'),
          },
        });
        if (opts.json) process.stdout.write(JSON.stringify(state, null, 2) + '\n');
        else {
          process.stdout.write(summary(state));
          process.stdout.write(`\nnext: natlens lab curl client nodeport@node2${opts.prefix === DEFAULT_PREFIX ? '' : ` --prefix ${opts.prefix}`}\n`);
        }
      },
    );

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
    .description('show the lab: nodes, pods, services, the load balancer\'s targets and health, and whether everything is still there')
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
      for (const d of st.daemons) process.stdout.write(`${d.name} in ${d.netns}: pid ${d.pid} ${d.running ? 'running' : 'NOT RUNNING'} (log ${d.log})\n`);
      if (st.missingNamespaces.length) process.stdout.write(`missing namespaces: ${st.missingNamespaces.join(', ')}\n`);
      if (!st.up) process.exitCode = 1;
    });

  lab
    .command('patch')
    .description('change a Service\'s externalTrafficPolicy (like kubectl patch svc) and reprogram kube-proxy and the load balancer')
    .argument('<service>', 'Service name: nodeport or loadbalancer')
    .addOption(new Option('--external-traffic-policy <policy>', 'Local or Cluster').choices(['Local', 'Cluster']).makeOptionMandatory())
    .option('--wait', 'return only once the load balancer\'s health checks have converged on the change')
    .addOption(prefixOption())
    .addHelpText(
      'after',
      `
Examples (the tutorial's kubectl patch svc nodeport -p '{"spec":{"externalTrafficPolicy":"Local"}}'):
  natlens lab patch nodeport --external-traffic-policy Local
  natlens lab patch loadbalancer --external-traffic-policy Local   # the LB stops sending to node2/node3
  natlens lab patch loadbalancer --external-traffic-policy Local --wait
  natlens lab patch nodeport --external-traffic-policy Cluster
kube-proxy is reprogrammed at once. The load balancer follows through its health
checks: right after a patch to Local it still sends to every node (the nodes
without an endpoint drop), until their /healthz fails twice (about 2s; the
tutorial's "wait about 10 seconds"). --wait waits for that.`,
    )
    .action(async (service: string, opts: { externalTrafficPolicy: TrafficPolicy; wait?: boolean; prefix: string }) => {
      const svc = await labPatch(service, opts.externalTrafficPolicy, { prefix: opts.prefix, waitForLb: !!opts.wait });
      process.stdout.write(`service/${svc.name} patched (externalTrafficPolicy: ${svc.externalTrafficPolicy})\n`);
      if (svc.type === 'LoadBalancer' && svc.externalTrafficPolicy === 'Local' && svc.healthCheckNodePort) {
        process.stdout.write(`healthCheckNodePort: ${svc.healthCheckNodePort}\n`);
      }
      if (svc.type === 'LoadBalancer') {
        const targets = readLabState(opts.prefix)?.lb.targets[`${svc.namespace}/${svc.name}`] ?? [];
        process.stdout.write(`load balancer targets${opts.wait ? '' : ' (now; health checks may still move them)'}: ${targets.join(', ') || '<none>'}\n`);
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
    .option('--json', 'print {from,target,proto,family,local,remote,ok,client_address,proxy_protocol,proxy_client_address,proxy_client_port,response,error}')
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
    .command('healthz')
    .description('fetch kube-proxy\'s health check for a LoadBalancer service on a node (curl localhost:<healthCheckNodePort>/healthz)')
    .argument('<node>', 'node1, node2 or node3')
    .argument('<service>', 'a LoadBalancer service: loadbalancer')
    .option('--json', 'print {node,service,url,ok,status,statusText,headers,body,error}')
    .addOption(prefixOption())
    .addHelpText(
      'after',
      `
Only Services of type LoadBalancer with externalTrafficPolicy Local have a
health check: 200 where the node has a local ready endpoint, 503 elsewhere,
with kube-proxy's JSON body (localEndpoints, serviceProxyHealthy). Older
kube-proxy versions answered "1 Service Endpoints found" / "No Service
Endpoints Found", the text the tutorial shows.
Examples:
  natlens lab patch loadbalancer --external-traffic-policy Local
  natlens lab healthz node1 loadbalancer
  natlens lab healthz node2 loadbalancer --json`,
    )
    .action(async (node: string, service: string, opts: { json?: boolean; prefix: string }) => {
      const res = await labHealthz(node, service, { prefix: opts.prefix });
      if (opts.json) process.stdout.write(JSON.stringify(res) + '\n');
      else if (res.status !== null) process.stdout.write(`HTTP/1.1 ${res.status} ${res.statusText ?? ''}\n${res.body ?? ''}\n`);
      else process.stderr.write(`natlens lab healthz: ${res.url} on ${res.node}: ${res.error}${/ECONNREFUSED/.test(res.error ?? '') ? ' (kube-proxy serves the health check only under externalTrafficPolicy Local)' : ''}\n`);
      if (!res.ok) process.exitCode = 1;
    });

  lab
    .command('lb')
    .description('show or switch the load balancer: packet forwarding or a TCP proxy (optionally writing PROXY protocol headers)')
    .addOption(new Option('--mode <mode>', 'forward or proxy').choices(['forward', 'proxy']))
    .addOption(new Option('--proxy-protocol <version>', 'with --mode proxy: none, v1 or v2 (default: keep the current one, else none)').choices(['none', 'v1', 'v2']))
    .option('--wait', 'also wait until the health-checked targets have converged')
    .option('--json', 'print the load balancer\'s state as JSON')
    .addOption(prefixOption())
    .addHelpText(
      'after',
      `
forward: the VIP routes point at the healthy nodes (ECMP); the node sees the
  client's IP (and SNATs it under Cluster policy).
proxy:   the LB terminates the TCP connection and opens its own from
  10.240.0.2 to <node>:<nodePort> (round robin over the healthy nodes): the
  node sees the LB's IP. With --proxy-protocol v1|v2 it first writes a PROXY
  header naming the real client; the echo server then prints
  proxy_client_address=198.51.100.79. UDP is not proxied (refused).
Examples:
  natlens lab lb                                   # show mode, targets, health
  natlens lab lb --mode proxy --proxy-protocol v1
  natlens lab curl client loadbalancer@lb          # proxy_protocol=v1, proxy_client_address=198.51.100.79
  natlens lab lb --proxy-protocol v2               # another header, same proxy
  natlens lab lb --mode forward`,
    )
    .action(async (opts: { mode?: LbMode; proxyProtocol?: ProxyProtocolMode; wait?: boolean; json?: boolean; prefix: string }) => {
      // --proxy-protocol alone changes the header of a proxy-mode LB.
      const mode = opts.mode ?? (opts.proxyProtocol ? requireLabState(opts.prefix).lb.mode : undefined);
      if (mode) await labSetLbMode(mode, { prefix: opts.prefix, ...(opts.proxyProtocol ? { proxyProtocol: opts.proxyProtocol } : {}) });
      if (opts.wait) await labWaitLb({ prefix: opts.prefix });
      const state = requireLabState(opts.prefix);
      if (opts.json) process.stdout.write(JSON.stringify(state.lb, null, 2) + '\n');
      else process.stdout.write(lbLines(state).join('\n') + '\n');
    });

  lab
    .command('terminate')
    .description('put a pod in its deletion grace period (kubectl delete pod, before it is gone): its endpoints become serving but not ready')
    .argument('<pod>', 'pod name: source-ip-app')
    .option('--undo', 'make it ready again (same as natlens lab restore)')
    .addOption(prefixOption())
    .addHelpText(
      'after',
      `
The pod keeps running and serving; its endpoints become ready=false,
serving=true, terminating=true. kube-proxy (ProxyTerminatingEndpoints) sends
traffic to serving-terminating endpoints only when no ready endpoint is left:
cluster-wide for Cluster policy, on the node for Local policy. The health check
does not count them (503), so load balancers drain the node.
Examples:
  natlens lab terminate source-ip-app
  natlens lab curl busybox-1 clusterip             # still answered, by the terminating pod
  natlens lab rules node1 | grep -c 10.180.1.136
  natlens lab restore source-ip-app`,
    )
    .action(async (pod: string, opts: { undo?: boolean; prefix: string }) => {
      const p = await (opts.undo ? labRestore : labTerminate)(pod, { prefix: opts.prefix, waitForLb: false });
      process.stdout.write(opts.undo ? `pod/${p.name} ready again\n` : `pod/${p.name} terminating (endpoints: ready=false serving=true terminating=true)\n`);
    });

  lab
    .command('restore')
    .description('undo natlens lab terminate: the pod\'s endpoints are ready again')
    .argument('<pod>', 'pod name')
    .addOption(prefixOption())
    .action(async (pod: string, opts: { prefix: string }) => {
      const p = await labRestore(pod, { prefix: opts.prefix, waitForLb: false });
      process.stdout.write(`pod/${p.name} ready again\n`);
    });

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

  registerLabApiServerCommand(lab);
}
