import { describe, expect, it } from 'vitest';
import { base32Std, categorizeEndpoints, localReadyEndpointCount, type ProxyNode, type ProxyServicePort } from '../../src/lab/kube-proxy-model.js';
import {
  generateIptablesRules,
  portProtoHash,
  sepChainName,
  svcChainName,
  svlChainName,
  extChainName,
  chainsFromSave,
} from '../../src/lab/kube-proxy-iptables.js';
import {
  generateNftablesRules,
  servicePortChainNameBase,
  servicePortEndpointChainNameBase,
  chainsFromNftList,
} from '../../src/lab/kube-proxy-nftables.js';
import { defaultLabState, lbNetworkLines, lbTargetNodes, normalizeLabState, proxyServicePorts, refreshDerived } from '../../src/lab/topology.js';
import { healthzAnswer, healthzBody } from '../../src/lab/kube-proxy-healthz.js';
import { nextNodeHealth } from '../../src/lab/lb-controller.js';
import { echoFields } from '../../src/lab/lab-client.js';
import { resolveTarget } from '../../src/lab/lab.js';

const node = (name: string, family: 4 | 6 = 4): ProxyNode => ({
  nodeName: name,
  family,
  clusterCIDR: family === 4 ? '10.180.0.0/16' : 'fd00:10:180::/48',
});

function nodePortSvc(policy: 'Cluster' | 'Local', extra: Partial<ProxyServicePort> = {}): ProxyServicePort {
  return {
    namespace: 'default',
    name: 'nodeport',
    portName: 'http',
    protocol: 'TCP',
    port: 80,
    nodePort: 30080,
    clusterIP: '10.0.42.17',
    externalTrafficPolicy: policy,
    endpoints: [{ ip: '10.180.1.136', port: 8080, nodeName: 'node1' }],
    ...extra,
  };
}

function lbSvc(policy: 'Cluster' | 'Local'): ProxyServicePort {
  return {
    namespace: 'default',
    name: 'loadbalancer',
    portName: 'http',
    protocol: 'TCP',
    port: 80,
    nodePort: 30081,
    clusterIP: '10.0.65.118',
    loadBalancerIPs: ['203.0.113.140'],
    externalTrafficPolicy: policy,
    ...(policy === 'Local' ? { healthCheckNodePort: 32122 } : {}),
    endpoints: [{ ip: '10.180.1.136', port: 8080, nodeName: 'node1' }],
  };
}

const SPN = 'default/nodeport:http';
const SVC = svcChainName(SPN, 'tcp');
const SVL = svlChainName(SPN, 'tcp');
const EXT = extChainName(SPN, 'tcp');
const SEP = sepChainName(SPN, 'tcp', '10.180.1.136:8080');

describe('chain names (as kube-proxy computes them)', () => {
  it('base32 is RFC 4648 standard with padding', () => {
    expect(base32Std(Buffer.from('foobar'))).toBe('MZXW6YTBOI======');
    expect(base32Std(Buffer.from('f'))).toBe('MY======');
  });

  it('iptables: matches kube-proxy test vectors', () => {
    // pkg/proxy/iptables/proxier_test.go: ns1/svc1:p80 -> KUBE-SVC-XPGD46QRK7WJZT7O, endpoint 10.180.0.1:80 -> KUBE-SEP-SXIVWICOYRO3J4NJ
    expect(svcChainName('ns1/svc1:p80', 'tcp')).toBe('KUBE-SVC-XPGD46QRK7WJZT7O');
    expect(sepChainName('ns1/svc1:p80', 'tcp', '10.180.0.1:80')).toBe('KUBE-SEP-SXIVWICOYRO3J4NJ');
    // The kube-dns chain every cluster has.
    expect(portProtoHash('kube-system/kube-dns:dns', 'udp')).toBe('TCOU7JCQXEZGVUNU');
    expect(SVC).toMatch(/^KUBE-SVC-[A-Z2-7]{16}$/);
    expect(SVL.slice(9)).toBe(SVC.slice(9));
    expect(EXT.slice(9)).toBe(SVC.slice(9));
  });

  it('nftables: matches kube-proxy test vectors', () => {
    const sp = { namespace: 'ns1', name: 'svc1', portName: 'p80' };
    expect(servicePortChainNameBase(sp, 'tcp')).toBe('ULMVA6XW-ns1/svc1/tcp/p80');
    expect(servicePortEndpointChainNameBase(sp, 'tcp', { ip: '10.180.0.1', port: 80 })).toBe('5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80');
    expect(servicePortEndpointChainNameBase(sp, 'tcp', { ip: 'fd00::1', port: 80 })).toMatch(/__fd00..1\/80$/);
  });
});

