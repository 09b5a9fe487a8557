// The agent as a process (bin/natlens agent), on a real lab node (root): the JSON stream contract,
// clean detach on SIGTERM, one agent per namespace, recovery after a crash without duplicate
// filters, and interfaces created after start.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { readFileSync, rmSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labAddPods, labCurl, labDown, labUp, type LabState } from '../../src/lab/lab.js';
import { nsRun } from '../../src/lab/exec.js';
import { connsFor } from '../../src/lab/evidence.js';
import type { AgentEvent } from '../../src/agent/events.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';
import { waitFor } from './support/agents.js';
import { skipReason } from './support/requirements.js';

const skip = skipReason();
if (skip) console.warn(`test/integration/agent-lifecycle.test.ts: skipped: ${skip}`);

const NATLENS = join(PACKAGE_ROOT, 'bin', 'natlens');

interface RunningAgent {
  child: ChildProcessWithoutNullStreams;
  events: AgentEvent[];
  stderr: string[];
  exit: Promise<number | null>;
}

function startAgent(node: string, netnsPath: string, lockDir: string, extra: string[] = []): RunningAgent {
  const child = spawn(process.execPath, [NATLENS, 'agent', '--node', node, '--netns', netnsPath, '--stdout', '--lock-dir', lockDir, '--drop-after', '500ms', ...extra]);
  const events: AgentEvent[] = [];
  const stderr: string[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => events.push(JSON.parse(l) as AgentEvent));
  createInterface({ input: child.stderr }).on('line', (l) => stderr.push(l));
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, events, stderr, exit };
}

/** natlens filters (handle 0x4e4c) on one hook of one interface, as tc lists them. */
async function natlensFilters(netns: string, dev: string, hook: 'ingress' | 'egress'): Promise<number> {
  const r = await nsRun(netns, 'tc', ['filter', 'show', 'dev', dev, hook]);
  return r.stdout.split('\n').filter((l) => /handle 0x4e4c/.test(l)).length;
}

