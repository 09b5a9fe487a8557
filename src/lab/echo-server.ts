// The lab's echo server: what registry.k8s.io/echoserver does in the tutorial.
// Runs inside a pod's network namespace (`ip netns exec <ns> node echo-server.js`),
// serves HTTP on TCP and answers datagrams on UDP (same port, dual-stack) with
// the address it saw the client connect from:
//
//   CLIENT VALUES:
//   client_address=10.180.1.8
//   client_port=41234
//   command=GET
//   real path=/
//   ...
//
// It logs nothing per request (it carries benchmark load). It prints "ready" on
// stdout once both sockets listen, then nothing more.
//
// Usage: node echo-server.js [--port 8080] [--pod NAME] [--node NAME]

import dgram from 'node:dgram';
import http from 'node:http';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? (process.argv[i + 1] as string) : def;
}

const port = Number(arg('port', '8080'));
const podName = arg('pod', '');
const nodeName = arg('node', '');

/** IPv4-mapped IPv6 addresses are shown as plain IPv4. */
export function plainAddress(a: string | undefined): string {
  if (!a) return '';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

interface Seen {
  clientAddress: string;
  clientPort: number;
  serverAddress: string;
  serverPort: number;
  protocol: 'tcp' | 'udp';
  method: string;
  path: string;
  version: string;
  headers: Array<[string, string]>;
}

export function render(s: Seen): string {
  const q = s.path.indexOf('?');
  const query = q >= 0 ? s.path.slice(q + 1) : 'nil';
  const host = s.headers.find(([k]) => k === 'host')?.[1] ?? s.serverAddress;
  const lines = [
    'CLIENT VALUES:',
    `client_address=${s.clientAddress}`,
    `client_port=${s.clientPort}`,
    `command=${s.method}`,
    `real path=${q >= 0 ? s.path.slice(0, q) : s.path}`,
    `query=${query}`,
    `request_version=${s.version}`,
    `request_uri=http://${host}${s.path}`,
    '',
    'SERVER VALUES:',
    'server_version=natlens-echo/1',
    `server_address=${s.serverAddress}`,
    `server_port=${s.serverPort}`,
    `protocol=${s.protocol}`,
    ...(podName ? [`pod_name=${podName}`] : []),
    ...(nodeName ? [`node_name=${nodeName}`] : []),
    '',
    'HEADERS RECEIVED:',
    ...s.headers.map(([k, v]) => `${k}=${v}`),
    'BODY:',
    '-no body in request-',
  ];
  return lines.join('\n') + '\n';
}

function main(): void {
  const server = http.createServer((req, res) => {
    const sock = req.socket;
    const headers: Array<[string, string]> = [];
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      headers.push([(req.rawHeaders[i] as string).toLowerCase(), req.rawHeaders[i + 1] as string]);
    }
    const body = render({
      clientAddress: plainAddress(sock.remoteAddress),
      clientPort: sock.remotePort ?? 0,
      serverAddress: plainAddress(sock.localAddress),
      serverPort: sock.localPort ?? port,
      protocol: 'tcp',
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      version: req.httpVersion,
      headers,
    });
    req.resume();
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  server.keepAliveTimeout = 5000;

  const udp = dgram.createSocket({ type: 'udp6', ipv6Only: false });
  udp.on('error', () => undefined);
  udp.on('message', (msg, rinfo) => {
    // A datagram "GET /path ..." is answered like an HTTP GET of that path.
    const first = msg.toString('latin1', 0, Math.min(msg.length, 512)).split(/\r?\n/)[0] ?? '';
    const m = /^([A-Z]+) (\S+)(?: (\S+))?/.exec(first);
    const local = udp.address();
    const text = render({
      clientAddress: plainAddress(rinfo.address),
      clientPort: rinfo.port,
      serverAddress: plainAddress(local.address),
      serverPort: local.port,
      protocol: 'udp',
      method: m?.[1] ?? 'DATAGRAM',
      path: m?.[2] ?? '/',
      version: m?.[3] ?? 'udp',
      headers: [],
    });
    udp.send(text, rinfo.port, rinfo.address);
  });

  let listening = 0;
  const ready = (): void => {
    if (++listening === 2) process.stdout.write('ready\n');
  };
  process.stdout.on('error', () => undefined);
  server.listen({ host: '::', port, ipv6Only: false }, ready);
  udp.bind({ port, address: '::' }, ready);
  const stop = (): void => {
    udp.close();
    server.close();
    setTimeout(() => process.exit(0), 200).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
