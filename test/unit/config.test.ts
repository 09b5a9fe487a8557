import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_SETTINGS, COLLECTOR_SETTINGS, configFileFor, loadConfigFile, resolveConfig } from '../../src/config.js';
import { UsageError } from '../../src/util/errors.js';

describe('config: defaults < env < flags', () => {
  it('uses defaults when nothing is set', () => {
    const c = resolveConfig(AGENT_SETTINGS, {}, {});
    expect(c.mode).toBe('auto');
    expect(c.drainMs).toBe(5);
    expect(c.udp).toBe(true);
  });

  it('lets the environment override defaults and flags override the environment', () => {
    const env = { NATLENS_CAPTURE_MODE: 'ctnetlink', NATLENS_DRAIN: '20ms', NATLENS_NODE: 'from-env' };
    expect(resolveConfig(AGENT_SETTINGS, {}, env)).toMatchObject({ mode: 'ctnetlink', drainMs: 20, node: 'from-env' });
    expect(resolveConfig(AGENT_SETTINGS, { mode: 'tc', drainMs: '2ms', udp: false }, env)).toMatchObject({ mode: 'tc', drainMs: 2, node: 'from-env', udp: false });
  });

  it('names the bad value and where it came from', () => {
    expect(() => resolveConfig(AGENT_SETTINGS, { ringKb: '12x' }, {})).toThrow(UsageError);
    expect(() => resolveConfig(AGENT_SETTINGS, { ringKb: '12x' }, {})).toThrow("--ring-kb: '12x' must be a whole number");
    expect(() => resolveConfig(AGENT_SETTINGS, {}, { NATLENS_CAPTURE_MODE: 'xdp' })).toThrow("environment variable NATLENS_CAPTURE_MODE: 'xdp' must be one of auto, tc, ctnetlink");
    expect(() => resolveConfig(AGENT_SETTINGS, { drainMs: 'soon' }, {}, { drainMs: '--drain' })).toThrow("--drain: 'soon' is not a duration");
  });

  it('takes ring sizes the kernel accepts: powers of two from one page (4 KiB)', () => {
    expect(resolveConfig(AGENT_SETTINGS, { ringKb: '4' }, {}).ringKb).toBe(4);
    expect(() => resolveConfig(AGENT_SETTINGS, { ringKb: '96' }, {})).toThrow("--ring-kb: '96' must be a power of two (e.g. 64 or 128)");
    expect(() => resolveConfig(AGENT_SETTINGS, { ringKb: '2' }, {})).toThrow("--ring-kb: '2' must be a whole number from 4 to 1048576");
  });
});

