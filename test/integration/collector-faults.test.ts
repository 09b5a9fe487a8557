// Collector and store faults, each shown on real processes, with nothing lost or left behind:
// - the store unreachable or silent (server mode: a closed port; a listener that accepts and never
//   answers — no ClickHouse server can be installed here): the collector starts anyway, retries with
//   backoff, and pushes back on the agents instead of growing;
// - the embedded store's filesystem full (a real tmpfs filled until inserts fail with ENOSPC), then
//   freed: backoff, pushback, bounded memory, then every event the agent kept is stored exactly once;
// - a slow store (a fault-injecting wrapper around the real embedded store, named as such): the
//   collector's buffer stays within --max-buffered-hops while inserts crawl;
// - on a lab (root): the collector SIGKILLed in the middle of a stream and restarted on the same
//   data and port: every connection is stored exactly once, stitched; an agent queue overflowing
//   while the collector is away is counted in `who`'s completeness, also after another restart.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../../src/collector/collector.js';
import { hopFromEvent } from '../../src/collector/hop-from-event.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import { ClickHouseStore } from '../../src/collector/store/clickhouse-store.js';
import { hopsTable } from '../../src/collector/store/schema.js';
import { labAddPods, labAddService, labDown, labUp, requireLabState, type LabState } from '../../src/lab/lab.js';
import { nsRun } from '../../src/lab/exec.js';
import { CollectorStreamClient } from '../../src/transport/stream-client.js';
import { startTransportServer, type TransportServer } from '../../src/transport/stream-server.js';
import { HopKind, createHopEvent, createTuple, type HopEvent } from '../../src/transport/proto.generated.js';
import { LOAD_BIN } from '../../src/util/paths.js';
import { waitFor } from './support/agents.js';
import { startAgents, startCollector, who, type NatlensProcess, type RunningCollector } from './support/processes.js';
import { skipReason } from './support/requirements.js';
import { queryDataDir } from './support/store-query.js';
import { freePorts } from './support/tcp-balancer.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const isRoot = process.getuid?.() === 0;

/** Resident memory of a process, MB. */
function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/**
 * An agent's transport (the real CollectorStreamClient) offering synthetic events whose identities
 * the test knows: it records which pushes the bounded queue kept, and their hop ids.
 */
class SyntheticAgent {
  readonly client: CollectorStreamClient;
  /** Hop ids of the events the queue took (not dropped as overflow). */
  readonly kept: bigint[] = [];
  pushed = 0;
  private readonly base = BigInt(Date.now()) * 1_000_000n;

  constructor(target: string, readonly node: string, queueEvents: number) {
    this.client = new CollectorStreamClient({
      target,
      hello: { node, agentId: `synthetic-${node}-${process.pid}`, version: 'test', nodeAddresses: [] },
      maxBatchEvents: 500,
      maxQueuedEvents: queueEvents,
      reconnectBackoff: { initialMs: 100, maxMs: 1000 },
    });
  }

  /** One NodePort-shaped endpoint hop per event, each its own connection (client port = i). */
  event(i: number): HopEvent {
    const client = Uint8Array.of(198, 51, 100, 1 + (i >> 16));
    const node = Uint8Array.of(10, 240, 0, 3);
    const pod = Uint8Array.of(10, 180, 1, 5);
    return createHopEvent({
      kind: HopKind.CONN, tsNs: this.base + BigInt(i) * 1000n, ipProto: 6, ctStatus: 0x20, tcpIsn: i, hasIsn: true, ifname: 'veth', deliveredLocal: true,
      orig: createTuple({ src: client, sport: i & 0xffff, dst: node, dport: 30080 }),
      reply: createTuple({ src: pod, sport: 8080, dst: client, dport: i & 0xffff }),
    });
  }

  /** Pushes `n` more events, yielding to I/O every 1000. */
  async push(n: number): Promise<void> {
    for (let k = 0; k < n; k++) {
      const ev = this.event(this.pushed++);
      const before = this.client.stats().overflowEvents;
      this.client.push(ev);
      if (this.client.stats().overflowEvents === before) this.kept.push(hopFromEvent(ev, this.node).id);
      if (k % 1000 === 999) await new Promise((r) => setImmediate(r));
    }
  }

