// Every HTTP server natlens runs is bounded (src/util/http-limits.ts): oversized headers get 431,
// oversized bodies 413 (and the connection closed, the rest never read), slow requests 408, too
// many connections are closed at once; and the server keeps serving everyone else. Checked on the
// helper itself, on the Kubernetes API server (src/k8s/api-server.ts, behind the lab's API
// server) and on the lab's echo server (its own process). All on 127.0.0.1.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeApiServer, ResourceStore } from '../../src/k8s/api-server.js';
import { createLimitedHttpServer, DEFAULT_HTTP_LIMITS, readRequestBody, refuseBody, RequestBodyTooLargeError, type HttpLimits } from '../../src/util/http-limits.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

/** Sends raw bytes, returns what came back until the server closed the connection (or `waitMs` passed). */
function raw(port: number, send: string | Buffer | Array<string | Buffer>, waitMs = 5000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ text, closed: false });
    }, waitMs);
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ text, closed: true });
    });
    for (const part of [send].flat()) s.write(part);
  });
}

const statusOf = (text: string): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);

function get(port: number, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

const bigHeader = (bytes: number) => `GET / HTTP/1.1\r\nHost: x\r\nX-Junk: ${'j'.repeat(bytes)}\r\n\r\n`;
const postHead = (length: number) => `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${length}\r\n\r\n`;

describe('createLimitedHttpServer', () => {
  const limits: Partial<HttpLimits> = { maxBodyBytes: 1024, maxConnections: 4, headersTimeoutMs: 300, requestTimeoutMs: 600, timeoutCheckIntervalMs: 50 };
  let server: http.Server;
  let port: number;
  let bodyBytesRead = 0;

  beforeAll(async () => {
    server = createLimitedHttpServer((req, res) => {
      readRequestBody(req, limits.maxBodyBytes).then(
        (body) => {
          bodyBytesRead += body.length;
          res.end(`got ${body.length}\n`);
        },
        (err: unknown) => (err instanceof RequestBodyTooLargeError ? refuseBody(res, err) : res.destroy()),
      );
    }, limits);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));

  it('answers 431 to headers over the limit, and serves the next request', async () => {
    const r = await raw(port, bigHeader(DEFAULT_HTTP_LIMITS.maxHeaderBytes + 100));
    expect(statusOf(r.text)).toBe(431);
    expect(r.closed).toBe(true);
    expect(await get(port)).toEqual({ status: 200, body: 'got 0\n' });
  });

  it('answers 413 to a declared body over the limit without reading it, and closes', async () => {
    const r = await raw(port, [postHead(10_000_000), 'x'.repeat(64 * 1024)]);
    expect(statusOf(r.text)).toBe(413);
    expect(r.text).toContain('request body of 10000000 bytes exceeds the limit of 1024 bytes');
    expect(r.closed).toBe(true);
    expect(await get(port)).toEqual({ status: 200, body: 'got 0\n' });
  });

  it('answers 413 to a chunked body that grows past the limit', async () => {
    const chunk = (n: number) => `${n.toString(16)}\r\n${'y'.repeat(n)}\r\n`;
    const r = await raw(port, [`POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n`, chunk(800), chunk(800), chunk(800)]);
    expect(statusOf(r.text)).toBe(413);
    expect(r.text).toContain('request body exceeds the limit of 1024 bytes');
    expect(r.closed).toBe(true);
  });

  it('reads a body within the limit', async () => {
    const before = bodyBytesRead;
    const r = await raw(port, [postHead(1000).replace('HTTP/1.1\r\n', 'HTTP/1.1\r\nConnection: close\r\n'), 'z'.repeat(1000)]);
    expect(r.text).toContain('got 1000');
    expect(bodyBytesRead - before).toBe(1000);
  });

  it('closes a request whose headers never finish (408)', async () => {
    const r = await raw(port, 'GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ', 5000);
    expect(r.closed).toBe(true);
    expect(statusOf(r.text)).toBe(408);
  });

  it('closes connections beyond maxConnections at once; the ones it holds are served', async () => {
    const held = await Promise.all(Array.from({ length: 4 }, () => new Promise<net.Socket>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
      s.on('error', () => {});
    })));
    try {
      const extra = await raw(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', 3000);
      expect(extra).toEqual({ text: '', closed: true });
      const answered = new Promise<string>((resolve) => held[0]!.once('data', (d) => resolve(d.toString())));
      held[0]!.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      expect(statusOf(await answered)).toBe(200);
    } finally {
      for (const s of held) s.destroy();
    }
    await new Promise((r) => setTimeout(r, 50));
    expect((await get(port)).status).toBe(200);
  });
});

describe('the Kubernetes API server (lab API server)', () => {
  let api: KubeApiServer;
  beforeAll(async () => {
    api = await KubeApiServer.start({ store: new ResourceStore(), host: '127.0.0.1', port: 0 });
  });
  afterAll(() => api.close());

  it('answers 431 to oversized headers, 413 to any body (it is read-only), and keeps serving', async () => {
    expect(statusOf((await raw(api.port, bigHeader(20_000))).text)).toBe(431);
    const post = await raw(api.port, [postHead(50_000_000).replace('POST /', 'POST /api/v1/pods'), 'p'.repeat(128 * 1024)]);
    expect(statusOf(post.text)).toBe(413);
    expect(post.closed).toBe(true);
    const version = await get(api.port, '/version');
    expect(version.status).toBe(200);
  });
});

describe('the lab echo server (its own process)', () => {
  let child: ChildProcess;
  let port: number;
  beforeAll(async () => {
    port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (probe.address() as AddressInfo).port;
        probe.close(() => resolve(p));
      });
    });
    child = spawn(process.execPath, [join(PACKAGE_ROOT, 'dist', 'src', 'lab', 'echo-server.js'), '--port', String(port), '--host', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      child.on('exit', (code) => reject(new Error(`echo server exited with ${code}`)));
    });
  });
  afterAll(() => {
    child?.kill('SIGTERM');
  });

  it('answers 431 to oversized headers and 413 to an oversized body, and keeps echoing', async () => {
    expect(statusOf((await raw(port, bigHeader(20_000))).text)).toBe(431);
    const post = await raw(port, [postHead(DEFAULT_HTTP_LIMITS.maxBodyBytes + 1), 'b'.repeat(64 * 1024)]);
    expect(statusOf(post.text)).toBe(413);
    expect(post.closed).toBe(true);
    const echo = await get(port, '/hello?x=1');
    expect(echo.status).toBe(200);
    expect(echo.body).toContain('client_address=127.0.0.1');
    expect(echo.body).toContain('query=x=1');
  });
});
