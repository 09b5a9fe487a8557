/**
 * Address formatting for decoded records. Hot path: called twice per tuple, so no
 * allocation beyond the result string.
 */

/** Dotted quad of 4 bytes at `off`. */
export function formatIPv4(b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/** RFC 5952 text of 16 bytes at `off`: lower-case hex, longest run (>= 2) of zero groups as "::". */
export function formatIPv6(b: Uint8Array, off: number): string {
  const groups = new Array<number>(8);
  for (let i = 0; i < 8; i++) groups[i] = (b[off + 2 * i]! << 8) | b[off + 2 * i + 1]!;
  // IPv4-mapped (::ffff:a.b.c.d) keeps its dotted tail, as every tool prints it.
  if (groups[0] === 0 && groups[1] === 0 && groups[2] === 0 && groups[3] === 0 && groups[4] === 0 && groups[5] === 0xffff) {
    return `::ffff:${formatIPv4(b, off + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (from: number, to: number): string => groups.slice(from, to).map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}

/** Parses dotted IPv4 or RFC 4291 IPv6 text into the 16-byte record form (IPv4 in the first 4 bytes). */
export function parseIP(text: string): { family: 4 | 6; bytes: Uint8Array } {
  const out = new Uint8Array(16);
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (v4) {
    for (let i = 0; i < 4; i++) {
      const n = Number(v4[i + 1]);
      if (n > 255) throw new Error(`not an IPv4 address: ${text}`);
      out[i] = n;
    }
    return { family: 4, bytes: out };
  }
  const halves = text.split('::');
  if (halves.length > 2 || !/^[0-9a-fA-F:.]+$/.test(text)) throw new Error(`not an IP address: ${text}`);
  const toGroups = (s: string): number[] => {
    if (s === '') return [];
    const parts = s.split(':');
    const groups: number[] = [];
    for (const p of parts) {
      if (p.includes('.')) {
        // Only a dotted quad may end an IPv6 address (::ffff:1.2.3.4).
        if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(p)) throw new Error(`not an IP address: ${text}`);
        const t = parseIP(p);
        groups.push((t.bytes[0]! << 8) | t.bytes[1]!, (t.bytes[2]! << 8) | t.bytes[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) throw new Error(`not an IP address: ${text}`);
        groups.push(parseInt(p, 16));
      }
    }
    return groups;
  };
  const head = toGroups(halves[0]!);
  const tail = halves.length === 2 ? toGroups(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if ((halves.length === 1 && fill !== 0) || fill < 0 || (halves.length === 2 && fill < 1)) throw new Error(`not an IP address: ${text}`);
  const groups = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...tail];
  groups.forEach((g, i) => { out[2 * i] = g >> 8; out[2 * i + 1] = g & 0xff; });
  return { family: 6, bytes: out };
}
