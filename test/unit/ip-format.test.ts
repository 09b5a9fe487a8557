import { describe, expect, it } from 'vitest';
import { formatIPv6, formatIPv4, parseIP } from '../../src/probe/ip-format.js';

describe('IP formatting', () => {
  it.each([
    ['2001:db8:5100::79', '2001:db8:5100::79'],
    ['fd00:10:180:1::136', 'fd00:10:180:1::136'],
    ['::1', '::1'],
    ['::', '::'],
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], // longest zero run wins
    ['1:0:2:3:4:5:6:7', '1:0:2:3:4:5:6:7'], // a single zero group is not compressed (RFC 5952 4.2.2)
    ['::ffff:10.1.2.3', '::ffff:10.1.2.3'],
    ['FE80:0000::0001', 'fe80::1'],
  ])('round-trips %s', (input, text) => {
    const { family, bytes } = parseIP(input);
    expect(family).toBe(6);
    expect(formatIPv6(bytes, 0)).toBe(text);
  });

  it('formats IPv4 from the first 4 bytes', () => {
    const { family, bytes } = parseIP('198.51.100.79');
    expect(family).toBe(4);
    expect(formatIPv4(bytes, 0)).toBe('198.51.100.79');
    expect([...bytes.subarray(4)].every((x) => x === 0)).toBe(true);
  });

  it.each(['1.2.3', '256.1.1.1', '1::2::3', 'g::1', '1:2:3:4:5:6:7:8:9', ''])('rejects %s', (bad) => {
    expect(() => parseIP(bad)).toThrow(/not an I/);
  });
});
