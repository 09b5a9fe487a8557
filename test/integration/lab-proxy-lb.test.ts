// The lab's load balancer as a TCP proxy (root + network namespaces): the node sees the
// LB's connection (and SNATs it under Cluster policy), the echo server reports the PROXY
// protocol header's client (v1 and v2), nothing without one; switching modes in a running
// lab (library and `natlens lab lb`). Needs the build output (npm run build:ts).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listNetns, nsRun, procCmdline, run } from '../../src/lab/exec.js';
import {
  labCurl,
  labDown,
  labPatch,
  labScriptPath,
  labSetLbMode,
  labUp,
  readLabState,
  requireLabState,
  type LabCurlResult,
  type LabServer,
} from '../../src/lab/lab.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

const pexec = promisify(execFile);

async function labSkipReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, iptables/nft)';
  for (const s of ['echo-server', 'lab-client', 'kube-proxy-healthz', 'lb-controller', 'lb-proxy'] as const) {
    try {
      labScriptPath(s);
    } catch (err) {
      return String(err);
    }
  }
  const probe = await run('ip', ['netns', 'list'], { allowFail: true }).catch((err: unknown) => ({ code: 1, stderr: String(err) }));
  if (probe.code !== 0) return `network namespaces unavailable: ${probe.stderr.trim()}`;
  return null;
}
const skip = await labSkipReason();
if (skip) console.warn(`test/integration/lab-proxy-lb.test.ts: skipped: ${skip}`);

const CLIENT = { 4: '198.51.100.79', 6: '2001:db8:5100::79' } as const;
const NODES = { 4: ['10.240.0.3', '10.240.0.4', '10.240.0.5'], 6: ['fd00:10:240::3', 'fd00:10:240::4', 'fd00:10:240::5'] } as const;
const LB = { 4: '10.240.0.2', 6: 'fd00:10:240::2' } as const;
const show = (r: LabCurlResult): string =>
  `${r.from} -> ${r.target} v${r.family}: ok=${r.ok} client_address=${r.client_address} proxy=${r.proxy_protocol}/${r.proxy_client_address}:${r.proxy_client_port} error=${r.error}`;

