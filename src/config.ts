/**
 * Configuration, merged in one place (resolveConfig): defaults < config file (--config FILE or
 * NATLENS_CONFIG, YAML: `settingName: value`, for agent and collector) < environment (NATLENS_*) <
 * command-line flags. Every value is validated here by the same parser whatever its source, and a
 * bad one is named with where it came from (flag, variable, or file:line and key).
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import { UsageError } from './util/errors.js';
import { parseDuration } from './util/duration.js';
import { LOG_LEVELS } from './observability/log.js';

type Parser<T> = (text: string, source: string) => T;

interface Setting<T> {
  env: string;
  default: T;
  parse: Parser<T>;
  help: string;
}

const int = (min: number, max: number): Parser<number> => (text, source) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${source}: '${text}' must be a whole number from ${min} to ${max}`);
  return n;
};
/** Ring sizes: the kernel wants a power of two that is a multiple of the page size (4 KiB here). */
const powerOfTwo = (min: number, max: number): Parser<number> => (text, source) => {
  const n = int(min, max)(text, source);
  if ((n & (n - 1)) !== 0) throw new UsageError(`${source}: '${text}' must be a power of two (e.g. ${2 ** Math.floor(Math.log2(n))} or ${2 ** Math.ceil(Math.log2(n))})`);
  return n;
};
const durationMs = (min: number, max: number): Parser<number> => (text, source) => {
  const ms = parseDuration(text, source);
  if (ms < min || ms > max) throw new UsageError(`${source}: '${text}' must be between ${min} ms and ${max} ms`);
  return ms;
};
const str: Parser<string> = (text) => text;
const optionalStr: Parser<string | undefined> = (text) => (text === '' ? undefined : text);
const oneOf = <T extends string>(...values: T[]): Parser<T> => (text, source) => {
  if (!(values as string[]).includes(text)) throw new UsageError(`${source}: '${text}' must be one of ${values.join(', ')}`);
  return text as T;
};
const bool: Parser<boolean> = (text, source) => {
  if (['1', 'true', 'yes', 'on'].includes(text)) return true;
  if (['0', 'false', 'no', 'off'].includes(text)) return false;
  throw new UsageError(`${source}: '${text}' must be true or false`);
};

/** The agent's and the collector's own metrics and logs (docs/observability.md). */
const OBSERVABILITY_SETTINGS = {
  metricsListen: { env: 'NATLENS_METRICS_LISTEN', default: undefined as string | undefined, parse: (t: string, src: string) => (t === '' ? undefined : hostPort(t, src)), help: 'serve /metrics, /healthz and /readyz on HOST:PORT (default: off)' },
  logLevel: { env: 'NATLENS_LOG_LEVEL', default: 'info' as (typeof LOG_LEVELS)[number], parse: oneOf(...LOG_LEVELS), help: 'least severe log lines written to stderr: debug, info, warn or error' },
};

/** Transport security of every command that connects (docs/security.md): mutual TLS, or --plaintext for a lab. */
const TLS_SETTINGS = {
  tlsCa: { env: 'NATLENS_TLS_CA', default: undefined, parse: optionalStr, help: 'PEM file of the CA that issued natlens certificates (mutual TLS)' },
  tlsCert: { env: 'NATLENS_TLS_CERT', default: undefined, parse: optionalStr, help: 'PEM file of this process\'s certificate' },
  tlsKey: { env: 'NATLENS_TLS_KEY', default: undefined, parse: optionalStr, help: 'PEM file of this process\'s private key' },
  tlsServerName: { env: 'NATLENS_TLS_SERVER_NAME', default: undefined, parse: optionalStr, help: 'verify the collector\'s certificate for this name instead of the target host' },
  plaintext: { env: 'NATLENS_PLAINTEXT', default: false, parse: bool, help: 'no TLS, no authentication: for a lab only' },
} satisfies Record<string, Setting<unknown>>;

