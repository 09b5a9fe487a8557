// The collector's retries of a failing store, on simulated time (vitest fake timers): exponential
// backoff with jitter instead of a retry every flush, nothing dropped meanwhile, readiness saying
// why, and recovery. The store is a test double recording calls; the Collector is the real one.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Collector, type StoreRetry } from '../../src/collector/collector.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import type { ClickHouseStore } from '../../src/collector/store/clickhouse-store.js';
import type { LossSample } from '../../src/collector/hop.js';
import { backoffDelay } from '../../src/util/backoff.js';
import { createEventBatch, createLossReport } from '../../src/transport/proto.generated.js';

class FlakyStore {
  state: 'connecting' | 'ready' = 'ready';
  failing = true;
  lossCalls = 0;
  readonly stored: LossSample[] = [];
  describe(): string {
    return 'test store';
  }
  async whenConnected(): Promise<void> {}
  async latestHopNs(): Promise<bigint | null> {
    return null;
  }
  async insertHops(): Promise<void> {}
  async insertHealthChecks(): Promise<void> {}
  async insertConnections(): Promise<void> {}
  async insertServiceHistory(): Promise<void> {}
  async insertPodHistory(): Promise<void> {}
  async insertCaptureGaps(): Promise<void> {}
  async insertLoss(s: LossSample[]): Promise<void> {
    this.lossCalls++;
    if (this.failing) throw new Error('disk full (test)');
    this.stored.push(...s);
  }
}

describe('backoffDelay', () => {
  it('doubles from initialMs up to maxMs, keeping a random half', () => {
    const o = { initialMs: 250, maxMs: 5000 };
    expect([0, 1, 2, 3, 4, 5, 6, 30].map((a) => backoffDelay(a, o, () => 1))).toEqual([250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    expect([0, 1, 2, 5].map((a) => backoffDelay(a, o, () => 0))).toEqual([125, 250, 500, 2500]);
  });
});

describe('collector: a failing store', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('retries with exponential backoff, keeps what it holds, reports not ready, and recovers', async () => {
    const store = new FlakyStore();
    const collector = new Collector({
      ring: new PeerRing('c1', []), store: store as unknown as ClickHouseStore, version: 'test', flushIntervalMs: 100, maxBufferedHops: 1000,
      stitcher: { holdMs: 1000, windowMs: 5000, retentionMs: 15_000, maxChains: 1000 },
    });
    const retries: StoreRetry[] = [];
    collector.on('store-retry', (r: StoreRetry) => retries.push(r));
    let recovered = 0;
    collector.on('store-recovered', () => recovered++);
    collector.start();
    // An agent's batch carrying only loss counters: acked once they are stored.
    let acked = false;
    const accepted = collector.accept({ hello: { protocolVersion: 1, node: 'n1', agentId: 'a1', version: 't', nodeAddresses: [], forwardedBy: '' }, peer: 'p' },
      createEventBatch({ seq: 1n, batchId: 1n, loss: createLossReport({ lost: { queue_overflow: 7n }, captured: 10n }) })).then(() => { acked = true; });
    await vi.advanceTimersByTimeAsync(10_000);
    // A retry every flush would be 100 attempts; doubling delays from 250 ms to 5 s give 5 to 9.
    expect(store.lossCalls).toBeGreaterThanOrEqual(5);
    expect(store.lossCalls).toBeLessThanOrEqual(9);
    expect(retries.map((r) => r.attempt)).toEqual(retries.map((_, i) => i + 1));
    retries.forEach((r, i) => {
      const d = Math.min(5000, 250 * 2 ** i);
      expect(r.retryInMs).toBeGreaterThanOrEqual(d / 2);
      expect(r.retryInMs).toBeLessThanOrEqual(d);
      expect(r).toMatchObject({ store: 'test store', error: 'disk full (test)' });
    });
    expect(acked).toBe(false);
    expect(collector.readiness()).toMatchObject({ ready: false, store: 'failing', storeFailures: store.lossCalls });
    expect(collector.readiness().reason).toMatch(/test store fails: disk full/);

    store.failing = false;
    await vi.advanceTimersByTimeAsync(6000);
    await accepted;
    expect(acked).toBe(true);
    expect(recovered).toBe(1);
    expect(store.stored.map((s) => s.lost)).toEqual([{ queue_overflow: 7 }]);
    expect(collector.readiness()).toMatchObject({ ready: true, store: 'ready', storeFailures: 0 });
    await collector.close();
  });
});
