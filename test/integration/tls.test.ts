// Mutual TLS and query authentication on real gRPC over 127.0.0.1, with certificates issued by
// `natlens certs` (openssl) into a temp dir:
// - a real collector (startCollectorService: embedded store) with TLS and a query token file:
//   an agent certificate delivers a batch (acked and stored), queries by token or query/collector
//   certificate work, an agent certificate may not query, missing/wrong tokens are UNAUTHENTICATED,
//   a query certificate may not stream, unverified certificates (other CA, expired) count for nothing;
// - a transport server with TLS and no token file: the handshake itself refuses clients without a
//   certificate, with one from another CA, with an expired one, and plain-text clients;
// - the collector and the agent refuse to start without TLS files or --plaintext.
// No root needed.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCollectorService, type CollectorService } from '../../src/cli/collector-command.js';
import { COLLECTOR_SETTINGS, resolveConfig } from '../../src/config.js';
import { createCa, issueCertificate, newToken } from '../../src/transport/cert-issuer.js';
import { decodeCollectorMessage, encodeAgentMessage, PROTOCOL_VERSION } from '../../src/transport/codec.js';
import { AgentServiceRawClient, channelOptions, clientCredentials } from '../../src/transport/grpc-services.js';
import { HopKind, createHopEvent, type HopEvent } from '../../src/transport/proto.generated.js';
import { QueryAuthError, QueryClient } from '../../src/transport/query-client.js';
import { CollectorStreamClient } from '../../src/transport/stream-client.js';
import { startTransportServer, type TransportServer } from '../../src/transport/stream-server.js';
import { TlsConfigError, loadTlsMaterial, type TransportSecurity } from '../../src/transport/tls.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import { startCollector, type RunningCollector } from './support/processes.js';
import { createServer } from 'node:net';

let pki: string;
let otherPki: string;
const TOKEN = newToken();
const cleanups: Array<() => unknown> = [];

/** Client security from issued files: the CA to verify the collector, and a certificate when given. */
function clientTls(name?: string, opts: { caDir?: string; certDir?: string; serverName?: string } = {}): TransportSecurity {
  const certDir = opts.certDir ?? pki;
  const files = { ca: join(opts.caDir ?? pki, 'ca.crt'), ...(name ? { cert: join(certDir, `${name}.crt`), key: join(certDir, `${name}.key`) } : {}) };
  // Certificates natlens itself would refuse to use (expired, another CA) are sent as they are: the server must refuse them.
  const material = name === 'expired' || opts.certDir === otherPki
    ? { files, ca: readFileSync(files.ca), cert: readFileSync(files.cert!), key: readFileSync(files.key!), roles: [] }
    : loadTlsMaterial(files);
  return { mode: 'tls', material, serverName: opts.serverName };
}

