import { describe, expect, it } from 'vitest';
import { decodeRecord, RecordDecodeError, NL_RECORD_SIZE, IPS_DST_NAT, IPS_SRC_NAT } from '../../src/probe/record-decoder.js';

// Golden bytes: a CONN record as natlens-probe writes it for the tutorial's NodePort hop
// (client 198.51.100.79:51326 -> node 10.240.0.4:30080, translated to 10.240.0.4:51326 -> pod 10.180.1.136:8080).
// Every byte is spelled out so a change of struct nl_event (bpf/natlens.h) that the generated
// layout does not follow fails here.
const CONN_V4 = Uint8Array.from([
  // --- struct nl_header (0..23) ---
  0x00, 0x6c, 0x9a, 0x3b, 0x41, 0xa4, 0x7f, 0x18, // 0  ts_ns u64 LE = 0x187fa4413b9a6c00 = 1765310179032329216 ns (2025-12-09T19:56:19.032329216Z)
  0x01,                                           // 8  kind = NL_KIND_CONN
  0x04,                                           // 9  family = 4
  0x06,                                           // 10 proto = IPPROTO_TCP
  0x01,                                           // 11 hook = NL_HOOK_TC_EGRESS
  0x03, 0x00, 0x00, 0x00,                         // 12 ifindex u32 LE = 3
  0xb8, 0x01, 0x00, 0x00,                         // 16 ct_status u32 LE = 0x1b8 = CONFIRMED 0x8 | SRC_NAT 0x10 | DST_NAT 0x20 | SRC_NAT_DONE 0x80 | DST_NAT_DONE 0x100
  0x78, 0x56, 0x34, 0x12,                         // 20 tcp_isn u32 LE = 0x12345678
  // --- orig: struct nl_tuple (24..59), the client's view ---
  198, 51, 100, 79, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 24 src = 198.51.100.79 (first 4 of 16 bytes)
  10, 240, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    // 40 dst = 10.240.0.4 (node2)
  0xc8, 0x7e,                                     // 56 sport network order = 51326
  0x75, 0x80,                                     // 58 dport network order = 30080
  // --- reply: struct nl_tuple (60..95), what the pod saw ---
  10, 180, 1, 136, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // 60 src = 10.180.1.136 (the pod)
  10, 240, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    // 76 dst = 10.240.0.4 (SNAT: the pod sees node2)
  0x1f, 0x90,                                     // 92 sport = 8080
  0xc8, 0x7e,                                     // 94 dport = 51326
  // --- counters (96..127), zero in CONN records ---
  0, 0, 0, 0, 0, 0, 0, 0,                         // 96  packets_orig
  0, 0, 0, 0, 0, 0, 0, 0,                         // 104 bytes_orig
  0, 0, 0, 0, 0, 0, 0, 0,                         // 112 packets_reply
  0, 0, 0, 0, 0, 0, 0, 0,                         // 120 bytes_reply
]);

// An END record for an IPv6 UDP flow, with counters.
const END_V6 = Uint8Array.from([
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 0  ts_ns = 0
  0x03,                                           // 8  kind = NL_KIND_END
  0x06,                                           // 9  family = 6
  0x11,                                           // 10 proto = IPPROTO_UDP
  0x03,                                           // 11 hook = NL_HOOK_CTNETLINK
  0x00, 0x00, 0x00, 0x00,                         // 12 ifindex = 0 (ctnetlink knows no interface)
  0x20, 0x00, 0x00, 0x00,                         // 16 ct_status = IPS_DST_NAT only
  0x00, 0x00, 0x00, 0x00,                         // 20 tcp_isn = 0 (UDP)
  0x20, 0x01, 0x0d, 0xb8, 0x51, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x79, // 24 src = 2001:db8:5100::79
  0xfd, 0x00, 0x00, 0x10, 0x00, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x92, // 40 dst = fd00:10:96::a92
  0x9c, 0x40,                                     // 56 sport = 40000
  0x00, 0x50,                                     // 58 dport = 80
  0xfd, 0x00, 0x00, 0x10, 0x01, 0x80, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x01, 0x36, // 60 src = fd00:10:180:1::136
  0x20, 0x01, 0x0d, 0xb8, 0x51, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x79, // 76 dst = 2001:db8:5100::79 (no SNAT)
  0x1f, 0x90,                                     // 92 sport = 8080
  0x9c, 0x40,                                     // 94 dport = 40000
  2, 0, 0, 0, 0, 0, 0, 0,                         // 96  packets_orig = 2
  0x40, 0, 0, 0, 0, 0, 0, 0,                      // 104 bytes_orig = 64
  1, 0, 0, 0, 0, 0, 0, 0,                         // 112 packets_reply = 1
  0x00, 0x01, 0, 0, 0, 0, 0, 0,                   // 120 bytes_reply = 256
]);