  held(): number {
    const s = this.client.stats();
    return s.queuedEvents + s.inflightEvents;
  }
}

/** A collector's status lines of one event. */
const statusLines = (c: RunningCollector, event: string) => c.process.status.filter((s) => s.event === event);

describe('collector with a ClickHouse server that is unreachable or silent', () => {
  const cleanup: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  for (const fault of ['closed port', 'listener that accepts and never answers'] as const) {
    it(`${fault}: starts anyway (not ready), retries with backoff, pushes back on agents, stays bounded`, async () => {
      let port: number;
      if (fault === 'closed port') {
        [port] = await freePorts(1) as [number];
      } else {
        const sockets: Socket[] = [];
        const silent: Server = createServer((s) => sockets.push(s));
        await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
        port = (silent.address() as { port: number }).port;
        cleanup.push(() => new Promise<void>((resolve) => {
          for (const s of sockets) s.destroy();
          silent.close(() => resolve());
        }));
      }
      const started = Date.now();
      const collector = await startCollector(
        ['--clickhouse-url', `http://natlens:s3cret@127.0.0.1:${port}`, '--clickhouse-timeout', '1s', '--max-buffered-hops', '2000'],
        '127.0.0.1:0',
        { dataDir: null },
      );
      cleanup.push(() => collector.stop());
      const pid = collector.process.proc.pid!;
      await sleep(1000);
      const rssBefore = rssMb(pid);

      const agent = new SyntheticAgent(collector.address, 'syn-node', 20_000);
      cleanup.push(async () => void (await agent.client.close({ drainTimeoutMs: 0 })));
      // The transport serves while the store is away: the agent is welcomed.
      await new Promise<void>((resolve) => agent.client.once('connected', () => resolve()));
      let maxRss = rssBefore;
      for (let burst = 0; burst < 10; burst++) {
        await agent.push(20_000);
        await sleep(500);
        maxRss = Math.max(maxRss, rssMb(pid));
      }
      await collector.process.waitStatus('stats', 15_000);
      const elapsedS = (Date.now() - started) / 1000;

      expect(collector.process.exitCode, collector.process.stderr.slice(-5).join('\n')).toBeUndefined();
      // Not ready, and says why.
      expect(collector.process.statusOf('stats')).toMatchObject({ ready: false, store: 'connecting', storedHops: 0 });
      const retries = statusLines(collector, 'store_unavailable');
      expect(retries.length).toBeGreaterThan(0);
      expect(retries[0]).toMatchObject({ attempt: 1, store: `ClickHouse at http://natlens:***@127.0.0.1:${port}/` });
      const text = collector.process.stderr.join('\n');
      expect(text).not.toContain('s3cret');
      expect(String(retries[0]!.error)).toMatch(fault === 'closed port' ? /ECONNREFUSED/ : /[Tt]imeout/);
      // Backoff: retrying every flush (250 ms) would be 40+ attempts by now; doubling delays
      // (250 ms -> 5 s) give about a dozen. Rate-limited: a line every 5 s at most, counting the rest.
      const last = retries[retries.length - 1]!;
      const attempts = (last.attempt as number);
      expect(attempts).toBeLessThanOrEqual(14);
      expect(attempts).toBeGreaterThanOrEqual(3);
      expect(last.retryInMs as number).toBeGreaterThanOrEqual(1000);
      expect(retries.length).toBeLessThanOrEqual(2 + elapsedS / 5);
      // Pushback: nothing acknowledged, the agent holds exactly its bound and counts the rest lost.
      const s = agent.client.stats();
      expect(s.ackedEvents).toBe(0);
      expect(agent.held()).toBe(20_000);
      expect(s.overflowEvents).toBe(200_000 - 20_000);
      // 200,000 events held by the collector would be 240 MB and more: it holds only what its
      // transport has in flight (64 batches per stream).
      expect(maxRss - rssBefore, `RSS ${rssBefore.toFixed(0)} -> ${maxRss.toFixed(0)} MB`).toBeLessThan(100);
    }, 90_000);
  }
});

