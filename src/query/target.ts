/** Parses a `who` target: IP, IP:PORT, [IPv6]:PORT or NAMESPACE/POD. */
import { parseAddr } from '../collector/addr.js';
import { quoteInput } from '../util/errors.js';

export interface Target {
  addr: Uint8Array;
  port?: number;
}

/** A pod by name: answered from the addresses the collector recorded for it. */
export interface PodTarget {
  namespace: string;
  pod: string;
}

// DNS-1123 label (namespace) / subdomain (pod or Service name), as the API server validates them.
const NAMESPACED_NAME = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$/;

/** NAMESPACE/NAME as Kubernetes names things, or null. */
export function parseNamespacedName(text: string): { namespace: string; name: string } | null {
  const m = NAMESPACED_NAME.exec(text.trim());
  return m ? { namespace: m[1]!, name: m[3]! } : null;
}

/** The target, or a message saying what is wrong with it. */
export function parseTarget(text: string): Target | PodTarget | string {
  const t = text.trim();
  if (t === '') return 'target is empty: give NAMESPACE/POD, a pod IP, IP:PORT or [IPv6]:PORT';
  const pod = parseNamespacedName(t);
  if (pod) return { namespace: pod.namespace, pod: pod.name };
  if (t.includes('/')) return `${quoteInput(t)} is not NAMESPACE/POD: both must be lowercase letters, digits and '-' (pod names may contain '.')`;
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
    return `${quoteInput(t)} is not an IP address, IP:PORT or [IPv6]:PORT`;
  }
  if (portText === undefined) return { addr };
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return `port ${portText} in ${quoteInput(t)} must be 1-65535`;
  return { addr, port };
}
