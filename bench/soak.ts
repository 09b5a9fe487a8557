// The soak benchmark (npm run bench:soak -- [options]; root): sustained NodePort/LoadBalancer load
// through a lab for --duration (default 10 minutes), with a real collector and one real agent per
// node. Does memory stay flat, and is every connection stored exactly once?
//
// What runs (everything on a lab of its own, iptables mode, prefix "so<pid>"):
//   - a LoadBalancer Service "soak" (TCP 80 -> 8080, nodePort 30190, VIP 203.0.113.150, policy
//     Cluster) with --backends pods (default 4) spread over node1..node3, each `natlens-load serve`;
//   - `natlens collector` (embedded store in a temp --data dir) and `natlens agent --collector` per
//     node, started as a user would (bin/natlens), each with TRANSPORT_ARGS below;
//   - the lab's client namespace runs ONE `natlens-load client --rate R` round-robin over the four
//     targets node1:30190, node2:30190, node3:30190 and VIP:80, so every connection is DNAT'd and
//     SNAT'd on its ingress node; the client closes first (TIME_WAIT stays on the client) and records
//     every completed connection (--record: its source port and target);
//   - per-namespace sysctls, in the lab only (the namespaces are deleted at the end):
//     nodes nf_conntrack_tcp_timeout_time_wait=1, client ip_local_port_range 1024-65535, tcp_tw_reuse=1.
//
// Sampled every --sample-interval: VmRSS / RssAnon / CPU time (/proc) of the collector, of each agent
// (Node) and of its natlens-probe child; the machine's busy share (/proc/stat); connections made (the
// client's progress line); the collector's stored counts (its 10 s "stats" status line).
//
// At the end: waits until `natlens who` has every connection (bounded), reads `natlens who --json` per
// backend pod, stops the agents (SIGTERM: they drain; their "stopped" line tells what was never
// acknowledged) and the collector (it stores what it holds), then opens the store and compares it
// with the client's record, source port by source port.
//
// Verdict (exit 0 = pass, 1 = a criterion missed, 2 = bad option, 3 = the run itself failed, 130 = SIGINT):
//   loss     every completed connection stored exactly once (by source port and target, as multisets);
//            `who` per target == connections made per target; every row stitched, SNAT'd, with the
//            real client; complete.events_lost == 0; agents: 0 unacknowledged, 0 queue overflow,
//            0 rejected. Connections the client gave up on (failed/abandoned) may or may not be
//            stored: extra stored rows up to that count are allowed.
//   memory   least-squares RSS slope over the load after the warm-up, per process, within
//            --max-slope-collector / --max-slope-agent / --max-slope-probe (MB/min). The ratio of the
//            mean RSS of the last window to the first window after the warm-up is reported too.
//   load     the achieved rate is at least 90 % of --rate (else the run did not test what it claims).
//
// stdout: a table of samples while it runs, then a summary; with --json, only one JSON object (the
// table goes to stderr). Progress: stderr.
//
// Network safety: every packet stays inside the lab's namespaces; processes are killed by PID only.

import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Command, InvalidArgumentError } from 'commander';
import { labAddPods, labAddService, labDown, labUp, labWaitLb, readLabState, type LabState } from '../src/lab/lab.js';
import { sysctl } from '../src/lab/exec.js';
import { ClickHouseStore, ipText } from '../src/collector/store/clickhouse-store.js';
import { connectionsTable } from '../src/collector/store/schema.js';
import { parseDuration } from '../src/util/duration.js';
import { NatlensError, UsageError, describeError } from '../src/util/errors.js';
import { LOAD_BIN, PACKAGE_ROOT } from '../src/util/paths.js';
import { compareMultisets, mean, round1, round3, trends, type ProcSample, type Sample } from './soak-verdict.js';
import { childPids, comm, readCpuTicks, readMachineTicks, readStatusKb } from './proc.js';

/**
 * Extra arguments for every natlens process that speaks gRPC here (collector, agent, who): plain
 * text on the lab's own loopback (docs/security.md has the TLS flags).
 */
const TRANSPORT_ARGS: readonly string[] = ['--plaintext'];

// ---------------------------------------------------------------- settings

class SoakError extends NatlensError {}

const NATLENS_BIN = join(PACKAGE_ROOT, 'bin', 'natlens');
const NODE_PORT = 30190;
const SERVICE_PORT = 80;
const VIP = '203.0.113.150';
const SERVE_PORT = 8080;
const BACKEND_NODES = ['node1', 'node2', 'node3'];
const CONNECT_TIMEOUT_MS = 2000;
const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 20_000;
/** After the load: wait this long at most for `who` to show every connection. */
const DRAIN_MAX_MS = 90_000;
const DRAIN_POLL_MS = 2000;
const WHO_SINCE_MARGIN_S = 60;
const MIN_RATE_SHARE = 0.9;
/** Connections per second: see docs/benchmarks.md (soak) for how it was sized on the 2-core machine. */
const DEFAULT_RATE = 1000;
const WINDOW_MAX_S = 60;

interface Options {
  durationS: number;
  rate: number;
  sampleS: number;
  warmupS: number;
  backends: number;
  concurrency: number;
  maxSlope: { collector: number; agent: number; probe: number };
  prefix: string;
  json: boolean;
}

