// The CLI as a user meets it: help that teaches, usage errors that name the bad value (exit 2).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
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

describe('natlens CLI: usage mistakes and config files (exit 2, the bad value and its source named)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'natlens-cli-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string): string => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, NATLENS_CONFIG: '', ...env } });
    return { code: r.status, err: r.stderr };
  };

  it.each([
    [['agent', '--stdout', '--bogus'], "unknown option '--bogus'"],
    [['agent', '--ring-kb'], "option '--ring-kb <n>' argument missing"],
    [['agent', 'extra', '--stdout'], "too many arguments for 'agent'. Expected 0 arguments but got 1"],
    [['collector', '--listen'], "option '--listen <host:port>' argument missing"],
    [['who', 'a', 'b'], "too many arguments for 'who'"],
    [['who'], "missing required argument 'target'"],
    [['collector', '--config'], "option '--config <file>' argument missing"],
  ])('%j', (args, message) => {
    const r = run(args);
    expect(r.code).toBe(2);
    expect(r.err).toContain(message);
  });

  it('a missing subcommand shows help and exits 2', () => {
    const r = run(['lab']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('Usage: natlens lab');
  });

  it('a config file that cannot be read, from --config or NATLENS_CONFIG', () => {
    const missing = join(dir, 'nope.yaml');
    const a = run(['agent', '--stdout', '--config', missing]);
    expect(a.code).toBe(2);
    expect(a.err).toMatch(new RegExp(`^natlens: error: config file ${missing} \\(--config\\) cannot be read: it does not exist: caused by: ENOENT`));
    const b = run(['collector'], { NATLENS_CONFIG: dir });
    expect(b.code).toBe(2);
    expect(b.err).toMatch(new RegExp(`^natlens: error: config file ${dir} \\(environment variable NATLENS_CONFIG\\) cannot be read: it is a directory`));
  });

  it('bad values in a config file name file:line, key and value; unknown keys the setting meant', () => {
    const bad = file('collector.yaml', 'listen: 127.0.0.1:7070\nttlDays: forever\n');
    expect(run(['collector', '--config', bad]).err).toBe(`natlens: error: ${bad}:2: ttlDays: 'forever' must be a whole number from 1 to 3650\n`);
    const typo = file('agent.yaml', 'node: n1\nring-kb: 4096\n');
    const r = run(['agent', '--stdout'], { NATLENS_CONFIG: typo });
    expect(r).toEqual({ code: 2, err: `natlens: error: ${typo}:2: unknown setting "ring-kb" (did you mean 'ringKb'?)\n` });
  });

  it('the file is read, the environment overrides it, and a flag overrides both', () => {
    // Both stores configured in the file: the collector refuses before starting anything.
    const both = file('both.yaml', 'data: /nonexistent/natlens\nclickhouseUrl: http://127.0.0.1:9\n');
    expect(run(['collector', '--config', both]).err).toContain('give exactly one store');
    // Each layer is read and judged, and names itself when it is the one at fault.
    const ttl = file('ttl.yaml', 'ttlDays: 2\ndata: /nonexistent/natlens\nclickhouseUrl: http://127.0.0.1:9\n');
    expect(run(['collector', '--config', ttl], { NATLENS_TTL_DAYS: 'lots' }).err).toContain("environment variable NATLENS_TTL_DAYS: 'lots' must be a whole number");
    expect(run(['collector', '--config', ttl, '--ttl-days', '0'], { NATLENS_TTL_DAYS: '3' }).err).toContain("--ttl-days: '0' must be a whole number from 1 to 3650");
  });

  it('documents every setting with its config key in --help', () => {
    const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), 'agent', '--help'], { encoding: 'utf8' });
    expect(r.stdout).toContain('--config <file>');
    expect(r.stdout).toMatch(/ringKb\s+NATLENS_RING_KB\s+ring buffer size/);
  });
});
