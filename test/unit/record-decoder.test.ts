import { describe, expect, it } from 'vitest';
import {
  decodeRecord, isControlRecord, RecordDecodeError, NL_RECORD_SIZE, NL_PROXY_DATA_MAX, IPS_DST_NAT, IPS_SRC_NAT, type ProxyRecord, type StatsRecord,
} from '../../src/probe/record-decoder.js';
import { NL_CPU_LOSS, NL_PROXY, NlCounter, NlHook, NlRecordKind } from '../../src/probe/record-layout.generated.js';
import {
  classifyProxyBytes, countProxyOutcome, newProxyCounts, serializeEvent, toProxyEvent, toStatsEvent, type ProxyCounts,
} from '../../src/agent/events.js';
import { hopEventFromRecord } from '../../src/agent/hop-event-encoder.js';
import { JsonLineEncoder } from '../../src/agent/json-line-encoder.js';
import { HopKind, createHopEvent, createTuple } from '../../src/transport/proto.generated.js';
import { validateHopEvent } from '../../src/transport/codec.js';
import { encodeProxyHeader, PROXY_V2_SIGNATURE } from '../../src/util/proxy-protocol.js';

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

  it('decodes a CPU_LOSS record: which CPUs, then their cumulative ring-buffer loss', () => {
    // CPUs 12 and 13 of a 14-CPU machine (the second chunk of NL_CPU_LOSS_SLOTS = 12).
    const CPU_LOSS = Uint8Array.from([
      // --- struct nl_header (0..23) ---
      0x00, 0x6c, 0x9a, 0x3b, 0x41, 0xa4, 0x7f, 0x18, // 0  ts_ns u64 LE = 1765310179032329216 (as the STATS record after it)
      0x07,                                           // 8  kind = NL_KIND_CPU_LOSS
      0x00, 0x00, 0x00,                               // 9  family, proto, hook = 0
      0x00, 0x00, 0x00, 0x00,                         // 12 ifindex = 0
      0x00, 0x00, 0x00, 0x00,                         // 16 ct_status = 0
      0x00, 0x00, 0x00, 0x00,                         // 20 tcp_isn = 0
      // --- the CPU range (24..31) ---
      0x0c, 0x00, 0x00, 0x00,                         // 24 cpu_first u32 LE = 12
      0x02, 0x00,                                     // 28 cpu_count u16 LE = 2
      0x0e, 0x00,                                     // 30 cpu_total u16 LE = 14 possible CPUs
      // --- ringbuf_full[12] u64 LE (32..127) ---
      0x39, 0x30, 0, 0, 0, 0, 0, 0,                   // 32 CPU 12: 12345 records lost
      0x00, 0x00, 0, 0, 0, 0, 0, 0,                   // 40 CPU 13: none
      ...new Array<number>(80).fill(0),               // 48..127 unused slots
    ]);
    expect(CPU_LOSS.length).toBe(NL_RECORD_SIZE);
    expect(NL_CPU_LOSS.ringbuf_full.count).toBe(12);
    expect(decodeRecord(CPU_LOSS)).toEqual({ kind: 'cpu_loss', tsNs: 0x187fa4413b9a6c00n, cpuFirst: 12, cpuTotal: 14, ringbufFull: [12345, 0] });
    // A range past the CPUs the record says exist, or an empty one, is not a record.
    const bad = Uint8Array.from(CPU_LOSS);
    bad[30] = 13; // cpu_total 13 < 12 + 2
    expect(() => decodeRecord(bad)).toThrow(/CPUs 12\.\.13 of 13/);
    bad[30] = 14;
    bad[28] = 0; // cpu_count 0
    expect(() => decodeRecord(bad)).toThrow(RecordDecodeError);
    // CPU_LOSS is bookkeeping: never handed to a flow sink.
    expect(isControlRecord(CPU_LOSS, 0)).toBe(true);
    expect(isControlRecord(CONN_V4, 0)).toBe(false);
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

// ------------------------------------------------------------------------------------------------
// PROXY records (struct nl_proxy): the first data segment of a new TCP connection, leaving towards
// a pod, started like a PROXY protocol header. The kernel copies bytes; the agent parses them.

const ascii = (s: string): number[] => [...Buffer.from(s, 'latin1')];

// A proxy load balancer (10.240.0.2) relays client 198.51.100.79:51326 -> VIP 203.0.113.140:80 to the
// pod 10.180.1.136:8080, opening the stream with a v1 header and then the client's request.
const PROXY_V1_V4 = Uint8Array.from([
  // --- struct nl_header (0..23) ---
  0x00, 0x6c, 0x9a, 0x3b, 0x41, 0xa4, 0x7f, 0x18, // 0  ts_ns u64 LE = 1765310179032329216 ns (2025-12-09T19:56:19.032329216Z)
  0x06,                                           // 8  kind = NL_KIND_PROXY
  0x04,                                           // 9  family = 4 (of the packet)
  0x06,                                           // 10 proto = IPPROTO_TCP
  0x01,                                           // 11 hook = NL_HOOK_TC_EGRESS
  0x05, 0x00, 0x00, 0x00,                         // 12 ifindex u32 LE = 5 (the pod's host-side veth)
  0x00, 0x00, 0x00, 0x00,                         // 16 ct_status = 0 (not looked up for PROXY records)
  0x78, 0x56, 0x34, 0x12,                         // 20 tcp_isn u32 LE = 0x12345678 (the SYN's, as in its CONN record)
  // --- pkt: struct nl_tuple (24..59), the data segment as it left: the pod's peer -> the pod ---
  10, 240, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    // 24 src = 10.240.0.2 (the proxy)
  10, 180, 1, 136, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // 40 dst = 10.180.1.136 (the pod)
  0xa0, 0x28,                                     // 56 sport network order = 41000
  0x1f, 0x90,                                     // 58 dport network order = 8080
  // --- data_len (60..61) ---
  0x78, 0x00,                                     // 60 data_len u16 LE = 120 payload bytes in the segment (66 captured)
  // --- data[66] (62..127), as on the wire ---
  ...ascii('PROXY '),                             // 62..67  v1 signature
  ...ascii('TCP4 '),                              // 68..72  protocol
  ...ascii('198.51.100.79 '),                     // 73..86  the real client
  ...ascii('203.0.113.140 '),                     // 87..100 the address it connected to (the VIP)
  ...ascii('51326 '),                             // 101..106 client port
  ...ascii('80'),                                 // 107..108 VIP port
  0x0d, 0x0a,                                     // 109..110 CRLF: end of the 49-byte header
  ...ascii('GET / HTTP/1.1\r\nH'),                // 111..127 the proxied stream's first 17 bytes (cut off: 66 captured)
]);

// The same relay over IPv6 with a v2 header for client [2001:db8:5100::79]:51326 -> [2001:db8:203::140]:443.
const PROXY_V2_V6 = Uint8Array.from([
  // --- struct nl_header (0..23) ---
  0x01, 0x6c, 0x9a, 0x3b, 0x41, 0xa4, 0x7f, 0x18, // 0  ts_ns u64 LE = 1765310179032329217 ns
  0x06,                                           // 8  kind = NL_KIND_PROXY
  0x06,                                           // 9  family = 6
  0x06,                                           // 10 proto = IPPROTO_TCP
  0x01,                                           // 11 hook = NL_HOOK_TC_EGRESS
  0x07, 0x00, 0x00, 0x00,                         // 12 ifindex u32 LE = 7 (unknown to the agent: ifname null)
  0x00, 0x00, 0x00, 0x00,                         // 16 ct_status = 0
  0xef, 0xbe, 0xad, 0xde,                         // 20 tcp_isn u32 LE = 0xdeadbeef
  // --- pkt (24..59) ---
  0xfd, 0x00, 0x00, 0x10, 0x02, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x02, // 24 src = fd00:10:240::2 (the proxy)
  0xfd, 0x00, 0x00, 0x10, 0x01, 0x80, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x01, 0x36, // 40 dst = fd00:10:180:1::136 (the pod)
  0xa0, 0x29,                                     // 56 sport = 41001
  0x1f, 0x90,                                     // 58 dport = 8080
  // --- data_len (60..61) ---
  0x34, 0x00,                                     // 60 data_len = 52: the header alone
  // --- data[66] (62..127) ---
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // 62..73 v2 signature \r\n\r\n\0\r\nQUIT\n
  0x21,                                           // 74 version 2, command PROXY
  0x21,                                           // 75 AF_INET6, STREAM
  0x00, 0x24,                                     // 76..77 address block length, big-endian = 36
  0x20, 0x01, 0x0d, 0xb8, 0x51, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x79, // 78..93 src = 2001:db8:5100::79 (the real client)
  0x20, 0x01, 0x0d, 0xb8, 0x02, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x40, // 94..109 dst = 2001:db8:203::140 (the VIP)
  0xc8, 0x7e,                                     // 110..111 src port = 51326
  0x01, 0xbb,                                     // 112..113 dst port = 443
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,       // 114..127 beyond data_len: zero
]);

/** A PROXY record built through the generated layout, for the variations (the golden bytes above pin the layout). */
function proxyRecord(o: { family: 4 | 6; payload: Uint8Array; payloadLen?: number; src?: number[]; dst?: number[]; ifindex?: number }): Buffer {
  const b = Buffer.alloc(NL_RECORD_SIZE);
  b.writeBigUInt64LE(1765310179032329216n, NL_PROXY.hdr_ts_ns.offset);
  b[NL_PROXY.hdr_kind.offset] = NlRecordKind.PROXY;
  b[NL_PROXY.hdr_family.offset] = o.family;
  b[NL_PROXY.hdr_proto.offset] = 6;
  b[NL_PROXY.hdr_hook.offset] = NlHook.TC_EGRESS;
  b.writeUInt32LE(o.ifindex ?? 5, NL_PROXY.hdr_ifindex.offset);
  b.writeUInt32LE(42, NL_PROXY.hdr_tcp_isn.offset);
  b.set(o.src ?? (o.family === 4 ? [10, 240, 0, 2] : [0xfd, 0, 0, 0x10, 2, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]), NL_PROXY.pkt_src.offset);
  b.set(o.dst ?? (o.family === 4 ? [10, 180, 1, 136] : [0xfd, 0, 0, 0x10, 1, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x36]), NL_PROXY.pkt_dst.offset);
  b.writeUInt16BE(41000, NL_PROXY.pkt_sport.offset);
  b.writeUInt16BE(8080, NL_PROXY.pkt_dport.offset);
  b.writeUInt16LE(o.payloadLen ?? o.payload.length, NL_PROXY.data_len.offset);
  b.set(o.payload.subarray(0, NL_PROXY.data.size), NL_PROXY.data.offset);
  return b;
}

const ifnames = (i: number): string | null => (i === 5 ? 'nlv1234' : null);
const deliversLocally = (name: string | null): boolean => name !== null && name.startsWith('nlv');

describe('PROXY records (golden bytes)', () => {
  it('have the size the header promises and the documented layout', () => {
    expect(PROXY_V1_V4.length).toBe(NL_RECORD_SIZE);
    expect(PROXY_V2_V6.length).toBe(NL_RECORD_SIZE);
    expect(NL_PROXY.size).toBe(NL_RECORD_SIZE);
    expect([NL_PROXY.pkt_src.offset, NL_PROXY.data_len.offset, NL_PROXY.data.offset, NL_PROXY.data.size]).toEqual([24, 60, 62, 66]);
    expect(NL_PROXY_DATA_MAX).toBe(66);
  });

  it('decodes a v1 record over IPv4 byte for byte', () => {
    const r = decodeRecord(PROXY_V1_V4);
    expect(r).toEqual({
      kind: 'proxy', tsNs: 0x187fa4413b9a6c00n, family: 4, proto: 'tcp', hook: 'tc_egress', ifindex: 5, tcpIsn: 0x12345678,
      tuple: { src: '10.240.0.2', sport: 41000, dst: '10.180.1.136', dport: 8080 },
      payloadLen: 120,
      bytes: Uint8Array.from(PROXY_V1_V4.subarray(62, 128)),
    });
    const rec = r as ProxyRecord;
    expect(Buffer.from(rec.bytes).toString('latin1')).toBe('PROXY TCP4 198.51.100.79 203.0.113.140 51326 80\r\nGET / HTTP/1.1\r\nH');
    expect(rec.bytes.buffer).not.toBe(PROXY_V1_V4.buffer); // a copy: the probe stream's buffers are reused
  });

  it('decodes a v2 record over IPv6, keeping only data_len bytes', () => {
    const r = decodeRecord(PROXY_V2_V6) as ProxyRecord;
    expect(r).toMatchObject({
      kind: 'proxy', family: 6, ifindex: 7, tcpIsn: 0xdeadbeef, payloadLen: 52,
      tuple: { src: 'fd00:10:240::2', sport: 41001, dst: 'fd00:10:180:1::136', dport: 8080 },
    });
    expect(r.bytes).toEqual(Uint8Array.from(PROXY_V2_V6.subarray(62, 62 + 52)));
  });

  it('rejects a PROXY record that is not TCP', () => {
    const b = Uint8Array.from(PROXY_V1_V4);
    b[10] = 17;
    expect(() => decodeRecord(b)).toThrow(/protocol 17 in a proxy record/);
  });
});

describe('PROXY records -> proxy events and HopEvents', () => {
  const V1 = Buffer.from(PROXY_V1_V4);
  const V2 = Buffer.from(PROXY_V2_V6);

  it('v1 over IPv4: the event names the real client; the HopEvent carries both views', () => {
    const rec = decodeRecord(V1) as ProxyRecord;
    const ev = toProxyEvent(rec, 'node1', ifnames);
    expect(ev).toEqual({
      type: 'proxy', node: 'node1', family: 4,
      orig: { src: '10.240.0.2', sport: 41000, dst: '10.180.1.136', dport: 8080 },
      proxy: { version: 1, src: '198.51.100.79', sport: 51326, dst: '203.0.113.140', dport: 80 },
      ifname: 'nlv1234', isn: 0x12345678, ts: '2025-12-09T19:56:19.032329216Z',
    });
    expect(serializeEvent(ev!)).toBe(JSON.stringify(ev));

    const hop = hopEventFromRecord(V1, 0, ifnames, deliversLocally);
    expect(hop).toEqual(createHopEvent({
      kind: HopKind.PROXY, tsNs: 0x187fa4413b9a6c00n, ipProto: 6,
      orig: createTuple({ src: Buffer.from([10, 240, 0, 2]), dst: Buffer.from([10, 180, 1, 136]), sport: 41000, dport: 8080 }),
      reply: createTuple({ src: Buffer.from([198, 51, 100, 79]), dst: Buffer.from([203, 0, 113, 140]), sport: 51326, dport: 80 }),
      ctStatus: 0, tcpIsn: 0x12345678, hasIsn: true, ifname: 'nlv1234', deliveredLocal: true, proxyVersion: 1,
    }));
    expect(() => validateHopEvent(hop)).not.toThrow();
  });

  it('v2 over IPv6: 16-byte addresses, not delivered locally through an unknown interface', () => {
    const ev = toProxyEvent(decodeRecord(V2) as ProxyRecord, 'node1', ifnames);
    expect(ev).toMatchObject({
      family: 6, orig: { src: 'fd00:10:240::2', dst: 'fd00:10:180:1::136' },
      proxy: { version: 2, src: '2001:db8:5100::79', sport: 51326, dst: '2001:db8:203::140', dport: 443 }, ifname: null, isn: 0xdeadbeef,
    });
    expect(serializeEvent(ev!)).toBe(JSON.stringify(ev));
    const hop = hopEventFromRecord(V2, 0, ifnames, deliversLocally);
    expect(hop.kind).toBe(HopKind.PROXY);
    expect(hop.proxyVersion).toBe(2);
    expect(hop.deliveredLocal).toBe(false);
    expect(hop.orig!.src).toEqual(Buffer.from(PROXY_V2_V6.subarray(24, 40)));
    expect(hop.reply!.src).toEqual(Buffer.from(PROXY_V2_V6.subarray(78, 94)));
    expect(hop.reply!.dst).toEqual(Buffer.from(PROXY_V2_V6.subarray(94, 110)));
    expect([hop.reply!.sport, hop.reply!.dport]).toEqual([51326, 443]);
    expect(() => validateHopEvent(hop)).not.toThrow();
  });

  it('v2 with an IPv4 client through an IPv6 connection: reply keeps the header\'s family', () => {
    const payload = encodeProxyHeader(2, { family: 4, src: '198.51.100.79', sport: 51326, dst: '203.0.113.140', dport: 80 });
    const b = proxyRecord({ family: 6, payload });
    const ev = toProxyEvent(decodeRecord(b) as ProxyRecord, 'n', ifnames)!;
    expect(ev.family).toBe(6);
    expect(ev.proxy).toEqual({ version: 2, src: '198.51.100.79', sport: 51326, dst: '203.0.113.140', dport: 80 });
    const hop = hopEventFromRecord(b, 0, ifnames, deliversLocally);
    expect(hop.orig!.src.length).toBe(16);
    expect(hop.reply!.src).toEqual(Buffer.from([198, 51, 100, 79]));
    expect(hop.reply!.dst).toEqual(Buffer.from([203, 0, 113, 140]));
    expect(() => validateHopEvent(hop)).not.toThrow();
  });

  it('v1 over IPv6 with a short line fits', () => {
    const payload = encodeProxyHeader(1, { family: 6, src: '2001:db8:5100::79', sport: 51326, dst: '2001:db8:203::140', dport: 443 });
    expect(payload.length).toBeLessThanOrEqual(NL_PROXY_DATA_MAX);
    const b = proxyRecord({ family: 6, payload });
    expect(toProxyEvent(decodeRecord(b) as ProxyRecord, 'n', ifnames)!.proxy).toEqual({ version: 1, src: '2001:db8:5100::79', sport: 51326, dst: '2001:db8:203::140', dport: 443 });
    const hop = hopEventFromRecord(b, 0, ifnames, deliversLocally);
    expect(hop.reply!.src).toEqual(Buffer.from([0x20, 0x01, 0x0d, 0xb8, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x79]));
    expect(hop.proxyVersion).toBe(1);
  });

  // What the agent does not report, and counts instead.
  const longV1 = encodeProxyHeader(1, {
    family: 6, src: '2001:db8:5100:ffff:ffff:ffff:ffff:79', sport: 65535, dst: '2001:db8:203:ffff:ffff:ffff:ffff:140', dport: 65535,
  });
  const unreported: Array<[string, Buffer, 'local' | 'truncated' | 'invalid']> = [
    ['a v1 TCP6 line longer than the capture', proxyRecord({ family: 6, payload: longV1, payloadLen: longV1.length + 40 }), 'truncated'],
    ['a v2 header split after 10 bytes', proxyRecord({ family: 4, payload: PROXY_V2_SIGNATURE.subarray(0, 10) }), 'truncated'],
    ['a v1 line split before its CRLF', proxyRecord({ family: 4, payload: Buffer.from('PROXY TCP4 198.51.100.79 ', 'latin1') }), 'truncated'],
    ['a v1 line with an unknown protocol', proxyRecord({ family: 4, payload: Buffer.from('PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n', 'latin1') }), 'invalid'],
    ['a v2 header of version 3', proxyRecord({ family: 4, payload: Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x31, 0x11, 0, 12]), Buffer.alloc(12)]) }), 'invalid'],
    ['v1 UNKNOWN', proxyRecord({ family: 4, payload: Buffer.from('PROXY UNKNOWN\r\n', 'latin1') }), 'local'],
    ['v2 LOCAL (a health check)', proxyRecord({ family: 4, payload: Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0, 0])]) }), 'local'],
    ['v2 PROXY of AF_UNSPEC', proxyRecord({ family: 6, payload: Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x21, 0x00, 0, 0])]) }), 'local'],
  ];
  for (const [what, b, kind] of unreported) {
    it(`${what}: no event, no HopEvent, counted as ${kind}`, () => {
      expect(longV1.length).toBeGreaterThan(NL_PROXY_DATA_MAX);
      const rec = decodeRecord(b) as ProxyRecord;
      const outcome = classifyProxyBytes(rec.bytes);
      expect(outcome.kind).toBe(kind);
      expect(toProxyEvent(rec, 'n', ifnames)).toBeNull();
      expect(() => hopEventFromRecord(b, 0, ifnames, deliversLocally)).toThrow(RecordDecodeError);
      const enc = new JsonLineEncoder('n', ifnames);
      enc.encode(b, 0);
      expect(enc.length).toBe(0);
      const counts = newProxyCounts();
      countProxyOutcome(counts, outcome);
      expect(counts).toEqual({ ...newProxyCounts(), [kind]: 1 });
    });
  }

  it('the JSON line fast path writes what serializeEvent writes, between flow lines', () => {
    const enc = new JsonLineEncoder('node-"1"', ifnames);
    enc.encode(V1, 0);
    enc.encode(Buffer.from(CONN_V4), 0);
    enc.encode(V2, 0);
    const lines = enc.take().toString('utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toBe(serializeEvent(toProxyEvent(decodeRecord(V1) as ProxyRecord, 'node-"1"', ifnames)!));
    expect(JSON.parse(lines[1]!).type).toBe('conn');
    expect(JSON.parse(lines[2]!)).toEqual(toProxyEvent(decodeRecord(V2) as ProxyRecord, 'node-"1"', ifnames));
  });

  it('stats: truncated and invalid headers count as lost, local ones only under proxy', () => {
    const counters = Object.fromEntries(Object.keys(NlCounter).filter((k) => k !== 'MAX').map((k) => [k.toLowerCase(), 0])) as StatsRecord['counters'];
    counters.ringbuf_full = 1;
    counters.proxy_seen = 9;
    const counts: ProxyCounts = { reported: 5, local: 2, truncated: 1, invalid: 1 };
    const ev = toStatsEvent({ kind: 'stats', tsNs: 0n, counters }, 'n', 3, counts);
    expect(ev.lost).toEqual({ ringbuf_full: 1, pending_full: 0, netlink_lost: 0, decode_errors: 3, proxy_truncated: 1, proxy_invalid: 1, total: 6 });
    expect(ev.proxy).toEqual(counts);
    expect(ev.counters.proxy_seen).toBe(9);
    expect(serializeEvent(ev)).toBe(JSON.stringify(ev));
  });
});