const TS0 = BigInt(Date.now() - 10_000) * 1_000_000n;
function conn(i: number, pod = Uint8Array.of(10, 180, 1, 136)): HopEvent {
  return createHopEvent({
    kind: HopKind.CONN, tsNs: TS0 + BigInt(i), ipProto: 6, ctStatus: 0x1b0, tcpIsn: 1000 + i, hasIsn: true, node: '',
    orig: { src: Uint8Array.of(198, 51, 100, 79), dst: Uint8Array.of(10, 96, 0, 10), sport: 40_000 + i, dport: 80 },
    reply: { src: pod, dst: Uint8Array.of(198, 51, 100, 79), sport: 8080, dport: 40_000 + i },
  });
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/** Pushes events over an agent stream and waits (bounded) until the collector acked them all. */
async function deliver(address: string, security: TransportSecurity, events: HopEvent[]): Promise<number> {
  const client = new CollectorStreamClient({
    target: address, security, flushIntervalMs: 20,
    hello: { node: 'node1', agentId: `tls-agent-${events.length}`, version: 'test', nodeAddresses: [Uint8Array.of(198, 51, 100, 2)] },
  });
  try {
    for (const ev of events) client.push(ev);
    const deadline = Date.now() + 20_000;
    while (client.stats().ackedEvents < events.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    return client.stats().ackedEvents;
  } finally {
    await client.close({ drainTimeoutMs: 0 });
  }
}

/** Connections `who TARGET` finds, polled (bounded) until `expected` or 15 s. */
async function connectionsOf(querier: QueryClient, target: string, expected: number): Promise<number> {
  let found = 0;
  for (const deadline = Date.now() + 15_000; found < expected && Date.now() < deadline; await new Promise((r) => setTimeout(r, 200))) {
    const res = await querier.who({ target, sinceMs: 600_000n, forwarded: false });
    found = res.rows.reduce((n, r) => n + Number(r.connections), 0);
  }
  return found;
}

/** Opens one raw agent stream, sends a Hello, and says how it went: 'welcome' or the status it ended with. */
function tryStream(port: number, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions = {}): Promise<string> {
  const client = new AgentServiceRawClient(`127.0.0.1:${port}`, credentials, { ...channelOptions(), ...options });
  return new Promise<string>((resolve) => {
    const call = client.Stream(new grpc.Metadata(), { deadline: Date.now() + 5000 });
    call.on('data', (buf: Buffer) => {
      if (decodeCollectorMessage(buf).welcome) resolve('welcome');
      call.cancel();
    });
    call.on('error', (err: grpc.ServiceError) => resolve(`${grpc.status[err.code]}: ${err.details}`));
    call.on('end', () => resolve('ended'));
    call.write(encodeAgentMessage({ hello: { protocolVersion: PROTOCOL_VERSION, node: 'n1', agentId: 'a1', version: 't', nodeAddresses: [], forwardedBy: '' } }));
  }).finally(() => client.close());
}

async function queryCode(client: QueryClient): Promise<string> {
  try {
    await client.who({ target: '10.180.1.136', sinceMs: 3_600_000n, forwarded: false });
    return 'OK';
  } catch (err) {
    const cause = (err as { cause?: grpc.ServiceError }).cause;
    return cause ? grpc.status[cause.code] : (err as Error).message;
  } finally {
    client.close();
  }
}

beforeAll(() => {
  pki = mkdtempSync(join(tmpdir(), 'natlens-tls-'));
  otherPki = mkdtempSync(join(tmpdir(), 'natlens-tls-other-'));
  const natlens = (...args: string[]) => {
    const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), 'certs', ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`natlens certs ${args.join(' ')}: ${r.stderr}`);
  };
  // The documented way (docs/security.md): the CLI.
  natlens('ca', '--dir', pki);
  natlens('issue', '--dir', pki, '--role', 'collector', '--name', 'collector', '--ip', '127.0.0.1', '--dns', 'localhost');
  natlens('issue', '--dir', pki, '--role', 'agent', '--name', 'node1');
  natlens('issue', '--dir', pki, '--role', 'query', '--name', 'alice');
  // Only reachable by name: for --tls-server-name.
  issueCertificate({ caDir: pki, role: 'collector', name: 'named', dns: ['collector.natlens.test'] });
  issueCertificate({ caDir: pki, role: 'agent', name: 'expired', days: -1 });
  createCa({ dir: otherPki, commonName: 'another CA' });
  issueCertificate({ caDir: otherPki, role: 'agent', name: 'node1' });
  writeFileSync(join(pki, 'tokens'), `# natlens query tokens\n${TOKEN}\n`);
});

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  rmSync(pki, { recursive: true, force: true });
  rmSync(otherPki, { recursive: true, force: true });
});