/**
 * FAULT INJECTION: the real embedded store, its hop inserts delayed by `delayMs()` first (a store
 * that is slow, not failing). Everything else is the store itself.
 */
function slowHopInserts(real: ClickHouseStore, delayMs: () => number): ClickHouseStore {
  return new Proxy(real, {
    get(target, key) {
      if (key === 'insertHops') {
        return async (hops: Parameters<ClickHouseStore['insertHops']>[0]) => {
          await sleep(delayMs());
          return target.insertHops(hops);
        };
      }
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

describe('collector on a slow store (a fault-injecting wrapper around the real embedded store)', () => {
  let dir = '';
  let real: ClickHouseStore | undefined;
  let collector: Collector | undefined;
  let server: TransportServer | undefined;
  let agent: SyntheticAgent | undefined;
  afterAll(async () => {
    await agent?.client.close({ drainTimeoutMs: 0 });
    await server?.close({ timeoutMs: 1000 });
    await collector?.close().catch(() => undefined);
    await real?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('holds at most maxBufferedHops (+ one batch) while inserts crawl, then stores every acked event exactly once', async () => {
    dir = mkdtempSync(join(tmpdir(), 'natlens-slow-store-'));
    real = await ClickHouseStore.open({ dataDir: dir });
    let delayMs = 1500;
    collector = new Collector({
      ring: new PeerRing('c1', []), store: slowHopInserts(real, () => delayMs), version: 'test', flushIntervalMs: 50, maxBufferedHops: 2000,
      stitcher: { holdMs: 500, windowMs: 5000, retentionMs: 5000, maxChains: 100_000 },
    });
    collector.start();
    server = await startTransportServer({ listen: '127.0.0.1:0', agentSink: collector, querySink: collector, collectorId: 'c1' });
    agent = new SyntheticAgent(`127.0.0.1:${server.port}`, 'syn-node', 20_000);
    let maxBuffered = 0;
    const sampler = setInterval(() => { maxBuffered = Math.max(maxBuffered, collector!.readiness().bufferedHops); }, 5);
    try {
      for (let burst = 0; burst < 4; burst++) {
        await agent.push(10_000);
        await sleep(1000);
      }
      await sleep(2000);
    } finally {
      clearInterval(sampler);
    }
    const s = agent.client.stats();
    // While a slow insert of 2000 hops is in flight, no more than the bound is taken on.
    expect(maxBuffered).toBeGreaterThanOrEqual(2000);
    expect(maxBuffered).toBeLessThanOrEqual(2000 + 500);
    expect(s.overflowEvents).toBeGreaterThan(0);
    expect(s.ackedEvents + agent.held() + s.overflowEvents).toBe(40_000);
    expect(collector.readiness()).toMatchObject({ ready: true, store: 'ready' });

    delayMs = 0;
    await waitFor(() => (agent!.held() === 0 ? true : undefined), 30_000, 'the agent\'s queue acked');
    expect(agent.client.stats().ackedEvents).toBe(agent.kept.length);
    const rows = await real.select<{ id: string }>('test', hopsTable, 'SELECT toString(hop_id) AS id FROM natlens.hops FINAL', {});
    expect(rows.length).toBe(agent.kept.length);
    expect(new Set(rows.map((r) => r.id))).toEqual(new Set(agent.kept.map(String)));
  }, 90_000);
});

describe.skipIf(!isRoot)('collector on an embedded store whose filesystem fills up (tmpfs, ENOSPC), then is freed', () => {
  let mnt = '';
  let mounted = false;
  let collector: RunningCollector | undefined;
  let agent: SyntheticAgent | undefined;

  beforeAll(() => {
    mnt = mkdtempSync(join(tmpdir(), 'natlens-enospc-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=192m', 'tmpfs', mnt]);
    mounted = true;
  });

  afterAll(async () => {
    await agent?.client.close({ drainTimeoutMs: 0 });
    await collector?.stop();
    if (mounted) execFileSync('umount', [mnt]);
    if (mnt) rmSync(mnt, { recursive: true, force: true });
  }, 60_000);

  it('backs off, pushes back (bounded), and once space is back stores every event the agent kept, exactly once', async () => {
    const dataDir = join(mnt, 'data');
    mkdirSync(dataDir);
    collector = await startCollector(['--max-buffered-hops', '2000', '--flush-interval', '100ms'], '127.0.0.1:0', { dataDir });
    const pid = collector.process.proc.pid!;
    agent = new SyntheticAgent(collector.address, 'syn-node', 30_000);
    await agent.push(5000);
    await waitFor(() => (agent!.client.stats().ackedEvents === 5000 ? true : undefined), 30_000, 'the first 5000 events acked');
    const rssBefore = rssMb(pid);

    // Fill the filesystem: dd stops at ENOSPC.
    const filler = join(mnt, 'filler');
    execFileSync('sh', ['-c', `dd if=/dev/zero of=${filler} bs=1M 2>/dev/null || true`]);
    expect(execFileSync('df', ['--output=avail', mnt], { encoding: 'utf8' }).trim().split('\n')[1]!.trim()).toBe('0');
    const outageStart = Date.now();
    let maxRss = rssBefore;
    for (let burst = 0; burst < 5; burst++) {
      await agent.push(20_000);
      await sleep(1000);
      maxRss = Math.max(maxRss, rssMb(pid));
    }
    // Long enough for a stats line (every 10 s) to fall inside the outage.
    const statsBefore = statusLines(collector, 'stats').length;
    await waitFor(() => (statusLines(collector!, 'stats').length > statsBefore ? true : undefined), 12_000, 'a stats line during the outage');
    const outageS = (Date.now() - outageStart) / 1000;
    const during = agent.client.stats();
    const retries = statusLines(collector, 'store_unavailable');
    expect(retries[0]).toMatchObject({ attempt: 1, store: `data directory ${dataDir}` });
    expect(String(retries[0]!.error)).toMatch(/ENOSPC/);
    const attempts = retries[retries.length - 1]!.attempt as number;
    // ~8 s at 100 ms flushes would be 80 attempts without backoff.
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(attempts).toBeLessThanOrEqual(4 + outageS);
    // Pushback: the collector took at most --max-buffered-hops (+ one batch) more, acked none of
    // them, and the agent holds exactly its bound, counting the rest as lost.
    expect(during.ackedEvents).toBe(5000);
    expect(agent.held()).toBe(30_000);
    expect(during.overflowEvents).toBe(5000 + 100_000 - 5000 - 30_000);
    const buffered = [...retries, ...statusLines(collector, 'stats').slice(statsBefore)].map((l) => l.bufferedHops as number);
    expect(Math.max(...buffered)).toBeGreaterThanOrEqual(2000);
    expect(Math.max(...buffered)).toBeLessThanOrEqual(2000 + 500);
    expect(statusLines(collector, 'stats').at(-1)).toMatchObject({ ready: false, store: 'failing' });
    expect(maxRss - rssBefore, `RSS ${rssBefore.toFixed(0)} -> ${maxRss.toFixed(0)} MB`).toBeLessThan(100);
    expect(collector.process.exitCode).toBeUndefined();

    // Space is back: the collector notices at its next retry (at most 5 s), the agent drains.
    rmSync(filler);
    await collector.process.waitStatus('store_recovered', 20_000);
    await waitFor(() => (agent!.held() === 0 ? true : undefined), 30_000, 'the agent\'s queue acked');
    expect(agent.client.stats().ackedEvents).toBe(agent.kept.length);
    // The loss is in the completeness of any answer (counters are per agent, stored before acks).
    const answer = await who('10.180.1.5', collector.address, ['--since', '10m']);
    expect(answer.complete.lost_by_stage).toEqual({ queue_overflow: agent.client.stats().overflowEvents });
    expect(answer.rows.reduce((a, r) => a + r.connections, 0)).toBe(agent.kept.length);

    const kept = agent.kept.map(String);
    await agent.client.close();
    agent = undefined;
    await collector.stop();
    // As readers see the table (FINAL: resent copies collapse), each kept event exactly once.
    const stored = await queryDataDir<{ id: string }>(dataDir, 'SELECT toString(hop_id) AS id FROM natlens.hops FINAL');
    expect(stored.length).toBe(kept.length);
    expect(new Set(stored.map((r) => r.id))).toEqual(new Set(kept));
  }, 120_000);
});

const skipLab = skipReason();
if (skipLab) console.warn(`test/integration/collector-faults.test.ts: lab tests skipped: ${skipLab}`);

interface LoadResult { connections: number; failed: number }

describe.skipIf(!!skipLab)('collector killed in the middle of a stream, on a lab (kube-proxy iptables)', () => {
  const prefix = `cf${process.pid % 100000}`;
  let tmp = '';
  let state: LabState;
  let collector: RunningCollector | undefined;
  let agents: NatlensProcess[] = [];
  let node2Ip = '';
  let podIp = '';

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'natlens-cfault-'));
    state = await labUp({ prefix, proxyMode: 'iptables', force: true });
    // A natlens-load server on node1 behind NodePort 30091, reached through node2: every connection
    // crosses two nodes (node2 DNATs and SNATs, node1 delivers), so it is stitched from two hops.
    const server = { command: [LOAD_BIN, 'serve', '--port', '8080', '--max-seconds', '900'], readyPort: 8080, cmdlineMatch: `${LOAD_BIN} serve --port 8080 --max-seconds 900` };
    await labAddPods([{ name: 'sink-1', node: 'node1', labels: { app: 'sink' }, server }], { prefix });
    await labAddService({ name: 'sink', type: 'NodePort', selector: { app: 'sink' }, ports: [{ name: 'tcp', protocol: 'TCP', port: 91, targetPort: 8080, nodePort: 30091 }] }, { prefix });
    state = requireLabState(prefix);
    node2Ip = state.nodes.find((n) => n.name === 'node2')!.internalIPs.find((a) => !a.includes(':'))!;
    podIp = state.pods.find((p) => p.name === 'sink-1')!.ips.find((a) => !a.includes(':'))!;
  }, 120_000);

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await collector?.process.stop();
    await labDown({ prefix });
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }, 60_000);

  const nodes = () => state.nodes.map((n) => ({ name: n.name, netnsPath: n.netnsPath }));
  const current = (): RunningCollector => {
    if (!collector) throw new Error('no collector running');
    return collector;
  };

  /** `n` connections from the lab's client to node2:30091; `record`: their client ports. */
  async function load(n: number, concurrency: number, record: string): Promise<LoadResult> {
    const r = await nsRun(state.client.netns, LOAD_BIN, [
      'client', '--target', `${node2Ip}:30091`, '--concurrency', String(concurrency), '--max-conns', String(n), '--duration-s', '20', '--json', '--record', record,
    ], { timeoutMs: 40_000 });
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as LoadResult;
  }

  const clientPorts = (file: string): number[] => readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => Number(l.split(' ')[1]));

  /** Connections to the sink pod as readers see them: highest version per conn_id, superseded skipped. */
  const CONNECTIONS_SQL = (pod: string) => `
    SELECT client_port, toString(status) AS status, hop_nodes FROM (
      SELECT conn_id, argMax(client_port, version) AS client_port, argMax(status, version) AS status, argMax(hop_nodes, version) AS hop_nodes
      FROM natlens.connections WHERE endpoint = toIPv6('${pod}') GROUP BY conn_id)
    WHERE status != 'superseded' ORDER BY client_port`;

  async function stopAll(): Promise<void> {
    await Promise.all(agents.map((a) => a.stop()));
    await collector?.process.stop();
    collector = undefined;
  }

  it('(a) SIGKILL mid-stream (twice), restart on the same data and port: every connection stored exactly once, stitched', async () => {
    const [port] = await freePorts(1);
    const listen = `127.0.0.1:${port}`;
    const dataDir = join(tmp, 'a');
    mkdirSync(dataDir);
    collector = await startCollector([], listen, { dataDir });
    try {
      await streamKillRestart(listen, dataDir);
    } finally {
      await stopAll();
    }
  }, 150_000);

  async function streamKillRestart(listen: string, dataDir: string): Promise<void> {
    // node1's agent sends a batch every 5 events, the others batch for up to 100 ms: the two hops of
    // a connection reach the collector apart, so a kill often falls between them (one stored and
    // acknowledged, the other not), as with agents of unequal load.
    agents = [
      ...await startAgents(nodes().filter((n) => n.name === 'node1'), current().address, ['--batch-events', '5']),
      ...await startAgents(nodes().filter((n) => n.name !== 'node1'), current().address),
    ];
    const PER = 20;
    const MAX_ROUNDS = 400;
    const results: LoadResult[] = [];
    let streaming = true;
    // A steady stream (rounds of 20 connections, ~300/s) across the kills and restarts, until
    // stopped (at most 8000 connections): at any moment some connections have one hop stored and
    // acknowledged and the other not yet.
    const stream = (async () => {
      for (let r = 0; r < MAX_ROUNDS && streaming; r++) {
        results.push(await load(PER, 1, join(tmp, `a-${r}.txt`)));
        await sleep(50);
      }
    })();
    const storedSoFar = async () => (await who(podIp, current().address, ['--since', '10m'])).rows.reduce((a, r) => a + r.connections, 0);
    const restores: Array<{ hops: number; chains: { pending: number } }> = [];
    try {
      // At least two kills; more (up to four) until one came while connections were half stored
      // (`chains.pending`: what died with the process and the restore brought back).
      for (let kill = 0; kill < 4 && (kill < 2 || !restores.some((r) => r.chains.pending > 0)); kill++) {
        // The collector has stored part of the stream (agents reconnected), and takes more.
        const before = kill === 0 ? 0 : await storedSoFar();
        for (let t = 0; t < 50 && (await storedSoFar()) <= before; t++) await sleep(200);
        await sleep(500 + Math.random() * 500);
        expect(results.length, 'the stream is still running').toBeLessThan(MAX_ROUNDS);
        current().process.kill('SIGKILL');
        await current().process.wait();
        await sleep(1000); // the agents keep capturing and queueing meanwhile
        collector = await startCollector([], listen, { dataDir });
        const restored = await current().process.waitStatus('restored', 30_000).catch((err: Error) => {
          throw new Error(`${err.message}; collector said:\n${current().process.stderr.slice(-15).join('\n')}`);
        });
        restores.push(restored as unknown as (typeof restores)[number]);
      }
      await sleep(1000);
    } finally {
      streaming = false;
      await stream;
    }
    // The restarted collectors took back the stored hops of the last moments before each kill,
    // among them connections whose record died with the killed process.
    expect(restores.every((r) => r.hops > 0)).toBe(true);
    expect(restores.some((r) => r.chains.pending > 0)).toBe(true);
    const ROUNDS = results.length;
    const K = ROUNDS * PER;
    expect(results.reduce((a, r) => a + r.connections, 0)).toBe(K);
    expect(results.every((r) => r.failed === 0)).toBe(true);
    const ports = Array.from({ length: ROUNDS }, (_, r) => clientPorts(join(tmp, `a-${r}.txt`))).flat().sort((a, b) => a - b);
    expect(ports).toHaveLength(K);

    // `who`: K connections from the client, entering node2, ending on node1, all stitched (once the
    // agents' backlogs are in: a hop that comes late updates its connection's record).
    let answer = await who(podIp, current().address, ['--since', '10m']);
    const deadline = Date.now() + 30_000;
    while ((answer.rows.reduce((a, r) => a + r.connections, 0) !== K || answer.complete.unstitched !== 0) && Date.now() < deadline) {
      await sleep(1000);
      answer = await who(podIp, current().address, ['--since', '10m']);
    }
    expect(answer.rows.map((r) => ({ client: r.client, seen_as: r.seen_as, ingress_node: r.ingress_node, endpoint_node: r.endpoint_node, stitched: r.stitched, connections: r.connections })))
      .toEqual([{ client: state.client.ips.find((a) => !a.includes(':')), seen_as: node2Ip, ingress_node: 'node2', endpoint_node: 'node1', stitched: true, connections: K }]);
    expect(answer.complete).toMatchObject({ events_lost: 0, unstitched: 0 });

    // Exactly once, by client port, in the store itself.
    const dataDirA = dataDir;
    await stopAll();
    const rows = await queryDataDir<{ client_port: number; status: string; hop_nodes: string[] }>(dataDirA, CONNECTIONS_SQL(podIp));
    expect(rows.map((r) => r.client_port)).toEqual(ports);
    expect(rows.filter((r) => r.status !== 'complete' || r.hop_nodes.join('>') !== 'node2>node1')).toEqual([]);
    const hops = await queryDataDir<{ sport: number; n: string }>(dataDirA, `
      SELECT orig_sport AS sport, toString(uniqExact(hop_id)) AS n FROM natlens.hops
      WHERE node = 'node2' AND kind = 'conn' AND orig_dport = 30091 GROUP BY sport ORDER BY sport`);
    expect(hops.map((h) => h.sport)).toEqual(ports);
    expect(hops.every((h) => h.n === '1')).toBe(true);
  }

  it('(b) an agent queue overflowing while the collector is away is counted in who\'s completeness, also after another restart; captured = stored + lost', async () => {
    const [port] = await freePorts(1);
    const listen = `127.0.0.1:${port}`;
    const dataDir = join(tmp, 'b');
    mkdirSync(dataDir);
    collector = await startCollector([], listen, { dataDir });
    try {
      await overflowWhileAway(listen, dataDir);
    } finally {
      await stopAll();
    }
  }, 150_000);

  async function overflowWhileAway(listen: string, dataDir: string): Promise<void> {
    agents = await startAgents(nodes(), current().address, ['--queue-events', '1000']);
    expect((await load(50, 2, join(tmp, 'b-0.txt'))).connections).toBe(50);
    current().process.kill('SIGKILL');
    await current().process.wait();
    // While it is away: 1500 connections, more than the agents' 1000-event queues hold.
    const r = await load(1500, 8, join(tmp, 'b-1.txt'));
    expect(r).toMatchObject({ connections: 1500, failed: 0 });
    collector = await startCollector([], listen, { dataDir });
    const overflowOf = async () => (await who(podIp, current().address, ['--since', '10m'])).complete.lost_by_stage.queue_overflow ?? 0;
    // Each agent reports its counts with its next batch, once reconnected: wait until they settle.
    const readings: number[] = [];
    const deadline = Date.now() + 40_000;
    while (Date.now() < deadline && !(readings.length >= 4 && readings.at(-1)! > 0 && readings.slice(-4).every((v) => v === readings.at(-1)))) {
      readings.push(await overflowOf());
      await sleep(1000);
    }
    const first = readings.at(-1)!;
    expect(first).toBeGreaterThan(0);

    // Killed again and restarted: the counts are in the store, not in the collector's memory.
    current().process.kill('SIGKILL');
    await current().process.wait();
    collector = await startCollector([], listen, { dataDir });
    expect(await overflowOf()).toBe(first);

    // The agents stop (draining what they hold) and say what they captured and dropped.
    await Promise.all(agents.map((a) => a.stop()));
    const stopped = agents.map((a) => a.statusOf('stopped')!);
    agents = [];
    const dropped = stopped.reduce((a, s) => a + (s.overflowEvents as number), 0);
    expect(dropped).toBe(first);
    expect(stopped.every((s) => s.unacked === 0)).toBe(true);
    const answer = await who(podIp, current().address, ['--since', '10m']);
    // Every stage is listed (the kernel's at 0): only the queue lost anything.
    expect(Object.fromEntries(Object.entries(answer.complete.lost_by_stage).filter(([, n]) => n > 0))).toEqual({ queue_overflow: dropped });
    expect(answer.complete.events_lost).toBe(dropped);

    await stopAll();
    const stored = await queryDataDir<{ node: string; n: string }>(dataDir, 'SELECT node, toString(uniqExact(hop_id)) AS n FROM natlens.hops GROUP BY node');
    const storedOf = (node: string) => Number(stored.find((s) => s.node === node)?.n ?? 0);
    const byNode = state.nodes.map((n, i) => ({ node: n.name, captured: stopped[i]!.captured, stored: storedOf(n.name), lost: stopped[i]!.overflowEvents }));
    for (const b of byNode) expect(b.captured, JSON.stringify(byNode)).toBe(b.stored + (b.lost as number));
    // The agents that carried the traffic did overflow.
    expect(byNode.find((b) => b.node === 'node2')!.lost as number).toBeGreaterThan(0);
  }
});