describe('iptables mode', () => {
  it('Cluster policy on a node without the endpoint: DNAT via SVC/SEP, masquerade mark, no DROP', () => {
    const r = generateIptablesRules(node('node2'), [nodePortSvc('Cluster')]);
    expect(r.command).toBe('iptables');
    expect(r.restore.startsWith('*filter\n')).toBe(true);
    expect(r.restore).toMatch(/\nCOMMIT\n\*nat\n[\s\S]*\nCOMMIT\n$/);
    expect(r.natChains).toEqual(expect.arrayContaining(['KUBE-SERVICES', 'KUBE-NODEPORTS', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ', SVC, EXT, SEP]));
    expect(r.natChains).not.toContain(SVL);
    expect(r.natRules).toContain(
      `-A KUBE-SERVICES -m comment --comment "${SPN} cluster IP" -m tcp -p tcp -d 10.0.42.17 --dport 80 -j ${SVC}`,
    );
    expect(r.natRules).toContain(`-A KUBE-SVC-${SVC.slice(9)} -m comment --comment "${SPN} cluster IP" -m tcp -p tcp -d 10.0.42.17 --dport 80 ! -s 10.180.0.0/16 -j KUBE-MARK-MASQ`);
    expect(r.natRules).toContain(`-A KUBE-NODEPORTS -m comment --comment ${SPN} -m tcp -p tcp --dport 30080 -j ${EXT}`);
    expect(r.natRules).toContain(`-A ${EXT} -m comment --comment "masquerade traffic for ${SPN} external destinations" -j KUBE-MARK-MASQ`);
    expect(r.natRules).toContain(`-A ${EXT} -j ${SVC}`);
    expect(r.natRules).toContain(`-A ${SVC} -m comment --comment "${SPN} -> 10.180.1.136:8080" -j ${SEP}`);
    expect(r.natRules).toContain(`-A ${SEP} -m comment --comment ${SPN} -s 10.180.1.136 -j KUBE-MARK-MASQ`);
    expect(r.natRules).toContain(`-A ${SEP} -m comment --comment ${SPN} -m tcp -p tcp -j DNAT --to-destination 10.180.1.136:8080`);
    // The masquerade machinery.
    expect(r.natRules).toContain('-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000');
    expect(r.natRules).toContain('-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN');
    expect(r.natRules).toContain('-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000');
    expect(r.natRules).toContain('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully');
    // KUBE-NODEPORTS is the last rule of KUBE-SERVICES.
    const svcRules = r.natRules.filter((l) => l.startsWith('-A KUBE-SERVICES '));
    expect(svcRules.at(-1)).toMatch(/-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS$/);
    expect(r.filterRules.some((l) => l.includes('-j DROP') && l.includes('KUBE-EXTERNAL-SERVICES'))).toBe(false);
    // Jumps from the built-in chains.
    const jumps = r.jumpRules.map((j) => `${j.table} ${j.srcChain} -> ${j.dstChain}`);
    expect(jumps).toEqual(
      expect.arrayContaining([
        'nat PREROUTING -> KUBE-SERVICES',
        'nat OUTPUT -> KUBE-SERVICES',
        'nat POSTROUTING -> KUBE-POSTROUTING',
        'filter INPUT -> KUBE-EXTERNAL-SERVICES',
        'filter FORWARD -> KUBE-EXTERNAL-SERVICES',
      ]),
    );
    expect(r.jumpRules.find((j) => j.srcChain === 'INPUT' && j.dstChain === 'KUBE-EXTERNAL-SERVICES')?.args).toEqual([
      '-m', 'conntrack', '--ctstate', 'NEW', '-m', 'comment', '--comment', 'kubernetes externally-visible service portals', '-j', 'KUBE-EXTERNAL-SERVICES',
    ]);
  });

  it('Local policy on the node with the endpoint: KUBE-SVL, no masquerade for external traffic', () => {
    const r = generateIptablesRules(node('node1'), [nodePortSvc('Local')]);
    expect(r.natChains).toEqual(expect.arrayContaining([SVC, SVL, EXT, SEP]));
    expect(r.natRules).toContain(`-A ${EXT} -m comment --comment "pod traffic for ${SPN} external destinations" -s 10.180.0.0/16 -j ${SVC}`);
    expect(r.natRules).toContain(`-A ${EXT} -m comment --comment "masquerade LOCAL traffic for ${SPN} external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`);
    expect(r.natRules).toContain(`-A ${EXT} -j ${SVL}`);
    expect(r.natRules).toContain(`-A ${SVL} -m comment --comment "${SPN} -> 10.180.1.136:8080" -j ${SEP}`);
    expect(r.natRules.filter((l) => l.startsWith(`-A ${EXT} `) && l.endsWith('-j KUBE-MARK-MASQ') && !l.includes('LOCAL'))).toEqual([]);
    expect(r.filterRules.some((l) => l.includes('-j DROP') && l.includes('30080'))).toBe(false);
  });

  it('Local policy on a node without local endpoints: filter DROP for the node port and the LB IP', () => {
    const r = generateIptablesRules(node('node2'), [nodePortSvc('Local'), lbSvc('Local')]);
    expect(r.natChains).not.toContain(SVL);
    // EXT keeps the short-circuit rules but never jumps to a policy chain for outside traffic.
    expect(r.natRules).not.toContain(`-A ${EXT} -j ${SVL}`);
    expect(r.natRules).not.toContain(`-A ${EXT} -j ${SVC}`);
    expect(r.filterRules).toContain(
      `-A KUBE-EXTERNAL-SERVICES -m comment --comment "${SPN} has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP`,
    );
    expect(r.filterRules).toContain(
      '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/loadbalancer:http has no local endpoints" -m tcp -p tcp -d 203.0.113.140 --dport 80 -j DROP',
    );
    // LB IP capture in KUBE-SERVICES (still present: pod/host traffic is short-circuited).
    expect(r.natRules).toContain(
      `-A KUBE-SERVICES -m comment --comment "default/loadbalancer:http loadbalancer IP" -m tcp -p tcp -d 203.0.113.140 --dport 80 -j ${extChainName('default/loadbalancer:http', 'tcp')}`,
    );
    // Health check node port accepted.
    expect(r.filterRules).toContain(
      '-A KUBE-NODEPORTS -m comment --comment "default/loadbalancer:http health check node port" -m tcp -p tcp --dport 32122 -j ACCEPT',
    );
  });

  it('several endpoints: statistic random probabilities; no endpoints: REJECT', () => {
    const eps = ['10.180.1.10', '10.180.2.10', '10.180.3.10'].map((ip, i) => ({ ip, port: 8080, nodeName: `node${i + 1}` }));
    const r = generateIptablesRules(node('node1'), [nodePortSvc('Cluster', { endpoints: eps })]);
    const lines = r.natRules.filter((l) => l.startsWith(`-A ${SVC} `) && l.includes('KUBE-SEP-'));
    expect(lines).toHaveLength(3);
    expect(lines[0]).toContain('-m statistic --mode random --probability 0.3333333333');
    expect(lines[1]).toContain('-m statistic --mode random --probability 0.5000000000');
    expect(lines[2]).not.toContain('statistic');
    const none = generateIptablesRules(node('node1'), [nodePortSvc('Cluster', { endpoints: [] })]);
    expect(none.filterRules).toContain(`-A KUBE-SERVICES -m comment --comment "${SPN} has no endpoints" -m tcp -p tcp -d 10.0.42.17 --dport 80 -j REJECT`);
    expect(none.filterRules).toContain(
      `-A KUBE-EXTERNAL-SERVICES -m comment --comment "${SPN} has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT`,
    );
    expect(none.natChains).not.toContain(SVC);
  });

  it('IPv6: ip6tables, bracketed DNAT target, ::1 excluded from node ports', () => {
    const sp = nodePortSvc('Cluster', {
      clusterIP: 'fd00:10:96::2a17',
      endpoints: [{ ip: 'fd00:10:180:1::136', port: 8080, nodeName: 'node1' }],
    });
    const r = generateIptablesRules(node('node2', 6), [sp]);
    expect(r.command).toBe('ip6tables');
    const sep = sepChainName(SPN, 'tcp', '[fd00:10:180:1::136]:8080');
    expect(r.natRules).toContain(`-A ${sep} -m comment --comment ${SPN} -m tcp -p tcp -j DNAT --to-destination [fd00:10:180:1::136]:8080`);
    expect(r.natRules.at(-1)).toContain('-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS');
    expect(r.natRules).toContain(`-A ${SVC} -m comment --comment "${SPN} cluster IP" -m tcp -p tcp -d fd00:10:96::2a17 --dport 80 ! -s fd00:10:180::/48 -j KUBE-MARK-MASQ`);
    expect(r.filterChains).not.toContain('KUBE-FIREWALL');
  });

  it('stale service chains are flushed and deleted', () => {
    const r = generateIptablesRules(node('node1'), [nodePortSvc('Cluster')], {
      existingNatChains: ['KUBE-SERVICES', SVL, 'KUBE-SEP-OLDOLDOLDOLDOLD1', 'DOCKER'],
    });
    expect(r.natRules).toContain(`-X ${SVL}`);
    expect(r.natRules).toContain('-X KUBE-SEP-OLDOLDOLDOLDOLD1');
    expect(r.natRules).not.toContain('-X DOCKER');
    expect(r.natChains).toContain(SVL);
    expect(chainsFromSave('*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\nCOMMIT\n')).toEqual([
      'PREROUTING',
      'KUBE-SVC-X',
    ]);
  });
});

describe('nftables mode', () => {
  const base = servicePortChainNameBase({ namespace: 'default', name: 'nodeport', portName: 'http' }, 'tcp');
  const ep = 'endpoint-' + servicePortEndpointChainNameBase({ namespace: 'default', name: 'nodeport', portName: 'http' }, 'tcp', { ip: '10.180.1.136', port: 8080 });

  it('Cluster policy: table layout, maps, service/external/endpoint chains, masquerading', () => {
    const r = generateNftablesRules(node('node2'), [nodePortSvc('Cluster')]);
    const s = r.script;
    expect(r.nftFamily).toBe('ip');
    expect(s).toContain('add table ip kube-proxy { comment "rules for kube-proxy" ; }');
    for (const c of ['filter-prerouting', 'filter-input', 'filter-forward', 'filter-output', 'nat-prerouting', 'nat-output', 'nat-postrouting']) {
      expect(s).toMatch(new RegExp(`add chain ip kube-proxy ${c} \\{ type (filter|nat) hook \\w+ priority -?\\d+ ; \\}`));
    }
    expect(s).toContain('add rule ip kube-proxy nat-prerouting jump services');
    expect(s).toContain('add rule ip kube-proxy nat-output jump services');
    expect(s).toContain('add rule ip kube-proxy nat-postrouting jump masquerading');
    expect(s).toContain('add rule ip kube-proxy filter-input ct state new jump endpoints-check');
    expect(s).toContain('add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips');
    expect(s).toContain('add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports');
    expect(s).toContain('add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000');
    expect(s).toContain('add rule ip kube-proxy masquerading mark and 0x4000 == 0 return');
    expect(s).toContain('add rule ip kube-proxy masquerading mark set mark xor 0x4000');
    expect(s).toContain('add rule ip kube-proxy masquerading masquerade fully-random');
    expect(s).toContain(`add element ip kube-proxy service-ips { 10.0.42.17 . tcp . 80 : goto service-${base} }`);
    expect(s).toContain(`add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-${base} }`);
    expect(s).toContain(`add rule ip kube-proxy external-${base} jump mark-for-masquerade`);
    expect(s).toContain(`add rule ip kube-proxy external-${base} goto service-${base}`);
    expect(s).toContain(`add rule ip kube-proxy service-${base} ip daddr 10.0.42.17 tcp dport 80 ip saddr != 10.180.0.0/16 jump mark-for-masquerade`);
    expect(s).toContain(`add rule ip kube-proxy service-${base} numgen random mod 1 vmap { 0 : goto ${ep} }`);
    expect(s).toContain(`add rule ip kube-proxy ${ep} ip saddr 10.180.1.136 jump mark-for-masquerade`);
    expect(s).toContain(`add rule ip kube-proxy ${ep} meta l4proto tcp dnat to 10.180.1.136:8080`);
    expect(s).not.toMatch(/no-endpoint-nodeports \{ tcp/);
    expect(r.serviceChains).toEqual(expect.arrayContaining([`service-${base}`, `external-${base}`, ep]));
  });

  it('Local policy: local- chain where the endpoint is, drop elsewhere', () => {
    const on1 = generateNftablesRules(node('node1'), [nodePortSvc('Local')]).script;
    expect(on1).toContain(`add rule ip kube-proxy external-${base} ip saddr 10.180.0.0/16 goto service-${base} comment "short-circuit pod traffic"`);
    expect(on1).toContain(`add rule ip kube-proxy external-${base} fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"`);
    expect(on1).toContain(`add rule ip kube-proxy external-${base} goto local-${base}`);
    expect(on1).toContain(`add rule ip kube-proxy local-${base} numgen random mod 1 vmap { 0 : goto ${ep} }`);
    expect(on1).not.toContain(`add rule ip kube-proxy external-${base} jump mark-for-masquerade\n`);

    const on2 = generateNftablesRules(node('node2'), [nodePortSvc('Local'), lbSvc('Local')]).script;
    expect(on2).not.toContain(`local-${base}`);
    expect(on2).not.toContain(`add rule ip kube-proxy external-${base} goto`);
    expect(on2).toContain('add element ip kube-proxy no-endpoint-nodeports { tcp . 30080 comment "default/nodeport:http" : drop }');
    expect(on2).toContain('add element ip kube-proxy no-endpoint-services { 203.0.113.140 . tcp . 80 comment "default/loadbalancer:http" : drop }');
  });

  it('several endpoints: numgen vmap; IPv6; stale chains', () => {
    const eps = ['fd00:10:180:1::10', 'fd00:10:180:2::10'].map((ip, i) => ({ ip, port: 8080, nodeName: `node${i + 1}` }));
    const r = generateNftablesRules(node('node3', 6), [nodePortSvc('Cluster', { clusterIP: 'fd00:10:96::2a17', endpoints: eps })], {
      existingChains: ['services', `local-${base}`, 'endpoint-OLD-default/x/tcp/http__10.1.1.1/80'],
    });
    expect(r.nftFamily).toBe('ip6');
    expect(r.script).toContain('add table ip6 kube-proxy');
    expect(r.script).toMatch(/numgen random mod 2 vmap \{ 0 : goto endpoint-\S+ , 1 : goto endpoint-\S+ \}/);
    expect(r.script).toContain('meta l4proto tcp dnat to [fd00:10:180:1::10]:8080');
    expect(r.script).toContain('fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports');
    expect(r.staleChains).toEqual([`local-${base}`, 'endpoint-OLD-default/x/tcp/http__10.1.1.1/80']);
    expect(r.script).toContain(`flush chain ip6 kube-proxy local-${base}`);
    expect(r.cleanupScript).toContain(`delete chain ip6 kube-proxy local-${base}`);
    expect(chainsFromNftList('table ip kube-proxy {\n\tchain services {\n\t}\n\tchain service-X-a/b/tcp/p {\n\t}\n}')).toEqual(['services', 'service-X-a/b/tcp/p']);
  });
});

describe('lab topology model', () => {
  it('derives endpoints, proxier input and LB targets', () => {
    const st = defaultLabState('nl', 'iptables');
    const sps4 = proxyServicePorts(st, 4);
    expect(sps4).toHaveLength(6);
    const np = sps4.find((s) => s.name === 'nodeport' && s.protocol === 'UDP');
    expect(np).toMatchObject({ nodePort: 30080, clusterIP: '10.0.42.17', endpoints: [{ ip: '10.180.1.136', port: 8080, nodeName: 'node1' }] });
    const lb6 = proxyServicePorts(st, 6).find((s) => s.name === 'loadbalancer' && s.protocol === 'TCP');
    expect(lb6).toMatchObject({ loadBalancerIPs: ['2001:db8:203::140'], clusterIP: 'fd00:10:96::6576' });
    expect(lb6?.healthCheckNodePort).toBeUndefined(); // only under Local
    const lb = st.services.find((s) => s.name === 'loadbalancer');
    if (!lb) throw new Error('no lb');
    expect(lbTargetNodes(st, lb)).toEqual(['node1', 'node2', 'node3']);
    lb.externalTrafficPolicy = 'Local';
    refreshDerived(st);
    expect(lbTargetNodes(st, lb)).toEqual(['node1']);
    expect(proxyServicePorts(st, 4).find((s) => s.name === 'loadbalancer')?.healthCheckNodePort).toBe(32122);
  });

  it('resolves curl targets', () => {
    const st = defaultLabState('nl', 'iptables');
    expect(resolveTarget(st, 'clusterip')).toMatchObject({ host: '10.0.170.92', port: 80, proto: 'tcp', family: 4 });
    expect(resolveTarget(st, 'nodeport@node2', { udp: true })).toMatchObject({ host: '10.240.0.4', port: 30080, proto: 'udp' });
    expect(resolveTarget(st, 'loadbalancer@lb', { family: 6 })).toMatchObject({ host: '2001:db8:203::140', port: 80, family: 6 });
    expect(resolveTarget(st, '[fd00:10:240::3]:30080')).toMatchObject({ host: 'fd00:10:240::3', port: 30080, family: 6 });
    expect(resolveTarget(st, '10.240.0.5:30080')).toMatchObject({ host: '10.240.0.5', port: 30080, family: 4 });
    expect(() => resolveTarget(st, 'clusterip@node1')).toThrow(/no nodePort/);
    expect(() => resolveTarget(st, 'nope')).toThrow(/no service/);
  });
});

// ---------------------------------------------------------------- terminating endpoints, health checks

describe('terminating endpoints (ProxyTerminatingEndpoints, pkg/proxy/topology.go)', () => {
  const ready = (ip: string, nodeName: string) => ({ ip, port: 8080, nodeName });
  const terminating = (ip: string, nodeName: string) => ({ ip, port: 8080, nodeName, ready: false, serving: true, terminating: true });
  const notServing = (ip: string, nodeName: string) => ({ ip, port: 8080, nodeName, ready: false, serving: false, terminating: true });
  const ips = (eps: Array<{ ip: string }>) => eps.map((e) => e.ip).sort();

  it('Cluster: ready endpoints win; serving-terminating ones only when none is ready anywhere', () => {
    const withReady = categorizeEndpoints(nodePortSvc('Cluster', { endpoints: [terminating('10.180.1.136', 'node1'), ready('10.180.2.10', 'node2')] }), 'node1');
    expect(ips(withReady.clusterEndpoints)).toEqual(['10.180.2.10']);
    expect(ips(withReady.allLocallyReachableEndpoints)).toEqual(['10.180.2.10']);
    expect(withReady.hasEndpoints).toBe(true);

    const onlyTerminating = categorizeEndpoints(nodePortSvc('Cluster', { endpoints: [terminating('10.180.1.136', 'node1'), notServing('10.180.2.10', 'node2')] }), 'node3');
    expect(ips(onlyTerminating.clusterEndpoints)).toEqual(['10.180.1.136']);
    expect(onlyTerminating.localEndpoints).toEqual([]);
    expect(onlyTerminating.hasEndpoints).toBe(true);

    const none = categorizeEndpoints(nodePortSvc('Cluster', { endpoints: [notServing('10.180.1.136', 'node1')] }), 'node1');
    expect(none.clusterEndpoints).toEqual([]);
    expect(none.hasEndpoints).toBe(false);
  });

  it('Local: the fallback is per node; a ready endpoint elsewhere does not stop it', () => {
    const eps = [terminating('10.180.1.136', 'node1'), ready('10.180.2.10', 'node2')];
    const on1 = categorizeEndpoints(nodePortSvc('Local', { endpoints: eps }), 'node1');
    expect(ips(on1.localEndpoints)).toEqual(['10.180.1.136']); // no local ready endpoint: local serving-terminating
    expect(ips(on1.clusterEndpoints)).toEqual(['10.180.2.10']); // cluster-wide there is a ready one
    expect(ips(on1.allLocallyReachableEndpoints)).toEqual(['10.180.1.136', '10.180.2.10']);
    const on2 = categorizeEndpoints(nodePortSvc('Local', { endpoints: eps }), 'node2');
    expect(ips(on2.localEndpoints)).toEqual(['10.180.2.10']);
    const on3 = categorizeEndpoints(nodePortSvc('Local', { endpoints: eps }), 'node3');
    expect(on3.localEndpoints).toEqual([]);
    expect(on3.hasEndpoints).toBe(true);
    // A local ready endpoint wins over a local terminating one.
    const both = categorizeEndpoints(nodePortSvc('Local', { endpoints: [terminating('10.180.1.136', 'node1'), ready('10.180.1.10', 'node1')] }), 'node1');
    expect(ips(both.localEndpoints)).toEqual(['10.180.1.10']);
    expect(ips(both.allLocallyReachableEndpoints)).toEqual(['10.180.1.10']);
  });

  it('iptables: a lone serving-terminating endpoint still gets SVC/SEP rules; next to a ready one it is skipped', () => {
    const SEP2 = sepChainName(SPN, 'tcp', '10.180.2.10:8080');
    const alone = generateIptablesRules(node('node2'), [nodePortSvc('Cluster', { endpoints: [terminating('10.180.1.136', 'node1')] })]);
    expect(alone.natRules).toContain(`-A ${SVC} -m comment --comment "${SPN} -> 10.180.1.136:8080" -j ${SEP}`);
    expect(alone.natRules).toContain(`-A ${SEP} -m comment --comment ${SPN} -m tcp -p tcp -j DNAT --to-destination 10.180.1.136:8080`);
    expect(alone.filterRules.some((l) => l.includes('REJECT'))).toBe(false);

    const mixed = generateIptablesRules(node('node2'), [nodePortSvc('Cluster', { endpoints: [terminating('10.180.1.136', 'node1'), ready('10.180.2.10', 'node2')] })]);
    expect(mixed.natRules).toContain(`-A ${SVC} -m comment --comment "${SPN} -> 10.180.2.10:8080" -j ${SEP2}`);
    expect(mixed.natRules.some((l) => l.includes('10.180.1.136'))).toBe(false);
    expect(mixed.natChains).not.toContain(SEP);

    // Local on node1 with only a terminating local endpoint: KUBE-SVL uses it, no DROP.
    const local = generateIptablesRules(node('node1'), [nodePortSvc('Local', { endpoints: [terminating('10.180.1.136', 'node1'), ready('10.180.2.10', 'node2')] })]);
    expect(local.natRules).toContain(`-A ${SVL} -m comment --comment "${SPN} -> 10.180.1.136:8080" -j ${SEP}`);
    expect(local.natRules).toContain(`-A ${SVC} -m comment --comment "${SPN} -> 10.180.2.10:8080" -j ${SEP2}`);
    expect(local.filterRules.some((l) => l.includes('has no local endpoints'))).toBe(false);

    // Nothing serving: REJECT.
    const gone = generateIptablesRules(node('node1'), [nodePortSvc('Cluster', { endpoints: [notServing('10.180.1.136', 'node1')] })]);
    expect(gone.filterRules).toContain(`-A KUBE-SERVICES -m comment --comment "${SPN} has no endpoints" -m tcp -p tcp -d 10.0.42.17 --dport 80 -j REJECT`);
  });

  it('nftables: the same choices', () => {
    const sp = { namespace: 'default', name: 'nodeport', portName: 'http' };
    const base = servicePortChainNameBase(sp, 'tcp');
    const ep1 = 'endpoint-' + servicePortEndpointChainNameBase(sp, 'tcp', { ip: '10.180.1.136', port: 8080 });
    const ep2 = 'endpoint-' + servicePortEndpointChainNameBase(sp, 'tcp', { ip: '10.180.2.10', port: 8080 });
    const alone = generateNftablesRules(node('node2'), [nodePortSvc('Cluster', { endpoints: [terminating('10.180.1.136', 'node1')] })]).script;
    expect(alone).toContain(`add rule ip kube-proxy service-${base} numgen random mod 1 vmap { 0 : goto ${ep1} }`);
    const mixed = generateNftablesRules(node('node2'), [nodePortSvc('Cluster', { endpoints: [terminating('10.180.1.136', 'node1'), ready('10.180.2.10', 'node2')] })]).script;
    expect(mixed).toContain(`add rule ip kube-proxy service-${base} numgen random mod 1 vmap { 0 : goto ${ep2} }`);
    expect(mixed).not.toContain(ep1);
    const local = generateNftablesRules(node('node1'), [nodePortSvc('Local', { endpoints: [terminating('10.180.1.136', 'node1'), ready('10.180.2.10', 'node2')] })]).script;
    expect(local).toContain(`add rule ip kube-proxy local-${base} numgen random mod 1 vmap { 0 : goto ${ep1} }`);
    expect(local).not.toContain('no-endpoint-nodeports { tcp . 30080');
  });

  it('the health check counts local ready endpoints only (LocalReadyEndpoints), distinct IPs', () => {
    expect(localReadyEndpointCount([ready('10.180.1.136', 'node1'), { ...ready('10.180.1.136', 'node1'), port: 8443 }, ready('10.180.2.10', 'node2')], 'node1')).toBe(1);
    expect(localReadyEndpointCount([terminating('10.180.1.136', 'node1')], 'node1')).toBe(0);
  });

  it('lab state: terminating pods give ready=false serving=true terminating=true endpoints', () => {
    const st = defaultLabState('nl', 'iptables');
    st.pods.find((p) => p.name === 'source-ip-app')!.terminating = true;
    refreshDerived(st);
    const lb = st.services.find((s) => s.name === 'loadbalancer')!;
    expect(lb.endpoints).toEqual([{ pod: 'source-ip-app', node: 'node1', ips: ['10.180.1.136', 'fd00:10:180:1::136'], ready: false, serving: true, terminating: true }]);
    expect(proxyServicePorts(st, 4).find((s) => s.name === 'clusterip')?.endpoints[0]).toMatchObject({ ready: false, serving: true, terminating: true });
  });
});

describe('kube-proxy health check server and the LB', () => {
  it('answers like kube-proxy: 200/503, JSON body byte for byte, headers', () => {
    const st = defaultLabState('nl', 'iptables');
    const lb = st.services.find((s) => s.name === 'loadbalancer')!;
    const ok = healthzAnswer(lb, 'node1');
    expect(ok.status).toBe(200);
    expect(ok.body).toBe('{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "loadbalancer"\n\t},\n\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}');
    expect(JSON.parse(ok.body)).toEqual({ service: { namespace: 'default', name: 'loadbalancer' }, localEndpoints: 1, serviceProxyHealthy: true });
    expect(ok.headers).toEqual({ 'Content-Type': 'application/json', 'X-Content-Type-Options': 'nosniff', 'X-Load-Balancing-Endpoint-Weight': '1' });
    // Same length as a real kube-proxy answer for a 16-character service name (Content-Length: 127).
    expect(Buffer.byteLength(healthzBody('default', 'wp-nginx-service', 1))).toBe(127);
    expect(healthzAnswer(lb, 'node2')).toMatchObject({ status: 503, localEndpoints: 0 });
    st.pods.find((p) => p.name === 'source-ip-app')!.terminating = true;
    refreshDerived(st);
    expect(healthzAnswer(lb, 'node1')).toMatchObject({ status: 503, localEndpoints: 0 });
  });

  it('health-check bookkeeping: out after N failures, back after M successes', () => {
    const cfg = { intervalMs: 1000, timeoutMs: 800, unhealthyThreshold: 2, healthyThreshold: 1 };
    const fail = { ok: false, status: 503, localEndpoints: 0, error: 'HTTP 503' };
    const pass = { ok: true, status: 200, localEndpoints: 1, error: null };
    let h = { healthy: true, consecutiveSuccesses: 0, consecutiveFailures: 0, lastStatus: null, lastLocalEndpoints: null, lastError: null, lastCheckedAt: null };
    h = nextNodeHealth(h, fail, cfg, 't1');
    expect(h).toMatchObject({ healthy: true, consecutiveFailures: 1, lastStatus: 503 });
    h = nextNodeHealth(h, fail, cfg, 't2');
    expect(h).toMatchObject({ healthy: false, consecutiveFailures: 2 });
    h = nextNodeHealth(h, pass, cfg, 't3');
    expect(h).toMatchObject({ healthy: true, consecutiveSuccesses: 1, consecutiveFailures: 0, lastLocalEndpoints: 1 });
  });

  it('converged targets: Local nodes with ready endpoints, fail-open to all when none', () => {
    const st = defaultLabState('nl', 'iptables');
    const lb = st.services.find((s) => s.name === 'loadbalancer')!;
    lb.externalTrafficPolicy = 'Local';
    refreshDerived(st);
    expect(lbTargetNodes(st, lb)).toEqual(['node1']);
    st.pods.find((p) => p.name === 'source-ip-app')!.terminating = true;
    refreshDerived(st);
    expect(lbTargetNodes(st, lb)).toEqual(['node1', 'node2', 'node3']);
  });

  it('LB network lines per mode', () => {
    const st = defaultLabState('nl', 'iptables');
    const fwd = lbNetworkLines(st, { 'default/loadbalancer': ['node1', 'node3'] }, 'forward');
    expect(fwd).toEqual([
      'route replace 203.0.113.140/32 nexthop via 10.240.0.3 dev eth0 nexthop via 10.240.0.5 dev eth0',
      'route replace 2001:db8:203::140/128 nexthop via fd00:10:240::3 dev eth0 nexthop via fd00:10:240::5 dev eth0',
    ]);
    expect(lbNetworkLines(st, {}, 'forward')[0]).toBe('route replace blackhole 203.0.113.140/32');
    expect(lbNetworkLines(st, {}, 'proxy', true)).toEqual([
      'addr replace 203.0.113.140/32 dev lo',
      'route del 203.0.113.140/32',
      'addr replace 2001:db8:203::140/128 dev lo nodad',
      'route del 2001:db8:203::140/128',
    ]);
    expect(lbNetworkLines(st, { 'default/loadbalancer': ['node2'] }, 'forward', true)[0]).toBe('addr del 203.0.113.140/32 dev lo');
  });

  it('old state files: forward / none, endpoint conditions from ready', () => {
    const st = defaultLabState('nl', 'iptables') as unknown as { lb: Record<string, unknown>; services: Array<{ endpoints: Array<Record<string, unknown>> }> };
    delete st.lb['mode'];
    delete st.lb['proxyProtocol'];
    for (const s of st.services) for (const e of s.endpoints) {
      delete e['serving'];
      delete e['terminating'];
    }
    const n = normalizeLabState(st as unknown as Parameters<typeof normalizeLabState>[0]);
    expect(n.lb.mode).toBe('forward');
    expect(n.lb.proxyProtocol).toBe('none');
    expect(n.services[0]?.endpoints[0]).toMatchObject({ ready: true, serving: true, terminating: false });
  });

  it('echo answers parse into the PROXY fields', () => {
    expect(echoFields('CLIENT VALUES:\nclient_address=10.240.0.2\nclient_port=1\nproxy_protocol=v2\nproxy_client_address=198.51.100.79\nproxy_client_port=4242\n')).toEqual({
      client_address: '10.240.0.2',
      proxy_protocol: 'v2',
      proxy_client_address: '198.51.100.79',
      proxy_client_port: 4242,
    });
    expect(echoFields('CLIENT VALUES:\nclient_address=10.240.0.2\n')).toMatchObject({ proxy_protocol: null, proxy_client_address: null, proxy_client_port: null });
  });
});
