// Agent faults on a real lab node (root), each failing if anything is lost or left behind:
// (a) agent and natlens-probe SIGKILLed, then restarted: one natlens filter per hook per interface,
//     the crashed run's programs and maps freed, nothing pinned, the lock file taken over, capture
//     resumed, and the time nobody captured reported as a gap (and a clean stop as a shorter one);
// (b) the ring buffer overflows under a burst: the loss is counted per CPU, adds up, is reported
//     in the stats and warned about; through a collector `who --json` shows it, and the gap;
// (c) the node's own traffic flows whatever the agent does: running, stopped (SIGSTOP, the ring
//     fills), killed (filters orphaned), restarting, detaching (SIGTERM).
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { labAddPods, labAddService, labDown, labUp, requireLabState, type LabState } from '../../src/lab/lab.js';
import { nsRun, run, sleep, sysctl } from '../../src/lab/exec.js';
import type { AgentEvent, ConnEvent, GapEvent, StatsEvent } from '../../src/agent/events.js';
import { LOAD_BIN } from '../../src/util/paths.js';
import { waitFor } from './support/agents.js';
import { skipReason } from './support/requirements.js';
import { natlens, startCollector, who, type NatlensProcess, type RunningCollector, type WhoJson } from './support/processes.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/agent-faults.test.ts: skipped: ${skip}`);

const NODE_PORT = 30091;
const BURST = 2000;
/** The smallest ring (one page: 30 records) drained once a second, never woken early: a burst overflows it. */
const SLOW_SMALL_RING = ['--ring-kb', '4', '--drain', '1s', '--wakeup-kb', '65536', '--no-ends', '--no-attempts', '--no-proxy-protocol', '--no-udp'];

type Faults = { lost_per_cpu: Array<{ node: string; cpu: number; ringbuf_full: number }>; gaps: Array<{ node: string; from: string; to: string; cause: string; reason: string }> };
type WhoFaults = WhoJson & { complete: WhoJson['complete'] & Faults };

/** Complete JSON lines of an agent's stdout so far. */
function eventsOf(p: NatlensProcess): AgentEvent[] {
  const text = p.stdout.slice(0, p.stdout.lastIndexOf('\n') + 1);
  return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as AgentEvent);
}

interface LoadResult {
  connections: number; failed: number; timeouts: number; abandoned: number; attempts: number;
  errors: Record<string, number>; latency_us: { max: number };
}

interface LoadTotals { runs: number; connections: number; failed: number; timeouts: number; abandoned: number; attempts: number; maxLatencyUs: number; errors: Record<string, number> }

