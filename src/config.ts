/**
 * Configuration, merged in one place: defaults < environment (NATLENS_*) < command-line flags.
 * Every value is validated here, and a bad one is named with where it came from.
 */
import { hostname } from 'node:os';
import { UsageError } from './util/errors.js';
import { parseDuration } from './util/duration.js';

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

export const AGENT_SETTINGS = {
  node: { env: 'NATLENS_NODE', default: hostname(), parse: str, help: 'node name reported with every event' },
  netns: { env: 'NATLENS_NETNS', default: undefined, parse: optionalStr, help: 'network namespace to capture in (path, e.g. /run/netns/nl-node1)' },
  mode: { env: 'NATLENS_CAPTURE_MODE', default: 'auto' as const, parse: oneOf('auto', 'tc', 'ctnetlink'), help: 'capture mode: auto picks tc when the kernel allows' },
  udp: { env: 'NATLENS_UDP', default: true, parse: bool, help: 'capture UDP flows too' },
  attempts: { env: 'NATLENS_TRACK_ATTEMPTS', default: true, parse: bool, help: 'report dropped connection attempts' },
  ctEnd: { env: 'NATLENS_ENDS', default: true, parse: bool, help: 'report connection ends with counters (conntrack DESTROY events)' },
  ifaces: { env: 'NATLENS_IFACES', default: undefined, parse: optionalStr, help: 'only interfaces matching this regex' },
  exclude: { env: 'NATLENS_EXCLUDE_IFACES', default: undefined, parse: optionalStr, help: 'skip interfaces matching this regex' },
  ringKb: { env: 'NATLENS_RING_KB', default: 8192, parse: int(64, 1 << 20), help: 'ring buffer size in KiB (power of two)' },
  wakeupKb: { env: 'NATLENS_WAKEUP_KB', default: 64, parse: int(0, 1 << 16), help: 'wake the reader once this much is waiting' },
  drainMs: { env: 'NATLENS_DRAIN', default: 5, parse: durationMs(1, 1000), help: 'drain the ring buffer at least this often' },
  statsMs: { env: 'NATLENS_PROBE_STATS', default: 1000, parse: durationMs(100, 60_000), help: 'probe counter interval' },
  dropAfterMs: { env: 'NATLENS_DROP_AFTER', default: 1000, parse: durationMs(100, 60_000), help: 'an unanswered attempt counts as dropped after this long' },
  statsIntervalMs: { env: 'NATLENS_STATS_INTERVAL', default: 10_000, parse: durationMs(100, 3_600_000), help: 'emit a stats event at least this often' },
  lockDir: { env: 'NATLENS_LOCK_DIR', default: '/run/natlens', parse: str, help: 'where per-namespace agent locks live' },
} satisfies Record<string, Setting<unknown>>;

type Settings = Record<string, Setting<unknown>>;
export type ConfigOf<S extends Settings> = { [K in keyof S]: S[K] extends Setting<infer T> ? T : never };

/**
 * Merges defaults < env < flags. `flags` holds raw strings (or booleans from --no-x switches) as the
 * CLI parsed them; `flagNames` maps keys to the flag a user typed, for error messages.
 */
export function resolveConfig<S extends Settings>(
  settings: S,
  flags: Partial<Record<keyof S, string | boolean | undefined>>,
  env: NodeJS.ProcessEnv = process.env,
  flagNames: Partial<Record<keyof S, string>> = {},
): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(settings)) {
    let value: unknown = s.default;
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