function parseOptions(argv: string[]): Options {
  const int = (name: string, min: number, max: number) => (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} '${v}': expected a whole number ${min}..${max}`);
    return n;
  };
  const num = (name: string, min: number, max: number) => (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} '${v}': expected a number ${min}..${max}`);
    return n;
  };
  const secs = (name: string, minS: number, maxS: number) => (v: string): number => {
    let ms: number;
    try {
      ms = parseDuration(v, name);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
    if (ms < minS * 1000 || ms > maxS * 1000) throw new InvalidArgumentError(`${name} '${v}': expected ${minS}s..${maxS / 60}m`);
    return ms / 1000;
  };
  const program = new Command('soak')
    .description('Sustained lab load with a real collector and agents: memory flat, nothing lost (root).')
    .option('--duration <d>', 'load duration, 10s..60m (default 10m)', secs('--duration', 10, 3600))
    .option('--rate <n>', `connections per second, paced, 1..10000 (default ${DEFAULT_RATE})`, int('--rate', 1, 10_000))
    .option('--sample-interval <d>', 'sample /proc this often, 1s..60s (default duration/20, within 1s..5s)', secs('--sample-interval', 1, 60))
    .option('--warmup <d>', 'memory before this is not judged; also the length of the first and last windows (default duration/10, at most 60s, at least 2 samples)', secs('--warmup', 1, 1200))
    .option('--backends <n>', 'backend pods over node1..node3 (1..12)', int('--backends', 1, 12), 4)
    .option('--concurrency <n>', 'connections in flight at most (1..4096)', int('--concurrency', 1, 4096), 256)
    .option('--max-slope-collector <MB/min>', 'memory verdict: collector RSS slope limit', num('--max-slope-collector', 0, 1000), 5)
    .option('--max-slope-agent <MB/min>', 'memory verdict: per agent (Node process) RSS slope limit', num('--max-slope-agent', 0, 1000), 2)
    .option('--max-slope-probe <MB/min>', 'memory verdict: per natlens-probe RSS slope limit', num('--max-slope-probe', 0, 1000), 0.25)
    .option('--prefix <p>', 'lab prefix (1-8 lower-case letters/digits)', `so${process.pid % 100000}`)
    .option('--json', 'stdout: only the final JSON summary (the table goes to stderr)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program.parse(argv, { from: 'user' });
  const o = program.opts<{
    duration?: number; rate?: number; sampleInterval?: number; warmup?: number; backends: number; concurrency: number;
    maxSlopeCollector: number; maxSlopeAgent: number; maxSlopeProbe: number; prefix: string; json?: boolean;
  }>();
  if (!/^[a-z][a-z0-9]{0,7}$/.test(o.prefix)) throw new UsageError(`--prefix '${o.prefix}': use 1-8 lower-case letters/digits, starting with a letter`);
  const durationS = o.duration ?? 600;
  const sampleS = o.sampleInterval ?? Math.max(1, Math.min(5, Math.floor(durationS / 20)));
  const warmupS = o.warmup ?? Math.min(WINDOW_MAX_S, Math.max(durationS / 10, 2 * sampleS));
  if (2 * warmupS > durationS) throw new UsageError(`--warmup ${warmupS}s: needs at most half of --duration (${durationS}s) so that a first and a last window exist`);
  if (warmupS < 2 * sampleS) throw new UsageError(`--warmup ${warmupS}s is shorter than two samples (--sample-interval ${sampleS}s): lengthen --duration or --warmup, or shorten --sample-interval`);
  return {
    durationS, rate: o.rate ?? DEFAULT_RATE, sampleS, warmupS, backends: o.backends, concurrency: o.concurrency,
    maxSlope: { collector: o.maxSlopeCollector, agent: o.maxSlopeAgent, probe: o.maxSlopeProbe },
    prefix: o.prefix, json: o.json === true,
  };
}

const log = (msg: string): void => void process.stderr.write(`soak: ${msg}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- processes we started

/** Every child this process spawned that may still run: stopped (by PID) on exit. */
const owned = new Set<ChildProcess>();
/** natlens-probe children of our agents (PIDs seen while sampling): stopped if an agent left one behind. */
const probePids = new Set<number>();
let aborting: string | null = null;

function track(child: ChildProcess): ChildProcess {
  owned.add(child);
  child.once('exit', () => owned.delete(child));
  return child;
}

const running = (c: ChildProcess): boolean => c.exitCode === null && c.signalCode === null;

function checkAbort(): void {
  if (aborting) throw new SoakError(`aborted (${aborting})`);
}

/** A natlens CLI process: JSON status lines from stderr kept (bounded), stdout kept for `who`. */
class NatlensProc {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly status: Array<Record<string, unknown>> = [];
  readonly plain: string[] = [];
  stdout = '';
  private readonly latest = new Map<string, Record<string, unknown>>();

  constructor(readonly name: string, args: string[], opts: { keepStdout?: boolean } = {}) {
    this.child = track(spawn(process.execPath, [NATLENS_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
    this.exited = new Promise((resolve) => this.child.once('close', (code) => resolve(code)));
    this.child.once('error', (e) => this.plain.push(`spawn failed: ${e.message}`));
    let rest = '';
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      rest += chunk;
      const lines = rest.split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) this.onLine(line);
      if (rest.length > 1 << 20) rest = '';
    });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (opts.keepStdout) this.stdout += d;
    });
  }

  private onLine(line: string): void {
    if (!line.trim()) return;
    let s: Record<string, unknown> | undefined;
    try {
      const v = JSON.parse(line) as unknown;
      if (v && typeof v === 'object' && typeof (v as { event?: unknown }).event === 'string') s = v as Record<string, unknown>;
    } catch {
      /* plain text */
    }
    if (!s) {
      if (this.plain.length < 200) this.plain.push(line);
      return;
    }
    this.latest.set(s.event as string, s);
    // Bounded: a long soak must not grow the bench itself. Every kind's latest is kept apart.
    if (this.status.length < 2000) this.status.push(s);
  }

  last(event: string): Record<string, unknown> | undefined {
    return this.latest.get(event);
  }

  count(event: string): number {
    return this.status.filter((s) => s.event === event).length;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  async waitFor(event: string, timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.last(event);
      if (s) return s;
      checkAbort();
      if (!running(this.child)) throw new SoakError(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}) before '${event}': ${this.tail()}`);
      if (Date.now() > deadline) throw new SoakError(`${this.name}: no '${event}' within ${timeoutMs / 1000} s: ${this.tail()}`);
      await sleep(100);
    }
  }

  tail(): string {
    return [...this.plain.slice(-5), ...this.status.slice(-3).map((s) => JSON.stringify(s))].join(' | ') || '(no output)';
  }

  /** SIGTERM, SIGKILL after graceMs; the exit code (null when killed by a signal). */
  async stop(graceMs = STOP_TIMEOUT_MS): Promise<number | null> {
    if (running(this.child)) this.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (running(this.child)) {
        log(`${this.name} (pid ${this.pid}) did not exit within ${graceMs / 1000} s of SIGTERM: SIGKILL`);
        this.child.kill('SIGKILL');
      }
    }, graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

