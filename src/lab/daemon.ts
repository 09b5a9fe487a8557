// Shared plumbing of the lab's small daemons (kube-proxy-healthz, lb-controller, lb-proxy):
// argument parsing, following the lab state file (reloaded when it changes, on SIGHUP
// and by a 1 s poll), logging to stderr (a log file the lab opened), the "ready" line
// the lab waits for, and exiting on its own when its lab is gone.

import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { normalizeLabState } from './topology.js';
import type { LabState } from './types.js';

export function argValue(name: string, def?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v !== undefined) return v;
  if (def === undefined) {
    process.stderr.write(`missing --${name}\n`);
    process.exit(2);
  }
  return def;
}

export function argNumber(name: string, def: number): number {
  const n = Number(argValue(name, String(def)));
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`--${name} must be a positive number\n`);
    process.exit(2);
  }
  return n;
}

export function log(line: string): void {
  try {
    process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  } catch {
    /* no log */
  }
}

/** Identity of a file version: a rename-replaced file gets a new inode. */
export function fileIdentity(path: string): { key: string; mtimeMs: number } | null {
  try {
    const st = statSync(path);
    return { key: `${st.ino}:${st.mtimeMs}:${st.size}`, mtimeMs: st.mtimeMs };
  } catch {
    return null;
  }
}

/** Read a JSON file only if its identity changed since the last call. */
export class JsonFile<T> {
  value: T | null = null;
  mtimeMs = 0;
  #key: string | null = null;
  constructor(readonly path: string) {}

  /** true when a new version was loaded. */
  refresh(): boolean {
    const id = fileIdentity(this.path);
    if (!id) {
      this.#key = null;
      return false;
    }
    if (id.key === this.#key) return false;
    try {
      this.value = JSON.parse(readFileSync(this.path, 'utf8')) as T;
      this.#key = id.key;
      this.mtimeMs = id.mtimeMs;
      return true;
    } catch {
      return false; // half-written by a non-atomic writer: try again next time
    }
  }

  exists(): boolean {
    return fileIdentity(this.path) !== null;
  }
}

/** Atomic write (temp file + rename), so readers never see half a file. */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
  renameSync(tmp, path);
}

/**
 * Follows the lab state file: `onChange` runs after every new version (at start, on SIGHUP,
 * and when the 1 s poll notices a change). The process exits when the lab is gone: its
 * state file missing for 3 s, or replaced by another lab's (a different createdAt).
 */
export class LabStateFollower {
  readonly file: JsonFile<LabState>;
  #createdAt: string | null = null;
  #missingSince: number | null = null;
  #timer: NodeJS.Timeout | null = null;

  constructor(
    path: string,
    private readonly onChange: (state: LabState, reason: string) => void,
  ) {
    this.file = new JsonFile<LabState>(path);
  }

  get state(): LabState {
    if (!this.file.value) throw new Error(`no lab state in ${this.file.path}`);
    return this.file.value;
  }

  /** Load the state (throws when there is none); install SIGHUP and the poll. */
  start(): LabState {
    if (!this.file.refresh() || !this.file.value) throw new Error(`cannot read the lab state ${this.file.path}`);
    normalizeLabState(this.file.value);
    this.#createdAt = this.file.value.createdAt;
    process.on('SIGHUP', () => this.check('SIGHUP'));
    this.#timer = setInterval(() => this.check('poll'), 1000);
    this.onChange(this.file.value, 'start');
    return this.file.value;
  }

  /** Reload if the file changed; true when it did. Cheap (one stat) when it did not. */
  check(reason = 'check'): boolean {
    if (!this.file.exists()) {
      this.#missingSince ??= Date.now();
      if (Date.now() - this.#missingSince > 3000) this.exit(`lab state ${this.file.path} is gone`);
      return false;
    }
    this.#missingSince = null;
    if (!this.file.refresh() || !this.file.value) return false;
    normalizeLabState(this.file.value);
    if (this.file.value.createdAt !== this.#createdAt) this.exit(`lab state ${this.file.path} belongs to another lab now`);
    this.onChange(this.file.value, reason);
    return true;
  }

  exit(why: string): void {
    log(`exiting: ${why}`);
    if (this.#timer) clearInterval(this.#timer);
    process.exit(0);
  }
}

/** Tell the lab we are up (it waits for this line), then stop using stdout. */
export function signalReady(): void {
  process.stdout.on('error', () => undefined);
  process.stdout.write('ready\n');
}

export function onTerminate(stop: () => void): void {
  const handler = (): void => {
    try {
      stop();
    } finally {
      setTimeout(() => process.exit(0), 200).unref();
    }
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

/** True when this module is the script node was started with. */
export function isMainModule(metaUrl: string): boolean {
  const argv1 = process.argv[1];
  return argv1 !== undefined && metaUrl.endsWith('/' + (argv1.split('/').pop() ?? '\0'));
}