describe.skipIf(!!skip)('agent faults', () => {
  const prefix = `af${process.pid % 100000}`;
  const lockDir = `/run/natlens/test-${prefix}`;
  let state: LabState;
  let target = '';
  let podIp = '';
  const started: NatlensProcess[] = [];
  const collectors: RunningCollector[] = [];
  const node2 = (): LabState['nodes'][number] => state.nodes.find((n) => n.name === 'node2')!;

  beforeAll(async () => {
    state = await labUp({ prefix, proxyMode: 'iptables', force: true });
    // A natlens-load server on node2 behind a NodePort of node2: every connection's SYN leaves node2
    // once, towards the pod (one CONN record each).
    await labAddPods([{ name: 'fault-1', node: 'node2', labels: { app: 'fault' }, server: { command: [LOAD_BIN, 'serve', '--port', '8080', '--max-seconds', '900'], readyPort: 8080, cmdlineMatch: `${LOAD_BIN} serve --port 8080 --max-seconds 900` } }], { prefix });
    await labAddService({ name: 'fault', type: 'NodePort', selector: { app: 'fault' }, ports: [{ name: 'tcp', protocol: 'TCP', port: 91, targetPort: 8080, nodePort: NODE_PORT }] }, { prefix });
    state = requireLabState(prefix);
    target = `${node2().internalIPs.find((a) => !a.includes(':'))!}:${NODE_PORT}`;
    podIp = state.pods.find((p) => p.name === 'fault-1')!.ips.find((a) => !a.includes(':'))!;
    // Thousands of connections from one client address to one NodePort: let the client reuse
    // TIME_WAIT ports, and node2's conntrack forget them soon (namespaces this test owns).
    await sysctl(state.client.netns, { 'net.ipv4.tcp_tw_reuse': 1 });
    await sysctl(node2().netns, { 'net.netfilter.nf_conntrack_tcp_timeout_time_wait': 1 });
  }, 120_000);

  afterAll(async () => {
    for (const p of started) if (p.exitCode === undefined) p.kill('SIGKILL');
    for (const pid of probesLeft) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await Promise.all(collectors.map((c) => c.stop()));
    await labDown({ prefix });
    rmSync(lockDir, { recursive: true, force: true });
  }, 60_000);

  // A failed test must not leave its agent holding node2's lock for the next one.
  afterEach(async () => {
    for (const p of started) if (p.exitCode === undefined) {
      p.kill('SIGKILL');
      await p.wait();
    }
    for (const pid of probesLeft) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    probesLeft.clear();
  });

  // ---- helpers -------------------------------------------------------------------------------

  /** natlens-probe children of agents this test started (killed in afterAll if still there). */
  const probesLeft = new Set<number>();

  function agent(output: string[], extra: string[] = []): NatlensProcess {
    const p = natlens('agent node2', ['agent', '--node', 'node2', '--netns', node2().netnsPath, '--lock-dir', lockDir, ...output, ...extra]);
    started.push(p);
    return p;
  }
  const stdoutAgent = (extra: string[] = []) => agent(['--stdout'], extra);

  async function ready(p: NatlensProcess): Promise<number> {
    await waitFor(() => {
      if (p.exitCode !== undefined) throw new Error(`agent exited (${p.exitCode}): ${p.stderr.join('\n')}`);
      return eventsOf(p).find((e) => e.type === 'ready') ?? p.statusOf('ready');
    }, 30_000, `the agent's ready (stderr: ${p.stderr.slice(-5).join(' | ')})`);
    return Date.now();
  }

  async function probePid(p: NatlensProcess): Promise<number> {
    for (let i = 0; i < 100; i++) {
      const r = await run('pgrep', ['-P', String(p.proc.pid), '-x', 'natlens-probe'], { allowFail: true });
      const pids = r.stdout.trim().split('\n').filter(Boolean).map(Number);
      if (pids.length === 1) {
        probesLeft.add(pids[0]!);
        return pids[0]!;
      }
      await sleep(50);
    }
    throw new Error(`no natlens-probe child of agent ${p.proc.pid}`);
  }

  /** Every interface of node2 but lo. */
  async function interfaces(): Promise<string[]> {
    const r = await nsRun(node2().netns, 'ip', ['-o', 'link', 'show']);
    return r.stdout.split('\n').map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1]).filter((n): n is string => !!n && n !== 'lo');
  }

  /** Program ids of the natlens filters (handle 0x4e4c) on one hook of one interface. */
  async function natlensFilters(dev: string, hook: 'ingress' | 'egress'): Promise<number[]> {
    const r = await nsRun(node2().netns, 'tc', ['filter', 'show', 'dev', dev, hook]);
    return r.stdout.split('\n').filter((l) => /handle 0x4e4c/.test(l)).map((l) => Number(/ id (\d+)/.exec(l)?.[1] ?? -1));
  }

  /** Asserts exactly one natlens filter per hook per interface; returns the program ids they run. */
  async function onePerHook(): Promise<Set<number>> {
    const ids = new Set<number>();
    const devs = await interfaces();
    expect(devs).toContain('eth0');
    for (const dev of devs) {
      for (const hook of ['ingress', 'egress'] as const) {
        const progs = await natlensFilters(dev, hook);
        expect(progs, `natlens filters on ${dev} ${hook}`).toHaveLength(1);
        ids.add(progs[0]!);
      }
    }
    return ids;
  }

  async function noneAttached(): Promise<void> {
    for (const dev of await interfaces()) {
      for (const hook of ['ingress', 'egress'] as const) expect(await natlensFilters(dev, hook), `${dev} ${hook}`).toEqual([]);
    }
  }

  const bpftoolJson = async <T>(args: string[]): Promise<T | null> => {
    const r = await run('bpftool', ['-j', ...args], { allowFail: true });
    return r.code === 0 ? (JSON.parse(r.stdout) as T) : null;
  };
  const progExists = async (id: number): Promise<boolean> => (await bpftoolJson(['prog', 'show', 'id', String(id)])) !== null;
  const mapExists = async (id: number): Promise<boolean> => (await bpftoolJson(['map', 'show', 'id', String(id)])) !== null;
  async function mapsOf(progs: Iterable<number>): Promise<Set<number>> {
    const maps = new Set<number>();
    for (const id of progs) for (const m of (await bpftoolJson<{ map_ids: number[] }>(['prog', 'show', 'id', String(id)]))?.map_ids ?? []) maps.add(m);
    return maps;
  }

  /** counter[NL_CTR_RINGBUF_FULL] summed over CPUs, read from the `counters` map the programs use. */
  async function kernelRingbufFull(progs: Iterable<number>): Promise<number> {
    for (const m of await mapsOf(progs)) {
      const info = await bpftoolJson<{ name: string }>(['map', 'show', 'id', String(m)]);
      if (info?.name !== 'counters') continue;
      const v = await bpftoolJson<{ values?: Array<{ value: number | string[] }>; formatted?: { values: Array<{ value: number }> } }>(['map', 'lookup', 'id', String(m), 'key', '0', '0', '0', '0']);
      const values = v?.formatted?.values ?? v?.values ?? [];
      return values.reduce((sum, x) => sum + (typeof x.value === 'number' ? x.value : Number(BigInt(`0x${[...x.value].reverse().map((b) => b.replace('0x', '').padStart(2, '0')).join('')}`))), 0);
    }
    throw new Error('no counters map among the programs\' maps');
  }

  /** natlens entries under /sys/fs/bpf (natlens never pins: there must be none). */
  function pinned(): string[] {
    const root = '/sys/fs/bpf';
    if (!existsSync(root)) return [];
    const found: string[] = [];
    const walk = (dir: string, depth: number): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (/natlens|^nl_|^events$|^counters$|pending_attempt/.test(e.name)) found.push(p);
        if (e.isDirectory() && depth < 4) walk(p, depth + 1);
      }
    };
    walk(root, 0);
    return found;
  }

  /** The lock files in lockDir, each as its "key value" lines (first line: the holder's pid). */
  function lockFiles(): Array<{ name: string; pid: number; fields: Record<string, string> }> {
    if (!existsSync(lockDir)) return [];
    return readdirSync(lockDir).map((name) => {
      const lines = readFileSync(join(lockDir, name), 'utf8').split('\n').filter(Boolean);
      const fields = Object.fromEntries(lines.slice(2).map((l) => l.split(' ') as [string, string]));
      return { name, pid: Number(lines[0]), fields };
    });
  }

  async function loadRun(conns: number, concurrency: number, durationS: number): Promise<LoadResult> {
    const r = await nsRun(state.client.netns, LOAD_BIN, [
      'client', '--target', target, '--concurrency', String(concurrency), '--max-conns', String(conns),
      '--duration-s', String(durationS), '--connect-timeout-ms', '3000', '--json',
    ], { timeoutMs: (durationS + 10) * 1000, allowFail: true });
    const line = r.stdout.trim().split('\n').pop() ?? '';
    if (!line.startsWith('{')) throw new Error(`natlens-load client failed (exit ${r.code}): ${r.stderr.trim()}`);
    return JSON.parse(line) as LoadResult;
  }

  /**
   * Short bounded runs of connections through node2's NodePort, back to back, while `action` runs
   * and for at least `minMs`: every connection is counted, failures and the slowest one included.
   */
  async function underLoad(minMs: number, action: () => Promise<void> = async () => {}): Promise<LoadTotals> {
    const t: LoadTotals = { runs: 0, connections: 0, failed: 0, timeouts: 0, abandoned: 0, attempts: 0, maxLatencyUs: 0, errors: {} };
    let stop = false;
    const loop = (async () => {
      const deadline = Date.now() + 60_000;
      for (let i = 0; i < 500 && !stop && Date.now() < deadline; i++) {
        const r = await loadRun(20, 1, 5);
        t.runs++;
        t.connections += r.connections;
        t.failed += r.failed;
        t.timeouts += r.timeouts;
        t.abandoned += r.abandoned;
        t.attempts += r.attempts;
        t.maxLatencyUs = Math.max(t.maxLatencyUs, r.latency_us.max);
        for (const [k, v] of Object.entries(r.errors)) t.errors[k] = (t.errors[k] ?? 0) + v;
        await sleep(30);
      }
    })();
    const t0 = Date.now();
    try {
      await action();
    } finally {
      const rest = minMs - (Date.now() - t0);
      if (rest > 0) await sleep(rest);
      stop = true;
      await loop;
    }
    return t;
  }

  /** Every connection succeeded, none took longer than a second. */
  function allFlowed(phase: string, t: LoadTotals): void {
    expect(t.connections, `${phase}: connections made`).toBeGreaterThan(0);
    expect({ phase, failed: t.failed, timeouts: t.timeouts, abandoned: t.abandoned, errors: t.errors, attempts: t.attempts })
      .toEqual({ phase, failed: 0, timeouts: 0, abandoned: 0, errors: {}, attempts: t.connections });
    expect(t.maxLatencyUs, `${phase}: slowest connection (µs)`).toBeLessThan(1_000_000);
  }

  const gapOf = (p: NatlensProcess): GapEvent | undefined => eventsOf(p).find((e): e is GapEvent => e.type === 'gap');
  const ms = (rfc3339: string): number => Date.parse(rfc3339);

  // ---- (a) -----------------------------------------------------------------------------------

  it('(a) after SIGKILL of agent and probe, a restart leaves one filter per hook, frees the crashed run\'s programs and maps, and reports the gap', async () => {
    const a = stdoutAgent();
    const aSpawned = Date.now();
    await ready(a);
    const aProbe = await probePid(a);
    const oldProgs = await onePerHook();
    expect(oldProgs.size, 'one nl_ingress and one nl_egress program for the whole namespace').toBe(2);
    const oldMaps = await mapsOf(oldProgs);
    expect(oldMaps.size).toBeGreaterThanOrEqual(5);
    const first = await loadRun(5, 1, 5);
    expect(first.connections).toBe(5);
    await waitFor(() => (eventsOf(a).filter((e) => e.type === 'conn' && e.orig.dport === NODE_PORT).length >= 5 ? true : undefined), 5000, 'the agent capturing');
    await sleep(1200); // at least one heartbeat after capture started

    const killedAt = Date.now();
    process.kill(aProbe, 'SIGKILL');
    a.kill('SIGKILL');
    await a.wait();
    probesLeft.delete(aProbe);

    // Orphaned: the crashed run's filters still run its programs, and they never drop anything.
    expect(await onePerHook()).toEqual(oldProgs);
    for (const id of oldProgs) expect(await progExists(id)).toBe(true);
    expect((await loadRun(20, 2, 5))).toMatchObject({ connections: 20, failed: 0 });
    // The lock file stays, unlocked, saying who held it and that it never detached.
    expect(lockFiles()).toMatchObject([{ pid: aProbe, fields: { state: 'running' } }]);

    const restartedAt = Date.now();
    const b = stdoutAgent();
    const bReadySeen = await ready(b);
    const bProbe = await probePid(b);
    const newProgs = await onePerHook();
    expect(newProgs.size).toBe(2);
    for (const id of newProgs) expect(oldProgs.has(id)).toBe(false);
    // Replacing the filters dropped the last references: the crashed run's programs and maps are freed
    // (RCU and the map free work run a little later).
    const freed = async (): Promise<boolean> => {
      for (const id of oldProgs) if (await progExists(id)) return false;
      for (const id of oldMaps) if (await mapExists(id)) return false;
      return true;
    };
    let gone = false;
    for (let i = 0; i < 100 && !gone; i++) {
      gone = await freed();
      if (!gone) await sleep(100);
    }
    expect(gone, `programs ${[...oldProgs]} and maps ${[...oldMaps]} of the crashed run are freed`).toBe(true);
    const newMaps = await mapsOf(newProgs);
    expect(newMaps.size).toBe(oldMaps.size);
    expect(pinned()).toEqual([]);
    expect(lockFiles()).toMatchObject([{ pid: bProbe, fields: { state: 'running' } }]);

    // The gap: from the crashed run's last heartbeat (before the kill, at most a stats interval
    // before it) to the restart's capture start.
    const gap = await waitFor(() => gapOf(b), 5000, 'the gap event');
    expect(gap).toMatchObject({ type: 'gap', node: 'node2', cause: 'crashed', previous_pid: aProbe });
    expect(gap.reason).toMatch(new RegExp(`natlens-probe \\(pid ${aProbe}\\) ended without detaching`));
    expect(ms(gap.from)).toBeGreaterThanOrEqual(aSpawned);
    expect(ms(gap.from)).toBeLessThanOrEqual(killedAt);
    expect(killedAt - ms(gap.from)).toBeLessThan(2500);
    expect(ms(gap.to)).toBeGreaterThanOrEqual(restartedAt);
    expect(ms(gap.to)).toBeLessThanOrEqual(bReadySeen);
    const events = eventsOf(b);
    expect(events.findIndex((e) => e.type === 'gap')).toBe(events.findIndex((e) => e.type === 'ready') + 1);
    expect(b.stderr.join('\n')).toMatch(/"level":"warn".*not capturing from .* to .*: the previous natlens-probe/);

    // Capture resumed.
    const after = await loadRun(5, 1, 5);
    expect(after.connections).toBe(5);
    await waitFor(() => (eventsOf(b).filter((e) => e.type === 'conn' && e.orig.dport === NODE_PORT).length >= 5 ? true : undefined), 5000, 'capture after the restart');

    // A clean stop detaches everything and says so; the next start reports the (shorter) gap.
    const stoppedAt = Date.now();
    b.kill('SIGTERM');
    expect(await b.wait()).toBe(0);
    const bExited = Date.now();
    probesLeft.delete(bProbe);
    await noneAttached();
    expect(lockFiles()).toMatchObject([{ pid: bProbe, fields: { state: 'stopped' } }]);
    const c = stdoutAgent();
    await ready(c);
    const stopGap = await waitFor(() => gapOf(c), 5000, 'the gap after a clean stop');
    expect(stopGap).toMatchObject({ cause: 'stopped', previous_pid: bProbe });
    expect(ms(stopGap.from)).toBeGreaterThanOrEqual(stoppedAt);
    expect(ms(stopGap.from)).toBeLessThanOrEqual(bExited);
    c.kill('SIGTERM');
    expect(await c.wait()).toBe(0);
    await noneAttached();
  }, 120_000);

  // ---- (b) -----------------------------------------------------------------------------------

  it('(b) a burst overflows the smallest ring: the loss is counted per CPU, adds up, and is reported and warned about', async () => {
    const a = stdoutAgent(SLOW_SMALL_RING);
    await ready(a);
    const burst = await loadRun(BURST, 32, 30);
    expect(burst).toMatchObject({ connections: BURST, failed: 0 });
    await sleep(2500); // two drains: whatever reached the ring is out
    a.kill('SIGTERM');
    expect(await a.wait()).toBe(0);

    const events = eventsOf(a);
    const stats = events.filter((e): e is StatsEvent => e.type === 'stats').at(-1)!;
    const c = stats.counters;
    expect(stats.lost.ringbuf_full, 'the ring overflowed').toBeGreaterThan(0);
    // Per CPU, and it adds up.
    const perCpu = stats.ringbuf_full_per_cpu ?? {};
    expect(Object.keys(perCpu).length).toBeGreaterThan(0);
    expect(Object.values(perCpu).reduce((a, b) => a + b, 0)).toBe(stats.lost.ringbuf_full);
    // Only CONN records here: what entered the ring all reached stdout, and each became one conn line.
    expect(c.records_out).toBe(c.conn_seen);
    const conns = events.filter((e): e is ConnEvent => e.type === 'conn');
    expect(conns.length).toBe(c.conn_seen);
    // Every connection's SYN was offered to the ring once: queued (conn_seen) or counted lost.
    const burstConns = conns.filter((e) => e.orig.dport === NODE_PORT).length;
    const others = conns.length - burstConns;
    expect(c.conn_seen + c.ringbuf_full - others).toBeGreaterThanOrEqual(BURST);
    expect(c.conn_seen + c.ringbuf_full - others, 'no SYN counted twice (retransmits aside)').toBeLessThanOrEqual(BURST + 20);
    expect(stats.lost.total).toBeGreaterThanOrEqual(stats.lost.ringbuf_full);
    // Never silent: the agent warned, naming the CPUs.
    expect(a.stderr.join('\n')).toMatch(/"level":"warn".*kernel ring buffer full: \d+ events lost \(\d+ since start; cpu\d+: \d+/);
  }, 120_000);

  it('(a, b) through a collector: who --json shows the per-CPU loss and the crash gap', async () => {
    const collector = await startCollector();
    collectors.push(collector);
    const a = agent(['--collector', collector.address, '--plaintext'], SLOW_SMALL_RING);
    await ready(a);
    await a.waitStatus('connected', 30_000);
    const aProbe = await probePid(a);
    expect(await loadRun(BURST, 32, 30)).toMatchObject({ connections: BURST, failed: 0 });
    await waitFor(() => a.status.find((s) => s.event === 'warn' && /kernel ring buffer full/.test(String(s.msg))), 10_000, 'the agent\'s ring-buffer warning');

    const ask = async (done: (w: WhoFaults) => boolean, what: string): Promise<WhoFaults> => {
      const deadline = Date.now() + 20_000;
      for (;;) {
        const w = (await who(podIp, collector.address, ['--since', '10m'])) as WhoFaults;
        if (done(w)) return w;
        if (Date.now() > deadline) throw new Error(`who never showed ${what}: ${JSON.stringify(w.complete)}`);
        await sleep(500);
      }
    };
    const sumNode2 = (w: WhoFaults) => w.complete.lost_per_cpu.filter((l) => l.node === 'node2').reduce((n, l) => n + l.ringbuf_full, 0);
    const lossShown = await ask((w) => (w.complete.lost_by_stage.ringbuf_full ?? 0) > 0 && sumNode2(w) === w.complete.lost_by_stage.ringbuf_full, 'the per-CPU loss');
    expect(lossShown.complete.events_lost).toBeGreaterThanOrEqual(lossShown.complete.lost_by_stage.ringbuf_full!);
    expect(lossShown.complete.nodes_reporting).toContain('node2');

    process.kill(aProbe, 'SIGKILL');
    a.kill('SIGKILL');
    await a.wait();
    probesLeft.delete(aProbe);
    const b = agent(['--collector', collector.address, '--plaintext']);
    await ready(b);
    const bProbe = await probePid(b);
    const warned = await waitFor(() => b.status.find((s) => s.event === 'warn' && /^not capturing from /.test(String(s.msg))), 10_000, 'the gap warning');
    const [, from, to] = /^not capturing from (\S+) to (\S+): /.exec(String(warned.msg)) ?? [];
    expect(from, String(warned.msg)).toBeDefined();
    const withGap = await ask((w) => w.complete.gaps.some((g) => g.node === 'node2' && g.from === from), 'the gap');
    expect(withGap.complete.gaps.filter((g) => g.node === 'node2' && g.from === from)).toEqual([
      { node: 'node2', from, to, cause: 'crashed', reason: expect.stringMatching(new RegExp(`pid ${aProbe}\\) ended without detaching`)) },
    ]);
    // The text output says it in words.
    const text = natlens('who', ['who', podIp, '--collector', collector.address, '--since', '10m', '--plaintext']);
    expect(await text.wait()).toBe(0);
    expect(text.stdout).toContain(`node2 was not capturing from ${from} to ${to} (agent crashed)`);
    expect(text.stdout).toMatch(/node2 lost \d+ events: ringbuf_full on cpu\d+: \d+/);
    await b.stop();
    probesLeft.delete(bProbe);
  }, 180_000);

  // ---- (c) -----------------------------------------------------------------------------------

  it('(c) the node\'s traffic flows while the agent runs, is stopped, killed, restarted and detaches', async () => {
    const small = ['--ring-kb', '4'];
    const a = stdoutAgent(small);
    await ready(a);
    const aProbe = await probePid(a);
    const progs = await onePerHook();
    allFlowed('running', await underLoad(2000));

    // Stopped (SIGSTOP): nobody drains the ring; the programs keep passing every packet and count
    // what the full ring cannot take.
    const before = await kernelRingbufFull(progs);
    const stoppedAt = Date.now();
    process.kill(aProbe, 'SIGSTOP');
    a.kill('SIGSTOP');
    allFlowed('stopped', await underLoad(2500));
    expect(await kernelRingbufFull(progs), 'the stopped agent\'s ring filled').toBeGreaterThan(before);

    // Killed while stopped: the filters stay behind, orphaned.
    allFlowed('killed', await underLoad(2500, async () => {
      await sleep(500);
      process.kill(aProbe, 'SIGKILL');
      a.kill('SIGKILL');
      await a.wait();
      probesLeft.delete(aProbe);
    }));
    expect(await onePerHook()).toEqual(progs);

    // Restarted: the filters are replaced under traffic.
    let b: NatlensProcess | undefined;
    allFlowed('restarting', await underLoad(2000, async () => {
      await sleep(300);
      b = stdoutAgent(small);
      await ready(b);
    }));
    const bProbe = await probePid(b!);
    expect([...(await onePerHook())].some((id) => progs.has(id))).toBe(false);
    // The stopped time counts as not captured: the gap starts before the SIGSTOP.
    const gap = await waitFor(() => gapOf(b!), 5000, 'the gap');
    expect(gap.cause).toBe('crashed');
    expect(ms(gap.from)).toBeLessThanOrEqual(stoppedAt);

    // Detaching (SIGTERM) under traffic, and after.
    allFlowed('detaching', await underLoad(2000, async () => {
      await sleep(300);
      b!.kill('SIGTERM');
      expect(await b!.wait()).toBe(0);
      probesLeft.delete(bProbe);
    }));
    await noneAttached();
  }, 180_000);
});
