// natlens's own log lines: JSON objects {ts, level, component, event, ...fields}, one per line,
// filtered by level; and the --log-level / NATLENS_LOG_LEVEL setting that chooses the level.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_SETTINGS, COLLECTOR_SETTINGS, resolveConfig } from '../../src/config.js';
import { Logger } from '../../src/observability/log.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

function capture(level?: 'debug' | 'info' | 'warn' | 'error') {
  const lines: string[] = [];
  const log = new Logger('agent', { level, write: (l) => lines.push(l), now: () => new Date('2026-01-02T03:04:05.678Z') });
  return { log, lines, parsed: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('Logger', () => {
  it('writes one JSON object per line: ts, level, component, event first, then the fields', () => {
    const { log, lines } = capture();
    log.info('connected', { collector: '127.0.0.1:7070' });
    log.warn('warn', { msg: 'interface eth9: attach failed' });
    expect(lines).toEqual([
      '{"ts":"2026-01-02T03:04:05.678Z","level":"info","component":"agent","event":"connected","collector":"127.0.0.1:7070"}\n',
      '{"ts":"2026-01-02T03:04:05.678Z","level":"warn","component":"agent","event":"warn","msg":"interface eth9: attach failed"}\n',
    ]);
  });

  it('drops lines below its level', () => {
    for (const [level, expected] of [['debug', 4], ['info', 3], ['warn', 2], ['error', 1]] as const) {
      const { log, parsed } = capture(level);
      log.debug('a');
      log.info('b');
      log.warn('c');
      log.error('d');
      expect(parsed().map((l) => l.level), level).toEqual(['debug', 'info', 'warn', 'error'].slice(4 - expected));
      expect(log.enabled('debug')).toBe(level === 'debug');
    }
  });

  it('never lets a field overwrite ts, level, component or event, and drops undefined fields', () => {
    const { log, parsed } = capture();
    log.info('stopped', { ts: 'yesterday', level: 'error', component: 'x', event: 'other', unacked: 0, gone: undefined });
    expect(parsed()).toEqual([{ ts: '2026-01-02T03:04:05.678Z', level: 'info', component: 'agent', event: 'stopped', unacked: 0 }]);
  });

  it('writes bigints as decimal strings, errors as their message chain, and survives a cyclic field', () => {
    const { log, parsed } = capture();
    log.warn('store', { rows: 12345678901234567890n, error: new Error('insert failed', { cause: new Error('ECONNREFUSED') }) });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    log.error('odd', { cyclic });
    const [first, second] = parsed();
    expect(first).toMatchObject({ rows: '12345678901234567890', error: 'insert failed: caused by: ECONNREFUSED' });
    expect(second).toMatchObject({ level: 'error', component: 'agent', event: 'odd' });
    expect(second!.msg).toMatch(/^unloggable fields: /);
  });

  it('child loggers share level and destination under another component', () => {
    const { log, parsed } = capture('warn');
    const k8s = log.child('k8s');
    k8s.info('k8s-synced');
    k8s.warn('k8s-watch-error', { resource: 'Pod' });
    expect(parsed()).toEqual([{ ts: '2026-01-02T03:04:05.678Z', level: 'warn', component: 'k8s', event: 'k8s-watch-error', resource: 'Pod' }]);
  });
});

describe('log level and metrics address settings', () => {
  it('default to info and off; come from NATLENS_LOG_LEVEL / NATLENS_METRICS_LISTEN; flags win', () => {
    for (const settings of [AGENT_SETTINGS, COLLECTOR_SETTINGS]) {
      const dflt = resolveConfig(settings, {}, {});
      expect(dflt.logLevel).toBe('info');
      expect(dflt.metricsListen).toBeUndefined();
      const env = { NATLENS_LOG_LEVEL: 'debug', NATLENS_METRICS_LISTEN: '0.0.0.0:9469' };
      expect(resolveConfig(settings, {}, env)).toMatchObject({ logLevel: 'debug', metricsListen: '0.0.0.0:9469' });
      expect(resolveConfig(settings, { logLevel: 'error', metricsListen: '[::1]:9470' }, env)).toMatchObject({ logLevel: 'error', metricsListen: '[::1]:9470' });
      expect(() => resolveConfig(settings, {}, { NATLENS_LOG_LEVEL: 'verbose' })).toThrow("environment variable NATLENS_LOG_LEVEL: 'verbose' must be one of debug, info, warn, error");
      expect(() => resolveConfig(settings, { metricsListen: '9469' }, {})).toThrow("--metrics-listen: '9469' must be HOST:PORT");
    }
  });

  it('bad values on the command line exit 2 naming them', () => {
    const natlens = (...args: string[]) => spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), ...args], { encoding: 'utf8', timeout: 20_000 });
    const level = natlens('collector', '--data', '/nonexistent', '--log-level', 'loud');
    expect(level.status).toBe(2);
    expect(level.stderr).toContain("argument 'loud' is invalid");
    const listen = natlens('agent', '--stdout', '--metrics-listen', 'nowhere');
    expect(listen.status).toBe(2);
    expect(listen.stderr).toContain("--metrics-listen: 'nowhere' must be HOST:PORT");
  });
});
