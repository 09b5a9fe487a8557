// The capture benchmark (npm run bench:capture; root): how much does running the natlens agent
// cost a node that NATs short TCP connections as fast as this machine can, and does it capture
// every one of them?
//
// One run, side by side, on a lab of its own (prefix "nlbench", iptables mode):
//   - a NodePort Service "bench" (TCP 80 -> 8080, nodePort 30090) with 4 backend pods on node1 and
//     node3, each running `natlens-load serve`;
//   - the lab's client namespace runs `natlens-load client` against the NodePort on node2, so every
//     connection is DNAT'd + SNAT'd on node2 and forwarded to a backend on another node;
//   - rounds alternate WITHOUT agents and WITH the real `natlens agent` CLI (one per lab node,
//     started before the round, stopped with SIGTERM once its events have drained);
//   - WITH rounds count the node2 "conn" events of the bench traffic (captured), the agents' final
//     stats (lost, ct_miss, ...), and the agents' CPU (Node process + natlens-probe child) and peak RSS.
//
// stdout: a table per round, a summary, and as the LAST line one JSON object. Progress: stderr.
// Exit 0 whenever the figures were measured (even if a target is missed); 1 if they could not be.
//
// Knobs (environment, all optional): NATLENS_BENCH_ROUNDS (3 per mode), NATLENS_BENCH_DURATION_S (5),
// NATLENS_BENCH_CONCURRENCY (see DEFAULTS), NATLENS_BENCH_BACKENDS (4), NATLENS_BENCH_NODEPORTS
// (how many nodePorts of node2 the client spreads over; 1), NATLENS_BENCH_RECORD (1: natlens-load
// --record, to match captures to completed connections by source port), NATLENS_BENCH_PREFIX.
//
// Network safety: every packet stays inside the lab's namespaces; sysctls are set only there.

import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir, cpus, release } from 'node:os';
import { join } from 'node:path';
import { labAddPods, labAddService, labDown, labUp, readLabState, type LabState } from '../src/lab/lab.js';
import { sysctl } from '../src/lab/exec.js';
import { LOAD_BIN, PACKAGE_ROOT } from '../src/util/paths.js';

// ---------------------------------------------------------------- settings