// ---------------------------------------------------------------- /proc

const CLK_TCK = (() => {
  try {
    const v = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(v) && v > 0 ? v : 100;
  } catch {
    return 100;
  }
})();

interface ProcReading {
  rssKb: number;
  anonKb: number;
  ticks: number;
}

function readProc(pid: number): ProcReading | null {
  const kb = readStatusKb(pid, ['VmRSS', 'RssAnon']);
  const ticks = readCpuTicks(pid);
  return kb && ticks !== null ? { rssKb: kb.VmRSS, anonKb: kb.RssAnon, ticks } : null;
}

// ---------------------------------------------------------------- the load client

interface LoadResult {
  connections: number;
  failed: number;
  errors: Record<string, number>;
  timeouts: number;
  elapsed_s: number;
  conn_per_s: number;
  attempts: number;
  abandoned: number;
  rate_lag_ms?: number;
  latency_us?: { p50_le: number; p99_le: number; p999_le: number; max: number };
  per_target: Array<{ target: string; connections: number; failed: number }>;
}

class LoadClient {
  readonly child: ChildProcess;
  readonly done: Promise<LoadResult>;
  made = 0;
  failed = 0;
  /** the client's own clock (s since its start) at its last progress line: rates from it do not alias with our sampling */
  madeAtS = 0;

  constructor(state: LabState, targets: string[], opts: { rate: number; durationS: number; concurrency: number; record: string }) {
    const args = [
      'netns', 'exec', state.client.netns, LOAD_BIN, 'client',
      '--target', targets.join(','),
      '--rate', String(opts.rate),
      '--concurrency', String(opts.concurrency),
      '--duration-s', String(opts.durationS),
      // Bounded in count as well as time: 10 % above what the rate allows.
      '--max-conns', String(Math.ceil(opts.rate * opts.durationS * 1.1) + 100),
      '--connect-timeout-ms', String(CONNECT_TIMEOUT_MS),
      '--record', opts.record,
      '--progress', '--json',
    ];
    this.child = track(spawn('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    let errText = '';
    let rest = '';
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      rest += d;
      const lines = rest.split('\n');
      rest = lines.pop() ?? '';
      for (const l of lines) {
        if (l.startsWith('{"progress"')) {
          try {
            const p = JSON.parse(l) as { t_s: number; connections: number; failed: number };
            this.made = p.connections;
            this.failed = p.failed;
            this.madeAtS = p.t_s;
          } catch {
            /* partial */
          }
        } else if (errText.length < 8192) errText += `${l}\n`;
      }
    });
    // The client stops itself at --duration-s; this is the bound if it does not.
    const bound = setTimeout(() => this.child.kill('SIGKILL'), (opts.durationS + 30) * 1000);
    this.done = new Promise((resolve, reject) => {
      this.child.once('close', (code) => {
        clearTimeout(bound);
        const line = out.trim().split('\n').pop() ?? '';
        try {
          const r = JSON.parse(line) as LoadResult;
          this.made = r.connections;
          this.failed = r.failed;
          this.madeAtS = r.elapsed_s;
          resolve(r);
        } catch {
          reject(new SoakError(`natlens-load client failed (exit ${code}): ${errText.trim() || out.trim() || 'no output'}`));
        }
      });
    });
  }
}

// ---------------------------------------------------------------- samples

interface AgentRun {
  node: string;
  proc: NatlensProc;
  probePid: number | null;
}

class Sampler {
  readonly samples: Sample[] = [];
  private readonly lastTicks = new Map<number, number>();
  private lastT = 0;
  private lastMade = 0;
  private lastMadeAtS = 0;
  private lastRate = 0;
  private lastMachine = readMachineTicks();
  private phase: 'load' | 'drain' = 'load';

  constructor(private readonly t0: number, private readonly collector: NatlensProc, private readonly agents: AgentRun[], private readonly client: LoadClient) {}

  drain(): void {
    this.phase = 'drain';
  }

  private proc(pid: number | null, dt: number): ProcSample | null {
    if (pid === null || pid <= 0) return null;
    const r = readProc(pid);
    if (!r) return null;
    const prev = this.lastTicks.get(pid);
    this.lastTicks.set(pid, r.ticks);
    return { rss_mb: round1(r.rssKb / 1024), anon_mb: round1(r.anonKb / 1024), cpu: prev === undefined || dt <= 0 ? 0 : round3((r.ticks - prev) / CLK_TCK / dt) };
  }

