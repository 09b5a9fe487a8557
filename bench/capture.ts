// The capture benchmark (npm run bench:capture; root): how much does running the natlens agent
// cost a node that NATs short TCP connections as fast as this machine can, where does that cost
// come from, and does the agent capture every connection?
//
// One run, side by side, on a lab of its own (prefix "nlbench", iptables mode):
//   - a NodePort Service "bench" (TCP 80 -> 8080, nodePort 30090) with 4 backend pods on node1 and
//     node3, each running `natlens-load serve`;
//   - the lab's client namespace runs `natlens-load client` against the NodePort on node2, so every
//     connection is DNAT'd + SNAT'd on node2 and forwarded to a backend on another node;
//   - four arms, one capture set-up per lab node each, in alternating rounds (serpentine order:
//     without, kernel, probe, with, then with, probe, kernel, without, ...) so drift hits all alike:
//       without  no capture;
//       kernel   `natlens-probe run --obj natlens.bpf.o --netns NODE --no-ct-end`, stdout to /dev/null:
//                the tc programs + ring buffer drained by the C reader; no Node, no ctnetlink;
//       probe    `natlens-probe run --obj natlens.bpf.o --netns NODE` (defaults: adds the ctnetlink
//                DESTROY reader -> END records), stdout to /dev/null; no Node;
//       with     the real `natlens agent` CLI (Node + its natlens-probe child), stdout read by the bench;
//     capture processes are started (and ready) before the round and stopped with SIGTERM after it;
//   - WITH rounds count the node2 "conn" events of the bench traffic (captured), the agents' final
//     stats (lost, ct_miss, ...), and the agents' CPU (Node process + natlens-probe child) and peak RSS;
//   - every round samples /proc/stat (whole machine) during the load: busy share and CPU per connection.
//
// stdout: a table per round, a summary, and as the LAST line one JSON object. Progress: stderr.
// Exit 0 whenever the figures were measured (even if a target is missed); 1 if they could not be.
//
// Knobs (environment, all optional): NATLENS_BENCH_ROUNDS (4 per arm), NATLENS_BENCH_DURATION_S (4),
// NATLENS_BENCH_ARMS (comma list, a subset of without,kernel,probe,with that keeps without and with;
// all four), NATLENS_BENCH_CONCURRENCY (see DEFAULTS), NATLENS_BENCH_BACKENDS (4),
// NATLENS_BENCH_NODEPORTS (how many nodePorts of node2 the client spreads over; 1),
// NATLENS_BENCH_RECORD (1: natlens-load --record, to match captures to completed connections by
// source port), NATLENS_BENCH_PREFIX.
//
// Network safety: every packet stays inside the lab's namespaces; sysctls are set only there.

import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, cpus, release } from 'node:os';
import { join } from 'node:path';
import { labAddPods, labAddService, labDown, labUp, readLabState, type LabState } from '../src/lab/lab.js';
import { sysctl } from '../src/lab/exec.js';
import { BPF_OBJECT, LOAD_BIN, PACKAGE_ROOT, PROBE_BIN } from '../src/util/paths.js';
import { childPids, comm, readCpuTicks, readMachineTicks, readStatusKb, type MachineTicks } from './proc.js';

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
const ROUNDS = envInt('NATLENS_BENCH_ROUNDS', 4, 1, 10);
const DURATION_S = envNum('NATLENS_BENCH_DURATION_S', 4, 1, 30);
type Arm = 'without' | 'kernel' | 'probe' | 'with';
const ALL_ARMS: readonly Arm[] = ['without', 'kernel', 'probe', 'with'];
const ARMS: Arm[] = (() => {
  const raw = process.env['NATLENS_BENCH_ARMS'];
  if (raw === undefined || raw === '') return [...ALL_ARMS];
  const want = new Set(raw.split(',').map((x) => x.trim()).filter(Boolean));
  for (const a of want) if (!(ALL_ARMS as readonly string[]).includes(a)) throw new Error(`NATLENS_BENCH_ARMS: unknown arm '${a}' (${ALL_ARMS.join(',')})`);
  if (!want.has('without') || !want.has('with')) throw new Error('NATLENS_BENCH_ARMS must include without and with');
  return ALL_ARMS.filter((a) => want.has(a));
})();
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
/** kernel/probe arms: CPU is also counted for this long after the load (like the WITH arm's minimal drain). */
const PROBE_TAIL_MS = DRAIN_POLL_MS * DRAIN_QUIET_POLLS;
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