describe('config files (--config FILE / NATLENS_CONFIG): defaults < file < env < flags', () => {
  const dir = mkdtempSync(join(tmpdir(), 'natlens-config-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const file = (text: string): string => {
    const p = join(dir, `c${++n}.yaml`);
    writeFileSync(p, text);
    return p;
  };

  it('applies the file, then the environment, then flags', () => {
    const f = loadConfigFile(AGENT_SETTINGS, file('# agent\nnode: "007"\nringKb: 16384\ndrainMs: 20ms\nudp: false\nmode: tc\n'));
    expect(resolveConfig(AGENT_SETTINGS, {}, {}, {}, f)).toMatchObject({ node: '007', ringKb: 16384, drainMs: 20, udp: false, mode: 'tc' });
    const env = { NATLENS_RING_KB: '4096', NATLENS_CAPTURE_MODE: 'ctnetlink' };
    expect(resolveConfig(AGENT_SETTINGS, { mode: 'auto' }, env, {}, f)).toMatchObject({ node: '007', ringKb: 4096, drainMs: 20, mode: 'auto' });
    expect(resolveConfig(AGENT_SETTINGS, {}, {}, {}, loadConfigFile(AGENT_SETTINGS, file('')))).toEqual(resolveConfig(AGENT_SETTINGS, {}, {}));
  });

  it('reads --config, else NATLENS_CONFIG, else nothing', () => {
    const a = file('ttlDays: 3\n');
    const b = file('ttlDays: 5\n');
    expect(resolveConfig(COLLECTOR_SETTINGS, {}, {}, {}, configFileFor(COLLECTOR_SETTINGS, a, { NATLENS_CONFIG: b })).ttlDays).toBe(3);
    expect(resolveConfig(COLLECTOR_SETTINGS, {}, {}, {}, configFileFor(COLLECTOR_SETTINGS, undefined, { NATLENS_CONFIG: b })).ttlDays).toBe(5);
    expect(configFileFor(COLLECTOR_SETTINGS, undefined, {})).toBeUndefined();
  });

  it('names file, line, key and value of a bad value', () => {
    const p = file('listen: 127.0.0.1:7070\n\nttlDays: forever\n');
    const f = loadConfigFile(COLLECTOR_SETTINGS, p);
    expect(() => resolveConfig(COLLECTOR_SETTINGS, {}, {}, {}, f)).toThrow(UsageError);
    expect(() => resolveConfig(COLLECTOR_SETTINGS, {}, {}, {}, f)).toThrow(`${p}:3: ttlDays: 'forever' must be a whole number from 1 to 3650`);
    const g = loadConfigFile(COLLECTOR_SETTINGS, file('holdMs: soon\n'));
    expect(() => resolveConfig(COLLECTOR_SETTINGS, {}, {}, {}, g)).toThrow(/c\d+\.yaml:1: holdMs: 'soon' is not a duration/);
    const h = loadConfigFile(COLLECTOR_SETTINGS, file('listen:\n'));
    expect(() => resolveConfig(COLLECTOR_SETTINGS, {}, {}, {}, h)).toThrow(/:1: listen: '' must be HOST:PORT/);
  });

  it('refuses unknown keys, naming file and line, with the setting meant when it is close', () => {
    for (const [key, meant] of [['ringkb', 'ringKb'], ['ring-kb', 'ringKb'], ['NATLENS_RING_KB', 'ringKb'], ['RING_KB', 'ringKb'], ['drianMs', 'drainMs'], ['nodee', 'node']] as const) {
      const p = file(`mode: tc\n${key}: 1\n`);
      expect(() => loadConfigFile(AGENT_SETTINGS, p)).toThrow(`${p}:2: unknown setting "${key}" (did you mean '${meant}'?)`);
    }
    const p = file('colour: blue\n');
    expect(() => loadConfigFile(AGENT_SETTINGS, p)).toThrow(new RegExp(`${p}:1: unknown setting "colour"; the settings are: node, netns, mode,`));
  });

  it('refuses what is not a mapping of settings to single values, and YAML it cannot parse', () => {
    expect(() => loadConfigFile(COLLECTOR_SETTINGS, file('- listen\n- data\n'))).toThrow(/c\d+\.yaml:1: a config file is a mapping of setting names to values .*not a list/);
    expect(() => loadConfigFile(COLLECTOR_SETTINGS, file('peers:\n  - c1=a:1\n  - c2=b:2\n'))).toThrow(/c\d+\.yaml:1: peers: expected a single value, got a list/);
    expect(() => loadConfigFile(COLLECTOR_SETTINGS, file('id: c1\nid: c2\n'))).toThrow(/c\d+\.yaml:2:1: not valid YAML: Map keys must be unique/);
    expect(() => loadConfigFile(COLLECTOR_SETTINGS, file('listen: [unclosed\n'))).toThrow(/c\d+\.yaml:\d+:\d+: not valid YAML: /);
  });

  it('says why a file cannot be read', () => {
    expect(() => configFileFor(AGENT_SETTINGS, join(dir, 'missing.yaml'))).toThrow(`config file ${join(dir, 'missing.yaml')} (--config) cannot be read: it does not exist`);
    expect(() => configFileFor(AGENT_SETTINGS, undefined, { NATLENS_CONFIG: dir })).toThrow(`config file ${dir} (environment variable NATLENS_CONFIG) cannot be read: it is a directory`);
  });
});