  take(): Sample {
    const t = (performance.now() - this.t0) / 1000;
    const dt = t - this.lastT;
    const m = readMachineTicks();
    const busy = m && this.lastMachine && m.total > this.lastMachine.total ? (m.busy - this.lastMachine.busy) / (m.total - this.lastMachine.total) : 0;
    this.lastMachine = m;
    // Between two progress lines of the client the last rate stands.
    if (this.client.madeAtS > this.lastMadeAtS) {
      this.lastRate = Math.round((this.client.made - this.lastMade) / (this.client.madeAtS - this.lastMadeAtS));
      this.lastMade = this.client.made;
      this.lastMadeAtS = this.client.madeAtS;
    }
    const stats = this.collector.last('stats');
    const agents: Sample['agents'] = {};
    for (const a of this.agents) {
      // The probe is the agent's child, started once it attached: look for it until found.
      if (a.probePid === null || comm(a.probePid) !== 'natlens-probe') {
        a.probePid = childPids(a.proc.pid).find((c) => comm(c) === 'natlens-probe') ?? null;
        if (a.probePid !== null) probePids.add(a.probePid);
      }
      agents[a.node] = { node: this.proc(a.proc.pid, dt), probe: this.proc(a.probePid, dt) };
    }
    const s: Sample = {
      t_s: round1(t),
      phase: this.phase,
      made: this.client.made,
      failed: this.client.failed,
      conn_per_s: this.phase === 'drain' ? 0 : this.lastRate,
      machine_busy: round3(busy),
      stored_connections: typeof stats?.storedConnections === 'number' ? stats.storedConnections : null,
      stored_hops: typeof stats?.storedHops === 'number' ? stats.storedHops : null,
      buffered_hops: typeof stats?.bufferedHops === 'number' ? stats.bufferedHops : null,
      collector: this.proc(this.collector.pid, dt),
      agents,
    };
    this.lastT = t;
    this.samples.push(s);
    return s;
  }
}

// ---------------------------------------------------------------- who and the store

interface WhoJson {
  rows: Array<{ client: string | null; seen_as: string; dialled: string | null; connections: number; ingress_node: string | null; endpoint_node: string | null; snat: boolean; stitched: boolean }>;
  complete: { events_lost: number; unstitched: number; nodes_reporting: string[]; lost_by_stage: Record<string, number> };
}

async function who(target: string, collector: string, sinceS: number): Promise<WhoJson> {
  const p = new NatlensProc(`who ${target}`, ['who', target, '--collector', collector, '--since', `${sinceS}s`, '--json', ...TRANSPORT_ARGS], { keepStdout: true });
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 60_000);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new SoakError(`natlens who ${target} exited ${code}: ${p.tail()}`);
  return JSON.parse(p.stdout) as WhoJson;
}

interface WhoTotals {
  /** connections of the soak client, by the target it dialled */
  byTarget: Map<string, number>;
  total: number;
  /** rows not from the soak client (null client = not stitched back to it) */
  foreign: number;
  unstitchedRows: number;
  notSnat: number;
  wrongIngress: number;
  eventsLost: number;
  lostByStage: Record<string, number>;
  unstitched: number;
  nodesReporting: string[];
}

/** `sinceS` is asked before each `who`: on a busy machine four `who` runs take seconds. */
async function whoTotals(pods: string[], collector: string, sinceS: () => number, clientIp: string, nodeByIp: Map<string, string>): Promise<WhoTotals> {
  const t: WhoTotals = { byTarget: new Map(), total: 0, foreign: 0, unstitchedRows: 0, notSnat: 0, wrongIngress: 0, eventsLost: 0, lostByStage: {}, unstitched: 0, nodesReporting: [] };
  for (const pod of pods) {
    const w = await who(pod, collector, sinceS());
    for (const r of w.rows) {
      if (r.client !== clientIp) {
        t.foreign += r.connections;
        continue;
      }
      const key = r.dialled ?? '?';
      t.byTarget.set(key, (t.byTarget.get(key) ?? 0) + r.connections);
      t.total += r.connections;
      if (!r.stitched) t.unstitchedRows += r.connections;
      if (!r.snat) t.notSnat += r.connections;
      // A NodePort connection enters at the node it dialled; a VIP one at whichever node the LB chose.
      const dialledNode = nodeByIp.get((r.dialled ?? '').replace(/:\d+$/, ''));
      if (dialledNode && r.ingress_node !== dialledNode) t.wrongIngress += r.connections;
    }
    // Completeness is the same for every pod of one collector: keep the worst.
    t.eventsLost = Math.max(t.eventsLost, w.complete.events_lost);
    t.unstitched += w.complete.unstitched;
    for (const [k, v] of Object.entries(w.complete.lost_by_stage)) t.lostByStage[k] = Math.max(t.lostByStage[k] ?? 0, v);
    t.nodesReporting = w.complete.nodes_reporting;
  }
  return t;
}

/** The client's --record file as a multiset: "sport dst:dport" -> completed connections. */
async function readRecord(path: string): Promise<Map<string, number>> {
  const m = new Map<string, number>();
  const rl = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Infinity });
  for await (const line of rl) {
    const [, sport, dst, dport] = line.split(' ');
    if (!sport || !dst || !dport) continue;
    const k = `${sport} ${dst}:${dport}`;
    m.set(k, (m.get(k) ?? 0) + 1);
  }
  return m;
}