describe.skipIf(!!skip)('lab: proxy load balancer with and without PROXY protocol', () => {
  const prefix = 'pxy';
  let started = 0;
  const daemons: LabServer[] = [];
  const curl = (family: 4 | 6 = 4, udp = false): Promise<LabCurlResult> =>
    labCurl('client', 'loadbalancer@lb', { prefix, family, udp, timeoutMs: 3000 });
  /** Sequential: the proxy's round robin then visits every node in turn. */
  const curlSeq = async (n: number, family: 4 | 6 = 4): Promise<LabCurlResult[]> => {
    const out: LabCurlResult[] = [];
    for (let i = 0; i < n; i++) out.push(await curl(family));
    return out;
  };

  beforeAll(async () => {
    started = Date.now();
    const st = await labUp({
      prefix,
      proxyMode: 'iptables',
      force: true,
      lbMode: 'proxy',
      proxyProtocol: 'none',
      lbHealthCheck: { intervalMs: 200, timeoutMs: 300, unhealthyThreshold: 2, healthyThreshold: 1 },
    });
    for (const d of [st.lb.controller, st.lb.proxy, ...st.nodes.map((n) => n.healthServer)]) if (d) daemons.push(d);
  }, 60_000);

  afterAll(async () => {
    const st = readLabState(prefix);
    for (const d of [st?.lb.controller, st?.lb.proxy]) if (d && !daemons.some((x) => x.pid === d.pid)) daemons.push(d);
    await labDown({ prefix });
    expect(listNetns().filter((n) => n.startsWith(`${prefix}-`))).toEqual([]);
    for (const d of daemons) expect((procCmdline(d.pid) ?? '').includes(d.cmdlineMatch), `daemon ${d.pid} still running`).toBe(false);
    console.info(`lab-proxy-lb: ${((Date.now() - started) / 1000).toFixed(1)}s`);
  }, 30_000);

  it('none: the proxy connects from the LB, the nodes SNAT (Cluster), round robin, no header; UDP not proxied', async () => {
    const st = requireLabState(prefix);
    expect(st.lb).toMatchObject({ mode: 'proxy', proxyProtocol: 'none' });
    expect(procCmdline(st.lb.proxy!.pid)).toContain('lb-proxy.js');
    const lo = await nsRun(st.lb.netns, 'ip', ['addr', 'show', 'dev', 'lo']);
    expect(lo.stdout).toContain('203.0.113.140/32');
    const results = await curlSeq(3);
    for (const r of results) {
      expect(r.ok, show(r)).toBe(true);
      expect(NODES[4] as readonly string[], show(r)).toContain(r.client_address);
      expect(r.proxy_protocol, show(r)).toBeNull();
      expect(r.proxy_client_address).toBeNull();
      expect(r.response).not.toContain('proxy_');
    }
    expect(new Set(results.map((r) => r.client_address)).size).toBe(3);
    const udp = await curl(4, true);
    expect(udp.ok).toBe(false);
  });

  it('v1: the echo server reports the header\'s client', async () => {
    await labSetLbMode('proxy', { prefix, proxyProtocol: 'v1' });
    for (const r of await curlSeq(3)) {
      expect(r.ok, show(r)).toBe(true);
      expect(NODES[4] as readonly string[], show(r)).toContain(r.client_address);
      expect(r.proxy_protocol, show(r)).toBe('v1');
      expect(r.proxy_client_address, show(r)).toBe(CLIENT[4]);
      expect(r.proxy_client_port, show(r)).toBe(r.local?.port);
    }
  });

  it('v2 (switched with natlens lab lb), IPv4 and IPv6', async () => {
    const out = await pexec(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), 'lab', 'lb', '--mode', 'proxy', '--proxy-protocol', 'v2', '--prefix', prefix], {
      timeout: 30_000,
    });
    expect(out.stdout).toContain('load balancer mode: proxy (PROXY protocol: v2)');
    expect(requireLabState(prefix).lb.proxyProtocol).toBe('v2');
    for (const family of [4, 6] as const) {
      for (const r of await curlSeq(2, family)) {
        expect(r.ok, show(r)).toBe(true);
        expect(NODES[family] as readonly string[], show(r)).toContain(r.client_address);
        expect(r.proxy_protocol, show(r)).toBe('v2');
        expect(r.proxy_client_address, show(r)).toBe(CLIENT[family]);
        expect(r.proxy_client_port, show(r)).toBe(r.local?.port);
      }
    }
  });

  it('Local policy behind the proxy: no SNAT, the pod sees the LB; the header still names the client', async () => {
    await labPatch('loadbalancer', 'Local', { prefix });
    expect(requireLabState(prefix).lb.targets['default/loadbalancer']).toEqual(['node1']);
    for (const family of [4, 6] as const) {
      for (const r of await curlSeq(2, family)) {
        expect(r.ok, show(r)).toBe(true);
        expect(r.client_address, show(r)).toBe(LB[family]);
        expect(r.proxy_client_address, show(r)).toBe(CLIENT[family]);
      }
    }
  });

  it('back to forward: the client IP reaches the pod, no header, the proxy is stopped', async () => {
    const proxy = requireLabState(prefix).lb.proxy!;
    await labSetLbMode('forward', { prefix });
    const st = requireLabState(prefix);
    expect(st.lb).toMatchObject({ mode: 'forward', proxyProtocol: 'none' });
    expect(st.lb.proxy).toBeUndefined();
    expect((procCmdline(proxy.pid) ?? '').includes(proxy.cmdlineMatch)).toBe(false);
    const lo = await nsRun(st.lb.netns, 'ip', ['addr', 'show', 'dev', 'lo']);
    expect(lo.stdout).not.toContain('203.0.113.140');
    for (const r of await curlSeq(2)) {
      expect(r.ok, show(r)).toBe(true);
      expect(r.client_address, show(r)).toBe(CLIENT[4]);
      expect(r.proxy_protocol).toBeNull();
    }
    // UDP is forwarded again.
    const udp = await curl(4, true);
    expect(udp.ok, show(udp)).toBe(true);
    expect(udp.client_address).toBe(CLIENT[4]);
  });
});