/** Whole-machine CPU time from the "cpu" line of /proc/stat, in ticks (CLK_TCK). */
interface SysUse {
  /** busy share of all CPUs during the load (0..1). */
  busyShare: number;
  softirqShare: number;
  /** busy CPU time of the whole machine per completed connection, microseconds. */
  usPerConn: number;
  softirqUsPerConn: number;
}

function sysUse(a: MachineTicks | null, b: MachineTicks | null, connections: number): SysUse | undefined {
  if (!a || !b || b.total <= a.total) return undefined;
  const dt = b.total - a.total;
  const us = (ticks: number): number => (connections > 0 ? (ticks / CLK_TCK) * 1e6 / connections : 0);
  return {
    busyShare: (b.busy - a.busy) / dt,
    softirqShare: (b.softirq - a.softirq) / dt,
    usPerConn: us(b.busy - a.busy),
    softirqUsPerConn: us(b.softirq - a.softirq),
  };
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
  for (const c of childPids(a.pid)) if (comm(c) === 'natlens-probe') return c;
  return null;
}

function agentTicks(agents: AgentRun[]): number {
  let t = 0;
  for (const a of agents) {
    t += readCpuTicks(a.pid) ?? 0;
    if (a.probePid) t += readCpuTicks(a.probePid) ?? 0;
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
      // The next arm captures in the same namespace (one probe per netns): wait for it, bounded.
      for (let i = 0; i < 50 && comm(a.probePid) === 'natlens-probe'; i++) await sleep(100);
    }
  }
}

// ---------------------------------------------------------------- bare natlens-probe (kernel / probe arms)

interface ProbeRun {
  node: string;
  child: ChildProcess;
  pid: number;
  ready: Promise<void>;
  exited: Promise<number | null>;
  stderr: string;
}

/** natlens-probe alone in one node namespace, records to /dev/null (no reader but its own C loop). */
function startBareProbe(node: LabState['nodes'][number], ctEnd: boolean): ProbeRun {
  const args = ['run', '--obj', BPF_OBJECT, '--netns', node.netnsPath];
  if (!ctEnd) args.push('--no-ct-end');
  const devNull = openSync('/dev/null', 'w');
  let child: ChildProcess;
  try {
    child = track(spawn(PROBE_BIN, args, { stdio: ['ignore', devNull, 'pipe'] }));
  } finally {
    closeSync(devNull); // the child has its own copy
  }
  const p: ProbeRun = { node: node.name, child, pid: child.pid ?? -1, ready: Promise.resolve(), exited: Promise.resolve(null), stderr: '' };
  let onReady: () => void = () => undefined;
  let onFail: (e: Error) => void = () => undefined;
  p.ready = new Promise<void>((res, rej) => {
    onReady = res;
    onFail = rej;
  });
  p.exited = new Promise((resolve) => child.once('close', (code) => {
    onFail(new Error(`natlens-probe on ${node.name} exited (code ${code}) before it was ready: ${p.stderr.trim().slice(0, 500)}`));
    resolve(code);
  }));
  child.once('error', (e) => onFail(new Error(`cannot start natlens-probe on ${node.name}: ${e.message}`)));
  let rest = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    if (p.stderr.length < 16384) p.stderr += d;
    rest += d;
    let nl = rest.indexOf('\n');
    while (nl >= 0) {
      const line = rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      if (line.includes('"ready"')) {
        try {
          if ((JSON.parse(line) as { event?: string }).event === 'ready') onReady();
        } catch {
          /* not JSON */
        }
      }
      nl = rest.indexOf('\n');
    }
    if (rest.length > 65536) rest = '';
  });
  return p;
}

