// The metrics endpoint over real HTTP on 127.0.0.1: /metrics in Prometheus text format from its own
// registry, /healthz, /readyz naming every unmet condition, and nothing else (404, 405, 431).
import { request } from 'node:http';
import { createServer } from 'node:net';
import { networkInterfaces } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { Counter, Gauge, Histogram } from 'prom-client';
import { Conditions, MetricsServerError, splitHostPort, startMetricsServer, type MetricsServer } from '../../src/observability/metrics-server.js';
import { MonotonicTotals, newRegistry, readCounter } from '../../src/observability/registry.js';
import { parsePrometheusText, valueOf } from '../support/prometheus-text.js';

interface Reply { status: number; headers: Record<string, string | string[] | undefined>; body: string }

function http(port: number, path: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const servers: MetricsServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(opts: Partial<Parameters<typeof startMetricsServer>[0]> = {}): Promise<MetricsServer> {
  const s = await startMetricsServer({ listen: '127.0.0.1:0', registry: newRegistry(), ...opts });
  servers.push(s);
  return s;
}

describe('metrics server', () => {
  it('serves the registry at /metrics as Prometheus text, with its metric names and values', async () => {
    const registry = newRegistry();
    const c = new Counter({ name: 'natlens_test_things_total', help: 'things', labelNames: ['kind'], registers: [registry] });
    c.inc({ kind: 'a' }, 3);
    c.inc({ kind: 'b "quoted"\n' });
    new Gauge({ name: 'natlens_test_level', help: 'level', registers: [registry] }).set(7.5);
    new Histogram({ name: 'natlens_test_seconds', help: 'latency', buckets: [0.1, 1], registers: [registry] }).observe(0.5);
    let source = 10;
    readCounter(registry, 'natlens_test_read_total', 'read at scrape time', [], () => [[{}, source]]);
    const s = await serve({ registry });
    const r = await http(s.port, '/metrics');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const e = parsePrometheusText(r.body);
    expect(e.types.get('natlens_test_things_total')).toBe('counter');
    expect(e.types.get('natlens_test_seconds')).toBe('histogram');
    expect(valueOf(e, 'natlens_test_things_total', { kind: 'a' })).toBe(3);
    expect(valueOf(e, 'natlens_test_things_total', { kind: 'b "quoted"\n' })).toBe(1);
    expect(valueOf(e, 'natlens_test_level')).toBe(7.5);
    expect(valueOf(e, 'natlens_test_seconds_count')).toBe(1);
    expect(valueOf(e, 'natlens_test_seconds_bucket', { le: '1' })).toBe(1);
    expect(valueOf(e, 'natlens_test_seconds_bucket', { le: '0.1' })).toBe(0);
    expect(valueOf(e, 'natlens_test_read_total')).toBe(10);
    source = 25;
    expect(valueOf(parsePrometheusText((await http(s.port, '/metrics')).body), 'natlens_test_read_total')).toBe(25);
    // the source started over (a restarted probe): the counter carries on from 25
    source = 4;
    expect(valueOf(parsePrometheusText((await http(s.port, '/metrics')).body), 'natlens_test_read_total')).toBe(29);
  });

  it('keeps registries apart: two servers in one process, each with its own metrics', async () => {
    const r1 = newRegistry();
    const r2 = newRegistry();
    new Gauge({ name: 'natlens_test_one', help: 'x', registers: [r1] }).set(1);
    new Gauge({ name: 'natlens_test_two', help: 'x', registers: [r2] }).set(2);
    const [a, b] = await Promise.all([serve({ registry: r1 }), serve({ registry: r2 })]);
    expect(a.port).not.toBe(b.port);
    const ea = parsePrometheusText((await http(a.port, '/metrics')).body);
    const eb = parsePrometheusText((await http(b.port, '/metrics')).body);
    expect(ea.types.has('natlens_test_one')).toBe(true);
    expect(ea.types.has('natlens_test_two')).toBe(false);
    expect(valueOf(eb, 'natlens_test_two')).toBe(2);
    expect(eb.types.has('natlens_test_one')).toBe(false);
  });

  it('adds process metrics when asked', async () => {
    const s = await serve({ registry: newRegistry({ processMetrics: true }) });
    const e = parsePrometheusText((await http(s.port, '/metrics')).body);
    expect(valueOf(e, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(e.types.has('nodejs_eventloop_lag_seconds')).toBe(true);
  });

  it('/readyz: 503 naming each unmet condition, 200 once all are met, 503 again when one fails', async () => {
    const readiness = new Conditions();
    let attached = false;
    let connected = false;
    readiness.set('capture', () => (attached ? null : 'natlens-probe is starting'));
    readiness.set('collector', () => (connected ? null : 'not connected to the collector at 127.0.0.1:7070'));
    const s = await serve({ readiness });
    let r = await http(s.port, '/readyz');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body)).toEqual({ ready: false, unmet: { capture: 'natlens-probe is starting', collector: 'not connected to the collector at 127.0.0.1:7070' } });
    attached = true;
    r = await http(s.port, '/readyz');
    expect(r.status).toBe(503);
    expect(Object.keys(JSON.parse(r.body).unmet)).toEqual(['collector']);
    connected = true;
    r = await http(s.port, '/readyz');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ ready: true, unmet: {} });
    connected = false;
    r = await http(s.port, '/readyz');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body).unmet.collector).toContain('127.0.0.1:7070');
    // a check that throws is unmet, with its error
    readiness.set('collector', () => { throw new Error('boom'); });
    expect(JSON.parse((await http(s.port, '/readyz')).body).unmet.collector).toBe('check failed: boom');
    readiness.delete('collector');
    expect((await http(s.port, '/readyz')).status).toBe(200);
  });

  it('/healthz: 200 "ok" while the event loop runs; 503 naming it once no timer ran for stallMs', async () => {
    let clock = 1_000_000;
    const liveness = new Conditions();
    const s = await serve({ now: () => clock, stallMs: 10_000, liveness });
    let r = await http(s.port, '/healthz');
    expect(r.status).toBe(200);
    expect(r.body).toBe('ok\n');
    clock += 60_000; // as if the heartbeat had not run for a minute
    r = await http(s.port, '/healthz');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body).unmet['event-loop']).toMatch(/no timer ran for 60000 ms/);
    clock -= 60_000;
    liveness.set('probe', () => 'natlens-probe exited');
    r = await http(s.port, '/healthz');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body).unmet).toEqual({ probe: 'natlens-probe exited' });
  });

  it('answers only GET and HEAD on its three paths: 404 elsewhere, 405 for other methods', async () => {
    const s = await serve();
    for (const path of ['/', '/metricsx', '/debug/pprof', '/../etc/passwd']) {
      const r = await http(s.port, path);
      expect(r.status, path).toBe(404);
    }
    for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
      const r = await http(s.port, '/metrics', { method });
      expect(r.status, method).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
    }
    const head = await http(s.port, '/metrics', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    expect((await http(s.port, '/healthz?verbose=1')).status).toBe(200);
  });

  it('refuses oversized headers with 431 and keeps serving', async () => {
    const s = await serve();
    const r = await http(s.port, '/metrics', { headers: { 'x-big': 'a'.repeat(16 * 1024) } });
    expect(r.status).toBe(431);
    expect((await http(s.port, '/healthz')).status).toBe(200);
  });

  it('fails to start with a MetricsServerError naming the address when the port is taken or the address is bad', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      await expect(startMetricsServer({ listen: `127.0.0.1:${port}`, registry: newRegistry() })).rejects.toThrow(MetricsServerError);
      await expect(startMetricsServer({ listen: `127.0.0.1:${port}`, registry: newRegistry() })).rejects.toThrow(`cannot serve metrics on 127.0.0.1:${port}`);
    } finally {
      blocker.close();
    }
    expect(() => splitHostPort('localhost')).toThrow(/'localhost' must be HOST:PORT/);
    expect(() => splitHostPort('127.0.0.1:70000')).toThrow(MetricsServerError);
    expect(splitHostPort('[::1]:9469')).toEqual({ host: '::1', port: 9469 });
  });

  const hasV6Loopback = Object.values(networkInterfaces()).flat().some((i) => i?.address === '::1');
  it.skipIf(!hasV6Loopback)('serves on IPv6 loopback ([::1]:PORT)', async () => {
    const s = await serve({ listen: '[::1]:0' });
    expect(s.host).toBe('::1');
    expect(s.port).toBeGreaterThan(0);
  });
});

describe('MonotonicTotals', () => {
  it('continues a series from where it was when its source starts over', () => {
    const t = new MonotonicTotals();
    expect(t.total('a', 5)).toBe(5);
    expect(t.total('a', 9)).toBe(9);
    expect(t.total('a', 2)).toBe(11);
    expect(t.total('a', 3)).toBe(12);
    expect(t.total('b', 1)).toBe(1);
    expect(t.total('b', -4)).toBe(1); // nonsense reads as 0: a reset
  });
});
