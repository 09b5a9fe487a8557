import { describe, expect, it } from 'vitest';
import { formatAddr, formatEndpoint, parseAddr, toAddr16 } from '../../src/collector/addr.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import { parseTarget } from '../../src/query/target.js';

describe('addresses', () => {
  it('parses and formats IPv4 (as IPv4-mapped), IPv6 and embedded IPv4', () => {
    for (const [text, out] of [
      ['10.180.1.136', '10.180.1.136'], ['2001:db8:5100::79', '2001:db8:5100::79'], ['fd00:10:240::3', 'fd00:10:240::3'],
      ['::1', '::1'], ['::', '::'], ['2001:db8::1:0:0:1', '2001:db8::1:0:0:1'], ['::ffff:198.51.100.79', '198.51.100.79'],
      ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    ] as const) expect(formatAddr(parseAddr(text)!), text).toBe(out);
    expect(parseAddr('10.0.0.256')).toBeNull();
    expect(parseAddr('nonsense')).toBeNull();
    expect(Array.from(toAddr16(Uint8Array.of(10, 0, 0, 1)))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 0, 0, 1]);
    expect(() => toAddr16(Uint8Array.of(1, 2, 3))).toThrow(/4 or 16 bytes/);
    expect(formatEndpoint(parseAddr('2001:db8::1')!, 80)).toBe('[2001:db8::1]:80');
  });
});

describe('who targets', () => {
  it('accepts IP, IP:PORT and [IPv6]:PORT', () => {
    expect(parseTarget('10.180.1.136')).toEqual({ addr: parseAddr('10.180.1.136') });
    expect(parseTarget('10.180.1.136:8080')).toEqual({ addr: parseAddr('10.180.1.136'), port: 8080 });
    expect(parseTarget('[2001:db8::1]:8080')).toEqual({ addr: parseAddr('2001:db8::1'), port: 8080 });
    expect(parseTarget('2001:db8::1')).toEqual({ addr: parseAddr('2001:db8::1') });
  });

  it('says what is wrong with anything else', () => {
    expect(parseTarget('')).toMatch(/empty/);
    expect(parseTarget('10.1.1.1:70000')).toMatch(/1-65535/);
    expect(parseTarget("1.1.1.1' OR 1=1 --")).toMatch(/not an IP address/);
    expect(parseTarget('Default/source-ip-app')).toMatch(/not NAMESPACE\/POD/);
    expect(parseTarget('default/')).toMatch(/not NAMESPACE\/POD/);
  });

  it('takes NAMESPACE/POD as Kubernetes names it', () => {
    expect(parseTarget('default/source-ip-app-7c9d8b5f4-x2x9q')).toEqual({ namespace: 'default', pod: 'source-ip-app-7c9d8b5f4-x2x9q' });
    expect(parseTarget('kube-system/coredns.v1')).toEqual({ namespace: 'kube-system', pod: 'coredns.v1' });
  });
});

describe('peer ring', () => {
  const peers = PeerRing.parsePeers('c1=10.0.0.5:7070,c2=10.0.0.6:7070,c3=10.0.0.7:7070');

  it('gives every collector the same owner for an endpoint, and spreads endpoints', () => {
    const rings = ['c1', 'c2', 'c3'].map((id) => new PeerRing(id, peers));
    const owners = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const ep = Uint8Array.of(10, 180, i >> 8, i & 255);
      const picks = rings.map((r) => r.ownerOf(ep).id);
      expect(new Set(picks).size).toBe(1);
      owners.set(picks[0]!, (owners.get(picks[0]!) ?? 0) + 1);
    }
    for (const n of owners.values()) expect(n).toBeGreaterThan(800);
  });

  it('moves only the endpoints a new collector wins', () => {
    const before = new PeerRing('c1', peers.slice(0, 2));
    const after = new PeerRing('c1', peers);
    let moved = 0;
    for (let i = 0; i < 3000; i++) {
      const ep = Uint8Array.of(10, 180, i >> 8, i & 255);
      const a = before.ownerOf(ep).id;
      const b = after.ownerOf(ep).id;
      if (a !== b) {
        moved++;
        expect(b).toBe('c3');
      }
    }
    expect(moved).toBeGreaterThan(700);
    expect(moved).toBeLessThan(1300);
  });

  it('rejects malformed peer lists and a list without this collector', () => {
    expect(() => PeerRing.parsePeers('c1=host')).toThrow(/id=host:port/);
    expect(() => PeerRing.parsePeers('c1=a:1,c1=b:2')).toThrow(/twice/);
    expect(() => new PeerRing('c9', peers)).toThrow(/own --id 'c9'/);
  });
});
