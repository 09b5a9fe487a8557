/**
 * Retry delays: exponential, capped, with jitter, so that collectors retrying a store that came back
 * (or agents a collector) do not all knock at once.
 */
export interface BackoffOptions {
  /** Delay before the first retry (before jitter). */
  initialMs: number;
  /** Largest delay (before jitter). */
  maxMs: number;
}

/**
 * The delay before retry number `attempt` (0 for the first): min(max, initial * 2^attempt), of
 * which a random half is taken off (so within [d/2, d]).
 */
export function backoffDelay(attempt: number, o: BackoffOptions, random: () => number = Math.random): number {
  const d = Math.min(o.maxMs, o.initialMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.round(d / 2 + random() * (d / 2));
}