describe('record decoder (golden bytes)', () => {
  it('has the size the header promises', () => {
    expect(NL_RECORD_SIZE).toBe(128);
    expect(CONN_V4.length).toBe(NL_RECORD_SIZE);
    expect(END_V6.length).toBe(NL_RECORD_SIZE);
  });

  it('decodes an IPv4 TCP CONN record byte for byte', () => {
    const r = decodeRecord(CONN_V4);
    expect(r).toEqual({
      kind: 'conn', tsNs: 0x187fa4413b9a6c00n, family: 4, proto: 'tcp', hook: 'tc_egress', ifindex: 3,
      ctStatus: 0x1b8, tcpIsn: 0x12345678,
      orig: { src: '198.51.100.79', sport: 51326, dst: '10.240.0.4', dport: 30080 },
      reply: { src: '10.180.1.136', sport: 8080, dst: '10.240.0.4', dport: 51326 },
      packetsOrig: 0, bytesOrig: 0, packetsReply: 0, bytesReply: 0,
    });
    if (r.kind === 'stats') throw new Error('unreachable');
    expect(r.ctStatus & IPS_SRC_NAT).toBeTruthy();
    expect(r.ctStatus & IPS_DST_NAT).toBeTruthy();
  });

  it('decodes an IPv6 UDP END record with counters', () => {
    const r = decodeRecord(END_V6);
    expect(r).toMatchObject({
      kind: 'end', family: 6, proto: 'udp', hook: 'ctnetlink', ifindex: 0, ctStatus: IPS_DST_NAT,
      orig: { src: '2001:db8:5100::79', sport: 40000, dst: 'fd00:10:96::a92', dport: 80 },
      reply: { src: 'fd00:10:180:1::136', sport: 8080, dst: '2001:db8:5100::79', dport: 40000 },
      packetsOrig: 2, bytesOrig: 64, packetsReply: 1, bytesReply: 256,
    });
  });

  it('decodes at an offset inside a larger buffer', () => {
    const buf = new Uint8Array(3 * NL_RECORD_SIZE);
    buf.set(END_V6, 0);
    buf.set(CONN_V4, NL_RECORD_SIZE);
    expect(decodeRecord(buf, NL_RECORD_SIZE)).toMatchObject({ kind: 'conn', orig: { src: '198.51.100.79' } });
  });

  it('decodes a STATS record into named counters', () => {
    const buf = new Uint8Array(NL_RECORD_SIZE);
    const view = new DataView(buf.buffer);
    buf[8] = 4; // kind = NL_KIND_STATS
    view.setBigUint64(24 + 8 * 0, 7n, true); // counter[NL_CTR_RINGBUF_FULL] = 7
    view.setBigUint64(24 + 8 * 4, 3n, true); // counter[NL_CTR_NETLINK_LOST] = 3
    view.setBigUint64(24 + 8 * 6, 1000n, true); // counter[NL_CTR_CONN_SEEN] = 1000
    const r = decodeRecord(buf);
    expect(r.kind).toBe('stats');
    if (r.kind !== 'stats') return;
    expect(r.counters.ringbuf_full).toBe(7);
    expect(r.counters.netlink_lost).toBe(3);
    expect(r.counters.conn_seen).toBe(1000);
    expect(r.counters.ct_miss).toBe(0);
  });

  it('rejects what is not a record: unknown kind, family, protocol, truncation', () => {
    const bad = (patch: (b: Uint8Array) => void): Uint8Array => { const b = Uint8Array.from(CONN_V4); patch(b); return b; };
    expect(() => decodeRecord(bad((b) => { b[8] = 99; }))).toThrow(RecordDecodeError);
    expect(() => decodeRecord(bad((b) => { b[9] = 5; }))).toThrow(/family 5/);
    expect(() => decodeRecord(bad((b) => { b[10] = 1; }))).toThrow(/protocol 1/);
    expect(() => decodeRecord(bad((b) => { b[11] = 0; }))).toThrow(/hook 0/);
    expect(() => decodeRecord(CONN_V4.subarray(0, 100))).toThrow(/truncated: 100 of 128/);
  });
});
