/**
 * Building blocks of natlens's metrics. Most values already exist as counters in the agent and the
 * collector: they are read at scrape time (prom-client collect()) rather than counted twice on the
 * hot path. One registry per process (never prom-client's global one), so tests can run several.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export function newRegistry(opts: { processMetrics?: boolean } = {}): Registry {
  const registry = new Registry();
  // process_cpu_seconds_total, process_resident_memory_bytes, nodejs_eventloop_lag_seconds, ...
  if (opts.processMetrics) collectDefaultMetrics({ register: registry });
  return registry;
}

type Labels<L extends string> = Partial<Record<L, string>>;
export type Samples<L extends string> = Iterable<readonly [Labels<L>, number]>;

/**
 * Keeps counters read from a source monotonic when the source starts over (a restarted probe or
 * agent reports from 0 again): each series continues from where it was.
 */
export class MonotonicTotals {
  private readonly series = new Map<string, { last: number; base: number }>();

  total(key: string, value: number): number {
    const v = Number.isFinite(value) && value > 0 ? value : 0;
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { last: 0, base: 0 }));
    if (v < s.last) s.base += s.last;
    s.last = v;
    return s.base + v;
  }
}

const keyOf = (labels: Record<string, string | undefined>): string => JSON.stringify(Object.entries(labels).sort());

/** A counter whose series are read from cumulative counts at every scrape. */
export function readCounter<L extends string>(
  registry: Registry, name: string, help: string, labelNames: readonly L[], read: () => Samples<L>,
): Counter<L> {
  const totals = new MonotonicTotals();
  return new Counter<L>({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.inc(labels, totals.total(keyOf(labels), value));
    },
  });
}

/** A gauge whose series are read at every scrape (series not read this time disappear). */
export function readGauge<L extends string>(
  registry: Registry, name: string, help: string, labelNames: readonly L[], read: () => Samples<L>,
): Gauge<L> {
  return new Gauge<L>({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.set(labels, value);
    },
  });
}

/** One unlabelled sample. */
export const one = (value: number): Samples<never> => [[{}, value]];
