import { isIP } from 'node:net';
import { describe, expect, it } from 'vitest';
import { formatIPv4, formatIPv6 } from '../../src/probe/ip-format.js';

/** 16 bytes from eight hex groups, as they sit in a record. */
const bytes = (...groups: number[]): Uint8Array => {
  const b = new Uint8Array(16);
  groups.forEach((g, i) => { b[2 * i] = g >> 8; b[2 * i + 1] = g & 0xff; });
  return b;
};

describe('IP formatting', () => {
  it.each([
    [bytes(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0x79), '2001:db8:5100::79'],
    [bytes(0xfd00, 0x10, 0x180, 1, 0, 0, 0, 0x136), 'fd00:10:180:1::136'],
    [bytes(0, 0, 0, 0, 0, 0, 0, 1), '::1'],
    [bytes(0, 0, 0, 0, 0, 0, 0, 0), '::'],
    [bytes(1, 0, 0, 2, 0, 0, 0, 3), '1:0:0:2::3'], // the longest zero run is compressed
    [bytes(1, 0, 0, 2, 0, 0, 3, 4), '1::2:0:0:3:4'], // the first of equal runs
    [bytes(1, 0, 2, 3, 4, 5, 6, 7), '1:0:2:3:4:5:6:7'], // a single zero group is not (RFC 5952 4.2.2)
    [bytes(0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203), '::ffff:10.1.2.3'],
    [bytes(0xfe80, 0, 0, 0, 0, 0, 0, 1), 'fe80::1'],
  ])('formats %j as %s (RFC 5952)', (b, text) => {
    expect(formatIPv6(b, 0)).toBe(text);
    expect(isIP(text)).toBe(6);
  });

  it('formats IPv4 from 4 bytes at an offset', () => {
    expect(formatIPv4(Uint8Array.from([0, 198, 51, 100, 79]), 1)).toBe('198.51.100.79');
    expect(formatIPv4(Uint8Array.from([255, 0, 0, 1]), 0)).toBe('255.0.0.1');
  });
});