/** Stored connections of the soak client (each conn_id once, at its highest version) as the same multiset. */
async function readStore(dataDir: string, clientIp: string, sinceNs: bigint): Promise<Map<string, number>> {
  const store = await ClickHouseStore.open({ dataDir });
  try {
    const table = store.tableName(connectionsTable);
    const rows = await store.select<{ sport: number; dst: string; dport: number; n: string }>(
      'soak check', connectionsTable,
      `SELECT w.2 AS sport, ${ipText('w.3')} AS dst, w.4 AS dport, toString(count()) AS n
       FROM (
         SELECT argMax((client, client_port, service, service_port, status, ts), version) AS w
         FROM ${table}
         GROUP BY conn_id, endpoint
       )
       WHERE ${ipText('w.1')} = {client:String} AND w.5 != 'superseded' AND w.6 >= fromUnixTimestamp64Nano({since:Int64})
       GROUP BY sport, dst, dport`,
      { client: clientIp, since: sinceNs.toString() },
    );
    const m = new Map<string, number>();
    for (const r of rows) m.set(`${r.sport} ${r.dst}:${r.dport}`, Number(r.n));
    return m;
  } finally {
    await store.close();
  }
}

// ---------------------------------------------------------------- output

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (c ?? '').padStart(widths[i]!)).join('  ')).join('\n');
}

const SAMPLE_HEADER = ['t_s', 'made', 'conn/s', 'failed', 'busy', 'coll MB', 'coll cpu', 'stored', 'agents MB', 'agents cpu', 'probes MB', 'probes cpu'];
/** Fixed widths, so that rows printed one at a time line up under the header. */
const SAMPLE_WIDTHS = [6, 9, 6, 6, 4, 7, 8, 9, 11, 10, 9, 10];
const sampleLine = (cells: string[]): string => cells.map((c, i) => c.padStart(SAMPLE_WIDTHS[i] ?? 8)).join('  ');

function sampleRow(s: Sample): string[] {
  const ag = Object.values(s.agents);
  const sum = (f: (x: (typeof ag)[number]) => number | undefined): number => ag.reduce((a, x) => a + (f(x) ?? 0), 0);
  return [
    `${s.t_s.toFixed(0)}${s.phase === 'drain' ? '*' : ''}`, String(s.made), String(s.conn_per_s), String(s.failed), `${(s.machine_busy * 100).toFixed(0)}%`,
    s.collector ? s.collector.rss_mb.toFixed(1) : '-', s.collector ? s.collector.cpu.toFixed(2) : '-',
    s.stored_connections === null ? '-' : String(s.stored_connections),
    ag.map((x) => (x.node ? x.node.rss_mb.toFixed(0) : '-')).join('/'), sum((x) => x.node?.cpu).toFixed(2),
    ag.map((x) => (x.probe ? x.probe.rss_mb.toFixed(0) : '-')).join('/'), sum((x) => x.probe?.cpu).toFixed(2),
  ];
}

// ---------------------------------------------------------------- main

let cleanupPromise: Promise<void> | null = null;
let labPrefix: string | null = null;
let tmpDir: string | null = null;

function cleanup(): Promise<void> {
  cleanupPromise ??= (async () => {
    for (const c of owned) if (running(c)) c.kill('SIGTERM');
    for (let i = 0; i < 100 && [...owned].some(running); i++) await sleep(100);
    for (const c of owned) {
      if (running(c)) {
        log(`pid ${c.pid} still running 10 s after SIGTERM: SIGKILL`);
        c.kill('SIGKILL');
      }
    }
    // A probe outlives its agent only if the agent was killed: stop it, only if it still is one.
    for (const pid of probePids) {
      if (comm(pid) === 'natlens-probe') {
        try {
          process.kill(pid, 'SIGTERM');
          log(`natlens-probe ${pid} outlived its agent: SIGTERM`);
        } catch {
          /* gone */
        }
      }
    }
    if (labPrefix) {
      log(`tearing down lab "${labPrefix}"`);
      try {
        await labDown({ prefix: labPrefix });
      } catch (err) {
        log(`lab down failed: ${describeError(err)}`);
      }
    }
    if (tmpDir) rmSync(tmpDir, { recursive: true, force: true });
  })();
  return cleanupPromise;
}

