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
