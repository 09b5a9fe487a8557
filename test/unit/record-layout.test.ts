// The TypeScript record layout is generated from the BPF object's BTF; this fails when the committed
// file no longer matches what the compiled object says (someone edited natlens.h or the generated file).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BPF_OBJECT, PACKAGE_ROOT } from '../../src/util/paths.js';

const built = existsSync(BPF_OBJECT);
if (!built) console.warn(`test/unit/record-layout.test.ts: skipped: ${BPF_OBJECT} not built (npm run build)`);

describe.skipIf(!built)('generated record layout', () => {
  it('matches the BTF of the compiled BPF object', () => {
    const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'scripts', 'gen-layout.mjs'), '--check', BPF_OBJECT, join(PACKAGE_ROOT, 'src', 'probe', 'record-layout.generated.ts')], { encoding: 'utf8' });
    expect(r.stderr + r.stdout).not.toMatch(/stale|differ/i);
    expect(r.status).toBe(0);
  });
});

describe('record bodies (generated layout)', () => {
  it('are all one record long and share struct nl_header, so kind/family/proto/hook/ts are read alike', async () => {
    const L = await import('../../src/probe/record-layout.generated.js');
    for (const body of [L.NL_EVENT, L.NL_STATS, L.NL_PROXY, L.NL_CPU_LOSS]) {
      expect(body.size).toBe(L.NL_RECORD_SIZE);
      for (const [name, field] of Object.entries(L.NL_HEADER)) {
        if (name === 'size') continue;
        expect((body as unknown as Record<string, unknown>)[`hdr_${name}`], `hdr_${name}`).toEqual(field);
      }
    }
  });

  it('CPU_LOSS: the CPU range, then one u64 per CPU up to the end of the record', async () => {
    const { NL_CPU_LOSS, NL_HEADER, NL_RECORD_SIZE, NlRecordKind } = await import('../../src/probe/record-layout.generated.js');
    expect(NL_CPU_LOSS.cpu_first).toEqual({ offset: NL_HEADER.size, size: 4 });
    expect(NL_CPU_LOSS.cpu_count).toEqual({ offset: NL_HEADER.size + 4, size: 2 });
    expect(NL_CPU_LOSS.cpu_total).toEqual({ offset: NL_HEADER.size + 6, size: 2 });
    const r = NL_CPU_LOSS.ringbuf_full;
    expect(r.offset + r.size * r.count).toBe(NL_RECORD_SIZE);
    expect(NlRecordKind.CPU_LOSS).toBe(7);
  });

  it('PROXY: tuple, then data_len, then the payload bytes up to the end of the record', async () => {
    const { NL_PROXY, NL_HEADER, NL_TUPLE, NL_RECORD_SIZE, NlRecordKind, NlCounter } = await import('../../src/probe/record-layout.generated.js');
    expect(NL_PROXY.pkt_src.offset).toBe(NL_HEADER.size);
    expect(NL_PROXY.data_len).toEqual({ offset: NL_HEADER.size + NL_TUPLE.size, size: 2 });
    expect(NL_PROXY.data.offset + NL_PROXY.data.size).toBe(NL_RECORD_SIZE);
    // Room for a v2 header's IPv6 addresses (16 + 36) and the longest v1 TCP4 line (56).
    expect(NL_PROXY.data.size).toBeGreaterThanOrEqual(56);
    expect(NlRecordKind.PROXY).toBe(6);
    expect(NlCounter.PROXY_SEEN).toBeLessThan(NlCounter.MAX);
  });
});
