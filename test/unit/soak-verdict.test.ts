// The soak bench's verdict: a leak fails, a steady sawtooth and warm-up growth pass, a vanished
// process fails, and equal totals with one connection lost and another stored twice do not pass.
import { describe, expect, it } from 'vitest';
import { compareMultisets, slope, trends, type ProcSample, type Sample } from '../../bench/soak-verdict.js';

const proc = (rss_mb: number): ProcSample => ({ rss_mb, anon_mb: rss_mb / 2, cpu: 0.1 });

/** Samples every 5 s over `durationS` of load, then a few drain samples. */
function series(durationS: number, rss: { collector: (t: number) => number | null; agent: (t: number) => number | null; probe: (t: number) => number | null }): Sample[] {
  const out: Sample[] = [];
  const mk = (t: number, phase: Sample['phase'], f: typeof rss): Sample => {
    const c = f.collector(t);
    const a = f.agent(t);
    const p = f.probe(t);
    return {
      t_s: t, phase, made: t * 1000, failed: 0, conn_per_s: 1000, machine_busy: 0.3,
      stored_connections: null, stored_hops: null, buffered_hops: null,
      collector: c === null ? null : proc(c),
      agents: { node1: { node: a === null ? null : proc(a), probe: p === null ? null : proc(p) } },
    };
  };
  for (let t = 0; t <= durationS; t += 5) out.push(mk(t, 'load', rss));
  // After the load the collector holds the last batches: not judged.
  for (let t = durationS + 5; t <= durationS + 30; t += 5) out.push(mk(t, 'drain', { collector: () => 5000, agent: () => 5000, probe: () => 5000 }));
  return out;
}

const opts = { warmupS: 60, maxSlope: { collector: 5, agent: 2, probe: 0.25 } };

describe('soak memory verdict', () => {
  it('fits the least-squares slope', () => {
    expect(slope([0, 1, 2, 3], [100, 102, 104, 106])).toBeCloseTo(2, 10);
    expect(slope([0, 1, 2, 3], [5, 1, 5, 1])).toBeCloseTo(-0.8, 10);
    expect(slope([1], [7])).toBe(0);
  });

  it('passes a steady sawtooth after a warm-up rise, fails a leak of 3 MB/min', () => {
    const warm = (t: number, base: number): number => (t < 60 ? base - 100 + (100 * t) / 60 : base);
    const samples = series(600, {
      // 350 MB +- 10 MB, period 60 s (GC and merges), after climbing 100 MB in the first minute.
      collector: (t) => warm(t, 350) + 10 * Math.sin((2 * Math.PI * t) / 60),
      agent: (t) => warm(t, 140) + (3 * t) / 60,
      probe: () => 19,
    });
    const byName = Object.fromEntries(trends(samples, opts, 600).map((x) => [x.process, x]));
    expect(byName['collector']!.ok).toBe(true);
    expect(Math.abs(byName['collector']!.slope_mb_per_min)).toBeLessThan(1);
    expect(byName['agent node1']!.ok).toBe(false);
    expect(byName['agent node1']!.slope_mb_per_min).toBeCloseTo(3, 6);
    // First window: minute 1-2 (t 60..115), last: minute 9-10 (t 545..600).
    expect(byName['agent node1']!.first_mb).toBeCloseTo(140 + (3 * 87.5) / 60, 1);
    expect(byName['agent node1']!.last_mb).toBeCloseTo(140 + (3 * 572.5) / 60, 1);
    expect(byName['agent node1']!.ratio).toBeGreaterThan(1);
    expect(byName['probe node1']).toMatchObject({ ok: true, slope_mb_per_min: 0, ratio: 1, max_mb: 19 });
    // Drain samples (5000 MB) are not part of any figure.
    expect(Math.max(...Object.values(byName).map((x) => x.max_mb))).toBeLessThan(400);
  });

  it('fails a process that vanished during the load', () => {
    const samples = series(600, { collector: (t) => (t < 100 ? 300 : null), agent: () => 140, probe: () => 19 });
    const c = trends(samples, opts, 600).find((x) => x.process === 'collector')!;
    expect(c.ok).toBe(false);
  });
});

describe('soak made vs stored', () => {
  const made = new Map([['40000 10.240.0.3:30190', 2], ['40001 10.240.0.4:30190', 1], ['40002 203.0.113.150:80', 1]]);

  it('passes the same multiset, port reuse included', () => {
    expect(compareMultisets(made, new Map(made))).toEqual({ missing: 0, extra: 0, stored: 4 });
  });

  it('sees one connection lost and another stored twice although the totals match', () => {
    const stored = new Map([['40000 10.240.0.3:30190', 2], ['40001 10.240.0.4:30190', 2]]);
    expect(compareMultisets(made, stored)).toEqual({ missing: 1, extra: 1, stored: 4 });
  });

  it('counts a reused port stored once as missing', () => {
    const stored = new Map([['40000 10.240.0.3:30190', 1], ['40001 10.240.0.4:30190', 1], ['40002 203.0.113.150:80', 1]]);
    expect(compareMultisets(made, stored)).toEqual({ missing: 1, extra: 0, stored: 3 });
  });
});
