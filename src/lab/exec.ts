// Small process helpers for the lab: run a command (optionally inside a
// network namespace), feed it stdin, collect output, fail with a readable error.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { NatlensError } from '../util/errors.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string;
  /** Do not throw on a non-zero exit. */
  allowFail?: boolean;
  /** Kill the command after this long (default 30 s). */
  timeoutMs?: number;
}

export class LabCommandError extends NatlensError {}

export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let done = false;
    const timer = setTimeout(() => {
      if (!done) child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) => {
      done = true;
      clearTimeout(timer);
      reject(new LabCommandError(`cannot run ${cmd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      done = true;
      clearTimeout(timer);
      const res = { code: code ?? (signal ? 128 : 1), stdout, stderr };
      if (res.code !== 0 && !opts.allowFail) {
        const shown = [cmd, ...args].join(' ');
        reject(
          new LabCommandError(
            `command failed (exit ${signal ?? res.code}): ${shown.length > 200 ? shown.slice(0, 200) + '…' : shown}\n${stderr.trim()}`,
          ),
        );
      } else resolve(res);
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** Run a command inside a named network namespace (`ip netns exec`). */
export function nsRun(ns: string, cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

/** Run `ip -batch -` (in a namespace with `-n`), one command per line. */
export function ipBatch(ns: string | undefined, lines: string[], opts: RunOptions = {}): Promise<RunResult> {
  const args = ns ? ['-n', ns, '-batch', '-'] : ['-batch', '-'];
  return run('ip', args, { ...opts, input: lines.join('\n') + '\n' });
}

export async function sysctl(ns: string, settings: Record<string, string | number>): Promise<void> {
  const kv = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  if (kv.length) await nsRun(ns, 'sysctl', ['-q', '-w', ...kv]);
}

export function listNetns(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

export function netnsExists(name: string): boolean {
  return existsSync(`/run/netns/${name}`);
}

export function procCmdline(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return undefined;
  }
}

/** Single-quote for sh. */
export function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
