import { describe, expect, it } from 'vitest';
import { LineBatcher } from '../../src/util/line-batcher.js';

describe('LineBatcher', () => {
  it('writes the lines of one event-loop turn as one string, in order', async () => {
    const writes: string[] = [];
    const b = new LineBatcher((t) => writes.push(t));
    for (let i = 0; i < 5; i++) b.push(`${i}\n`);
    expect(writes).toEqual([]);
    await new Promise((r) => setImmediate(r));
    expect(writes).toEqual(['0\n1\n2\n3\n4\n']);
  });

  it('flushes early once maxBytes are waiting, and loses nothing', async () => {
    const writes: string[] = [];
    const b = new LineBatcher((t) => writes.push(t), 10);
    for (let i = 0; i < 7; i++) b.push('abcd\n');
    await new Promise((r) => setImmediate(r));
    expect(writes.length).toBeGreaterThan(1);
    expect(writes.join('')).toBe('abcd\n'.repeat(7));
  });

  it('flush() writes what is waiting at once (used on exit)', () => {
    const writes: string[] = [];
    const b = new LineBatcher((t) => writes.push(t));
    b.push('last\n');
    b.flush();
    b.flush();
    expect(writes).toEqual(['last\n']);
  });
});
