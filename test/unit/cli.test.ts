// The CLI as a user meets it: help that teaches, usage errors that name the bad value (exit 2).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

const natlens = (...args: string[]) => {
  const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), ...args], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

describe('natlens CLI', () => {
  it('teaches where to start in --help', () => {
    const r = natlens('--help');
    expect(r.code).toBe(0);
    for (const word of ['doctor', 'lab up', 'agent', 'demo', 'who really called this pod']) expect(r.out).toContain(word);
  });

  it('documents the agent stream and its flags', () => {
    const r = natlens('agent', '--help');
    expect(r.code).toBe(0);
    expect(r.out).toContain('--netns <path>');
    expect(r.out).toContain('"type":"ready"');
    expect(r.out).toContain('Examples:');
  });

  it.each([
    [['agent', '--stdout', '--ring-kb', 'abc'], "--ring-kb: 'abc' must be a whole number"],
    [['agent', '--stdout', '--drain', 'soon'], "--drain: 'soon' is not a duration"],
    [['agent', '--stdout', '--mode', 'xdp'], "argument 'xdp' is invalid"],
    [['agent'], 'choose one output: --collector HOST:PORT or --stdout'],
    [['agnt'], "unknown command 'agnt'"],
    [['lab', 'patch', 'nodeport', '--external-traffic-policy', 'Sometimes'], 'Sometimes'],
  ])('rejects %j with exit 2 and a message naming the problem', (args, message) => {
    const r = natlens(...args);
    expect(r.code).toBe(2);
    expect(r.err).toContain(message);
  });

  it('rejects a bad environment value, naming the variable', () => {
    const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), 'agent', '--stdout'], {
      encoding: 'utf8', env: { ...process.env, NATLENS_RING_KB: 'lots' },
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("environment variable NATLENS_RING_KB: 'lots'");
  });
});