async function stopBareProbes(probes: ProbeRun[]): Promise<void> {
  const running = (p: ProbeRun): boolean => p.child.exitCode === null && p.child.signalCode === null;
  for (const p of probes) if (running(p)) p.child.kill('SIGTERM');
  const res = await Promise.race([Promise.all(probes.map((p) => p.exited)).then(() => 'ok' as const), sleep(AGENT_STOP_TIMEOUT_MS).then(() => 'timeout' as const)]);
  if (res === 'timeout') {
    for (const p of probes) {
      if (running(p)) {
        log(`natlens-probe on ${p.node} did not exit within ${AGENT_STOP_TIMEOUT_MS} ms of SIGTERM: SIGKILL`);
        p.child.kill('SIGKILL');
      }
    }
    await Promise.race([Promise.all(probes.map((p) => p.exited)), sleep(3000)]);
  }
}

// ---------------------------------------------------------------- rounds

interface Round {
  n: number;
  mode: Arm;
  load: LoadResult;
  /** whole machine, during the load. */
  sys?: SysUse;
  // kernel / probe / with: CPU of the capture processes per second of load, share of ONE core, summed
  // over the 3 nodes; "Load" = during the load only, else load + drain (with) or + PROBE_TAIL_MS.
  probeCpu?: number;
  probeCpuLoad?: number;
  nodeCpu?: number;
  nodeCpuLoad?: number;
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
  const s0 = readMachineTicks();
  const load = await runClient(state, targets, DURATION_S, recordPath);
  const s1 = readMachineTicks();
  return { n, mode: 'without', load, sys: sysUse(s0, s1, load.connections) };
}

