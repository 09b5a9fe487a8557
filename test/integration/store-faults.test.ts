// The store's capture-fault tables against the real embedded engine (chdb) in a temp directory:
// per-CPU ring-buffer loss read like the stage totals (cumulative per agent, windows, restarts), and
// capture gaps (repeated reports stored once, windows).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CaptureGapRecord, LossSample } from '../../src/collector/hop.js';
import { ClickHouseStore } from '../../src/collector/store/clickhouse-store.js';

const NS_PER_MIN = 60_000_000_000n;
const NOW = BigInt(Date.now()) * 1_000_000n;
const ago = (minutes: number) => NOW - BigInt(minutes) * NS_PER_MIN;

const root = mkdtempSync(join(tmpdir(), 'natlens-store-faults-'));

describe('ClickHouseStore: capture faults (embedded chdb)', () => {
  let store: ClickHouseStore;

  beforeAll(async () => {
    store = await ClickHouseStore.open({ dataDir: join(root, 'data') });
  }, 60_000);

  afterAll(async () => {
    await store?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('reads per-CPU ring-buffer loss like the stage totals: per node and CPU, summing to ringbuf_full', async () => {
    const s = (minutes: number, node: string, agentId: string, perCpu: Record<string, number>): LossSample => ({
      tsNs: ago(minutes), node, agentId, captured: 0, ringbufFullPerCpu: perCpu,
      lost: { ringbuf_full: Object.values(perCpu).reduce((a, b) => a + b, 0) },
    });
    await store.insertLoss([
      // node-1: before the window cpu0 had lost 10; within it cpu0 reaches 25 and cpu1 starts losing.
      s(120, 'node-1', 'a1', { 0: 10 }), s(30, 'node-1', 'a1', { 0: 20, 1: 2 }), s(10, 'node-1', 'a1', { 0: 25, 1: 6 }),
      // node-2 restarted its agent: the new one counts from 0 on its own CPUs.
      s(90, 'node-2', 'b-old', { 3: 40 }), s(45, 'node-2', 'b-old', { 3: 50 }), s(5, 'node-2', 'b-new', { 3: 7 }),
      // node-3 lost nothing in the window.
      s(100, 'node-3', 'c1', { 0: 9 }), s(20, 'node-3', 'c1', { 0: 9 }),
    ]);
    const window = ago(60);
    const perCpu = await store.lossPerCpuSince(window);
    expect(perCpu).toEqual([
      { node: 'node-1', cpu: 0, ringbufFull: 15 },
      { node: 'node-1', cpu: 1, ringbufFull: 6 },
      { node: 'node-2', cpu: 3, ringbufFull: 7 + 10 },
    ]);
    const loss = await store.lossSince(window);
    expect(perCpu.reduce((n, c) => n + c.ringbufFull, 0)).toBe(loss.byStage.ringbuf_full);
    expect(await store.lossPerCpuSince(NOW + NS_PER_MIN)).toEqual([]);
  });

  it('lists capture gaps that overlap the window, each once however often it was stored', async () => {
    const gap = (node: string, fromMin: number, toMin: number, cause: string, agentId = `${node}-agent`): CaptureGapRecord => ({
      node, agentId, fromNs: ago(fromMin) + 123n, toNs: ago(toMin) + 456n, cause, reason: `${cause} (pid 42)`, previousPid: 42,
    });
    const crash = gap('node-2', 20, 18, 'crashed');
    // Every loss report repeats the gap; a collector restart stores it again.
    await store.insertCaptureGaps([crash, crash]);
    await store.insertCaptureGaps([crash, gap('node-1', 120, 90, 'stopped'), gap('node-3', 70, 50, 'failed')]);
    const gaps = await store.captureGapsSince(ago(60));
    expect(gaps).toEqual([
      { node: 'node-3', fromNs: ago(70) + 123n, toNs: ago(50) + 456n, cause: 'failed', reason: 'failed (pid 42)' },
      { node: 'node-2', fromNs: ago(20) + 123n, toNs: ago(18) + 456n, cause: 'crashed', reason: 'crashed (pid 42)' },
    ]);
    expect((await store.captureGapsSince(ago(19))).map((g) => g.node)).toEqual(['node-2']);
    expect(await store.captureGapsSince(NOW)).toEqual([]);
  });
});