async function run(opts: Options): Promise<number> {
  if (process.getuid?.() !== 0) throw new SoakError('run as root (eBPF, network namespaces, netfilter)');
  for (const f of [LOAD_BIN, NATLENS_BIN, join(PACKAGE_ROOT, 'dist', 'src', 'cli', 'main.js')]) {
    if (!existsSync(f)) throw new SoakError(`${f} is missing: build first (bash scripts/build.sh)`);
  }
  const out = opts.json ? (s: string) => process.stderr.write(s) : (s: string) => process.stdout.write(s);
  const wallStart = performance.now();
  tmpDir = mkdtempSync(join(tmpdir(), 'natlens-soak-'));
  const dataDir = join(tmpDir, 'data');
  const recordPath = join(tmpDir, 'completed.txt');

  // ------------------------------------------------------------ lab
  log(`lab "${opts.prefix}" up (iptables mode)`);
  labPrefix = opts.prefix;
  await labUp({ prefix: opts.prefix, proxyMode: 'iptables', force: true, progress: log });
  checkAbort();
  const serveSeconds = Math.ceil(opts.durationS + 600); // the backends stop on their own even if all else fails
  await labAddPods(
    Array.from({ length: opts.backends }, (_, i) => ({
      name: `soak-${i}`,
      node: BACKEND_NODES[i % BACKEND_NODES.length] as string,
      labels: { app: 'natlens-soak' },
      server: {
        command: [LOAD_BIN, 'serve', '--port', String(SERVE_PORT), '--max-seconds', String(serveSeconds)],
        readyPort: SERVE_PORT,
        cmdlineMatch: `${LOAD_BIN} serve --port ${SERVE_PORT} --max-seconds ${serveSeconds}`,
      },
    })),
    { prefix: opts.prefix, progress: log },
  );
  await labAddService(
    {
      name: 'soak', type: 'LoadBalancer', selector: { app: 'natlens-soak' }, loadBalancerIPs: [VIP],
      ports: [{ name: 'tcp', protocol: 'TCP', port: SERVICE_PORT, targetPort: SERVE_PORT, nodePort: NODE_PORT }],
    },
    { prefix: opts.prefix },
  );
  await labWaitLb({ prefix: opts.prefix, service: 'soak' });
  const state = readLabState(opts.prefix);
  if (!state) throw new SoakError(`the state of lab "${opts.prefix}" vanished`);
  const v4 = (ips: string[]): string => {
    const ip = ips.find((a) => !a.includes(':'));
    if (!ip) throw new SoakError(`no IPv4 address in ${ips.join(', ')}`);
    return ip;
  };
  const clientIp = v4(state.client.ips);
  const nodeByIp = new Map(state.nodes.map((n) => [v4(n.internalIPs), n.name]));
  const targets = [...state.nodes.map((n) => `${v4(n.internalIPs)}:${NODE_PORT}`), `${VIP}:${SERVICE_PORT}`];
  const podIps = state.pods.filter((p) => p.labels['app'] === 'natlens-soak').map((p) => v4(p.ips));
  for (const n of state.nodes) await sysctl(n.netns, { 'net.netfilter.nf_conntrack_tcp_timeout_time_wait': 1 });
  await sysctl(state.client.netns, { 'net.ipv4.ip_local_port_range': '1024 65535', 'net.ipv4.tcp_tw_reuse': 1 });

  // Smoke, before anything captures: every target answers.
  const smoke = new LoadClient(state, targets, { rate: 200, durationS: 1, concurrency: 8, record: join(tmpDir, 'smoke.txt') });
  const sm = await smoke.done;
  const dead = sm.per_target.filter((t) => t.connections === 0);
  if (dead.length) throw new SoakError(`smoke: no connection got through ${dead.map((t) => t.target).join(', ')}: ${JSON.stringify(sm.errors)}`);
  log(`smoke: ${sm.connections} connections over ${targets.join(', ')}, failed ${sm.failed}`);
  await sleep(2500); // the smoke's conntrack entries (TIME_WAIT 1 s) are gone before capture starts
  checkAbort();

  // ------------------------------------------------------------ collector and agents
  const collector = new NatlensProc('collector', ['collector', '--listen', '127.0.0.1:0', '--data', dataDir, ...TRANSPORT_ARGS]);
  const listening = await collector.waitFor('listening', READY_TIMEOUT_MS);
  const collectorAddr = `127.0.0.1:${listening.port as number}`;
  log(`collector pid ${collector.pid} on ${collectorAddr}, data ${dataDir}`);
  const agents: AgentRun[] = state.nodes.map((n) => ({
    node: n.name, probePid: null,
    proc: new NatlensProc(`agent ${n.name}`, ['agent', '--node', n.name, '--netns', n.netnsPath, '--collector', collectorAddr, ...TRANSPORT_ARGS]),
  }));
  await Promise.all(agents.flatMap((a) => [a.proc.waitFor('ready', READY_TIMEOUT_MS), a.proc.waitFor('connected', READY_TIMEOUT_MS)]));
  log(`agents ready: ${agents.map((a) => `${a.node} pid ${a.proc.pid}`).join(', ')}`);
  await sleep(1000);
  checkAbort();

  // ------------------------------------------------------------ load + samples
  const loadStartNs = BigInt(Date.now()) * 1_000_000n;
  const t0 = performance.now();
  log(`load: ${opts.rate} conn/s for ${opts.durationS} s over ${targets.join(', ')} (${opts.backends} backends); samples every ${opts.sampleS} s, warm-up ${opts.warmupS} s`);
  const client = new LoadClient(state, targets, { rate: opts.rate, durationS: opts.durationS, concurrency: opts.concurrency, record: recordPath });
  const sampler = new Sampler(t0, collector, agents, client);
  const tableEveryS = opts.durationS >= 300 ? 60 : Math.max(opts.sampleS, Math.round(opts.durationS / 10));
  out(`${sampleLine(SAMPLE_HEADER)}\n`);
  let lastPrinted = -Infinity;
  const printIfDue = (s: Sample, force = false): void => {
    if (force || s.t_s - lastPrinted >= tableEveryS - 0.5) {
      lastPrinted = s.t_s;
      out(`${sampleLine(sampleRow(s))}\n`);
    }
  };
  let clientDone = false;
  void client.done.then(() => (clientDone = true), () => (clientDone = true));
  sampler.take(); // CPU baselines
  let nextSample = opts.sampleS * 1000;
  while (!clientDone) {
    const wait = nextSample - (performance.now() - t0);
    await Promise.race([sleep(Math.max(0, wait)), client.done.catch(() => undefined)]);
    checkAbort();
    if (clientDone) break;
    nextSample += opts.sampleS * 1000;
    printIfDue(sampler.take());
    for (const p of [collector, ...agents.map((a) => a.proc)]) {
      if (!running(p.child)) throw new SoakError(`${p.name} exited during the load (${p.child.exitCode ?? p.child.signalCode}): ${p.tail()}`);
    }
  }
  const load = await client.done;
  const loadEndS = (performance.now() - t0) / 1000;
  printIfDue(sampler.take(), true);
  sampler.drain();
  log(`load done: ${load.connections} connections in ${load.elapsed_s} s (${load.conn_per_s}/s), failed ${load.failed}, abandoned ${load.abandoned}, rate lag ${load.rate_lag_ms ?? 0} ms`);

  // ------------------------------------------------------------ drain: until who has them all
  // Back to well before the load: only the smoke ran earlier, before any agent captured (no
  // connection records), so a wide margin costs nothing and survives a slow `who` start-up.
  const sinceS = (): number => Math.ceil((performance.now() - t0) / 1000) + WHO_SINCE_MARGIN_S;
  const drainStart = performance.now();
  let totals = await whoTotals(podIps, collectorAddr, sinceS, clientIp, nodeByIp);
  let stableSince = performance.now();
  let lastTotal = totals.total;
  // Exactly the count made, or nothing new for 20 s (an over-count must settle too), bounded.
  while (totals.total !== load.connections && performance.now() - drainStart < DRAIN_MAX_MS) {
    await sleep(DRAIN_POLL_MS);
    checkAbort();
    printIfDue(sampler.take());
    totals = await whoTotals(podIps, collectorAddr, sinceS, clientIp, nodeByIp);
    if (totals.total !== lastTotal) {
      lastTotal = totals.total;
      stableSince = performance.now();
    } else if (performance.now() - stableSince > 20_000) break; // nothing new for 20 s: it will not come
  }
  // The stitcher may still re-store a connection whose late hop arrives: one more settled read.
  await sleep(3000);
  totals = await whoTotals(podIps, collectorAddr, sinceS, clientIp, nodeByIp);
  const drainS = (performance.now() - drainStart) / 1000;
  log(`who: ${totals.total} of ${load.connections} after ${drainS.toFixed(1)} s; events lost ${totals.eventsLost}, unstitched ${totals.unstitched}`);
  printIfDue(sampler.take(), true);

  // ------------------------------------------------------------ stop: agents drain, collector stores
  const agentCodes = await Promise.all(agents.map((a) => a.proc.stop()));
  const agentStops = agents.map((a, i) => {
    const s = a.proc.last('stopped') ?? {};
    const num = (k: string): number => (typeof s[k] === 'number' ? (s[k] as number) : -1);
    return {
      node: a.node, exit: agentCodes[i] ?? null, captured: num('captured'), acked: num('ackedEvents'), unacked: num('unacked'),
      overflow: num('overflowEvents'), rejected: num('rejectedEvents'), reconnects: num('reconnects'),
      warnings: a.proc.count('warn') + a.proc.plain.length,
    };
  });
  const collectorCode = await collector.stop(60_000);
  const collectorStopped = collector.last('stopped') ?? {};
  log(`collector stopped (exit ${collectorCode}): stored ${String(collectorStopped.storedConnections)} connections, ${String(collectorStopped.storedHops)} hops`);

  // ------------------------------------------------------------ exactly once, by source port
  const made = await readRecord(recordPath);
  const stored = await readStore(dataDir, clientIp, loadStartNs);
  const cmp = compareMultisets(made, stored);
  const notCompleted = load.failed + load.abandoned;

  // ------------------------------------------------------------ verdict
  const memory = trends(sampler.samples, opts, loadEndS);
  const perTarget = load.per_target.map((t) => ({ target: t.target, made: t.connections, failed: t.failed, who: totals.byTarget.get(t.target) ?? 0 }));
  const reasons: string[] = [];
  if (cmp.missing > 0) reasons.push(`${cmp.missing} completed connections are not in the store`);
  if (cmp.extra > notCompleted) reasons.push(`${cmp.extra} stored connections more than completed (only ${notCompleted} attempts did not complete)`);
  for (const t of perTarget) if (t.who !== t.made) reasons.push(`who via ${t.target}: ${t.who}, made ${t.made}`);
  if (totals.eventsLost > 0) reasons.push(`who: ${totals.eventsLost} events lost (${JSON.stringify(totals.lostByStage)})`);
  if (totals.unstitched > 0 || totals.unstitchedRows > 0) reasons.push(`who: ${Math.max(totals.unstitched, totals.unstitchedRows)} connections not stitched`);
  if (totals.notSnat > 0) reasons.push(`who: ${totals.notSnat} connections not marked SNAT'd (every path here SNATs)`);
  if (totals.wrongIngress > 0) reasons.push(`who: ${totals.wrongIngress} NodePort connections with another ingress node than the one dialled`);
  if (totals.foreign > 0) reasons.push(`who: ${totals.foreign} connections without the soak client as their client`);
  for (const a of agentStops) {
    if (a.unacked !== 0 || a.overflow !== 0 || a.rejected !== 0) reasons.push(`agent ${a.node}: unacked ${a.unacked}, queue overflow ${a.overflow}, rejected ${a.rejected}`);
  }
  const lossOk = reasons.length === 0;
  for (const m of memory) {
    if (m.missing_samples > 0) reasons.push(`${m.process}: no reading in ${m.missing_samples} samples of the load (it was gone)`);
    else if (!m.ok) reasons.push(`${m.process}: RSS slope ${m.slope_mb_per_min} MB/min > ${m.limit_mb_per_min}`);
  }
  const memoryOk = memory.every((m) => m.ok);
  const achieved = load.connections / opts.durationS;
  const loadOk = achieved >= MIN_RATE_SHARE * opts.rate;
  if (!loadOk) reasons.push(`achieved ${achieved.toFixed(0)} conn/s < ${MIN_RATE_SHARE * 100}% of --rate ${opts.rate}: the machine did not sustain the load`);
  const ok = lossOk && memoryOk && loadOk;

  // The first sample only sets the CPU baselines.
  const loadSamples = sampler.samples.slice(1).filter((s) => s.phase === 'load');
  const avg = (f: (s: Sample) => number): number => round3(mean(loadSamples.map(f)));
  const agentsCpu = (s: Sample): number => Object.values(s.agents).reduce((a, x) => a + (x.node?.cpu ?? 0), 0);
  const probesCpu = (s: Sample): number => Object.values(s.agents).reduce((a, x) => a + (x.probe?.cpu ?? 0), 0);
  const summary = {
    ok,
    verdict: { loss: lossOk, memory: memoryOk, load: loadOk },
    reasons,
    duration_s: opts.durationS,
    rate: opts.rate,
    achieved_conn_per_s: Math.round(achieved),
    connections: load.connections,
    attempts: load.attempts,
    failed: load.failed,
    abandoned: load.abandoned,
    errors: load.errors,
    latency_us: load.latency_us ?? null,
    per_target: perTarget,
    stored: { connections: cmp.stored, missing: cmp.missing, extra: cmp.extra },
    who: { total: totals.total, events_lost: totals.eventsLost, lost_by_stage: totals.lostByStage, unstitched: Math.max(totals.unstitched, totals.unstitchedRows), not_snat: totals.notSnat, wrong_ingress: totals.wrongIngress, foreign: totals.foreign, nodes_reporting: totals.nodesReporting, drain_s: round1(drainS) },
    agents: agentStops,
    collector: { exit: collectorCode, stored_connections: collectorStopped.storedConnections ?? null, stored_hops: collectorStopped.storedHops ?? null, store_errors: collectorStopped.storeErrors ?? null, duplicate_batches: collectorStopped.duplicateBatches ?? null },
    memory,
    cpu: { machine_busy: avg((s) => s.machine_busy), collector: avg((s) => s.collector?.cpu ?? 0), agents: avg(agentsCpu), probes: avg(probesCpu) },
    warmup_s: opts.warmupS,
    sample_interval_s: opts.sampleS,
    backends: opts.backends,
    machine: { cpus: cpus().length, kernel: release(), node: process.version },
    wall_s: Math.round((performance.now() - wallStart) / 1000),
    samples: sampler.samples,
  };

  const memRows = [['process', 'first MB', 'last MB', 'last/first', 'max MB', 'slope MB/min', 'limit', '']];
  for (const m of memory) memRows.push([m.process, m.first_mb.toFixed(1), m.last_mb.toFixed(1), m.ratio.toFixed(3), m.max_mb.toFixed(1), m.slope_mb_per_min.toFixed(3), String(m.limit_mb_per_min), m.ok ? 'ok' : 'MISS']);
  const tgtRows = [['target', 'made', 'failed', 'who'], ...perTarget.map((t) => [t.target, String(t.made), String(t.failed), String(t.who)])];
  out(
    [
      '',
      `soak: ${opts.durationS} s at ${opts.rate} conn/s (achieved ${achieved.toFixed(0)}), ${opts.backends} backends, ${cpus().length} CPUs, kernel ${release()}; ` +
        `memory after a ${opts.warmupS} s warm-up, windows of ${opts.warmupS} s; '*' = after the load`,
      table(tgtRows),
      `connections: ${load.connections} completed of ${load.attempts} attempts (failed ${load.failed}, abandoned ${load.abandoned}); ` +
        `stored ${cmp.stored}: missing ${cmp.missing}, extra ${cmp.extra}; who ${totals.total} (events lost ${totals.eventsLost}, unstitched ${summary.who.unstitched})`,
      `agents: ${agentStops.map((a) => `${a.node} captured ${a.captured} unacked ${a.unacked} overflow ${a.overflow}`).join('; ')}`,
      `cpu (share of one core, mean over the load): collector ${summary.cpu.collector}, agents ${summary.cpu.agents}, probes ${summary.cpu.probes}; machine busy ${(summary.cpu.machine_busy * 100).toFixed(0)}%`,
      table(memRows),
      `verdict: loss ${lossOk ? 'PASS' : 'FAIL'}, memory ${memoryOk ? 'PASS' : 'FAIL'}, load ${loadOk ? 'PASS' : 'FAIL'}${reasons.length ? `\n  ${reasons.join('\n  ')}` : ''}`,
      `wall time ${summary.wall_s} s`,
      '',
    ].join('\n'),
  );
  if (opts.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  return ok ? 0 : 1;
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.help' || e.code === 'commander.version') return 0;
    if (!(err instanceof UsageError) && !e.code?.startsWith('commander.')) throw err;
    if (err instanceof UsageError) log(err.message); // commander already printed its own message
    return 2;
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (aborting) return;
      aborting = sig;
      log(`${sig}: stopping what this bench started and removing the lab`);
      void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
    });
  }
  // A throw outside run()'s await chain (an event handler) must still remove the lab.
  for (const ev of ['uncaughtException', 'unhandledRejection'] as const) {
    process.on(ev, (err: unknown) => {
      log(`${ev}: ${describeError(err)}`);
      void cleanup().finally(() => process.exit(3));
    });
  }
  try {
    return await run(opts);
  } catch (err) {
    if (!aborting) log(`failed: ${describeError(err)}`);
    // --json callers get a JSON answer even when there are no figures.
    if (opts.json) process.stdout.write(`${JSON.stringify({ ok: false, error: describeError(err) })}\n`);
    return 3;
  } finally {
    await cleanup();
  }
}

process.exitCode = await main();