function envInt(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name}='${raw}': expected a whole number ${min}..${max}`);
  return n;
}
function envNum(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`${name}='${raw}': expected a number ${min}..${max}`);
  return n;
}

const PREFIX = process.env['NATLENS_BENCH_PREFIX'] || 'nlbench';
const ROUNDS = envInt('NATLENS_BENCH_ROUNDS', 3, 1, 10);
const DURATION_S = envNum('NATLENS_BENCH_DURATION_S', 5, 1, 30);
const CONCURRENCY = envInt('NATLENS_BENCH_CONCURRENCY', 32, 1, 20000); // 8..64 all saturate both cores here; 32 was best
const BACKENDS = envInt('NATLENS_BENCH_BACKENDS', 4, 1, 16);
const NODEPORTS = envInt('NATLENS_BENCH_NODEPORTS', 1, 1, 8);
const RECORD = envInt('NATLENS_BENCH_RECORD', 1, 0, 1) === 1;
const MAX_CONNS = 2_000_000; // far above anything this machine completes in DURATION_S
const CONNECT_TIMEOUT_MS = 1000;
const NODE_PORT_BASE = 30090;
const INGRESS_NODE = 'node2';
const BACKEND_NODES = ['node1', 'node3'];
const SERVE_MAX_SECONDS = 600; // the backends stop on their own even if everything else fails
const AGENT_STATS_INTERVAL = '1s';
const AGENT_READY_TIMEOUT_MS = 30_000;
const DRAIN_POLL_MS = 200;
const DRAIN_QUIET_POLLS = 3; // captured count unchanged for 3 polls (600 ms) = drained
const DRAIN_MAX_MS = 15_000;
const AGENT_STOP_TIMEOUT_MS = 10_000;
const SETTLE_MS = 1500; // between rounds: conntrack TIME_WAIT (1 s here) and client sockets settle
const TARGETS = { ratio: 0.95, capturedShare: 1, lost: 0 };

const NATLENS_BIN = join(PACKAGE_ROOT, 'bin', 'natlens');
const CLK_TCK = (() => {
  try {
    const v = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(v) && v > 0 ? v : 100;
  } catch {
    return 100;
  }
})();

const log = (msg: string): void => {
  process.stderr.write(`bench: ${msg}\n`);
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- processes we started

/** Every child this process spawned and that may still run: killed (only these PIDs) on exit. */
const owned = new Set<ChildProcess>();
let aborting: string | null = null;

function track(child: ChildProcess): ChildProcess {
  owned.add(child);
  child.once('exit', () => owned.delete(child));
  return child;
}

function killOwned(signal: NodeJS.Signals): void {
  for (const c of owned) {
    if (c.exitCode === null && c.signalCode === null) {
      try {
        c.kill(signal);
      } catch {
        /* already gone */
      }
    }
  }
}

// ---------------------------------------------------------------- /proc

interface ProcSample {
  ticks: number;
  hwmKb: number;
}

function readTicks(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): utime = field 14, stime = field 15.
    return Number(f[11]) + Number(f[12]);
  } catch {
    return null;
  }
}

function readHwmKb(pid: number): number {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function children(pid: number): number[] {
  const out = new Set<number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (c) out.add(Number(c));
      } catch {
        /* thread gone */
      }
    }
  } catch {
    /* process gone */
  }
  return [...out];
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------- natlens-load client

interface LoadResult {
  connections: number;
  failed: number;
  errors: Record<string, number>;
  timeouts: number;
  elapsed_s: number;
  conn_per_s: number;
  attempts: number;
  abandoned: number;
  timeouts_connect?: number;
  timeouts_reply?: number;
  latency_us?: { p50_le: number; p99_le: number; p999_le: number; max: number };
}

async function runClient(state: LabState, targets: string[], durationS: number, recordPath: string | null): Promise<LoadResult> {
  const args = [
    'netns', 'exec', state.client.netns, LOAD_BIN, 'client',
    '--target', targets.join(','),
    '--concurrency', String(CONCURRENCY),
    '--duration-s', String(durationS),
    '--max-conns', String(MAX_CONNS),
    '--connect-timeout-ms', String(CONNECT_TIMEOUT_MS),
    '--json',
  ];
  if (recordPath) args.push('--record', recordPath);
  const child = track(spawn('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d.length + err.length > 8192 ? '' : d));
  const bound = setTimeout(() => child.kill('SIGKILL'), (durationS + 20) * 1000);
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  clearTimeout(bound);
  if (aborting) throw new Error(`aborted (${aborting})`);
  const line = out.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as LoadResult;
  } catch {
    throw new Error(`natlens-load client failed (exit ${code}): ${err.trim() || out.trim() || 'no output'}`);
  }
}

// ---------------------------------------------------------------- agents

interface StatsLine {
  lost: { total: number; ringbuf_full: number; pending_full: number; netlink_lost: number; decode_errors: number };
  counters: Record<string, number>;
}

interface AgentRun {
  node: string;
  child: ChildProcess;
  pid: number;
  probePid: number | null;
  ready: Promise<void>;
  exited: Promise<number | null>;
  conn: number;
  end: number;
  drop: number;
  other: number;
  /** node2 only: conn events of the bench traffic (orig.src = client, orig.dport = a bench nodePort). */
  captured: number;
  capturedKeys: Set<number>;
  capturedBySport: Map<number, number>;
  lastStats: StatsLine | null;
  statsLines: number;
  /** stdout reads and bytes (bytes per read shows how the agent batches its writes). */
  chunks: number;
  bytes: number;
  stderr: string;
}

function startAgent(node: LabState['nodes'][number], bench: { clientIp: string; nodePorts: Set<number>; ingress: boolean }): AgentRun {
  const child = track(
    spawn(process.execPath, [NATLENS_BIN, 'agent', '--node', node.name, '--netns', node.netnsPath, '--stdout', '--stats-interval', AGENT_STATS_INTERVAL], {
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const a: AgentRun = {
    node: node.name, child, pid: child.pid ?? -1, probePid: null,
    ready: Promise.resolve(), exited: Promise.resolve(null),
    conn: 0, end: 0, drop: 0, other: 0, captured: 0, capturedKeys: new Set(), capturedBySport: new Map(),
    lastStats: null, statsLines: 0, chunks: 0, bytes: 0, stderr: '',
  };
  let onReady: () => void = () => undefined;
  let onFail: (e: Error) => void = () => undefined;
  a.ready = new Promise<void>((res, rej) => {
    onReady = res;
    onFail = rej;
  });
  a.exited = new Promise((resolve) => child.once('close', (code) => {
    onFail(new Error(`agent on ${node.name} exited (code ${code}) before it was ready: ${a.stderr.trim()}`));
    resolve(code);
  }));
  child.once('error', (e) => onFail(new Error(`cannot start the agent on ${node.name}: ${e.message}`)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    if (a.stderr.length < 16384) a.stderr += d;
  });

  // Cheap line handling: the stream is ~1 event per connection per node, so only node2's bench
  // "conn" lines get their orig tuple parsed (and only that small object); stats/ready get JSON.parse.
  let rest = '';
  const onLine = (line: string): void => {
    if (line.startsWith('{"type":"conn"')) {
      a.conn++;
      if (!bench.ingress) return;
      const i = line.indexOf('"orig":{');
      const j = line.indexOf('}', i);
      if (i < 0 || j < 0) return;
      const orig = JSON.parse(line.slice(i + 7, j + 1)) as { src: string; sport: number; dst: string; dport: number };
      if (orig.src !== bench.clientIp || !bench.nodePorts.has(orig.dport)) return;
      a.captured++;
      const m = /"isn":(\d+)/.exec(line);
      const isn = m ? Number(m[1]) : 0;
      a.capturedKeys.add(orig.sport * 0x1_0000_0000 + isn);
      a.capturedBySport.set(orig.sport, (a.capturedBySport.get(orig.sport) ?? 0) + 1);
    } else if (line.startsWith('{"type":"end"')) a.end++;
    else if (line.startsWith('{"type":"drop"')) a.drop++;
    else if (line.startsWith('{"type":"stats"')) {
      a.lastStats = JSON.parse(line) as StatsLine;
      a.statsLines++;
    } else if (line.startsWith('{"type":"ready"')) onReady();
    else if (line.trim()) a.other++;
  };
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    a.chunks++;
    a.bytes += chunk.length;
    let start = 0;
    let nl = chunk.indexOf('\n');
    if (nl >= 0 && rest) {
      onLine(rest + chunk.slice(0, nl));
      rest = '';
      start = nl + 1;
      nl = chunk.indexOf('\n', start);
    }
    while (nl >= 0) {
      onLine(chunk.slice(start, nl));
      start = nl + 1;
      nl = chunk.indexOf('\n', start);
    }
    rest += chunk.slice(start);
  });
  return a;
}

function findProbe(a: AgentRun): number | null {
  for (const c of children(a.pid)) if (comm(c) === 'natlens-probe') return c;
  return null;
}

function agentTicks(agents: AgentRun[]): number {
  let t = 0;
  for (const a of agents) {
    t += readTicks(a.pid) ?? 0;
    if (a.probePid) t += readTicks(a.probePid) ?? 0;
  }
  return t;
}

async function stopAgents(agents: AgentRun[]): Promise<void> {
  for (const a of agents) if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGTERM');
  const bound = sleep(AGENT_STOP_TIMEOUT_MS).then(() => 'timeout' as const);
  const res = await Promise.race([Promise.all(agents.map((a) => a.exited)).then(() => 'ok' as const), bound]);
  if (res === 'timeout') {
    for (const a of agents) {
      if (a.child.exitCode === null && a.child.signalCode === null) {
        log(`agent on ${a.node} did not exit within ${AGENT_STOP_TIMEOUT_MS} ms of SIGTERM: SIGKILL`);
        a.child.kill('SIGKILL');
      }
    }
    await Promise.race([Promise.all(agents.map((a) => a.exited)), sleep(3000)]);
  }
  // The probe is the agent's child: if the agent died without stopping it, stop it (only that PID).
  for (const a of agents) {
    if (a.probePid && comm(a.probePid) === 'natlens-probe') {
      try {
        process.kill(a.probePid, 'SIGTERM');
        log(`probe ${a.probePid} of the agent on ${a.node} outlived it: SIGTERM`);
      } catch {
        /* gone */
      }
    }
  }
}

// ---------------------------------------------------------------- rounds

interface Round {
  n: number;
  mode: 'without' | 'with';
  load: LoadResult;
  // WITH only:
  captured?: number;
  capturedDistinct?: number;
  lost?: number;
  agentCpuShare?: number;
  agentCpuShareDuringLoad?: number;
  agentRssMb?: number;
  drainMs?: number;
  ctMiss?: number;
  connSeen?: number;
  ringbufFull?: number;
  benchCpuShare?: number;
  perAgent?: Array<{
    node: string; conn: number; end: number; drop: number; lost: number; ct_miss: number; conn_seen: number; records_out: number;
    rss_mb: number; cpu_share: number; cpu_node: number; cpu_probe: number; bytes_per_read: number;
  }>;
  /** completed connections (by client source port, from --record) without a capture, and captures without a completed connection. */
  completedUncaptured?: number;
  capturedNotCompleted?: number;
}

function readRecord(path: string): Map<number, number> {
  const bySport = new Map<number, number>();
  if (!existsSync(path)) return bySport;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line) continue;
    const p = Number(line.split(' ')[1]);
    if (Number.isInteger(p)) bySport.set(p, (bySport.get(p) ?? 0) + 1);
  }
  return bySport;
}

async function roundWithout(n: number, state: LabState, targets: string[], recordPath: string | null): Promise<Round> {
  const load = await runClient(state, targets, DURATION_S, recordPath);
  return { n, mode: 'without', load };
}

async function roundWith(n: number, state: LabState, targets: string[], nodePorts: Set<number>, recordPath: string | null): Promise<Round> {
  const clientIp = state.client.ips.find((ip) => !ip.includes(':')) as string;
  const agents = state.nodes.map((node) => startAgent(node, { clientIp, nodePorts, ingress: node.name === INGRESS_NODE }));
  try {
    const readyBound = sleep(AGENT_READY_TIMEOUT_MS).then(() => {
      throw new Error(`agents not ready within ${AGENT_READY_TIMEOUT_MS / 1000} s`);
    });
    await Promise.race([Promise.all(agents.map((a) => a.ready)), readyBound]);
    for (const a of agents) {
      a.probePid = findProbe(a);
      if (!a.probePid) log(`warning: no natlens-probe child found for the agent on ${a.node} (pid ${a.pid})`);
    }
    await sleep(300); // let the agents settle after attach (their start-up CPU is not counted)
    const ingress = agents.find((a) => a.node === INGRESS_NODE) as AgentRun;
    const before = agents.map((a) => ({ node: readTicks(a.pid) ?? 0, probe: a.probePid ? (readTicks(a.probePid) ?? 0) : 0 }));
    for (const a of agents) {
      a.chunks = 0;
      a.bytes = 0;
    }
    const ticks0 = agentTicks(agents);
    const bench0 = process.cpuUsage();
    const t0 = performance.now();
    const load = await runClient(state, targets, DURATION_S, recordPath);
    const t1 = performance.now();
    const ticks1 = agentTicks(agents);

    // Drain: wait until node2's captured count stops rising (bounded).
    let last = ingress.captured;
    let quiet = 0;
    let lastRise = performance.now();
    while (performance.now() - t1 < DRAIN_MAX_MS && quiet < DRAIN_QUIET_POLLS) {
      await sleep(DRAIN_POLL_MS);
      if (aborting) throw new Error(`aborted (${aborting})`);
      if (ingress.captured !== last) {
        last = ingress.captured;
        quiet = 0;
        lastRise = performance.now();
      } else quiet++;
    }
    const ticks2 = agentTicks(agents);
    const benchCpu = process.cpuUsage(bench0);
    const t2 = performance.now();
    const perCpu = agents.map((a, i) => ({
      node: ((readTicks(a.pid) ?? 0) - (before[i]?.node ?? 0)) / CLK_TCK,
      probe: ((a.probePid ? (readTicks(a.probePid) ?? 0) : 0) - (before[i]?.probe ?? 0)) / CLK_TCK,
    }));
    const rss = agents.map((a) => (readHwmKb(a.pid) + (a.probePid ? readHwmKb(a.probePid) : 0)) / 1024);

    await stopAgents(agents);

    const loadWall = (t1 - t0) / 1000;
    const round: Round = {
      n, mode: 'with', load,
      captured: ingress.captured,
      capturedDistinct: ingress.capturedKeys.size,
      lost: agents.reduce((s, a) => s + (a.lastStats?.lost.total ?? 0), 0),
      // All the CPU the agents spent on this round's traffic (load + drain) per second of load.
      agentCpuShare: (ticks2 - ticks0) / CLK_TCK / loadWall,
      agentCpuShareDuringLoad: (ticks1 - ticks0) / CLK_TCK / loadWall,
      agentRssMb: Math.max(...rss),
      drainMs: Math.round(lastRise - t1),
      ctMiss: agents.reduce((s, a) => s + (a.lastStats?.counters['ct_miss'] ?? 0), 0),
      connSeen: agents.reduce((s, a) => s + (a.lastStats?.counters['conn_seen'] ?? 0), 0),
      ringbufFull: agents.reduce((s, a) => s + (a.lastStats?.lost.ringbuf_full ?? 0), 0),
      benchCpuShare: (benchCpu.user + benchCpu.system) / 1e6 / ((t2 - t0) / 1000),
      perAgent: agents.map((a, i) => ({
        node: a.node, conn: a.conn, end: a.end, drop: a.drop,
        lost: a.lastStats?.lost.total ?? -1,
        ct_miss: a.lastStats?.counters['ct_miss'] ?? -1,
        conn_seen: a.lastStats?.counters['conn_seen'] ?? -1,
        records_out: a.lastStats?.counters['records_out'] ?? -1,
        rss_mb: round1(rss[i] ?? 0),
        cpu_share: round3(((perCpu[i]?.node ?? 0) + (perCpu[i]?.probe ?? 0)) / loadWall),
        cpu_node: round3((perCpu[i]?.node ?? 0) / loadWall),
        cpu_probe: round3((perCpu[i]?.probe ?? 0) / loadWall),
        bytes_per_read: a.chunks ? Math.round(a.bytes / a.chunks) : 0,
      })),
    };
    for (const a of agents) {
      if (!a.lastStats) log(`warning: the agent on ${a.node} printed no stats line (stderr: ${a.stderr.trim().slice(0, 300)})`);
      const warn = a.stderr.trim();
      if (warn) log(`agent ${a.node} stderr: ${warn.split('\n').slice(0, 5).join(' | ')}`);
    }
    if (recordPath) {
      const completed = readRecord(recordPath);
      let missing = 0;
      let extra = 0;
      for (const [p, c] of completed) missing += Math.max(0, c - (ingress.capturedBySport.get(p) ?? 0));
      for (const [p, c] of ingress.capturedBySport) extra += Math.max(0, c - (completed.get(p) ?? 0));
      round.completedUncaptured = missing;
      round.capturedNotCompleted = extra;
    }
    return round;
  } finally {
    await stopAgents(agents);
  }
}

// ---------------------------------------------------------------- output

const round1 = (x: number): number => Math.round(x * 10) / 10;
const round3 = (x: number): number => Math.round(x * 1000) / 1000;
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

function printRound(r: Round): void {
  const l = r.load;
  const base = [
    `round ${r.n} ${r.mode.toUpperCase()} agents: ${l.conn_per_s.toFixed(0)} conn/s, ${l.connections} connections in ${l.elapsed_s.toFixed(2)} s` +
      ` (attempts ${l.attempts}, failed ${l.failed}, timeouts ${l.timeouts}, abandoned ${l.abandoned}` +
      `${Object.keys(l.errors).length ? `, errors ${JSON.stringify(l.errors)}` : ''}; p99 <= ${l.latency_us?.p99_le ?? '?'} us)`,
  ];
  if (r.mode === 'with') {
    base.push(
      `  captured on ${INGRESS_NODE}: ${r.captured} (${r.capturedDistinct} distinct sport+isn) = ${pct((r.captured ?? 0) / l.connections)} of completed, ${pct((r.captured ?? 0) / l.attempts)} of attempts;` +
        ` lost ${r.lost}, ct_miss ${r.ctMiss}, drain ${r.drainMs} ms`,
    );
    if (r.completedUncaptured !== undefined) {
      base.push(`  by source port: completed but not captured ${r.completedUncaptured}, captured but not completed ${r.capturedNotCompleted}`);
    }
    base.push(
      `  agents: cpu ${r.agentCpuShare?.toFixed(3)} of one core (during load only ${r.agentCpuShareDuringLoad?.toFixed(3)}), peak rss ${r.agentRssMb?.toFixed(1)} MB; bench reader cpu ${r.benchCpuShare?.toFixed(3)}`,
    );
    const rows = [['agent', 'conn', 'end', 'drop', 'lost', 'ct_miss', 'conn_seen', 'records_out', 'cpu', '(node', 'probe)', 'rss_mb', 'B/read']];
    for (const a of r.perAgent ?? []) {
      rows.push([
        a.node, String(a.conn), String(a.end), String(a.drop), String(a.lost), String(a.ct_miss), String(a.conn_seen), String(a.records_out),
        a.cpu_share.toFixed(3), a.cpu_node.toFixed(3), a.cpu_probe.toFixed(3), a.rss_mb.toFixed(1), String(a.bytes_per_read),
      ]);
    }
    base.push(table(rows).replace(/^/gm, '    '));
  }
  process.stdout.write(base.join('\n') + '\n');
}

const pct = (x: number): string => (Number.isFinite(x) ? `${(x * 100).toFixed(2)}%` : 'n/a');

// ---------------------------------------------------------------- main

let cleanupPromise: Promise<void> | null = null;
function cleanup(): Promise<void> {
  cleanupPromise ??= (async () => {
    killOwned('SIGTERM');
    for (let i = 0; i < 40 && owned.size; i++) await sleep(50);
    killOwned('SIGKILL');
    log(`tearing down lab "${PREFIX}"`);
    try {
      await labDown({ prefix: PREFIX, progress: log });
    } catch (err) {
      log(`lab down failed: ${(err as Error).message}`);
    }
  })();
  return cleanupPromise;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) throw new Error('run as root (eBPF, network namespaces, netfilter)');
  for (const f of [LOAD_BIN, NATLENS_BIN]) if (!existsSync(f)) throw new Error(`${f} missing: build first (bash scripts/build.sh)`);
  const started = performance.now();
  const tmp = mkdtempSync(join(tmpdir(), 'natlens-bench-'));
  try {
    log(`lab "${PREFIX}" up (iptables mode)`);
    await labUp({ prefix: PREFIX, proxyMode: 'iptables', force: true, progress: log });
    const backends = Array.from({ length: BACKENDS }, (_, i) => ({
      name: `bench-${i}`,
      node: BACKEND_NODES[i % BACKEND_NODES.length] as string,
      labels: { app: 'natlens-bench' },
      server: {
        command: [LOAD_BIN, 'serve', '--port', '8080', '--max-seconds', String(SERVE_MAX_SECONDS)],
        readyPort: 8080,
        cmdlineMatch: `${LOAD_BIN} serve --port 8080 --max-seconds ${SERVE_MAX_SECONDS}`,
      },
    }));
    await labAddPods(backends, { prefix: PREFIX, progress: log });
    const nodePorts = Array.from({ length: NODEPORTS }, (_, i) => NODE_PORT_BASE + i);
    await labAddService(
      {
        name: 'bench',
        type: 'NodePort',
        selector: { app: 'natlens-bench' },
        ports: nodePorts.map((np, i) => ({ name: i === 0 ? 'http' : `http${i}`, protocol: 'TCP' as const, port: 80 + i, targetPort: 8080, nodePort: np })),
      },
      { prefix: PREFIX },
    );
    const state = readLabState(PREFIX);
    if (!state) throw new Error('lab state vanished');
    const ingress = state.nodes.find((n) => n.name === INGRESS_NODE);
    if (!ingress) throw new Error(`no ${INGRESS_NODE} in the lab`);
    const ingressIp = ingress.internalIPs.find((ip) => !ip.includes(':')) as string;
    const targets = nodePorts.map((np) => `${ingressIp}:${np}`);

    // Per-namespace sysctls, inside the lab only.
    for (const n of state.nodes) await sysctl(n.netns, { 'net.netfilter.nf_conntrack_tcp_timeout_time_wait': 1 });
    await sysctl(state.client.netns, { 'net.ipv4.ip_local_port_range': '1024 65535', 'net.ipv4.tcp_tw_reuse': 1 });

    // Smoke: the path works before anything is measured.
    const smoke = await runClient(state, targets, 1, null);
    log(`smoke run: ${smoke.connections} connections, ${smoke.conn_per_s} conn/s, failed ${smoke.failed} ${JSON.stringify(smoke.errors)}`);
    if (smoke.connections === 0) throw new Error(`no connection got through ${targets.join(',')}: ${JSON.stringify(smoke)}`);
    await sleep(SETTLE_MS);

    const rounds: Round[] = [];
    const nodePortSet = new Set(nodePorts);
    for (let i = 0; i < ROUNDS * 2; i++) {
      if (aborting) throw new Error(`aborted (${aborting})`);
      const mode = i % 2 === 0 ? 'without' : 'with';
      const n = Math.floor(i / 2) + 1;
      const rec = RECORD ? join(tmp, `round-${i}.txt`) : null;
      log(`round ${n} ${mode} agents: ${DURATION_S} s, concurrency ${CONCURRENCY}, targets ${targets.join(',')}`);
      const r = mode === 'without' ? await roundWithout(n, state, targets, rec) : await roundWith(n, state, targets, nodePortSet, rec);
      if (rec) rmSync(rec, { force: true });
      rounds.push(r);
      printRound(r);
      await sleep(SETTLE_MS);
    }

    // ------------------------------------------------------------ summary
    const wo = rounds.filter((r) => r.mode === 'without');
    const wi = rounds.filter((r) => r.mode === 'with');
    const withoutMed = median(wo.map((r) => r.load.conn_per_s));
    const withMed = median(wi.map((r) => r.load.conn_per_s));
    const ratio = withMed / withoutMed;
    const sum = (f: (r: Round) => number): number => wi.reduce((s, r) => s + f(r), 0);
    const connections = sum((r) => r.load.connections);
    const attempts = sum((r) => r.load.attempts);
    const captured = sum((r) => r.captured ?? 0);
    const capturedDistinct = sum((r) => r.capturedDistinct ?? 0);
    const lost = sum((r) => r.lost ?? 0);
    const ctMiss = sum((r) => r.ctMiss ?? 0);
    const cpuShare = median(wi.map((r) => r.agentCpuShare ?? 0));
    const cpuShareLoad = median(wi.map((r) => r.agentCpuShareDuringLoad ?? 0));
    const rssMb = Math.max(...wi.map((r) => r.agentRssMb ?? 0));
    const uncaptured = RECORD ? sum((r) => r.completedUncaptured ?? 0) : null;
    const capturedNotCompleted = RECORD ? sum((r) => r.capturedNotCompleted ?? 0) : null;
    const capturedShare = captured / connections;
    const okRatio = ratio >= TARGETS.ratio;
    // 100% captured: every completed connection has its capture (by source port when recorded).
    const okCaptured = uncaptured !== null ? uncaptured === 0 : captured >= connections;
    const okLost = lost === TARGETS.lost;

    const rows = [['', 'conn/s', 'connections', 'attempts', 'failed', 'captured', 'lost', 'agent cpu', 'rss MB']];
    for (const r of rounds) {
      rows.push([
        `${r.n} ${r.mode}`, r.load.conn_per_s.toFixed(0), String(r.load.connections), String(r.load.attempts), String(r.load.failed),
        r.mode === 'with' ? String(r.captured) : '-', r.mode === 'with' ? String(r.lost) : '-',
        r.mode === 'with' ? (r.agentCpuShare ?? 0).toFixed(3) : '-', r.mode === 'with' ? (r.agentRssMb ?? 0).toFixed(1) : '-',
      ]);
    }
    const summary = [
      '',
      `capture bench: ${ROUNDS}+${ROUNDS} rounds of ${DURATION_S} s, concurrency ${CONCURRENCY}, ${BACKENDS} backends on ${BACKEND_NODES.join('+')}, NodePort ${nodePorts.join(',')} on ${INGRESS_NODE} (SNAT+DNAT), ${cpus().length} CPUs, kernel ${release()}`,
      table(rows),
      '',
      `conn/s without agents (median)  ${withoutMed.toFixed(0)}`,
      `conn/s with agents (median)     ${withMed.toFixed(0)}`,
      `ratio                           ${ratio.toFixed(3)}   target >= ${TARGETS.ratio}: ${okRatio ? 'PASS' : 'MISS'}`,
      `connections (WITH rounds)       ${connections} completed, ${attempts} attempts`,
      `captured on ${INGRESS_NODE}                ${captured} (${capturedDistinct} distinct) = ${pct(capturedShare)} of completed` +
        (uncaptured !== null ? `; completed without a capture: ${uncaptured}, captures of attempts that did not complete: ${capturedNotCompleted}` : '') +
        `   target 100%: ${okCaptured ? 'PASS' : 'MISS'}`,
      `lost (agents' final stats)      ${lost}   target 0: ${okLost ? 'PASS' : 'MISS'}   (ct_miss ${ctMiss})`,
      `agent cpu (share of one core)   ${cpuShare.toFixed(3)} (median; load + drain CPU per second of load; during load only ${cpuShareLoad.toFixed(3)})`,
      `agent peak rss (node + probe)   ${rssMb.toFixed(1)} MB`,
      `wall time                       ${((performance.now() - started) / 1000).toFixed(0)} s`,
    ];
    process.stdout.write(summary.join('\n') + '\n');
    const result = {
      conn_per_s_without: Math.round(withoutMed),
      conn_per_s_with: Math.round(withMed),
      ratio: round3(ratio),
      connections,
      captured,
      lost,
      agent_cpu_share: round3(cpuShare),
      agent_rss_mb: round1(rssMb),
      attempts,
      captured_distinct: capturedDistinct,
      completed_uncaptured: uncaptured,
      captured_not_completed: capturedNotCompleted,
      ct_miss: ctMiss,
      agent_cpu_share_during_load: round3(cpuShareLoad),
      targets: { ratio: okRatio, captured: okCaptured, lost: okLost },
      rounds: ROUNDS,
      duration_s: DURATION_S,
      concurrency: CONCURRENCY,
      backends: BACKENDS,
      node_ports: nodePorts,
    };
    process.stdout.write(JSON.stringify(result) + '\n');
    return 0;
  } finally {
    await cleanup();
    rmSync(tmp, { recursive: true, force: true });
  }
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (aborting) return;
    aborting = sig;
    log(`${sig}: stopping what this bench started and removing the lab`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  async (err: unknown) => {
    log(`failed: ${err instanceof Error ? err.message : String(err)}`);
    await cleanup();
    process.exitCode = 1;
  },
);
