import { describe, expect, it } from 'vitest';
import { formatPerCpu, formatTimestamp, serializeEvent, toAgentEvent, toStatsEvent } from '../../src/agent/events.js';
import { captureGapOf, toGapEvent } from '../../src/agent/agent.js';
import type { FlowRecord, StatsRecord } from '../../src/probe/record-decoder.js';

const base: FlowRecord = {
  kind: 'conn', tsNs: 1765310179032329216n, family: 4, proto: 'tcp', hook: 'tc_egress', ifindex: 2,
  ctStatus: 0x1b8, tcpIsn: 42,
  orig: { src: '198.51.100.79', sport: 51326, dst: '10.240.0.4', dport: 30080 },
  reply: { src: '10.180.1.136', sport: 8080, dst: '10.240.0.4', dport: 51326 },
  packetsOrig: 0, bytesOrig: 0, packetsReply: 0, bytesReply: 0,
};
const names = (i: number): string | null => (i === 2 ? 'eth0' : null);

describe('agent events', () => {
  it('formats RFC 3339 timestamps with nanoseconds', () => {
    expect(formatTimestamp(1765310179032329216n)).toBe('2025-12-09T19:56:19.032329216Z');
    expect(formatTimestamp(1_000_000_007n)).toBe('1970-01-01T00:00:01.000000007Z');
  });

  it('turns a CONN record into the documented conn line', () => {
    expect(toAgentEvent(base, 'node2', names)).toEqual({
      type: 'conn', node: 'node2', proto: 'tcp', family: 4,
      orig: base.orig, reply: base.reply, snat: true, dnat: true,
      ts: '2025-12-09T19:56:19.032329216Z', isn: 42, ifname: 'eth0', hook: 'tc_egress', ct_status: 0x1b8,
    });
  });

  it('derives snat/dnat from the conntrack status bits only', () => {
    expect(toAgentEvent({ ...base, ctStatus: 0x20 }, 'n', names)).toMatchObject({ snat: false, dnat: true });
    expect(toAgentEvent({ ...base, ctStatus: 0x8 }, 'n', names)).toMatchObject({ snat: false, dnat: false });
  });

  it('reports no ISN for UDP or conntrack-event fallback records', () => {
    expect(toAgentEvent({ ...base, proto: 'udp' }, 'n', names)).toMatchObject({ isn: null });
    expect(toAgentEvent({ ...base, kind: 'ct_new', hook: 'ctnetlink', ifindex: 0 }, 'n', names)).toMatchObject({ type: 'conn', isn: null, ifname: null });
  });

  it('turns DROP and END records into drop and end lines', () => {
    expect(toAgentEvent({ ...base, kind: 'drop', hook: 'tc_ingress', reply: null, packetsOrig: 2, ctStatus: 0 }, 'node3', names))
      .toMatchObject({ type: 'drop', node: 'node3', attempts: 2, orig: base.orig, ifname: 'eth0' });
    expect(toAgentEvent({ ...base, kind: 'end', packetsOrig: 5, bytesOrig: 300, packetsReply: 4, bytesReply: 900 }, 'n', names))
      .toMatchObject({ type: 'end', packets: { orig: 5, reply: 4 }, bytes: { orig: 300, reply: 900 } });
  });

  it('sums every loss counter into stats.lost.total', () => {
    const counters = {
      ringbuf_full: 3, ct_miss: 1, pending_full: 2, parse_skip: 0, netlink_lost: 5, records_out: 10,
      conn_seen: 10, drop_seen: 0, end_seen: 0, attached_ifaces: 3,
    } as StatsRecord['counters'];
    const ev = toStatsEvent({ kind: 'stats', tsNs: 0n, counters }, 'n', 4);
    expect(ev.lost).toEqual({ ringbuf_full: 3, pending_full: 2, netlink_lost: 5, decode_errors: 4, total: 14 });
  });
});

