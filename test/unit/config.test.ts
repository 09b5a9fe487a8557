import { describe, expect, it } from 'vitest';
import { AGENT_SETTINGS, resolveConfig } from '../../src/config.js';
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
