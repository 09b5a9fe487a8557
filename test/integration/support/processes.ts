/**
 * natlens processes for the integration tests, started as a user would (bin/natlens), each
 * stopped by its own PID in afterAll, also when a test failed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../../src/util/paths.js';
import { waitFor } from './agents.js';

const BIN = join(PACKAGE_ROOT, 'bin', 'natlens');

export class NatlensProcess {
  readonly status: Array<Record<string, unknown>> = [];
  readonly stderr: string[] = [];
  stdout = '';
  exitCode: number | null | undefined;
  private readonly exited: Promise<number | null>;

  constructor(readonly name: string, readonly proc: ChildProcess) {
    let partial = '';
    proc.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        this.stderr.push(line);
        try {
          this.status.push(JSON.parse(line) as Record<string, unknown>);
        } catch { /* a plain text line */ }
      }
    });
    proc.stdout!.setEncoding('utf8').on('data', (chunk: string) => { this.stdout += chunk; });
    this.exited = new Promise((resolve) => proc.on('exit', (code) => { this.exitCode = code; resolve(code); }));
  }

  statusOf(event: string): Record<string, unknown> | undefined {
    return this.status.find((s) => s.event === event);
  }

  async waitStatus(event: string, timeoutMs: number): Promise<Record<string, unknown>> {
    return waitFor(() => {
      if (this.exitCode !== undefined) throw new Error(`${this.name} exited (${this.exitCode}) before '${event}':\n${this.stderr.slice(-20).join('\n')}`);
      return this.statusOf(event);
    }, timeoutMs, `${this.name}: '${event}'`);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<number | null> {
    if (this.exitCode !== undefined) return this.exitCode;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.proc.kill(signal);
  }

  wait(): Promise<number | null> {
    return this.exited;
  }
}

/** --plaintext (the lab: everything on loopback and in the lab's namespaces), unless the caller chose TLS or plain text itself. */
export function labSecurity(extra: string[]): string[] {
  return extra.some((a) => a === '--plaintext' || a.startsWith('--tls-')) ? [] : ['--plaintext'];
}

export function natlens(name: string, args: string[], env: NodeJS.ProcessEnv = {}): NatlensProcess {
  return new NatlensProcess(name, spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } }));
}

export interface RunningCollector {
  process: NatlensProcess;
  address: string;
  dataDir: string;
  stop(): Promise<void>;
}

/**
 * A collector on the embedded store in a fresh data directory, on a free loopback port; plain text
 * (--plaintext: the lab, loopback only) unless `extra` brings TLS flags (test/integration/tls.test.ts).
 * `store.dataDir`: this (existing) data directory instead, kept on stop (a restart on the same
 * data); null: no embedded store (`extra` names one, e.g. --clickhouse-url).
 */
export async function startCollector(extra: string[] = [], listen = '127.0.0.1:0', store: { dataDir?: string | null } = {}): Promise<RunningCollector> {
  const own = store.dataDir === undefined;
  const dataDir = own ? mkdtempSync(join(tmpdir(), 'natlens-collector-')) : (store.dataDir ?? '');
  const p = natlens('collector', ['collector', '--listen', listen, ...(dataDir ? ['--data', dataDir] : []), '--hold', '1s', ...labSecurity(extra), ...extra]);
  const listening = await p.waitStatus('listening', 60_000);
  return {
    process: p,
    address: `127.0.0.1:${listening.port as number}`,
    dataDir,
    async stop() {
      await p.stop();
      if (own) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One agent per node, streaming to `collector`; resolves once each is capturing and connected. */
export async function startAgents(nodes: Array<{ name: string; netnsPath: string }>, collector: string, extra: string[] = []): Promise<NatlensProcess[]> {
  const agents = nodes.map((n) => natlens(`agent ${n.name}`, ['agent', '--node', n.name, '--netns', n.netnsPath, '--collector', collector, '--drop-after', '500ms', ...labSecurity(extra), ...extra]));
  await Promise.all(agents.flatMap((a) => [a.waitStatus('ready', 30_000), a.waitStatus('connected', 30_000)]));
  return agents;
}

export interface WhoJson {
  target: string;
  rows: Array<{ client: string | null; seen_as: string; connections: number; ingress_node: string | null; endpoint_node: string | null; snat: boolean; stitched: boolean; protocols: string[] }>;
  complete: { events_lost: number; unstitched: number; nodes_reporting: string[]; collectors: string[]; lost_by_stage: Record<string, number> };
}

/** `natlens who TARGET --json` as a user runs it. */
export async function who(target: string, collector: string, extra: string[] = []): Promise<WhoJson> {
  const p = natlens('who', ['who', target, '--collector', collector, '--json', ...labSecurity(extra), ...extra]);
  const code = await p.wait();
  if (code !== 0) throw new Error(`natlens who ${target} exited ${code}: ${p.stderr.join('\n')}`);
  return JSON.parse(p.stdout) as WhoJson;
}