export const AGENT_SETTINGS = {
  node: { env: 'NATLENS_NODE', default: hostname(), parse: str, help: 'node name reported with every event' },
  netns: { env: 'NATLENS_NETNS', default: undefined, parse: optionalStr, help: 'network namespace to capture in (path, e.g. /run/netns/nl-node1)' },
  mode: { env: 'NATLENS_CAPTURE_MODE', default: 'auto' as const, parse: oneOf('auto', 'tc', 'ctnetlink'), help: 'capture mode: auto picks tc when the kernel allows' },
  udp: { env: 'NATLENS_UDP', default: true, parse: bool, help: 'capture UDP flows too' },
  attempts: { env: 'NATLENS_TRACK_ATTEMPTS', default: true, parse: bool, help: 'report dropped connection attempts' },
  ctEnd: { env: 'NATLENS_ENDS', default: true, parse: bool, help: 'report connection ends with counters (conntrack DESTROY events)' },
  proxyProtocol: { env: 'NATLENS_PROXY_PROTOCOL', default: true, parse: bool, help: 'report PROXY protocol headers opening TCP connections to pods' },
  ifaces: { env: 'NATLENS_IFACES', default: undefined, parse: optionalStr, help: 'only interfaces matching this regex' },
  exclude: { env: 'NATLENS_EXCLUDE_IFACES', default: undefined, parse: optionalStr, help: 'skip interfaces matching this regex' },
  ringKb: { env: 'NATLENS_RING_KB', default: 8192, parse: powerOfTwo(4, 1 << 20), help: 'ring buffer size in KiB (power of two, at least one page)' },
  wakeupKb: { env: 'NATLENS_WAKEUP_KB', default: 64, parse: int(0, 1 << 16), help: 'wake the reader once this much is waiting' },
  drainMs: { env: 'NATLENS_DRAIN', default: 5, parse: durationMs(1, 1000), help: 'drain the ring buffer at least this often' },
  statsMs: { env: 'NATLENS_PROBE_STATS', default: 1000, parse: durationMs(100, 60_000), help: 'probe counter interval' },
  dropAfterMs: { env: 'NATLENS_DROP_AFTER', default: 1000, parse: durationMs(100, 60_000), help: 'an unanswered attempt counts as dropped after this long' },
  statsIntervalMs: { env: 'NATLENS_STATS_INTERVAL', default: 10_000, parse: durationMs(100, 3_600_000), help: 'emit a stats event at least this often' },
  lockDir: { env: 'NATLENS_LOCK_DIR', default: '/run/natlens', parse: str, help: 'where per-namespace agent locks live' },
  collector: { env: 'NATLENS_COLLECTOR', default: undefined as string | undefined, parse: (t: string, src: string) => (t === '' ? undefined : hostPort(t, src)), help: 'stream to the collector at HOST:PORT' },
  batchEvents: { env: 'NATLENS_BATCH_EVENTS', default: 1000, parse: int(1, 5000), help: 'events per batch sent to the collector' },
  kubernetes: { env: 'NATLENS_KUBERNETES', default: false, parse: bool, help: 'watch Kubernetes (this node\'s pods, Services) to read health-check node ports' },
  kubeconfig: { env: 'NATLENS_KUBECONFIG', default: undefined, parse: optionalStr, help: 'watch Kubernetes through this kubeconfig file' },
  healthIntervalMs: { env: 'NATLENS_HEALTH_CHECK_INTERVAL', default: 2000, parse: durationMs(100, 600_000), help: 'read this node\'s health-check node ports this often' },
  queueEvents: { env: 'NATLENS_QUEUE_EVENTS', default: 200_000, parse: int(1000, 10_000_000), help: 'events held while the collector is slow or away; beyond, new events are counted lost' },
  ...OBSERVABILITY_SETTINGS,
  ...TLS_SETTINGS,
} satisfies Record<string, Setting<unknown>>;

const hostPort: Parser<string> = (text, source) => {
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(text) || Number(text.slice(text.lastIndexOf(':') + 1)) > 65535) {
    throw new UsageError(`${source}: '${text}' must be HOST:PORT (e.g. 127.0.0.1:7070 or [::1]:7070)`);
  }
  return text;
};

