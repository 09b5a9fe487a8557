// kube-proxy's nftables proxier (pkg/proxy/nftables/proxier.go, the layout of
// Kubernetes 1.29/1.30), reduced to a pure function producing the `nft -f`
// transaction kube-proxy (via knftables) runs for one node and one IP family:
// `table ip kube-proxy` / `table ip6 kube-proxy` with base chains
// filter-{prerouting,input,forward,output} and nat-{prerouting,output,postrouting},
// the service-ips / service-nodeports verdict maps dispatching from `services`,
// per service port `service-<hash>-<ns>/<name>/<proto>/<port>`,
// `local-...`, `external-...` and `endpoint-...` chains, `mark-for-masquerade`,
// `masquerading`, and the no-endpoint / firewall checks.

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

export const KUBE_PROXY_TABLE = 'kube-proxy';
const chainNameBaseLengthMax = 256 - 16;

/** hashAndTruncate: base32(sha256(name))[:8] + "-" + name, truncated to 240 chars. */
export function hashAndTruncate(name: string): string {
  let out = sha256Base32(name).slice(0, 8) + '-' + name;
  if (out.length > chainNameBaseLengthMax) out = out.slice(0, chainNameBaseLengthMax - 3) + '...';
  return out;
}

/** "HASH-namespace/name/protocol/portName", e.g. "ULMVA6XW-ns1/svc1/tcp/p80". */
export function servicePortChainNameBase(sp: Pick<ProxyServicePort, 'namespace' | 'name' | 'portName'>, protocol: string): string {
  return hashAndTruncate(`${sp.namespace}/${sp.name}/${protocol}/${sp.portName}`);
}

/** "HASH-namespace/name/protocol/portName__endpointIP/endpointPort" (IPv6 ':' become '.'). */
export function servicePortEndpointChainNameBase(
  sp: Pick<ProxyServicePort, 'namespace' | 'name' | 'portName'>,
  protocol: string,
  ep: Pick<ProxyEndpoint, 'ip' | 'port'>,
): string {
  const ip = ep.ip.replaceAll(':', '.');
  return hashAndTruncate(`${sp.namespace}/${sp.name}/${protocol}/${sp.portName}__${ip}/${ep.port}`);
}

export function isServiceChainName(c: string): boolean {
  return c.includes('/');
}

export interface NftablesSync {
  family: IPFamily;
  /** `ip` or `ip6`. */
  nftFamily: 'ip' | 'ip6';
  /** The whole transaction, for `nft -f -` (atomic). */
  script: string;
  /** Chains the transaction flushes because they are no longer used. kube-proxy
   * deletes them in a later transaction (kernels < 6.2 need the delay). */
  staleChains: string[];
  /** `nft -f` input deleting staleChains (run after `script`). */
  cleanupScript: string;
  /** Chains the transaction creates for service ports (for tests and display). */
  serviceChains: string[];
}

export interface NftablesSyncOptions {
  /** Chains currently in the table (from `nft list table ip kube-proxy`). */
  existingChains?: Iterable<string>;
}

function str(s: string): string {
  return JSON.stringify(s);
}

