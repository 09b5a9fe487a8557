// The soak bench's verdict arithmetic (bench/soak.ts), apart so that it is tested on its own
// (test/unit/soak-verdict.test.ts): memory trends per process, and connections made vs stored.

export const round1 = (x: number): number => Math.round(x * 10) / 10;
export const round3 = (x: number): number => Math.round(x * 1000) / 1000;

export interface ProcSample {
  rss_mb: number;
  anon_mb: number;
  /** share of one core since the previous sample */
  cpu: number;
}

export interface Sample {
  t_s: number;
  phase: 'load' | 'drain';
  made: number;
  failed: number;
  conn_per_s: number;
  machine_busy: number;
  stored_connections: number | null;
  stored_hops: number | null;
  buffered_hops: number | null;
  collector: ProcSample | null;
  agents: Record<string, { node: ProcSample | null; probe: ProcSample | null }>;
}

export interface TrendOptions {
  /** Samples before this (s since the load started) are not judged; also the length of the first and last windows. */
  warmupS: number;
  /** The largest RSS slope (MB/min) that passes, per kind of process. */
  maxSlope: Record<'collector' | 'agent' | 'probe', number>;
}

export interface Trend {
  process: string;
  kind: 'collector' | 'agent' | 'probe';
  first_mb: number;
  last_mb: number;
  ratio: number;
  slope_mb_per_min: number;
  max_mb: number;
  limit_mb_per_min: number;
  /** judged samples without a reading of this process (it was gone) */
  missing_samples: number;
  ok: boolean;
}

/** Least-squares slope of y over x. */
export function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my);
    den += ((xs[i] as number) - mx) ** 2;
  }
  return den > 0 ? num / den : 0;
}

export const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

/** Per process: RSS slope over the load after the warm-up, judged against its limit, and the window means. */
export function trends(samples: Sample[], opts: TrendOptions, loadEndS: number): Trend[] {
  // The load after the warm-up; the first window is [warmup, 2*warmup), the last (loadEnd-warmup, loadEnd].
  const load = samples.filter((s) => s.phase === 'load' && s.t_s >= opts.warmupS && s.t_s <= loadEndS);
  const series: Array<{ process: string; kind: Trend['kind']; get: (s: Sample) => ProcSample | null }> = [
    { process: 'collector', kind: 'collector', get: (s) => s.collector },
  ];
  for (const node of Object.keys(samples[0]?.agents ?? {})) {
    series.push({ process: `agent ${node}`, kind: 'agent', get: (s) => s.agents[node]?.node ?? null });
    series.push({ process: `probe ${node}`, kind: 'probe', get: (s) => s.agents[node]?.probe ?? null });
  }
  return series.map(({ process, kind, get }) => {
    const pts = load.flatMap((s) => {
      const p = get(s);
      return p ? [{ t: s.t_s, mb: p.rss_mb }] : [];
    });
    const first = pts.filter((p) => p.t < 2 * opts.warmupS).map((p) => p.mb);
    const last = pts.filter((p) => p.t > loadEndS - opts.warmupS).map((p) => p.mb);
    const k = slope(pts.map((p) => p.t / 60), pts.map((p) => p.mb));
    const limit = opts.maxSlope[kind];
    return {
      process, kind,
      first_mb: round1(mean(first)), last_mb: round1(mean(last)),
      ratio: mean(first) > 0 ? round3(mean(last) / mean(first)) : 0,
      slope_mb_per_min: round3(k),
      max_mb: round1(Math.max(0, ...pts.map((p) => p.mb))),
      limit_mb_per_min: limit,
      missing_samples: load.length - pts.length,
      // A process that vanished (or was replaced) for part of the load is a failure, not a pass.
      ok: pts.length >= 2 && pts.length === load.length && k <= limit,
    };
  });
}

/** Connections made vs stored, as multisets of one key per connection (source port and target). */
export function compareMultisets(made: Map<string, number>, stored: Map<string, number>): { missing: number; extra: number; stored: number } {
  let missing = 0;
  let extra = 0;
  let total = 0;
  for (const [k, n] of made) missing += Math.max(0, n - (stored.get(k) ?? 0));
  for (const [k, n] of stored) {
    total += n;
    extra += Math.max(0, n - (made.get(k) ?? 0));
  }
  return { missing, extra, stored: total };
}
