// The capture-fault lines of who/etp answers: per-CPU ring-buffer loss by node, and capture gaps.
import { describe, expect, it } from 'vitest';
import { captureFaultLines, captureFaultsJson } from '../../src/query/completeness-format.js';
import { formatWho, whoJson } from '../../src/cli/who-command.js';
import { etpJson, formatEtp } from '../../src/query/etp-format.js';
import { createCompleteness, createCpuLoss, createEtpResponse, createNodeGap, createWhoResponse } from '../../src/transport/proto.generated.js';

const complete = createCompleteness({
  eventsLost: 20n, lostByStage: { ringbuf_full: 20n }, nodesReporting: ['node1', 'node2'], collectors: ['c1'],
  lostPerCpu: [
    createCpuLoss({ node: 'node2', cpu: 1, ringbufFull: 3n }),
    createCpuLoss({ node: 'node1', cpu: 0, ringbufFull: 5n }),
    createCpuLoss({ node: 'node2', cpu: 0, ringbufFull: 12n }),
  ],
  gaps: [createNodeGap({ node: 'node2', from: '2025-12-09T19:56:19.032329216Z', to: '2025-12-09T19:56:25.000000001Z', cause: 'crashed', reason: 'the previous natlens-probe (pid 4242) ended without detaching' })],
});

describe('capture faults in completeness', () => {
  it('--json: lost_per_cpu and gaps with plain numbers', () => {
    const j = captureFaultsJson(complete);
    expect(j.lost_per_cpu).toContainEqual({ node: 'node2', cpu: 0, ringbuf_full: 12 });
    expect(j.gaps).toEqual([{ node: 'node2', from: '2025-12-09T19:56:19.032329216Z', to: '2025-12-09T19:56:25.000000001Z', cause: 'crashed', reason: 'the previous natlens-probe (pid 4242) ended without detaching' }]);
    expect(captureFaultsJson(undefined)).toEqual({ lost_per_cpu: [], gaps: [] });
  });

  it('text: one line per node with its CPUs in order, one per gap', () => {
    expect(captureFaultLines(captureFaultsJson(complete))).toEqual([
      'node1 lost 5 events: ringbuf_full on cpu0: 5',
      'node2 lost 15 events: ringbuf_full on cpu0: 12, cpu1: 3',
      'node2 was not capturing from 2025-12-09T19:56:19.032329216Z to 2025-12-09T19:56:25.000000001Z (agent crashed)',
    ]);
  });

  it('natlens who shows them under its complete line, and in --json', () => {
    const res = createWhoResponse({ target: '10.180.1.136', since: '2025-12-09T19:00:00.000000000Z', complete });
    const text = formatWho(res);
    expect(text).toMatch(/complete: 20 events lost \(ringbuf_full 20\);.*\n {2}node1 lost 5 events: ringbuf_full on cpu0: 5\n {2}node2 lost 15 events: ringbuf_full on cpu0: 12, cpu1: 3\n {2}node2 was not capturing from 2025-12-09T19:56:19\.032329216Z to 2025-12-09T19:56:25\.000000001Z \(agent crashed\)\n$/);
    expect(whoJson(res).complete).toMatchObject({ events_lost: 20, lost_per_cpu: expect.arrayContaining([{ node: 'node1', cpu: 0, ringbuf_full: 5 }]), gaps: [{ node: 'node2', cause: 'crashed' }] });
  });

  it('natlens etp too', () => {
    const res = createEtpResponse({ service: 'default/nodeport', since: '2025-12-09T19:00:00.000000000Z', complete });
    expect(formatEtp(res)).toContain('\n  node2 was not capturing from 2025-12-09T19:56:19.032329216Z to 2025-12-09T19:56:25.000000001Z (agent crashed)\n');
    expect(formatEtp(res)).toContain('\n  node2 lost 15 events: ringbuf_full on cpu0: 12, cpu1: 3\n');
    expect(etpJson(res).complete).toMatchObject({ gaps: [{ node: 'node2', from: '2025-12-09T19:56:19.032329216Z' }], lost_per_cpu: expect.arrayContaining([{ node: 'node2', cpu: 1, ringbuf_full: 3 }]) });
  });
});
