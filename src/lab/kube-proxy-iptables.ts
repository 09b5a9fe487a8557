// kube-proxy's iptables proxier (pkg/proxy/iptables/proxier.go), reduced to a
// pure function: given the node and the service ports of one IP family, produce
// the "jump" rules kube-proxy ensures in the built-in chains and the
// iptables-restore input it feeds with --noflush (filter and nat tables, each
// committed atomically), in the same layout and with the same chain names.

import {
  endpointString,
  masqueradeMark,
  planServicePort,
  sha256Base32,
  sortServicePorts,
  type IPFamily,
  type ProxyEndpoint,
  type ProxyNode,
  type ProxyServicePort,
} from './kube-proxy-model.js';

export const KUBE_SERVICES = 'KUBE-SERVICES';
export const KUBE_EXTERNAL_SERVICES = 'KUBE-EXTERNAL-SERVICES';
export const KUBE_NODEPORTS = 'KUBE-NODEPORTS';
export const KUBE_POSTROUTING = 'KUBE-POSTROUTING';
export const KUBE_MARK_MASQ = 'KUBE-MARK-MASQ';
export const KUBE_FORWARD = 'KUBE-FORWARD';
export const KUBE_PROXY_FIREWALL = 'KUBE-PROXY-FIREWALL';
export const KUBELET_FIREWALL = 'KUBE-FIREWALL';

/** portProtoHash: base32(sha256(servicePortName + protocol))[:16]. */
export function portProtoHash(servicePortName: string, protocol: string): string {
  return sha256Base32(servicePortName + protocol).slice(0, 16);
}

export const svcChainName = (spn: string, proto: string): string => 'KUBE-SVC-' + portProtoHash(spn, proto);
export const svlChainName = (spn: string, proto: string): string => 'KUBE-SVL-' + portProtoHash(spn, proto);
export const extChainName = (spn: string, proto: string): string => 'KUBE-EXT-' + portProtoHash(spn, proto);
export const fwChainName = (spn: string, proto: string): string => 'KUBE-FW-' + portProtoHash(spn, proto);
/** servicePortEndpointChainName: base32(sha256(spn + protocol + "ip:port"))[:16]. */
export function sepChainName(spn: string, proto: string, endpoint: string): string {
  return 'KUBE-SEP-' + sha256Base32(spn + proto + endpoint).slice(0, 16);
}

const SERVICE_CHAIN_PREFIXES = ['KUBE-SVC-', 'KUBE-SVL-', 'KUBE-SEP-', 'KUBE-FW-', 'KUBE-EXT-'];
export function isServiceChainName(c: string): boolean {
  return SERVICE_CHAIN_PREFIXES.some((p) => c.startsWith(p));
}

/** A rule kube-proxy keeps in a built-in chain (iptablesJumpChains), ensured with
 * `iptables -C` / `iptables -I` rather than through iptables-restore. */
export interface IptablesJumpRule {
  table: 'filter' | 'nat';
  srcChain: string;
  dstChain: string;
  /** Arguments after `-I <srcChain>` (match, comment, -j). */
  args: string[];
}

export interface IptablesSync {
  family: IPFamily;
  /** `iptables` or `ip6tables`. */
  command: 'iptables' | 'ip6tables';
  jumpRules: IptablesJumpRule[];
  /** iptables-restore input (use with --noflush). */
  restore: string;
  filterChains: string[];
  natChains: string[];
  /** Lines of the filter / nat table, for tests and display. */
  filterRules: string[];
  natRules: string[];
}

export interface IptablesSyncOptions {
  /** Chains currently in the nat table (from iptables-save): stale service chains are deleted. */
  existingNatChains?: Iterable<string>;
}

function q(s: string): string {
  return `"${s}"`;
}