describe('collector with mutual TLS and a query token file', () => {
  let service: CollectorService;
  let dataDir: string;
  let address: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'natlens-tls-data-'));
    const cfg = resolveConfig(COLLECTOR_SETTINGS, {
      listen: '127.0.0.1:0', data: dataDir, holdMs: '200ms', flushMs: '50ms',
      tlsCa: join(pki, 'ca.crt'), tlsCert: join(pki, 'collector.crt'), tlsKey: join(pki, 'collector.key'), queryTokenFile: join(pki, 'tokens'),
    }, {});
    service = await startCollectorService(cfg);
    address = `127.0.0.1:${service.server.port}`;
    cleanups.push(async () => {
      await service.close();
      rmSync(dataDir, { recursive: true, force: true });
    });
  }, 60_000);

  it('an agent certificate delivers a batch: acked, stored, and found by a query', async () => {
    expect(await deliver(address, clientTls('node1'), [0, 1, 2, 3, 4].map((i) => conn(i)))).toBe(5);
    expect(service.collector.counters.storedHops).toBeGreaterThanOrEqual(5);
    // Stored for real: the query API (with the token) finds the five connections once the stitcher's hold is over.
    const querier = new QueryClient(address, 15_000, { security: clientTls(), token: TOKEN });
    try {
      expect(await connectionsOf(querier, '10.180.1.136', 5)).toBe(5);
    } finally {
      querier.close();
    }
  }, 60_000);

  it('queries with the token, a query certificate, or a collector certificate (peer fan-out)', async () => {
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls(), token: TOKEN }))).toBe('OK');
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls('alice') }))).toBe('OK');
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls('collector') }))).toBe('OK');
  });

  it('refuses queries without a token or with a wrong one (UNAUTHENTICATED, saying how to authenticate)', async () => {
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls() }))).toBe('UNAUTHENTICATED');
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls(), token: `${TOKEN}x` }))).toBe('UNAUTHENTICATED');
    const err = await new QueryClient(address, 10_000, { security: clientTls() }).who({ target: '10.180.1.136', sinceMs: 1000n, forwarded: false }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(QueryAuthError);
    expect((err as Error).message).toMatch(/--token-file FILE or NATLENS_TOKEN/);
  });

  it('an agent certificate may not query (PERMISSION_DENIED); a query certificate may not stream', async () => {
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls('node1') }))).toBe('PERMISSION_DENIED');
    expect(await tryStream(service.server.port, clientCredentials(clientTls('alice')))).toMatch(/^PERMISSION_DENIED: a certificate with role query may not stream/);
    expect(await tryStream(service.server.port, clientCredentials(clientTls('collector')))).toBe('welcome'); // a peer forwarding
  });

  it('counts unverified certificates for nothing: another CA, expired (UNAUTHENTICATED), even with a token for the stream', async () => {
    expect(await tryStream(service.server.port, clientCredentials(clientTls('node1', { certDir: otherPki })))).toMatch(/^UNAUTHENTICATED: streaming events needs a client certificate/);
    expect(await tryStream(service.server.port, clientCredentials(clientTls('expired')))).toMatch(/^UNAUTHENTICATED/);
    expect(await tryStream(service.server.port, clientCredentials(clientTls()))).toMatch(/^UNAUTHENTICATED/);
    expect(await queryCode(new QueryClient(address, 10_000, { security: clientTls('node1', { certDir: otherPki }) }))).toBe('UNAUTHENTICATED');
  });

  it('a plain-text client gets nowhere', async () => {
    expect(await tryStream(service.server.port, grpc.credentials.createInsecure())).toMatch(/^UNAVAILABLE/);
    expect(await queryCode(new QueryClient(address, 5_000, { security: { mode: 'plaintext' }, token: TOKEN }))).toBe('UNAVAILABLE');
  });
});

describe('two collector processes as peers over mutual TLS', () => {
  const running: RunningCollector[] = [];

  afterAll(async () => {
    await Promise.all(running.map((c) => c.stop()));
  }, 60_000);

  it('forward hops to the owner and fan queries out with their collector certificates', async () => {
    const ports = [await freePort(), await freePort()];
    const peers = `c1=127.0.0.1:${ports[0]},c2=127.0.0.1:${ports[1]}`;
    const tls = ['--tls-ca', join(pki, 'ca.crt'), '--tls-cert', join(pki, 'collector.crt'), '--tls-key', join(pki, 'collector.key'), '--query-token-file', join(pki, 'tokens'), '--peers', peers];
    running.push(...await Promise.all([
      startCollector(['--id', 'c1', ...tls], `127.0.0.1:${ports[0]}`),
      startCollector(['--id', 'c2', ...tls], `127.0.0.1:${ports[1]}`),
    ]));
    for (const c of running) expect(c.process.statusOf('tls')).toMatchObject({ clientCertificates: 'requested (queries may use a token instead)' });
    const ring = new PeerRing('c1', PeerRing.parsePeers(peers));
    const pods = [1, 2, 3, 4, 5, 6, 7, 8].map((i) => Uint8Array.of(10, 180, 2, i));
    // Some pods are c2's: their hops cross from c1 to c2 (forwarding) and back (who fan-out).
    expect(pods.filter((p) => ring.ownerOf(p).id === 'c2').length).toBeGreaterThan(0);
    expect(await deliver(running[0]!.address, clientTls('node1'), pods.map((p, i) => conn(100 + i, p)))).toBe(pods.length);
    const querier = new QueryClient(running[0]!.address, 15_000, { security: clientTls(), token: TOKEN });
    try {
      for (const p of pods) expect(await connectionsOf(querier, p.join('.'), 1), p.join('.')).toBe(1);
    } finally {
      querier.close();
    }
    expect(running[0]!.process.stderr.join('\n')).not.toMatch(/unreachable/);
  }, 120_000);
});

