/**
 * What the agent needs to know about its node's network, read with `ip -json` in the node's
 * namespace: the node's own addresses (a hop whose source is one of them was SNAT'd by this node),
 * and which interfaces lead to local pods. An interface is an uplink when a route with a gateway
 * (the default route, other nodes' pod CIDRs, an overlay's onlink routes) leaves by it; a packet
 * leaving by any other interface (a pod's veth, a CNI bridge) is delivered on this node.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const exec = promisify(execFile);

interface IpRoute {
  dst?: string;
  dev?: string;
  gateway?: string;
  nexthops?: Array<{ dev?: string; gateway?: string }>;
}

interface IpAddr {
  ifname: string;
  link_type?: string;
  addr_info?: Array<{ local: string; scope: string; family: string }>;
}

async function ipJson<T>(netns: string | undefined, args: string[]): Promise<T> {
  const [cmd, argv] = netns ? ['nsenter', [`--net=${netns}`, 'ip', '-json', ...args]] : ['ip', ['-json', ...args]];
  const { stdout } = await exec(cmd, argv as string[], { timeout: 5000, maxBuffer: 64 << 20 });
  return JSON.parse(stdout || '[]') as T;
}

export interface NodeNetwork {
  /** Global-scope addresses of the node (text). */
  addresses: string[];
  /** Interfaces that carry routes with a gateway: traffic leaving by them goes to another host. */
  uplinks: Set<string>;
}

export async function readNodeNetwork(netns?: string): Promise<NodeNetwork> {
  const [v4, v6, addrs] = await Promise.all([
    ipJson<IpRoute[]>(netns, ['-4', 'route', 'show', 'table', 'main']),
    ipJson<IpRoute[]>(netns, ['-6', 'route', 'show', 'table', 'main']),
    ipJson<IpAddr[]>(netns, ['addr', 'show']),
  ]);
  const uplinks = new Set<string>();
  for (const r of [...v4, ...v6]) {
    if (r.gateway && r.dev) uplinks.add(r.dev);
    for (const nh of r.nexthops ?? []) if (nh.gateway && nh.dev) uplinks.add(nh.dev);
  }
  const addresses: string[] = [];
  for (const a of addrs) {
    if (a.link_type === 'loopback') continue;
    for (const info of a.addr_info ?? []) if (info.scope === 'global') addresses.push(info.local);
  }
  return { addresses, uplinks };
}

/**
 * Keeps the node's view fresh (routes change as pods come and go) without a call per event:
 * read at start, then every `refreshMs` in the background.
 */
export class NodeNetworkWatch {
  private current: NodeNetwork = { addresses: [], uplinks: new Set() };
  private timer: NodeJS.Timeout | undefined;
  lastError: Error | undefined;

  constructor(private readonly netns: string | undefined, private readonly refreshMs = 5000) {}

  async start(): Promise<NodeNetwork> {
    this.current = await readNodeNetwork(this.netns);
    this.timer = setInterval(() => {
      readNodeNetwork(this.netns).then((n) => { this.current = n; this.lastError = undefined; }, (e: Error) => { this.lastError = e; });
    }, this.refreshMs);
    this.timer.unref();
    return this.current;
  }

  get network(): NodeNetwork {
    return this.current;
  }

  /** A packet that left by `ifname` was delivered to a pod on this node. */
  deliversLocally(ifname: string | null): boolean {
    return ifname !== null && ifname !== '' && !this.current.uplinks.has(ifname);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