const JUMPS: Array<[IptablesJumpRule['table'], string, string, string, string[]]> = [
  ['filter', KUBE_EXTERNAL_SERVICES, 'INPUT', 'kubernetes externally-visible service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', KUBE_EXTERNAL_SERVICES, 'FORWARD', 'kubernetes externally-visible service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', KUBE_NODEPORTS, 'INPUT', 'kubernetes health check service ports', []],
  ['filter', KUBE_SERVICES, 'FORWARD', 'kubernetes service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', KUBE_SERVICES, 'OUTPUT', 'kubernetes service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', KUBE_FORWARD, 'FORWARD', 'kubernetes forwarding rules', []],
  ['filter', KUBE_PROXY_FIREWALL, 'INPUT', 'kube-proxy firewall rules', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', KUBE_PROXY_FIREWALL, 'OUTPUT', 'kube-proxy firewall rules', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', KUBE_PROXY_FIREWALL, 'FORWARD', 'kube-proxy firewall rules', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['nat', KUBE_SERVICES, 'OUTPUT', 'kubernetes service portals', []],
  ['nat', KUBE_SERVICES, 'PREROUTING', 'kubernetes service portals', []],
  ['nat', KUBE_POSTROUTING, 'POSTROUTING', 'kubernetes postrouting rules', []],
];

/** The jump rules (iptablesJumpChains, plus kubelet's KUBE-FIREWALL for IPv4). */
export function iptablesJumpRules(family: IPFamily): IptablesJumpRule[] {
  const out: IptablesJumpRule[] = JUMPS.map(([table, dstChain, srcChain, comment, extra]) => ({
    table,
    srcChain,
    dstChain,
    args: [...extra, '-m', 'comment', '--comment', comment, '-j', dstChain],
  }));
  if (family === 4) {
    for (const src of ['INPUT', 'OUTPUT']) {
      out.push({ table: 'filter', srcChain: src, dstChain: KUBELET_FIREWALL, args: ['-j', KUBELET_FIREWALL] });
    }
  }
  return out;
}

/** Generate what kube-proxy's syncProxyRules writes for one node and family. */
export function generateIptablesRules(
  node: ProxyNode,
  servicePorts: ProxyServicePort[],
  opts: IptablesSyncOptions = {},
): IptablesSync {
  const family = node.family;
  const isIPv6 = family === 6;
  const mark = masqueradeMark(node);
  const localhostNodePorts = !isIPv6 && (node.localhostNodePorts ?? true);

  const filterChains: string[] = [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL];
  const natChains: string[] = [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ];
  const filterRules: string[] = [];
  const natRules: string[] = [];
  const w = (buf: string[], ...parts: string[]): void => {
    buf.push(parts.join(' '));
  };

  w(natRules, '-A', KUBE_POSTROUTING, '-m', 'mark', '!', '--mark', `${mark}/${mark}`, '-j', 'RETURN');
  // Clear the mark to avoid re-masquerading if the packet re-traverses the network stack.
  w(natRules, '-A', KUBE_POSTROUTING, '-j', 'MARK', '--xor-mark', mark);
  w(natRules, '-A', KUBE_POSTROUTING, '-m', 'comment', '--comment', q('kubernetes service traffic requiring SNAT'), '-j', 'MASQUERADE', '--random-fully');
  w(natRules, '-A', KUBE_MARK_MASQ, '-j', 'MARK', '--or-mark', mark);

  if (localhostNodePorts) {
    filterChains.push(KUBELET_FIREWALL);
    w(filterRules, '-A', KUBELET_FIREWALL, '-m', 'comment', '--comment', q('block incoming localnet connections'),
      '-d', '127.0.0.0/8', '!', '-s', '127.0.0.0/8', '-m', 'conntrack', '!', '--ctstate', 'RELATED,ESTABLISHED,DNAT', '-j', 'DROP');
  }

  const ifLocal = node.clusterCIDR ? ['-s', node.clusterCIDR] : undefined;
  const ifNotLocal = node.clusterCIDR ? ['!', '-s', node.clusterCIDR] : undefined;
  const activeNatChains = new Set<string>(natChains);
  const chainLinesNat: string[] = [];
  const sepRulesNat: string[] = [];

  for (const sp of sortServicePorts(servicePorts)) {
    const plan = planServicePort(sp, node);
    const spn = plan.nameString;
    const proto = plan.protocol;
    const clusterPolicyChain = svcChainName(spn, proto);
    const localPolicyChain = svlChainName(spn, proto);
    const externalTrafficChain = extChainName(spn, proto);
    const internalTrafficChain = plan.internalIsLocal ? localPolicyChain : clusterPolicyChain;
    const externalPolicyChain = plan.externalIsLocal ? localPolicyChain : clusterPolicyChain;
    const lbTrafficChain = externalTrafficChain; // no LoadBalancerSourceRanges in the lab
    const port = String(sp.port);
    const target = (f: 'reject' | 'drop' | undefined): string => (f === 'reject' ? 'REJECT' : 'DROP');
    const internalComment = plan.internalFilter === 'reject' ? q(`${spn} has no endpoints`) : q(`${spn} has no local endpoints`);
    const externalComment = plan.externalFilter === 'reject' ? q(`${spn} has no endpoints`) : q(`${spn} has no local endpoints`);

    // Capture the clusterIP.
    if (plan.hasInternalEndpoints) {
      w(natRules, '-A', KUBE_SERVICES, '-m', 'comment', '--comment', q(`${spn} cluster IP`), '-m', proto, '-p', proto,
        '-d', sp.clusterIP, '--dport', port, '-j', internalTrafficChain);
    } else {
      w(filterRules, '-A', KUBE_SERVICES, '-m', 'comment', '--comment', internalComment, '-m', proto, '-p', proto,
        '-d', sp.clusterIP, '--dport', port, '-j', target(plan.internalFilter));
    }
    // Capture externalIPs.
    for (const eip of sp.externalIPs ?? []) {
      if (plan.cat.hasEndpoints) {
        w(natRules, '-A', KUBE_SERVICES, '-m', 'comment', '--comment', q(`${spn} external IP`), '-m', proto, '-p', proto,
          '-d', eip, '--dport', port, '-j', externalTrafficChain);
      }
      if (!plan.hasExternalEndpoints) {
        w(filterRules, '-A', KUBE_EXTERNAL_SERVICES, '-m', 'comment', '--comment', externalComment, '-m', proto, '-p', proto,
          '-d', eip, '--dport', port, '-j', target(plan.externalFilter));
      }
    }
    // Capture load-balancer ingress.
    for (const lbip of sp.loadBalancerIPs ?? []) {
      if (plan.cat.hasEndpoints) {
        w(natRules, '-A', KUBE_SERVICES, '-m', 'comment', '--comment', q(`${spn} loadbalancer IP`), '-m', proto, '-p', proto,
          '-d', lbip, '--dport', port, '-j', lbTrafficChain);
      }
    }
    if (!plan.hasExternalEndpoints) {
      for (const lbip of sp.loadBalancerIPs ?? []) {
        w(filterRules, '-A', KUBE_EXTERNAL_SERVICES, '-m', 'comment', '--comment', externalComment, '-m', proto, '-p', proto,
          '-d', lbip, '--dport', port, '-j', target(plan.externalFilter));
      }
    }
    // Capture nodeports.
    if (sp.nodePort) {
      if (plan.cat.hasEndpoints) {
        w(natRules, '-A', KUBE_NODEPORTS, '-m', 'comment', '--comment', spn, '-m', proto, '-p', proto,
          '--dport', String(sp.nodePort), '-j', externalTrafficChain);
      }
      if (!plan.hasExternalEndpoints) {
        w(filterRules, '-A', KUBE_EXTERNAL_SERVICES, '-m', 'comment', '--comment', externalComment, '-m', 'addrtype', '--dst-type', 'LOCAL',
          '-m', proto, '-p', proto, '--dport', String(sp.nodePort), '-j', target(plan.externalFilter));
      }
    }
    // Capture healthCheckNodePorts (accepted whether or not this node has endpoints).
    if (sp.healthCheckNodePort) {
      w(filterRules, '-A', KUBE_NODEPORTS, '-m', 'comment', '--comment', q(`${spn} health check node port`), '-m', 'tcp', '-p', 'tcp',
        '--dport', String(sp.healthCheckNodePort), '-j', 'ACCEPT');
    }

    // Internal traffic handling: masquerade off-cluster traffic to the ClusterIP.
    if (plan.hasInternalEndpoints && ifNotLocal) {
      w(sepRulesNat, '-A', internalTrafficChain, '-m', 'comment', '--comment', q(`${spn} cluster IP`), '-m', proto, '-p', proto,
        '-d', sp.clusterIP, '--dport', port, ...ifNotLocal, '-j', KUBE_MARK_MASQ);
    }
    // External traffic handling.
    if (plan.usesExternalTrafficChain) {
      chainLinesNat.push(externalTrafficChain);
      activeNatChains.add(externalTrafficChain);
      if (!plan.externalIsLocal) {
        // Cluster policy: the endpoint may be on another node, so masquerade.
        w(sepRulesNat, '-A', externalTrafficChain, '-m', 'comment', '--comment', q(`masquerade traffic for ${spn} external destinations`), '-j', KUBE_MARK_MASQ);
      } else {
        if (ifLocal) {
          w(sepRulesNat, '-A', externalTrafficChain, '-m', 'comment', '--comment', q(`pod traffic for ${spn} external destinations`), ...ifLocal, '-j', clusterPolicyChain);
        }
        w(sepRulesNat, '-A', externalTrafficChain, '-m', 'comment', '--comment', q(`masquerade LOCAL traffic for ${spn} external destinations`),
          '-m', 'addrtype', '--src-type', 'LOCAL', '-j', KUBE_MARK_MASQ);
        w(sepRulesNat, '-A', externalTrafficChain, '-m', 'comment', '--comment', q(`route LOCAL traffic for ${spn} external destinations`),
          '-m', 'addrtype', '--src-type', 'LOCAL', '-j', clusterPolicyChain);
      }
      if (plan.hasExternalEndpoints) {
        w(sepRulesNat, '-A', externalTrafficChain, '-j', externalPolicyChain);
      }
    }
    const writeServiceToEndpointRules = (svcChain: string, eps: ProxyEndpoint[]): void => {
      eps.forEach((ep, i) => {
        const epStr = endpointString(ep);
        const args = ['-A', svcChain, '-m', 'comment', '--comment', q(`${spn} -> ${epStr}`)];
        if (i < eps.length - 1) {
          args.push('-m', 'statistic', '--mode', 'random', '--probability', (1 / (eps.length - i)).toFixed(10));
        }
        w(sepRulesNat, ...args, '-j', sepChainName(spn, proto, epStr));
      });
    };
    if (plan.usesClusterPolicyChain) {
      chainLinesNat.push(clusterPolicyChain);
      activeNatChains.add(clusterPolicyChain);
      writeServiceToEndpointRules(clusterPolicyChain, plan.cat.clusterEndpoints);
    }
    if (plan.usesLocalPolicyChain) {
      chainLinesNat.push(localPolicyChain);
      activeNatChains.add(localPolicyChain);
      writeServiceToEndpointRules(localPolicyChain, plan.cat.localEndpoints);
    }
    for (const ep of plan.cat.allLocallyReachableEndpoints) {
      const epStr = endpointString(ep);
      const sep = sepChainName(spn, proto, epStr);
      chainLinesNat.push(sep);
      activeNatChains.add(sep);
      // Handle traffic that loops back to the originator with SNAT (hairpin).
      w(sepRulesNat, '-A', sep, '-m', 'comment', '--comment', spn, '-s', ep.ip, '-j', KUBE_MARK_MASQ);
      w(sepRulesNat, '-A', sep, '-m', 'comment', '--comment', spn, '-m', proto, '-p', proto, '-j', 'DNAT', '--to-destination', epStr);
    }
  }

  natChains.push(...chainLinesNat);
  natRules.push(...sepRulesNat);

  // Delete chains no longer in use.
  const deleted: string[] = [];
  for (const c of opts.existingNatChains ?? []) {
    if (isServiceChainName(c) && !activeNatChains.has(c)) deleted.push(c);
  }
  natChains.push(...deleted);
  for (const c of deleted) natRules.push(`-X ${c}`);

  // Finally, tail-call to the nodePorts chain. This must be the last rule.
  const destinations = ['-m', 'addrtype', '--dst-type', 'LOCAL'];
  if (isIPv6) destinations.push('!', '-d', '::1/128');
  else if (!localhostNodePorts) destinations.push('!', '-d', '127.0.0.0/8');
  w(natRules, '-A', KUBE_SERVICES, '-m', 'comment', '--comment', q('kubernetes service nodeports; NOTE: this must be the last rule in this chain'),
    ...destinations, '-j', KUBE_NODEPORTS);

  w(filterRules, '-A', KUBE_FORWARD, '-m', 'conntrack', '--ctstate', 'INVALID', '-j', 'DROP');
  w(filterRules, '-A', KUBE_FORWARD, '-m', 'comment', '--comment', q('kubernetes forwarding rules'), '-m', 'mark', '--mark', `${mark}/${mark}`, '-j', 'ACCEPT');
  w(filterRules, '-A', KUBE_FORWARD, '-m', 'comment', '--comment', q('kubernetes forwarding conntrack rule'), '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-j', 'ACCEPT');

  const chainLine = (c: string): string => `:${c} - [0:0]`;
  const restore =
    ['*filter', ...filterChains.map(chainLine), ...filterRules, 'COMMIT', '*nat', ...natChains.map(chainLine), ...natRules, 'COMMIT'].join('\n') + '\n';

  return {
    family,
    command: isIPv6 ? 'ip6tables' : 'iptables',
    jumpRules: iptablesJumpRules(family),
    restore,
    filterChains,
    natChains,
    filterRules,
    natRules,
  };
}

/** Chain names declared in an `iptables-save -t nat` dump. */
export function chainsFromSave(save: string): string[] {
  const out: string[] = [];
  let inNat = false;
  for (const line of save.split('\n')) {
    if (line.startsWith('*')) inNat = line === '*nat';
    else if (inNat && line.startsWith(':')) out.push(line.slice(1).split(' ')[0] ?? '');
  }
  return out.filter(Boolean);
}