export const COLLECTOR_SETTINGS = {
  listen: { env: 'NATLENS_LISTEN', default: '127.0.0.1:7070', parse: hostPort, help: 'serve agents and queries on HOST:PORT (0.0.0.0:7070 in a cluster)' },
  data: { env: 'NATLENS_DATA', default: undefined, parse: optionalStr, help: 'embedded ClickHouse (chdb) data directory' },
  clickhouseUrl: { env: 'NATLENS_CLICKHOUSE_URL', default: undefined, parse: optionalStr, help: 'ClickHouse server URL (instead of --data), e.g. http://user:pass@clickhouse:8123' },
  database: { env: 'NATLENS_DATABASE', default: 'natlens', parse: (t: string, src: string) => { if (!/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(t)) throw new UsageError(`${src}: '${t}' is not a valid database name`); return t; }, help: 'ClickHouse database' },
  ttlDays: { env: 'NATLENS_TTL_DAYS', default: 7, parse: int(1, 3650), help: 'keep stored data this many days' },
  id: { env: 'NATLENS_COLLECTOR_ID', default: 'c1', parse: (t: string, src: string) => { if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(t)) throw new UsageError(`${src}: '${t}' must be lowercase letters, digits and dashes`); return t; }, help: 'this collector\'s id among its peers' },
  peers: { env: 'NATLENS_PEERS', default: '', parse: str, help: 'all collectors sharing the work, id=host:port,... (including this one)' },
  holdMs: { env: 'NATLENS_STITCH_HOLD', default: 2000, parse: durationMs(100, 60_000), help: 'wait this long for a missing hop before storing a connection as unstitched' },
  windowMs: { env: 'NATLENS_STITCH_WINDOW', default: 5000, parse: durationMs(10, 60_000), help: 'largest time difference between two hops of one connection' },
  retentionMs: { env: 'NATLENS_STITCH_RETENTION', default: 15_000, parse: durationMs(1000, 600_000), help: 'late hops are still stitched this long after a connection was stored' },
  flushMs: { env: 'NATLENS_FLUSH_INTERVAL', default: 250, parse: durationMs(10, 10_000), help: 'store received events at least this often' },
  maxBatchEvents: { env: 'NATLENS_MAX_BATCH_EVENTS', default: 5000, parse: int(1, 100_000), help: 'largest batch accepted from an agent' },
  maxMessageBytes: { env: 'NATLENS_MAX_MESSAGE_BYTES', default: 16 << 20, parse: int(1024, 256 << 20), help: 'largest gRPC message accepted' },
  kubernetes: { env: 'NATLENS_KUBERNETES', default: false, parse: bool, help: 'watch Kubernetes (in-cluster config, else $KUBECONFIG / ~/.kube/config) for names and Service history' },
  kubeconfig: { env: 'NATLENS_KUBECONFIG', default: undefined, parse: optionalStr, help: 'watch Kubernetes through this kubeconfig file' },
  ...OBSERVABILITY_SETTINGS,
  ...TLS_SETTINGS,
  queryTokenFile: { env: 'NATLENS_QUERY_TOKEN_FILE', default: undefined, parse: optionalStr, help: 'bearer tokens the query API accepts, one per line' },
  maxBufferedHops: { env: 'NATLENS_MAX_BUFFERED_HOPS', default: 100_000, parse: int(1000, 10_000_000), help: 'hops held while the store is slow or away (about 1.2 KB each); beyond, agents are made to wait (their own queues are bounded)' },
  clickhouseTimeoutMs: { env: 'NATLENS_CLICKHOUSE_TIMEOUT', default: 30_000, parse: durationMs(100, 600_000), help: 'give up on a ClickHouse server request after this long, then retry with backoff' },
} satisfies Record<string, Setting<unknown>>;

export const QUERY_SETTINGS = {
  collector: { env: 'NATLENS_COLLECTOR', default: '127.0.0.1:7070', parse: hostPort, help: 'the collector to ask' },
  sinceMs: { env: 'NATLENS_SINCE', default: 3_600_000, parse: durationMs(1000, 366 * 24 * 3_600_000), help: 'look back this far' },
  ...TLS_SETTINGS,
  tokenFile: { env: 'NATLENS_TOKEN_FILE', default: undefined, parse: optionalStr, help: 'file holding the bearer token for the query API' },
  token: { env: 'NATLENS_TOKEN', default: undefined, parse: optionalStr, help: 'the bearer token itself (no flag: flags show in ps)' },
} satisfies Record<string, Setting<unknown>>;

type Settings = Record<string, Setting<unknown>>;
export type ConfigOf<S extends Settings> = { [K in keyof S]: S[K] extends Setting<infer T> ? T : never };

/**
 * Merges defaults < config file < env < flags. `flags` holds raw strings (or booleans from --no-x
 * switches) as the CLI parsed them; `flagNames` maps keys to the flag a user typed, for error
 * messages; `file` is what loadConfigFile read (settings it does not name keep their defaults).
 */
export function resolveConfig<S extends Settings>(
  settings: S,
  flags: Partial<Record<keyof S, string | boolean | undefined>>,
  env: NodeJS.ProcessEnv = process.env,
  flagNames: Partial<Record<keyof S, string>> = {},
  file?: ConfigFile,
): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(settings)) {
    let value: unknown = s.default;
    const fromFile = file?.values.get(key);
    if (fromFile !== undefined) value = s.parse(fromFile.text, fromFile.source);
    const fromEnv = env[s.env];
    if (fromEnv !== undefined) value = s.parse(fromEnv, `environment variable ${s.env}`);
    const fromFlag = flags[key as keyof S];
    if (typeof fromFlag === 'boolean') value = fromFlag;
    else if (fromFlag !== undefined) value = s.parse(fromFlag, flagNames[key as keyof S] ?? `--${kebab(key)}`);
    out[key] = value;
  }
  return out as ConfigOf<S>;
}

export function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

// ---- config files --------------------------------------------------------------------------------