describe.skipIf(!!skip)('natlens agent process lifecycle', () => {
  const prefix = `a${process.pid % 100000}`;
  const lockDir = `/run/natlens/test-${prefix}`;
  let state: LabState;
  const started: RunningAgent[] = [];
  const node2 = (): LabState['nodes'][number] => state.nodes.find((n) => n.name === 'node2')!;

  beforeAll(async () => {
    state = await labUp({ prefix, proxyMode: 'iptables', force: true });
  }, 60_000);

  afterAll(async () => {
    for (const a of started) if (a.child.exitCode === null) a.child.kill('SIGKILL');
    await labDown({ prefix });
    rmSync(lockDir, { recursive: true, force: true });
  }, 60_000);

  it('prints ready, then one conn line per connection, and detaches everything on SIGTERM', async () => {
    const a = startAgent('node2', node2().netnsPath, lockDir);
    started.push(a);
    const ready = await waitFor(() => a.events[0], 15_000, `the ready line (stderr: ${a.stderr.join(' | ')})`);
    expect(ready).toMatchObject({ type: 'ready', node: 'node2', mode: 'tc' });
    expect((ready as { interfaces: string[] }).interfaces).toContain('eth0');
    expect(await natlensFilters(node2().netns, 'eth0', 'egress')).toBe(1);
    expect(await natlensFilters(node2().netns, 'eth0', 'ingress')).toBe(1);

    const r = await labCurl('client', 'nodeport@node2', { prefix });
    expect(r.ok).toBe(true);
    const conn = await waitFor(() => connsFor(a.events, r)[0], 3000, 'the conn line');
    expect(conn).toMatchObject({
      type: 'conn', node: 'node2', proto: 'tcp', family: 4, snat: true, dnat: true,
      orig: { src: '198.51.100.79', sport: r.local!.port, dst: '10.240.0.4', dport: 30080 },
      reply: { src: '10.180.1.136', sport: 8080, dst: r.client_address },
    });
    expect(conn.ts).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
    expect(Math.abs(Date.parse(conn.ts) - Date.now())).toBeLessThan(10_000);

    a.child.kill('SIGTERM');
    expect(await a.exit).toBe(0);
    expect(a.events.at(-1)).toMatchObject({ type: 'stats', node: 'node2', lost: { total: 0 } });
    expect(await natlensFilters(node2().netns, 'eth0', 'egress')).toBe(0);
    expect(await natlensFilters(node2().netns, 'eth0', 'ingress')).toBe(0);
    // The lock file stays, unlocked, saying the capture stopped cleanly (the next agent reports the gap).
    const locks = readdirSync(lockDir);
    expect(locks).toHaveLength(1);
    expect(readFileSync(join(lockDir, locks[0]!), 'utf8')).toMatch(/^\d+\nnatlens-capture-state 1\n(.*\n)*state stopped\n/);
  });

  it('refuses a second agent on the same namespace, naming the one that holds it', async () => {
    const first = startAgent('node2', node2().netnsPath, lockDir);
    started.push(first);
    await waitFor(() => first.events[0], 15_000, 'the first agent\'s ready line');
    const second = startAgent('node2-again', node2().netnsPath, lockDir);
    started.push(second);
    expect(await second.exit).toBe(3);
    expect(second.stderr.join('\n')).toMatch(/another natlens agent is already capturing in .*nl?\w*-node2|already capturing/);
    // The first keeps working.
    const r = await labCurl('client', 'nodeport@node2', { prefix });
    await waitFor(() => connsFor(first.events, r)[0], 3000, 'the first agent still capturing');
    first.child.kill('SIGTERM');
    expect(await first.exit).toBe(0);
  });

  it('after a crash (SIGKILL of agent and probe), a new agent replaces the filters instead of adding to them', async () => {
    const a = startAgent('node2', node2().netnsPath, lockDir);
    started.push(a);
    await waitFor(() => a.events[0], 15_000, 'the ready line');
    // Kill the whole process group of natlens-probe children first so nothing detaches.
    const probePids = (await nsRun(node2().netns, 'sh', ['-c', `pgrep -P ${a.child.pid} natlens-probe || true`])).stdout.trim().split('\n').filter(Boolean).map(Number);
    expect(probePids.length).toBe(1);
    process.kill(probePids[0]!, 'SIGKILL');
    a.child.kill('SIGKILL');
    await a.exit;
    expect(await natlensFilters(node2().netns, 'eth0', 'egress'), 'a crashed probe leaves its filter behind').toBe(1);

    // Traffic still flows with the orphaned filter (it never drops anything).
    expect((await labCurl('client', 'nodeport@node2', { prefix })).ok).toBe(true);

    const b = startAgent('node2', node2().netnsPath, lockDir);
    started.push(b);
    await waitFor(() => b.events[0], 15_000, 'the restarted agent\'s ready line');
    expect(await natlensFilters(node2().netns, 'eth0', 'egress')).toBe(1);
    expect(await natlensFilters(node2().netns, 'eth0', 'ingress')).toBe(1);
    const r = await labCurl('client', 'nodeport@node2', { prefix });
    await waitFor(() => connsFor(b.events, r)[0], 3000, 'capture after restart');
    b.child.kill('SIGTERM');
    expect(await b.exit).toBe(0);
    expect(await natlensFilters(node2().netns, 'eth0', 'egress')).toBe(0);
  });

  it('attaches to interfaces created after it started (a new pod\'s veth)', async () => {
    const a = startAgent('node2', node2().netnsPath, lockDir);
    started.push(a);
    await waitFor(() => a.events[0], 15_000, 'the ready line');
    const [late] = await labAddPods([{ name: 'late-1', node: 'node2', labels: { app: 'late' }, server: 'echo' }], { prefix });
    let attached = 0;
    for (let i = 0; i < 50 && attached === 0; i++) {
      attached = await natlensFilters(node2().netns, late!.hostVeth, 'egress');
      if (!attached) await new Promise((res) => setTimeout(res, 100));
    }
    expect(attached, `natlens filter on the new veth ${late!.hostVeth}`).toBe(1);
    // Traffic to the new pod leaves node2 through the new veth: captured there.
    const r = await labCurl('busybox-1', `${late!.ips[0]}:8080`, { prefix });
    expect(r.ok).toBe(true);
    const conn = await waitFor(() => connsFor(a.events, r)[0], 3000, 'the conn record on the new veth');
    expect(conn.ifname).toBe(late!.hostVeth);
    a.child.kill('SIGTERM');
    expect(await a.exit).toBe(0);
  });

  it('falls back to conntrack events (--mode ctnetlink): both tuples, no ISN, no tc filters', async () => {
    const a = startAgent('node2', node2().netnsPath, lockDir, ['--mode', 'ctnetlink']);
    started.push(a);
    expect(await waitFor(() => a.events[0], 15_000, 'the ready line')).toMatchObject({ type: 'ready', mode: 'ctnetlink' });
    expect(await natlensFilters(node2().netns, 'eth0', 'egress')).toBe(0);
    const r = await labCurl('client', 'nodeport@node2', { prefix });
    const conn = await waitFor(() => connsFor(a.events, r)[0], 3000, 'the conntrack-event conn line');
    expect(conn).toMatchObject({ hook: 'ctnetlink', isn: null, ifname: null, snat: true, dnat: true, reply: { dst: r.client_address } });
    a.child.kill('SIGTERM');
    expect(await a.exit).toBe(0);
  });

  it('reports connection ends with packet and byte counts, and not with --no-ends', async () => {
    for (const ends of [true, false]) {
      const a = startAgent('node2', node2().netnsPath, lockDir, ends ? [] : ['--no-ends']);
      started.push(a);
      await waitFor(() => a.events[0], 15_000, 'the ready line');
      const r = await labCurl('client', 'nodeport@node2', { prefix });
      expect(r.ok).toBe(true);
      await waitFor(() => connsFor(a.events, r)[0], 3000, 'the conn line');
      // Destroy the entry now rather than waiting for conntrack's TIME_WAIT and garbage collection.
      await nsRun(node2().netns, 'conntrack', ['-D', '-p', 'tcp', '--orig-src', r.local!.ip, '--sport', String(r.local!.port)]);
      const endOf = (): AgentEvent | undefined =>
        a.events.find((e) => e.type === 'end' && e.orig.sport === r.local!.port && e.orig.src === r.local!.ip);
      if (ends) {
        const end = await waitFor(endOf, 3000, 'the end line');
        expect(end).toMatchObject({ type: 'end', node: 'node2', proto: 'tcp', snat: true, dnat: true, reply: { dst: r.client_address } });
        if (end.type !== 'end') throw new Error('unreachable');
        // One HTTP exchange: the client sent SYN, ACK, request (and FIN); the server answered.
        expect(end.packets.orig).toBeGreaterThanOrEqual(3);
        expect(end.packets.reply).toBeGreaterThanOrEqual(2);
        expect(end.bytes.reply).toBeGreaterThan(end.packets.reply * 40); // headers + the echo text
      } else {
        await new Promise((res) => setTimeout(res, 1000));
        expect(endOf()).toBeUndefined();
      }
      a.child.kill('SIGTERM');
      expect(await a.exit).toBe(0);
    }
  });
});