/** Generate the kube-proxy nftables transaction for one node and family. */
export function generateNftablesRules(
  node: ProxyNode,
  servicePorts: ProxyServicePort[],
  opts: NftablesSyncOptions = {},
): NftablesSync {
  const family = node.family;
  const fam = family === 6 ? 'ip6' : 'ip';
  const ipX = fam;
  const addrType = family === 6 ? 'ipv6_addr' : 'ipv4_addr';
  const noLocalhost = family === 6 ? 'ip6 daddr != ::1' : 'ip daddr != 127.0.0.0/8';
  const mark = masqueradeMark(node);
  const T = `${fam} ${KUBE_PROXY_TABLE}`;
  const lines: string[] = [];
  const add = (s: string): void => {
    lines.push(s);
  };
  const rule = (chain: string, r: string, comment?: string): void =>
    add(`add rule ${T} ${chain} ${r}${comment ? ` comment ${str(comment)}` : ''}`);
  const created = new Set<string>();
  const ensureChain = (c: string): void => {
    if (created.has(c)) return;
    add(`add chain ${T} ${c}`);
    add(`flush chain ${T} ${c}`);
    created.add(c);
  };

  // ---- setupNFTables ----
  add(`add table ${T} { comment ${str('rules for kube-proxy')} ; }`);
  // Priorities "dstnat - 10" / "dstnat" / "srcnat", written numerically (nft 1.0.6
  // accepts the names only on some hooks): dstnat = -100, srcnat = 100.
  const baseChains: Array<[string, string, string, string]> = [
    // Filter chains run before DNAT, so that they see pre-DNAT destinations.
    ['filter-prerouting', 'filter', 'prerouting', '-110'],
    ['filter-input', 'filter', 'input', '-110'],
    ['filter-forward', 'filter', 'forward', '-110'],
    ['filter-output', 'filter', 'output', '-110'],
    ['nat-prerouting', 'nat', 'prerouting', '-100'],
    ['nat-output', 'nat', 'output', '-100'],
    ['nat-postrouting', 'nat', 'postrouting', '100'],
  ];
  for (const [name, type, hook, prio] of baseChains) {
    add(`add chain ${T} ${name} { type ${type} hook ${hook} priority ${prio} ; }`);
    add(`flush chain ${T} ${name}`);
  }
  const jumps: Array<[string, string, string]> = [
    ['endpoints-check', 'filter-input', 'ct state new'],
    ['endpoints-check', 'filter-forward', 'ct state new'],
    ['endpoints-check', 'filter-output', 'ct state new'],
    ['firewall-check', 'filter-prerouting', 'ct state new'],
    ['firewall-check', 'filter-output', 'ct state new'],
    ['services', 'nat-output', ''],
    ['services', 'nat-prerouting', ''],
    ['masquerading', 'nat-postrouting', ''],
  ];
  for (const [dst, src, extra] of jumps) {
    ensureChain(dst);
    rule(src, `${extra ? extra + ' ' : ''}jump ${dst}`);
  }
  for (const c of ['services', 'masquerading', 'mark-for-masquerade']) ensureChain(c);
  rule('mark-for-masquerade', `mark set mark or ${mark}`);
  rule('masquerading', `mark and ${mark} == 0 return`);
  rule('masquerading', `mark set mark xor ${mark}`);
  rule('masquerading', 'masquerade fully-random');

  // --nodeport-addresses is unset (all local addresses accept NodePorts): no nodeport-ips set.
  add(`add set ${T} nodeport-ips { type ${addrType} ; comment ${str('IPs that accept NodePort traffic')} ; }`);
  add(`delete set ${T} nodeport-ips`);

  add(`add map ${T} no-endpoint-services { type ${addrType} . inet_proto . inet_service : verdict ; comment ${str('vmap to drop or reject packets to services with no endpoints')} ; }`);
  add(`add map ${T} no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment ${str('vmap to drop or reject packets to service nodeports with no endpoints')} ; }`);
  add(`add chain ${T} reject-chain { comment ${str('helper for @no-endpoint-services / @no-endpoint-nodeports')} ; }`);
  add(`flush chain ${T} reject-chain`);
  rule('reject-chain', 'reject');
  rule('endpoints-check', `${ipX} daddr . meta l4proto . th dport vmap @no-endpoint-services`);
  rule('endpoints-check', `fib daddr type local ${noLocalhost} meta l4proto . th dport vmap @no-endpoint-nodeports`);

  add(`add map ${T} firewall-ips { type ${addrType} . inet_proto . inet_service : verdict ; comment ${str('destinations that are subject to LoadBalancerSourceRanges')} ; }`);
  ensureChain('firewall-check');
  rule('firewall-check', `${ipX} daddr . meta l4proto . th dport vmap @firewall-ips`);

  add(`add map ${T} service-ips { type ${addrType} . inet_proto . inet_service : verdict ; comment ${str('ClusterIP, ExternalIP and LoadBalancer IP traffic')} ; }`);
  add(`add map ${T} service-nodeports { type inet_proto . inet_service : verdict ; comment ${str('NodePort traffic')} ; }`);
  rule('services', `${ipX} daddr . meta l4proto . th dport vmap @service-ips`);
  rule('services', `fib daddr type local ${noLocalhost} meta l4proto . th dport vmap @service-nodeports`);

  // ---- syncProxyRules ----
  for (const m of ['firewall-ips', 'no-endpoint-services', 'no-endpoint-nodeports', 'service-ips', 'service-nodeports']) {
    add(`flush map ${T} ${m}`);
  }

  const active = new Set<string>();
  const serviceChains: string[] = [];
  const ensureServiceChain = (c: string): void => {
    if (!active.has(c)) {
      active.add(c);
      serviceChains.push(c);
      ensureChain(c);
    }
  };
  const ifLocal = node.clusterCIDR ? `${ipX} saddr ${node.clusterCIDR}` : undefined;
  const ifNotLocal = node.clusterCIDR ? `${ipX} saddr != ${node.clusterCIDR}` : undefined;
  const element = (map: string, key: string, verdict: string, comment?: string): void =>
    add(`add element ${T} ${map} { ${key}${comment ? ` comment ${str(comment)}` : ''} : ${verdict} }`);

  for (const sp of sortServicePorts(servicePorts)) {
    const plan = planServicePort(sp, node);
    const proto = plan.protocol;
    const spn = plan.nameString;
    const base = servicePortChainNameBase(sp, proto);
    const clusterPolicyChain = 'service-' + base;
    const localPolicyChain = 'local-' + base;
    const externalTrafficChain = 'external-' + base;
    const epChain = (ep: ProxyEndpoint): string => 'endpoint-' + servicePortEndpointChainNameBase(sp, proto, ep);

    for (const ep of plan.cat.allLocallyReachableEndpoints) ensureServiceChain(epChain(ep));
    if (plan.usesClusterPolicyChain) ensureServiceChain(clusterPolicyChain);
    if (plan.usesLocalPolicyChain) ensureServiceChain(localPolicyChain);
    const internalTrafficChain = plan.internalIsLocal ? localPolicyChain : clusterPolicyChain;
    const externalPolicyChain = plan.externalIsLocal ? localPolicyChain : clusterPolicyChain;
    if (plan.usesExternalTrafficChain) ensureServiceChain(externalTrafficChain);
    const verdict = (f: 'reject' | 'drop' | undefined): string => (f === 'reject' ? 'goto reject-chain' : 'drop');
    const port = String(sp.port);

    // Capture the clusterIP.
    if (plan.hasInternalEndpoints) {
      element('service-ips', `${sp.clusterIP} . ${proto} . ${port}`, `goto ${internalTrafficChain}`);
    } else {
      element('no-endpoint-services', `${sp.clusterIP} . ${proto} . ${port}`, verdict(plan.internalFilter), spn);
    }
    // Capture externalIPs.
    for (const eip of sp.externalIPs ?? []) {
      if (plan.cat.hasEndpoints) element('service-ips', `${eip} . ${proto} . ${port}`, `goto ${externalTrafficChain}`);
      if (!plan.hasExternalEndpoints) element('no-endpoint-services', `${eip} . ${proto} . ${port}`, verdict(plan.externalFilter), spn);
    }
    // Capture load-balancer ingress (no LoadBalancerSourceRanges: no firewall chain).
    for (const lbip of sp.loadBalancerIPs ?? []) {
      if (plan.cat.hasEndpoints) element('service-ips', `${lbip} . ${proto} . ${port}`, `goto ${externalTrafficChain}`);
    }
    if (!plan.hasExternalEndpoints) {
      for (const lbip of sp.loadBalancerIPs ?? []) {
        element('no-endpoint-services', `${lbip} . ${proto} . ${port}`, verdict(plan.externalFilter), spn);
      }
    }
    // Capture nodeports.
    if (sp.nodePort) {
      if (plan.cat.hasEndpoints) element('service-nodeports', `${proto} . ${sp.nodePort}`, `goto ${externalTrafficChain}`);
      if (!plan.hasExternalEndpoints) element('no-endpoint-nodeports', `${proto} . ${sp.nodePort}`, verdict(plan.externalFilter), spn);
    }

    // Internal traffic handling: masquerade off-cluster traffic to the ClusterIP.
    if (plan.hasInternalEndpoints && ifNotLocal) {
      rule(internalTrafficChain, `${ipX} daddr ${sp.clusterIP} ${proto} dport ${port} ${ifNotLocal} jump mark-for-masquerade`);
    }
    // External traffic handling.
    if (plan.usesExternalTrafficChain) {
      if (!plan.externalIsLocal) {
        rule(externalTrafficChain, 'jump mark-for-masquerade');
      } else {
        if (ifLocal) rule(externalTrafficChain, `${ifLocal} goto ${clusterPolicyChain}`, 'short-circuit pod traffic');
        rule(externalTrafficChain, 'fib saddr type local jump mark-for-masquerade', 'masquerade local traffic');
        rule(externalTrafficChain, `fib saddr type local goto ${clusterPolicyChain}`, 'short-circuit local traffic');
      }
      if (plan.hasExternalEndpoints) rule(externalTrafficChain, `goto ${externalPolicyChain}`);
    }
    const writeServiceToEndpointRules = (svcChain: string, eps: ProxyEndpoint[]): void => {
      const elements = eps.map((ep, i) => `${i} : goto ${epChain(ep)}`).join(' , ');
      rule(svcChain, `numgen random mod ${eps.length} vmap { ${elements} }`);
    };
    if (plan.usesClusterPolicyChain) writeServiceToEndpointRules(clusterPolicyChain, plan.cat.clusterEndpoints);
    if (plan.usesLocalPolicyChain) writeServiceToEndpointRules(localPolicyChain, plan.cat.localEndpoints);
    for (const ep of plan.cat.allLocallyReachableEndpoints) {
      const c = epChain(ep);
      // Handle traffic that loops back to the originator with SNAT (hairpin).
      rule(c, `${ipX} saddr ${ep.ip} jump mark-for-masquerade`);
      rule(c, `meta l4proto ${proto} dnat to ${endpointString(ep)}`);
    }
  }

  // Stale service chains: flushed now, deleted afterwards.
  const staleChains: string[] = [];
  for (const c of opts.existingChains ?? []) {
    if (isServiceChainName(c) && !active.has(c)) {
      staleChains.push(c);
      add(`flush chain ${T} ${c}`);
    }
  }
  const cleanupScript = staleChains.map((c) => `delete chain ${T} ${c}\n`).join('');

  return { family, nftFamily: fam, script: lines.join('\n') + '\n', staleChains, cleanupScript, serviceChains };
}

/** Parse `nft list table <fam> kube-proxy` output into chain names. */
export function chainsFromNftList(out: string): string[] {
  const res: string[] = [];
  for (const m of out.matchAll(/^\s*chain (\S+) \{/gm)) if (m[1]) res.push(m[1]);
  return res;
}
