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
// A TCP connection may start with a PROXY protocol header (v1 or v2, from the lab's proxy
// load balancer): client_address/client_port stay the TCP peer (what the pod saw at the IP
// level) and the header's client is added to CLIENT VALUES:
//
//   proxy_protocol=v2
//   proxy_client_address=198.51.100.79
//   proxy_client_port=41234
//
// A malformed header gets "400 Bad Request" and the connection is closed.
//
// It logs nothing per request (it carries benchmark load). It prints "ready" on
// stdout once both sockets listen, then nothing more.
//
// Usage: node echo-server.js [--port 8080] [--pod NAME] [--node NAME]

import dgram from 'node:dgram';
import http from 'node:http';
import net from 'node:net';
import { createLimitedHttpServer, readRequestBody, refuseBody, RequestBodyTooLargeError } from '../util/http-limits.js';
import { parseProxyHeader, type ProxyHeader } from '../util/proxy-protocol.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? (process.argv[i + 1] as string) : def;
}

const port = Number(arg('port', '8080'));
/** Where to listen: every address of the pod by default (dual-stack); tests use 127.0.0.1. */
const host = arg('host', '::');
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
  /** The PROXY protocol header the connection started with, if any. */
  proxy?: ProxyHeader;
}

export function render(s: Seen): string {
  const q = s.path.indexOf('?');
  const query = q >= 0 ? s.path.slice(q + 1) : 'nil';
  const host = s.headers.find(([k]) => k === 'host')?.[1] ?? s.serverAddress;
  const lines = [
    'CLIENT VALUES:',
    `client_address=${s.clientAddress}`,
    `client_port=${s.clientPort}`,
    ...(s.proxy
      ? [
          `proxy_protocol=v${s.proxy.version}`,
          ...(s.proxy.command === 'local' ? ['proxy_command=LOCAL'] : []),
          ...(s.proxy.family !== 0 ? [`proxy_client_address=${s.proxy.src}`, `proxy_client_port=${s.proxy.sport}`] : []),
        ]
      : []),
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

/** PROXY headers of the connections that had one. */
const proxyHeaders = new WeakMap<net.Socket, ProxyHeader>();

/** Longest a PROXY header may be before we give up (v2: 16 + 65535; keep it sane). */
const PROXY_MAX = 4096;

/**
 * Read a PROXY header, if the connection starts with one, then hand the socket to the HTTP
 * server with the remaining bytes pushed back. `onReady(null)`: no header.
 */
function takeProxyHeader(socket: net.Socket, onReady: (header: ProxyHeader | null) => void, onInvalid: (reason: string) => void): void {
  let buf: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => done(() => socket.destroy()), 10_000);
  let finished = false;
  function done(then: () => void): void {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('end', onEnd);
    socket.pause();
    then();
  }
  function onEnd(): void {
    // Closed before a full header / any byte: nothing to serve.
    done(() => socket.destroy());
  }
  function onData(chunk: Buffer): void {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    const r = parseProxyHeader(buf);
    if (r.kind === 'none') return done(() => handBack(null, buf));
    if (r.kind === 'invalid') return done(() => onInvalid(r.reason));
    if (r.kind === 'incomplete') {
      if (buf.length > PROXY_MAX) done(() => onInvalid('header too long'));
      return;
    }
    if (buf.length < r.header.length) {
      if (r.header.length > PROXY_MAX) done(() => onInvalid(`v2 header of ${r.header.length} bytes is too long`));
      return; // TLVs still arriving
    }
    done(() => handBack(r.header, buf.subarray(r.header.length)));
  }
  function handBack(header: ProxyHeader | null, rest: Buffer): void {
    if (rest.length) socket.unshift(rest);
    onReady(header);
  }
  socket.on('data', onData);
  socket.on('end', onEnd);
}

/** Connections at once (each is a socket in the pod): beyond, new ones are closed. */
const MAX_CONNECTIONS = 1024;

function main(): void {
  const server = createLimitedHttpServer((req, res) => {
    // A body is read (bounded) and not echoed, as registry.k8s.io/echoserver's "-no body in request-".
    readRequestBody(req).then(
      () => answer(req, res),
      (err: unknown) => {
        if (err instanceof RequestBodyTooLargeError) refuseBody(res, err);
        else res.destroy();
      },
    );
  });

  const answer = (req: http.IncomingMessage, res: http.ServerResponse): void => {
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
      ...(proxyHeaders.has(sock) ? { proxy: proxyHeaders.get(sock) as ProxyHeader } : {}),
    });
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };

  // TCP is accepted here first: a PROXY header is taken off before HTTP parsing.
  const front = net.createServer((socket) => {
    socket.on('error', () => socket.destroy());
    takeProxyHeader(
      socket,
      (header) => {
        if (header) proxyHeaders.set(socket, header);
        server.emit('connection', socket);
        socket.resume();
      },
      (reason) => {
        const body = `malformed PROXY protocol header: ${reason}\n`;
        socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
        setTimeout(() => socket.destroy(), 1000).unref();
      },
    );
  });

  const udp = dgram.createSocket(net.isIPv4(host) ? { type: 'udp4' } : { type: 'udp6', ipv6Only: false });
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
  // Sockets reach the HTTP server through `front`: the connection bound is front's.
  front.maxConnections = MAX_CONNECTIONS;
  front.listen({ host, port, ipv6Only: false }, ready);
  udp.bind({ port, address: host }, ready);
  const stop = (): void => {
    udp.close();
    front.close();
    server.close();
    setTimeout(() => process.exit(0), 200).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
