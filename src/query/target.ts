/** Parses a `who` target: IP, IP:PORT or [IPv6]:PORT. NAMESPACE/POD needs Kubernetes metadata (next issue). */
import { parseAddr } from '../collector/addr.js';

export interface Target {
  addr: Uint8Array;
  port?: number;
}

/** The target, or a message saying what is wrong with it. */
export function parseTarget(text: string): Target | string {
  const t = text.trim();
  if (t === '') return 'target is empty: give a pod IP, IP:PORT or [IPv6]:PORT';
  if (t.length > 100) return 'target is too long to be an address';
  let host = t;
  let portText: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(t);
  if (bracket) {
    host = bracket[1]!;
    portText = bracket[2];
  } else if (/^[^:]+:\d+$/.test(t)) {
    [host, portText] = t.split(':') as [string, string];
  }
  const addr = parseAddr(host);
  if (!addr) {
    if (/^[a-z0-9-]+\/[a-z0-9.-]+$/i.test(t)) return `'${t}' looks like NAMESPACE/POD: naming pods needs Kubernetes metadata, which this collector does not have yet; give the pod's IP`;
    return `'${t}' is not an IP address, IP:PORT or [IPv6]:PORT`;
  }
  if (portText === undefined) return { addr };
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return `port '${portText}' in '${t}' must be 1-65535`;
  return { addr, port };
}