describe('capture faults in agent events', () => {
  const counters = {
    ringbuf_full: 15, ct_miss: 0, pending_full: 0, parse_skip: 0, netlink_lost: 0, records_out: 85,
    conn_seen: 85, drop_seen: 0, end_seen: 0, attached_ifaces: 3,
  } as StatsRecord['counters'];

  it('adds ringbuf_full_per_cpu (CPUs that lost any) to stats, summing to lost.ringbuf_full', () => {
    const ev = toStatsEvent({ kind: 'stats', tsNs: 0n, counters }, 'node2', 0, undefined, [12, 0, 3]);
    expect(ev.ringbuf_full_per_cpu).toEqual({ 0: 12, 2: 3 });
    expect(Object.values(ev.ringbuf_full_per_cpu!).reduce((a, b) => a + b, 0)).toBe(ev.lost.ringbuf_full);
    expect(formatPerCpu(ev.ringbuf_full_per_cpu!)).toBe('cpu0: 12, cpu2: 3');
    expect(serializeEvent(ev)).toBe(JSON.stringify(ev));
    // No loss: the stats line keeps the shape it always had.
    expect(toStatsEvent({ kind: 'stats', tsNs: 0n, counters: { ...counters, ringbuf_full: 0 } }, 'n', 0, undefined, [0, 0])).not.toHaveProperty('ringbuf_full_per_cpu');
  });

  it('turns the probe\'s gap status into a gap event with exact nanoseconds', () => {
    const status = {
      event: 'gap', from_ns: '1765310179032329216', to_ns: '1765310185000000001', cause: 'crashed', previous_pid: 4242,
      previous_state: 'running', reason: 'the previous natlens-probe (pid 4242) ended without detaching (killed or crashed)',
    };
    const gap = captureGapOf(status)!;
    expect(gap).toEqual({ fromNs: 1765310179032329216n, toNs: 1765310185000000001n, cause: 'crashed', reason: status.reason, previousPid: 4242 });
    expect(toGapEvent(gap, 'node2')).toEqual({
      type: 'gap', node: 'node2', from: '2025-12-09T19:56:19.032329216Z', to: '2025-12-09T19:56:25.000000001Z', cause: 'crashed',
      reason: status.reason, previous_pid: 4242, ts: '2025-12-09T19:56:25.000000001Z',
    });
    expect(captureGapOf({ ...status, cause: 'stopped' })?.cause).toBe('stopped');
    // Not a gap: other events, numbers that lost precision, a gap running backwards.
    expect(captureGapOf({ event: 'ready' })).toBeNull();
    expect(captureGapOf({ ...status, from_ns: 1765310179032329216 as unknown as string })).toBeNull();
    expect(captureGapOf({ ...status, from_ns: '1765310185000000002' })).toBeNull();
  });
});

describe('serializeEvent', () => {
  it('produces exactly what JSON.stringify does, for every event type', () => {
    const conn = toAgentEvent(base, 'node"2', names);
    const connNoIf = toAgentEvent({ ...base, proto: 'udp', ifindex: 9 }, 'n', names);
    const v6 = toAgentEvent({ ...base, family: 6, orig: { src: '2001:db8::1', sport: 1, dst: 'fd00::2', dport: 2 } }, 'n', names);
    const end = toAgentEvent({ ...base, kind: 'end', packetsOrig: 5, bytesOrig: 300, packetsReply: 4, bytesReply: 900 }, 'n', names);
    const drop = toAgentEvent({ ...base, kind: 'drop', reply: null, packetsOrig: 2 }, 'n', names);
    for (const ev of [conn, connNoIf, v6, end, drop]) {
      expect(serializeEvent(ev)).toBe(JSON.stringify(ev));
      expect(JSON.parse(serializeEvent(ev))).toEqual(ev);
    }
  });

  it('formats timestamps across second boundaries (the cached date part must follow)', () => {
    expect(formatTimestamp(1_999_999_999n)).toBe('1970-01-01T00:00:01.999999999Z');
    expect(formatTimestamp(2_000_000_000n)).toBe('1970-01-01T00:00:02.000000000Z');
    expect(formatTimestamp(1_000_000_000n)).toBe('1970-01-01T00:00:01.000000000Z');
  });
});