/** kernel arm (ctEnd false) or probe arm (ctEnd true): one bare natlens-probe per lab node. */
async function roundProbe(n: number, arm: 'kernel' | 'probe', state: LabState, targets: string[], recordPath: string | null): Promise<Round> {
  const probes = state.nodes.map((node) => startBareProbe(node, arm === 'probe'));
  try {
    const readyBound = sleep(AGENT_READY_TIMEOUT_MS).then(() => {
      throw new Error(`natlens-probe not ready within ${AGENT_READY_TIMEOUT_MS / 1000} s`);
    });
    await Promise.race([Promise.all(probes.map((p) => p.ready)), readyBound]);
    await sleep(300); // as for the agents: start-up CPU is not counted
    const ticks = (): number => probes.reduce((s, p) => s + (readCpuTicks(p.pid) ?? 0), 0);
    const ticks0 = ticks();
    const s0 = readMachineTicks();
    const t0 = performance.now();
    const load = await runClient(state, targets, DURATION_S, recordPath);
    const t1 = performance.now();
    const s1 = readMachineTicks();
    const ticks1 = ticks();
    await sleep(PROBE_TAIL_MS);
    if (aborting) throw new Error(`aborted (${aborting})`);
    const ticks2 = ticks();
    for (const p of probes) {
      if (p.child.exitCode !== null || p.child.signalCode !== null) throw new Error(`natlens-probe on ${p.node} exited during the round: ${p.stderr.trim().slice(0, 500)}`);
    }
    const loadWall = (t1 - t0) / 1000;
    await stopBareProbes(probes);
    for (const p of probes) {
      const errs = p.stderr.split('\n').filter((l) => /"event":"(warn|error)"/.test(l));
      if (errs.length) log(`natlens-probe ${p.node} (${arm}): ${errs.slice(0, 5).join(' | ')}`);
    }
    return {
      n, mode: arm, load, sys: sysUse(s0, s1, load.connections),
      probeCpu: (ticks2 - ticks0) / CLK_TCK / loadWall,
      probeCpuLoad: (ticks1 - ticks0) / CLK_TCK / loadWall,
    };
  } finally {
    await stopBareProbes(probes);
  }
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
    const before = agents.map((a) => ({ node: readCpuTicks(a.pid) ?? 0, probe: a.probePid ? (readCpuTicks(a.probePid) ?? 0) : 0 }));
    for (const a of agents) {
      a.chunks = 0;
      a.bytes = 0;
    }
    const ticks0 = agentTicks(agents);
    const bench0 = process.cpuUsage();
    const s0 = readMachineTicks();
    const t0 = performance.now();
    const load = await runClient(state, targets, DURATION_S, recordPath);
    const t1 = performance.now();
    const s1 = readMachineTicks();
    const ticks1 = agentTicks(agents);
    const mid = agents.map((a) => ({ node: readCpuTicks(a.pid) ?? 0, probe: a.probePid ? (readCpuTicks(a.probePid) ?? 0) : 0 }));

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
      node: ((readCpuTicks(a.pid) ?? 0) - (before[i]?.node ?? 0)) / CLK_TCK,
      probe: ((a.probePid ? (readCpuTicks(a.probePid) ?? 0) : 0) - (before[i]?.probe ?? 0)) / CLK_TCK,
    }));
    const hwmKb = (pid: number): number => readStatusKb(pid, ['VmHWM'])?.VmHWM ?? 0;
    const rss = agents.map((a) => (hwmKb(a.pid) + (a.probePid ? hwmKb(a.probePid) : 0)) / 1024);

    await stopAgents(agents);

    const loadWall = (t1 - t0) / 1000;
    const sumOf = (xs: number[]): number => xs.reduce((x, y) => x + y, 0);
    const round: Round = {
      n, mode: 'with', load, sys: sysUse(s0, s1, load.connections),
      nodeCpu: sumOf(perCpu.map((c) => c.node)) / loadWall,
      probeCpu: sumOf(perCpu.map((c) => c.probe)) / loadWall,
      nodeCpuLoad: sumOf(mid.map((m, i) => m.node - (before[i]?.node ?? 0))) / CLK_TCK / loadWall,
      probeCpuLoad: sumOf(mid.map((m, i) => m.probe - (before[i]?.probe ?? 0))) / CLK_TCK / loadWall,
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
    `round ${r.n} ${r.mode.toUpperCase()}: ${l.conn_per_s.toFixed(0)} conn/s, ${l.connections} connections in ${l.elapsed_s.toFixed(2)} s` +
      ` (attempts ${l.attempts}, failed ${l.failed}, timeouts ${l.timeouts}, abandoned ${l.abandoned}` +
      `${Object.keys(l.errors).length ? `, errors ${JSON.stringify(l.errors)}` : ''}; p99 <= ${l.latency_us?.p99_le ?? '?'} us)`,
  ];
  if (r.sys) {
    base.push(
      `  machine during load: busy ${pct(r.sys.busyShare)} (softirq ${pct(r.sys.softirqShare)}), ${r.sys.usPerConn.toFixed(1)} us CPU per connection (softirq ${r.sys.softirqUsPerConn.toFixed(1)})`,
    );
  }
  if (r.mode === 'kernel' || r.mode === 'probe') {
    base.push(`  natlens-probe (all nodes): cpu ${r.probeCpu?.toFixed(3)} of one core (during load only ${r.probeCpuLoad?.toFixed(3)})`);
  }
  if (r.mode === 'with') {
    base.push(
      `  captured on ${INGRESS_NODE}: ${r.captured} (${r.capturedDistinct} distinct sport+isn) = ${pct((r.captured ?? 0) / l.connections)} of completed, ${pct((r.captured ?? 0) / l.attempts)} of attempts;` +
        ` lost ${r.lost}, ct_miss ${r.ctMiss}, drain ${r.drainMs} ms`,
    );
    if (r.completedUncaptured !== undefined) {
      base.push(`  by source port: completed but not captured ${r.completedUncaptured}, captured but not completed ${r.capturedNotCompleted}`);
    }
    base.push(
      `  agents: cpu ${r.agentCpuShare?.toFixed(3)} of one core = node ${r.nodeCpu?.toFixed(3)} + probe ${r.probeCpu?.toFixed(3)}` +
        ` (during load only ${r.agentCpuShareDuringLoad?.toFixed(3)} = ${r.nodeCpuLoad?.toFixed(3)} + ${r.probeCpuLoad?.toFixed(3)}), peak rss ${r.agentRssMb?.toFixed(1)} MB; bench reader cpu ${r.benchCpuShare?.toFixed(3)}`,
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

/** What each step adds, arm to arm (only between arms that ran): rate lost and machine CPU per connection. */
function stepLines(arms: Array<{ arm: Arm; rate: number; ratio: number; usPerConn: number | null }>): string[] {
  const label: Record<Arm, string> = { without: 'no capture', kernel: 'BPF programs + C reader', probe: '+ ctnetlink DESTROY reader', with: '+ Node agent' };
  const out: string[] = [];
  for (let i = 1; i < arms.length; i++) {
    const a = arms[i - 1]!;
    const b = arms[i]!;
    const dUs = a.usPerConn !== null && b.usPerConn !== null ? `, ${(b.usPerConn - a.usPerConn) >= 0 ? '+' : ''}${(b.usPerConn - a.usPerConn).toFixed(1)} us machine CPU per connection` : '';
    out.push(
      `step ${a.arm} -> ${b.arm} (${label[b.arm]})`.padEnd(32) +
        ` ${(((b.rate - a.rate) / a.rate) * 100).toFixed(1)}% conn/s (ratio ${a.ratio.toFixed(3)} -> ${b.ratio.toFixed(3)})${dUs}`,
    );
  }
  return out;
}

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
    // Serpentine order (A B C D, D C B A, ...): every arm alternates with the others and sits as often
    // early as late in a round, so linear drift over the run falls on all arms alike.
    const schedule: Array<{ n: number; arm: Arm }> = [];
    for (let n = 1; n <= ROUNDS; n++) for (const arm of n % 2 ? ARMS : [...ARMS].reverse()) schedule.push({ n, arm });
    for (const [i, { n, arm }] of schedule.entries()) {
      if (aborting) throw new Error(`aborted (${aborting})`);
      const rec = RECORD ? join(tmp, `round-${i}.txt`) : null;
      log(`round ${n} ${arm}: ${DURATION_S} s, concurrency ${CONCURRENCY}, targets ${targets.join(',')}`);
      const r =
        arm === 'without' ? await roundWithout(n, state, targets, rec)
        : arm === 'with' ? await roundWith(n, state, targets, nodePortSet, rec)
        : await roundProbe(n, arm, state, targets, rec);
      if (rec) rmSync(rec, { force: true });
      rounds.push(r);
      printRound(r);
      await sleep(SETTLE_MS);
    }

    // ------------------------------------------------------------ summary
    const byArm = (a: Arm): Round[] => rounds.filter((r) => r.mode === a);
    const wo = byArm('without');
    const wi = byArm('with');
    const withoutMed = median(wo.map((r) => r.load.conn_per_s));
    const withMed = median(wi.map((r) => r.load.conn_per_s));
    const ratio = withMed / withoutMed;
    const medOf = (rs: Round[], f: (r: Round) => number | undefined): number | null => {
      const xs = rs.map(f).filter((x): x is number => x !== undefined && Number.isFinite(x));
      return xs.length ? median(xs) : null;
    };
    const armStats = ARMS.map((arm) => {
      const rs = byArm(arm);
      const rate = median(rs.map((r) => r.load.conn_per_s));
      return {
        arm, rate, ratio: rate / withoutMed,
        rates: rs.map((r) => Math.round(r.load.conn_per_s)),
        spread: (Math.max(...rs.map((r) => r.load.conn_per_s)) - Math.min(...rs.map((r) => r.load.conn_per_s))) / rate,
        failed: rs.reduce((x, r) => x + r.load.failed, 0),
        busy: medOf(rs, (r) => r.sys?.busyShare),
        softirq: medOf(rs, (r) => r.sys?.softirqShare),
        usPerConn: medOf(rs, (r) => r.sys?.usPerConn),
        softirqUsPerConn: medOf(rs, (r) => r.sys?.softirqUsPerConn),
        probeCpu: arm === 'without' ? null : medOf(rs, (r) => r.probeCpu),
        probeCpuLoad: arm === 'without' ? null : medOf(rs, (r) => r.probeCpuLoad),
        nodeCpu: arm === 'with' ? medOf(rs, (r) => r.nodeCpu) : null,
        nodeCpuLoad: arm === 'with' ? medOf(rs, (r) => r.nodeCpuLoad) : null,
      };
    });
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

    const f3 = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : x.toFixed(3));
    const f1 = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : x.toFixed(1));
    const rows = [['', 'conn/s', 'connections', 'attempts', 'failed', 'busy', 'us/conn', 'probe cpu', 'node cpu', 'captured', 'lost', 'rss MB']];
    for (const r of rounds) {
      const w = r.mode === 'with';
      rows.push([
        `${r.n} ${r.mode}`, r.load.conn_per_s.toFixed(0), String(r.load.connections), String(r.load.attempts), String(r.load.failed),
        r.sys ? pct(r.sys.busyShare) : '-', f1(r.sys?.usPerConn), f3(r.probeCpu), f3(r.nodeCpu),
        w ? String(r.captured) : '-', w ? String(r.lost) : '-', w ? (r.agentRssMb ?? 0).toFixed(1) : '-',
      ]);
    }
    const armRows = [['arm (medians)', 'conn/s', 'ratio', 'rounds', 'spread', 'busy', 'softirq', 'us/conn', '(softirq)', 'probe cpu', '(load)', 'node cpu', '(load)']];
    for (const a of armStats) {
      armRows.push([
        a.arm, a.rate.toFixed(0), a.ratio.toFixed(3), a.rates.join('/'), pct(a.spread),
        a.busy === null ? '-' : pct(a.busy), a.softirq === null ? '-' : pct(a.softirq), f1(a.usPerConn), f1(a.softirqUsPerConn),
        f3(a.probeCpu), f3(a.probeCpuLoad), f3(a.nodeCpu), f3(a.nodeCpuLoad),
      ]);
    }
    const summary = [
      '',
      `capture bench: ${ROUNDS} rounds x ${ARMS.length} arms (${ARMS.join(', ')}; serpentine order) of ${DURATION_S} s, concurrency ${CONCURRENCY}, ${BACKENDS} backends on ${BACKEND_NODES.join('+')}, NodePort ${nodePorts.join(',')} on ${INGRESS_NODE} (SNAT+DNAT), ${cpus().length} CPUs, kernel ${release()}`,
      table(rows),
      '',
      table(armRows),
      '(cpu columns: share of ONE core summed over the 3 nodes, load + drain/tail per second of load; "(load)": during the load only.',
      ' busy/softirq/us per conn: whole machine during the load, every process and softirq included.)',
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
      ...stepLines(armStats),
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
      arms: Object.fromEntries(
        armStats.map((a) => [
          a.arm,
          {
            conn_per_s: Math.round(a.rate),
            ratio: round3(a.ratio),
            rounds: a.rates,
            failed: a.failed,
            busy_share: a.busy === null ? null : round3(a.busy),
            softirq_share: a.softirq === null ? null : round3(a.softirq),
            cpu_us_per_conn: a.usPerConn === null ? null : round1(a.usPerConn),
            probe_cpu_share: a.probeCpu === null ? null : round3(a.probeCpu),
            probe_cpu_share_during_load: a.probeCpuLoad === null ? null : round3(a.probeCpuLoad),
            ...(a.arm === 'with' ? { node_cpu_share: a.nodeCpu === null ? null : round3(a.nodeCpu), node_cpu_share_during_load: a.nodeCpuLoad === null ? null : round3(a.nodeCpuLoad) } : {}),
          },
        ]),
      ),
      attempts,
      captured_distinct: capturedDistinct,
      completed_uncaptured: uncaptured,
      captured_not_completed: capturedNotCompleted,
      ct_miss: ctMiss,
      agent_cpu_share_during_load: round3(cpuShareLoad),
      targets: { ratio: okRatio, captured: okCaptured, lost: okLost },
      rounds: ROUNDS,
      arm_order: 'serpentine',
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
