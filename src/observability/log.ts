/**
 * natlens's own logs: one JSON object per line on stderr,
 * {"ts","level","component","event",...fields} (msg for prose). `event` names what happened and is
 * stable (tests and operators match on it); fields are only ever added. See docs/observability.md.
 */
import { describeError } from '../util/errors.js';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
/** Set by the logger itself: a field of the same name is dropped rather than allowed to lie. */
const RESERVED = new Set(['ts', 'level', 'component', 'event']);

export interface LoggerOptions {
  /** Least severe level written. Default info. */
  level?: LogLevel;
  /** Where lines go (with their newline). Default: process.stderr. */
  write?: (line: string) => void;
  /** Clock, for the ts field. */
  now?: () => Date;
}

export type LogFields = Record<string, unknown>;

/** Bigints as decimal strings, errors as their message chain: whatever a field holds, the line is JSON. */
function replacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return describeError(value);
  return value;
}

export class Logger {
  private readonly rank: number;
  private readonly write: (line: string) => void;
  private readonly now: () => Date;

  constructor(readonly component: string, private readonly options: LoggerOptions = {}) {
    this.rank = RANK[options.level ?? 'info'];
    this.write = options.write ?? ((line) => process.stderr.write(line));
    this.now = options.now ?? (() => new Date());
  }

  get level(): LogLevel {
    return LOG_LEVELS[this.rank]!;
  }

  /** Same level and destination, another component name (e.g. 'k8s' under the collector). */
  child(component: string): Logger {
    return new Logger(component, this.options);
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.rank;
  }

  log(level: LogLevel, event: string, fields: LogFields = {}): void {
    if (RANK[level] < this.rank) return;
    const entry: LogFields = { ts: this.now().toISOString(), level, component: this.component, event };
    for (const [k, v] of Object.entries(fields)) if (!RESERVED.has(k) && v !== undefined) entry[k] = v;
    let line: string;
    try {
      line = JSON.stringify(entry, replacer);
    } catch (err) {
      // A field that cannot be serialised (a cycle) must not lose the event.
      line = JSON.stringify({ ts: entry.ts, level, component: this.component, event, msg: `unloggable fields: ${describeError(err)}` });
    }
    this.write(`${line}\n`);
  }

  debug(event: string, fields?: LogFields): void {
    this.log('debug', event, fields);
  }

  info(event: string, fields?: LogFields): void {
    this.log('info', event, fields);
  }

  warn(event: string, fields?: LogFields): void {
    this.log('warn', event, fields);
  }

  error(event: string, fields?: LogFields): void {
    this.log('error', event, fields);
  }
}
