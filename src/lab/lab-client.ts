// The lab's curl: one request from inside a network namespace
// (`ip netns exec <ns> node lab-client.js '<json>'`), printing one JSON line:
// {"proto","family","local":{ip,port}|null,"remote":{ip,port},"ok","client_address",
//  "proxy_protocol","proxy_client_address","proxy_client_port","response","error"}
// `local` is the address/port the socket actually used (getsockname), so
// capture tests can compare it with what the kernel reported.

import dgram from 'node:dgram';
import net from 'node:net';

export interface LabClientRequest {
  proto: 'tcp' | 'udp';
  host: string;
  port: number;
  timeoutMs: number;
  path?: string;
}

export interface LabClientResult {
  proto: 'tcp' | 'udp';
  family: 4 | 6;
  local: { ip: string; port: number } | null;
  remote: { ip: string; port: number };
  ok: boolean;
  client_address: string | null;
  /** "v1"/"v2" when the connection reached the echo server with a PROXY protocol header
   * (the lab's proxy load balancer), else null. */
  proxy_protocol: string | null;
  /** The client address that header carried (what the pod can learn despite SNAT). */
  proxy_client_address: string | null;
  proxy_client_port: number | null;
  response: string | null;
  error: string | null;
}

function echoValue(text: string | null, key: string): string | null {
  if (!text) return null;
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(text);
  return m?.[1]?.trim() ?? null;
}

/** The fields parsed out of an echo server's answer. */
export function echoFields(text: string | null): Pick<LabClientResult, 'client_address' | 'proxy_protocol' | 'proxy_client_address' | 'proxy_client_port'> {
  const port = echoValue(text, 'proxy_client_port');
  return {
    client_address: echoValue(text, 'client_address'),
    proxy_protocol: echoValue(text, 'proxy_protocol'),
    proxy_client_address: echoValue(text, 'proxy_client_address'),
    proxy_client_port: port === null ? null : Number(port),
  };
}

function tcp(req: LabClientRequest, family: 4 | 6): Promise<LabClientResult> {
  return new Promise((resolve) => {
    const base = { proto: 'tcp' as const, family, remote: { ip: req.host, port: req.port } };
    let local: LabClientResult['local'] = null;
    let connected = false;
    let buf = '';
    let finished = false;
    const sock = net.connect({ host: req.host, port: req.port, family });
    const grabLocal = (): void => {
      if (local) return;
      if (sock.localAddress && sock.localPort) {
        local = { ip: sock.localAddress, port: sock.localPort };
        return;
      }
      // While the SYN is unanswered Node hides the socket name (connecting), but the kernel has
      // bound the port already: ask the handle, so a dropped attempt still names its tuple.
      const handle = (sock as unknown as { _handle?: { getsockname?: (out: { address?: string; port?: number }) => number } })._handle;
      const out: { address?: string; port?: number } = {};
      if (handle?.getsockname?.(out) === 0 && out.address && out.port) local = { ip: out.address, port: out.port };
    };
    const finish = (ok: boolean, error: string | null): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      grabLocal();
      sock.destroy();
      const body = buf.includes('\r\n\r\n') ? buf.slice(buf.indexOf('\r\n\r\n') + 4) : buf;
      resolve({ ...base, local, ok, ...echoFields(ok ? body : null), response: ok ? body : null, error });
    };
    const timer = setTimeout(() => {
      finish(
        false,
        connected
          ? `timeout after ${req.timeoutMs}ms: connected but no complete response`
          : `timeout after ${req.timeoutMs}ms: no answer to the SYN (connection not established; dropped?)`,
      );
    }, req.timeoutMs);
    sock.setEncoding('latin1');
    sock.on('connect', () => {
      connected = true;
      grabLocal();
      sock.write(`GET ${req.path ?? '/'} HTTP/1.1\r\nHost: ${family === 6 ? `[${req.host}]` : req.host}:${req.port}\r\nUser-Agent: natlens-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n`);
    });
    sock.on('data', (d: string) => (buf += d));
    sock.on('end', () => {
      const status = /^HTTP\/1\.\d (\d+)/.exec(buf)?.[1];
      if (status === '200') finish(true, null);
      else finish(false, buf ? `unexpected response: ${buf.split('\r\n')[0]}` : 'connection closed without a response');
    });
    sock.on('error', (err: NodeJS.ErrnoException) => finish(false, `${err.code ?? 'error'}: ${err.message}`));
  });
}

function udp(req: LabClientRequest, family: 4 | 6): Promise<LabClientResult> {
  return new Promise((resolve) => {
    const base = { proto: 'udp' as const, family, remote: { ip: req.host, port: req.port } };
    let local: LabClientResult['local'] = null;
    let finished = false;
    const sock = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    const finish = (ok: boolean, text: string | null, error: string | null): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      try {
        sock.close();
      } catch {
        /* already closed */
      }
      resolve({ ...base, local, ok, ...echoFields(text), response: text, error });
    };
    const timer = setTimeout(() => finish(false, null, `timeout after ${req.timeoutMs}ms: no UDP reply (dropped?)`), req.timeoutMs);
    sock.on('error', (err: NodeJS.ErrnoException) => finish(false, null, `${err.code ?? 'error'}: ${err.message}`));
    sock.on('message', (msg) => finish(true, msg.toString('latin1'), null));
    sock.connect(req.port, req.host, () => {
      const a = sock.address();
      local = { ip: a.address, port: a.port };
      sock.send(`GET ${req.path ?? '/'} UDP\r\n`);
    });
  });
}

export async function labClientRequest(req: LabClientRequest): Promise<LabClientResult> {
  const family = net.isIPv6(req.host) ? 6 : 4;
  return req.proto === 'udp' ? udp(req, family) : tcp(req, family);
}

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].split('/').pop() ?? '\0');
if (isMain && process.argv[2]) {
  const req = JSON.parse(process.argv[2]) as LabClientRequest;
  labClientRequest(req).then(
    (res) => process.stdout.write(JSON.stringify(res) + '\n'),
    (err: unknown) => {
      process.stdout.write(JSON.stringify({ ok: false, error: String(err) }) + '\n');
      process.exitCode = 1;
    },
  );
}