describe('transport server with mutual TLS and no token file: the handshake refuses', () => {
  let server: TransportServer;
  const accepted: string[] = [];

  beforeAll(async () => {
    const material = loadTlsMaterial({ ca: join(pki, 'ca.crt'), cert: join(pki, 'collector.crt'), key: join(pki, 'collector.key') });
    server = await startTransportServer({
      listen: '127.0.0.1:0', collectorId: 'strict', security: { transport: { mode: 'tls', material } },
      agentSink: { accept: async (s) => { accepted.push(s.hello.node); } },
    });
    cleanups.push(() => server.close({ timeoutMs: 1000 }));
  });

  it('takes an agent certificate from the CA', async () => {
    expect(await tryStream(server.port, clientCredentials(clientTls('node1')))).toBe('welcome');
  });

  it.each([
    ['no client certificate', () => clientCredentials(clientTls())],
    ['a certificate from another CA', () => clientCredentials(clientTls('node1', { certDir: otherPki }))],
    ['an expired certificate', () => clientCredentials(clientTls('expired'))],
    ['a plain-text client', () => grpc.credentials.createInsecure()],
    ['a client that does not trust the collector (another CA)', () => clientCredentials(clientTls('node1', { caDir: otherPki, certDir: otherPki }))],
  ])('refuses %s before any message is read', async (_what, credentials) => {
    expect(await tryStream(server.port, credentials())).toMatch(/^UNAVAILABLE/);
    expect(accepted).toEqual([]);
  });

  it('verifies the collector by --tls-server-name when it is dialled by an address its certificate does not name', async () => {
    const material = loadTlsMaterial({ ca: join(pki, 'ca.crt'), cert: join(pki, 'named.crt'), key: join(pki, 'named.key') });
    const named = await startTransportServer({
      listen: '127.0.0.1:0', collectorId: 'named', security: { transport: { mode: 'tls', material } },
      agentSink: { accept: async () => {} },
    });
    try {
      expect(await tryStream(named.port, clientCredentials(clientTls('node1')))).toMatch(/^UNAVAILABLE/);
      const byName = clientTls('node1', { serverName: 'collector.natlens.test' });
      expect(await tryStream(named.port, clientCredentials(byName), channelOptions({ security: byName }))).toBe('welcome');
    } finally {
      await named.close({ timeoutMs: 1000 });
    }
  });
});

describe('no security chosen', () => {
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NATLENS_')));
    return spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), ...args], { encoding: 'utf8', env: { ...clean, ...env }, timeout: 60_000 });
  };

  it('the collector refuses to start, explaining TLS and --plaintext; it starts with --plaintext and warns', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'natlens-tls-refuse-'));
    try {
      const cfg = resolveConfig(COLLECTOR_SETTINGS, { listen: '127.0.0.1:0', data: join(dir, 'data') }, {});
      await expect(startCollectorService(cfg)).rejects.toBeInstanceOf(TlsConfigError);
      const r = run(['collector', '--listen', '127.0.0.1:0', '--data', join(dir, 'data')]);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/no transport security chosen.*--tls-ca, --tls-cert and --tls-key.*--plaintext.*docs\/security\.md/s);
      const partial = run(['collector', '--listen', '127.0.0.1:0', '--data', join(dir, 'data'), '--tls-cert', join(pki, 'collector.crt')]);
      expect(partial.status).toBe(2);
      expect(partial.stderr).toMatch(/incomplete TLS settings: --tls-ca, --tls-key missing/);
      const fromEnv = run(['collector', '--listen', '127.0.0.1:0', '--data', join(dir, 'data')], { NATLENS_PLAINTEXT: 'true', NATLENS_TLS_CA: join(pki, 'ca.crt') });
      expect(fromEnv.stderr).toMatch(/--plaintext and --tls-ca contradict/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('the agent streaming to a collector refuses too; who and etp ask for TLS or --plaintext', () => {
    const agent = run(['agent', '--collector', '127.0.0.1:7070', '--mode', 'ctnetlink']);
    expect(agent.status).toBe(2);
    expect(agent.stderr).toMatch(/agent: no transport security chosen/);
    const who = run(['who', '10.0.0.1', '--collector', '127.0.0.1:1']);
    expect(who.status).toBe(2);
    expect(who.stderr).toMatch(/who: no transport security chosen/);
    const etp = run(['etp', 'default/x', '--collector', '127.0.0.1:1', '--tls-ca', join(pki, 'ca.crt')]);
    expect(etp.status).toBe(2);
    expect(etp.stderr).toMatch(/the query API needs authentication: a certificate with role query .* or a token/);
  });
});