/** The environment variable naming a config file when --config is not given. */
export const CONFIG_ENV = 'NATLENS_CONFIG';
/** A config file is a few dozen lines; anything this large is not one. */
const MAX_CONFIG_BYTES = 1024 * 1024;

/** What a config file sets: setting key -> its text and where it was written ("FILE:LINE: key"). */
export interface ConfigFile {
  path: string;
  values: Map<string, { text: string; source: string }>;
}

/**
 * The config file to read for these settings: --config FILE, else $NATLENS_CONFIG, else none.
 * Throws UsageError naming the file (and where its name came from) when it cannot be read or is
 * not a YAML mapping of known settings to single values.
 */
export function configFileFor(settings: Settings, flagValue: string | undefined, env: NodeJS.ProcessEnv = process.env): ConfigFile | undefined {
  if (flagValue !== undefined) return loadConfigFile(settings, flagValue, '--config');
  const fromEnv = env[CONFIG_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return loadConfigFile(settings, fromEnv, `environment variable ${CONFIG_ENV}`);
  return undefined;
}

export function loadConfigFile(settings: Settings, path: string, namedBy = '--config'): ConfigFile {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.length > MAX_CONFIG_BYTES) throw new UsageError(`config file ${path} (${namedBy}) is ${bytes.length} bytes: not a config file (at most ${MAX_CONFIG_BYTES})`);
    text = bytes.toString('utf8');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'it does not exist' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (err as Error).message;
    throw new UsageError(`config file ${path} (${namedBy}) cannot be read: ${why}`, { cause: err });
  }
  const lines = new LineCounter();
  // failsafe: every value stays the text written (007 is not 7, yes is not true): the settings' parsers judge it.
  const doc = parseDocument(text, { lineCounter: lines, schema: 'failsafe', prettyErrors: false });
  const lineOf = (offset: number | undefined): number => (offset === undefined ? 1 : lines.linePos(offset).line);
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const at = e.linePos?.[0] ?? lines.linePos(e.pos[0]);
    throw new UsageError(`${path}:${at.line}:${at.col}: not valid YAML: ${e.message.split('\n')[0]}`);
  }
  const values = new Map<string, { text: string; source: string }>();
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === '')) return { path, values };
  if (!isMap(doc.contents)) {
    throw new UsageError(`${path}:${lineOf(doc.contents.range?.[0])}: a config file is a mapping of setting names to values (e.g. "ringKb: 8192"), not ${isSeq(doc.contents) ? 'a list' : 'a single value'}`);
  }
  for (const pair of doc.contents.items) {
    const keyNode = pair.key;
    const line = lineOf(isScalar(keyNode) ? keyNode.range?.[0] : undefined);
    const key = isScalar(keyNode) ? String(keyNode.value) : '';
    if (!Object.hasOwn(settings, key)) {
      const hint = nearestSetting(settings, key);
      throw new UsageError(
        `${path}:${line}: unknown setting ${JSON.stringify(key)}` +
          (hint ? ` (did you mean '${hint}'?)` : `; the settings are: ${Object.keys(settings).join(', ')}`),
      );
    }
    const v = pair.value;
    if (v !== null && !isScalar(v)) {
      throw new UsageError(`${path}:${line}: ${key}: expected a single value, got ${isSeq(v) ? 'a list' : 'a mapping'} (write lists as one string, e.g. "a,b")`);
    }
    values.set(key, { text: v === null ? '' : String(v.value), source: `${path}:${line}: ${key}` });
  }
  return { path, values };
}

/** The setting a mistyped key most likely meant: same letters ignoring case and dashes, its env name or flag, or a near spelling. */
function nearestSetting(settings: Settings, key: string): string | undefined {
  const norm = (t: string): string => t.toLowerCase().replace(/[-_]/g, '');
  const wanted = norm(key);
  let best: { name: string; d: number } | undefined;
  for (const [name, s] of Object.entries(settings)) {
    if (norm(name) === wanted || norm(s.env) === wanted || norm(s.env.replace(/^NATLENS_/, '')) === wanted) return name;
    const d = editDistance(norm(name), wanted);
    if (d <= Math.max(1, Math.floor(name.length / 3)) && (!best || d < best.d)) best = { name, d };
  }
  return best?.name;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/** --help lines: each setting's config file key, environment variable and meaning. */
export function settingsHelp(settings: Settings): string {
  const rows = Object.entries(settings);
  const keyWidth = Math.max(...rows.map(([k]) => k.length)) + 2;
  const envWidth = Math.max(...rows.map(([, s]) => s.env.length)) + 2;
  return rows.map(([k, s]) => `  ${k.padEnd(keyWidth)}${s.env.padEnd(envWidth)}${s.help}`).join('\n');
}
