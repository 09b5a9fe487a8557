import { describe, expect, it } from 'vitest';
import { encodeProxyHeader, parseProxyHeader, PROXY_V2_SIGNATURE } from '../../src/util/proxy-protocol.js';

describe('PROXY protocol', () => {
  it('round-trips v1 and v2, IPv4 and IPv6, and reports the header length', () => {
    const cases = [
      { family: 4 as const, src: '198.51.100.79', sport: 51234, dst: '203.0.113.140', dport: 80 },
      { family: 6 as const, src: '2001:db8:100::79', sport: 1, dst: '2001:db8:113::140', dport: 65535 },
      { family: 6 as const, src: '::1', sport: 0, dst: 'fe80::1:0:0:2', dport: 443 },
    ];
    for (const version of [1, 2] as const) {
      for (const c of cases) {
        const header = encodeProxyHeader(version, c);
        const payload = Buffer.from('GET / HTTP/1.1\r\n\r\n');
        const res = parseProxyHeader(Buffer.concat([header, payload]));
        expect(res).toEqual({ kind: 'header', header: { version, command: 'proxy', family: c.family, transport: 'tcp', ...pick(c), length: header.length } });
      }
    }
  });

  it('v1 bytes are exactly the spec text', () => {
    expect(encodeProxyHeader(1, { family: 4, src: '198.51.100.79', sport: 56324, dst: '10.240.0.2', dport: 443 }).toString()).toBe(
      'PROXY TCP4 198.51.100.79 10.240.0.2 56324 443\r\n',
    );
  });

  it('v2 bytes: signature, version/command, family/transport, length, addresses, ports', () => {
    const b = encodeProxyHeader(2, { family: 4, src: '1.2.3.4', sport: 0x1234, dst: '5.6.7.8', dport: 80 });
    expect([...b]).toEqual([
      ...PROXY_V2_SIGNATURE,
      0x21, // version 2, command PROXY
      0x11, // AF_INET, STREAM
      0x00, 0x0c, // 12 address bytes follow
      1, 2, 3, 4, // src
      5, 6, 7, 8, // dst
      0x12, 0x34, // sport
      0x00, 0x50, // dport 80
    ]);
  });

  it('tells plain traffic, incomplete and malformed headers apart', () => {
    expect(parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n'))).toEqual({ kind: 'none' });
    expect(parseProxyHeader(Buffer.from('PROX'))).toEqual({ kind: 'incomplete' });
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4'))).toEqual({ kind: 'incomplete' });
    expect(parseProxyHeader(PROXY_V2_SIGNATURE.subarray(0, 7))).toEqual({ kind: 'incomplete' });
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n')).kind).toBe('invalid');
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 ::1 5.6.7.8 1 80\r\n')).kind).toBe('invalid');
    expect(parseProxyHeader(Buffer.from('PROXY TCP5 1.2.3.4 5.6.7.8 1 80\r\n')).kind).toBe('invalid');
    expect(parseProxyHeader(Buffer.from(`PROXY TCP4 ${'1'.repeat(120)}`)).kind).toBe('invalid');
    const badVersion = Buffer.from(encodeProxyHeader(2, { family: 4, src: '1.2.3.4', sport: 1, dst: '5.6.7.8', dport: 2 }));
    badVersion[12] = 0x31;
    expect(parseProxyHeader(badVersion).kind).toBe('invalid');
    const short = Buffer.from(encodeProxyHeader(2, { family: 4, src: '1.2.3.4', sport: 1, dst: '5.6.7.8', dport: 2 }));
    short.writeUInt16BE(4, 14);
    expect(parseProxyHeader(short).kind).toBe('invalid');
  });

  it('v1 UNKNOWN and v2 LOCAL carry no client', () => {
    const unknown = parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\nGET /'));
    expect(unknown).toMatchObject({ kind: 'header', header: { family: 0, src: '', length: 15 } });
    const local = Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
    expect(parseProxyHeader(local)).toMatchObject({ kind: 'header', header: { command: 'local', family: 0, length: 16 } });
  });

  it('never throws on random bytes', () => {
    let seed = 7;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    for (let i = 0; i < 5000; i++) {
      const prefix = [PROXY_V2_SIGNATURE, Buffer.from('PROXY '), Buffer.alloc(0)][rnd(3)]!;
      const buf = Buffer.concat([prefix, Buffer.from(Array.from({ length: rnd(120) }, () => rnd(256)))]);
      expect(['header', 'none', 'incomplete', 'invalid']).toContain(parseProxyHeader(buf).kind);
    }
  });
});

function pick(c: { src: string; sport: number; dst: string; dport: number }) {
  return { src: c.src, sport: c.sport, dst: c.dst, dport: c.dport };
}
