// src/transport/proto.generated.ts is generated from proto/natlens/v1/*.proto; this fails when the
// committed file no longer matches the protos (someone edited one without regenerating).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

const SCRIPT = join(PACKAGE_ROOT, 'scripts', 'gen-proto.mjs');
const GENERATED = join(PACKAGE_ROOT, 'src', 'transport', 'proto.generated.ts');

function check(target: string) {
  return spawnSync(process.execPath, [SCRIPT, '--check', target], { encoding: 'utf8', timeout: 30_000 });
}

describe('generated proto types', () => {
  it('match proto/natlens/v1/*.proto', () => {
    const r = check(GENERATED);
    expect(r.stderr + r.stdout).toBe('');
    expect(r.status).toBe(0);
  });

  it('--check exits 1 and shows the difference when the file is stale', () => {
    const dir = mkdtempSync(join(tmpdir(), 'natlens-gen-proto-'));
    try {
      const stale = join(dir, 'proto.generated.ts');
      writeFileSync(stale, readFileSync(GENERATED, 'utf8').replace('ts_ns = 2 (fixed64)', 'ts_ns = 2 (uint64)'));
      const r = check(stale);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/stale/);
      expect(r.stderr).toMatch(/ts_ns = 2 \(fixed64\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
