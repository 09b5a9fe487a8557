/**
 * 64-bit identities for hops and connections: deterministic, so that an event resent after a
 * reconnect, or a connection re-emitted after a late hop, lands on the same key and collapses.
 * Two independent 32-bit FNV-1a lanes (different offsets and multipliers): not cryptographic,
 * but collisions among the events of one endpoint within a day are out of reach.
 */
export type HashPart = bigint | number | string | Uint8Array | null;

export function hash64(parts: readonly HashPart[]): bigint {
  let a = 0x811c9dc5;
  let b = 0x2c1b3c6d;
  const byte = (x: number): void => {
    a = Math.imul(a ^ x, 0x01000193);
    b = Math.imul(b ^ x, 0x5bd1e995);
  };
  const u32 = (x: number): void => {
    byte(x & 0xff);
    byte((x >>> 8) & 0xff);
    byte((x >>> 16) & 0xff);
    byte(x >>> 24);
  };
  for (const p of parts) {
    if (p === null) byte(0xfe);
    else if (typeof p === 'number') u32(p >>> 0);
    else if (typeof p === 'bigint') {
      u32(Number(p & 0xffffffffn));
      u32(Number((p >> 32n) & 0xffffffffn));
    } else if (typeof p === 'string') {
      for (let i = 0; i < p.length; i++) u32(p.charCodeAt(i));
    } else for (let i = 0; i < p.length; i++) byte(p[i]!);
    byte(0xff); // part separator: ("ab","c") != ("a","bc")
  }
  return (BigInt(b >>> 0) << 32n) | BigInt(a >>> 0);
}
