// The lab load balancer in proxy mode: a TCP proxy like a cloud "proxy" LB (AWS Classic
// ELB in TCP mode, a GCP proxy NLB, HAProxy in front of NodePorts). Runs inside the LB's
// network namespace (`ip netns exec <lb netns> node lb-proxy.js --state <file> --lb-file <file>`).
//
// In proxy mode the controller makes the VIPs local addresses of the LB; this proxy listens
// on every LoadBalancer Service's TCP port (0.0.0.0 and ::), accepts the client's
// connection on a VIP, picks one of the service's health-checked target nodes (round robin
// over the controller's targets), connects from the LB's own address (10.240.0.2 /
// fd00:10:240::2) to <node InternalIP>:<nodePort>, writes a PROXY protocol header (v1 or v2,
// client address:port -> VIP:port) unless the lab's lb.proxyProtocol is "none", then relays
// both directions (half-closes included). UDP is not proxied: datagrams to a VIP reach the
// LB itself and are refused.
//
// The state and the controller's targets are re-read (one stat each) for every new
// connection, so a `natlens lab lb --proxy-protocol v2` applies to the next connection.

import net from 'node:net';
import { encodeProxyHeader } from '../util/proxy-protocol.js';
import { argValue, isMainModule, JsonFile, LabStateFollower, log, onTerminate, signalReady } from './daemon.js';
import { byFamily, familyOf } from './topology.js';
import type { LabLbHealth, LabState } from './types.js';

interface Frontend {
  key: string;
  nodePort: number;
}

/** "vip|port" -> the service port it fronts. */
export function proxyFrontends(state: LabState): Map<string, Frontend> {
  const out = new Map<string, Frontend>();
  for (const svc of state.services) {
    if (svc.type !== 'LoadBalancer') continue;
    for (const p of svc.ports) {
      if (p.protocol !== 'TCP' || !p.nodePort) continue;
      for (const vip of svc.loadBalancerIPs) out.set(`${vip}|${p.port}`, { key: `${svc.namespace}/${svc.name}`, nodePort: p.nodePort });
    }
  }
  return out;
}

/** Client connections relayed at once (each holds two sockets); beyond, new ones are closed. */
const MAX_CONNECTIONS = 4096;
/** A relayed connection idle this long is closed, as a cloud load balancer's idle timeout does. */
const IDLE_TIMEOUT_MS = 10 * 60_000;

function plain(a: string | undefined): string {
  if (!a) return '';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

function main(): void {
  const targetsFile = new JsonFile<LabLbHealth>(argValue('lb-file'));
  const listeners = new Map<string, net.Server>(); // "4|80" / "6|80"
  const rr = new Map<string, number>();
  let follower: LabStateFollower;
  let frontends = new Map<string, Frontend>();

  const onConnection = (client: net.Socket): void => {
    follower.check('connection');
    targetsFile.refresh();
    const state = follower.state;
    const vip = plain(client.localAddress);
    const fe = frontends.get(`${vip}|${client.localPort}`);
    const src = plain(client.remoteAddress);
    if (!fe || !src) {
      client.destroy();
      return;
    }
    const family = familyOf(vip);
    const all = state.nodes.map((n) => n.name);
    const live = targetsFile.value?.stateCreatedAt === state.createdAt ? targetsFile.value.services[fe.key]?.targets : undefined;
    const targets = (live ?? state.lb.targets[fe.key] ?? all).filter((n) => all.includes(n));
    const i = rr.get(fe.key) ?? 0;
    rr.set(fe.key, i + 1);
    const node = state.nodes.find((n) => n.name === targets[i % Math.max(1, targets.length)]);
    const host = node ? byFamily(node.internalIPs, family) : undefined;
    const localAddress = byFamily(state.lb.ips, family);
    if (!host || !localAddress) {
      client.destroy();
      return;
    }
    client.pause();
    const upstream = net.connect({ host, port: fe.nodePort, localAddress, family, allowHalfOpen: true });
    let connected = false;
    const timer = setTimeout(() => upstream.destroy(new Error('connect timeout')), 5000);
    const fail = (err?: Error): void => {
      clearTimeout(timer);
      if (err && !connected) log(`${src} -> ${vip}:${client.localPort} via ${host}:${fe.nodePort}: ${err.message}`);
      upstream.destroy();
      client.destroy();
    };
    client.on('error', fail);
    upstream.on('error', fail);
    client.setTimeout(IDLE_TIMEOUT_MS, () => fail());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    upstream.on('connect', () => {
      connected = true;
      clearTimeout(timer);
      const version = state.lb.proxyProtocol;
      if (version === 'v1' || version === 'v2') {
        upstream.write(
          encodeProxyHeader(version === 'v1' ? 1 : 2, { family, src, sport: client.remotePort ?? 0, dst: vip, dport: client.localPort ?? 0 }),
        );
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  };

  const sync = (state: LabState): void => {
    frontends = proxyFrontends(state);
    const want = new Set<string>();
    for (const k of frontends.keys()) {
      const [vip, port] = k.split('|') as [string, string];
      want.add(`${familyOf(vip)}|${port}`);
    }
    for (const [k, srv] of listeners) {
      if (!want.has(k)) {
        srv.close();
        listeners.delete(k);
      }
    }
    for (const k of want) {
      if (listeners.has(k)) continue;
      const [fam, port] = k.split('|') as [string, string];
      const srv = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection);
      srv.maxConnections = MAX_CONNECTIONS;
      srv.on('error', (err) => {
        log(`listen ${k}: ${err.message}`);
        if (listeners.get(k) === srv) listeners.delete(k);
      });
      srv.listen(fam === '6' ? { host: '::', port: Number(port), ipv6Only: true } : { host: '0.0.0.0', port: Number(port) });
      listeners.set(k, srv);
      log(`listening on ${fam === '6' ? '[::]' : '0.0.0.0'}:${port}`);
    }
  };

  follower = new LabStateFollower(argValue('state'), (s) => sync(s));
  follower.start();
  setInterval(() => sync(follower.state), 1000).unref();
  onTerminate(() => {
    for (const s of listeners.values()) s.close();
  });
  const waitListening = (): void => {
    if ([...listeners.values()].every((s) => s.listening)) signalReady();
    else setTimeout(waitListening, 20);
  };
  waitListening();
}

if (isMainModule(import.meta.url)) main();
