// Security settings without a network: certificates issued with `natlens certs` (openssl) and
// loaded back, every way a TLS setting can be wrong, query tokens, the authorization rules of the
// collector's server, and the agent's capability check.
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QueryTokens, authorize, bearerToken, type CallCredentials, type ServerSecurity } from '../../src/transport/auth.js';
import { createCa, issueCertificate, newToken } from '../../src/transport/cert-issuer.js';
import { TlsConfigError, loadTlsMaterial, resolveTransportSecurity, rolesOfSubjectAltName, type TlsSettings } from '../../src/transport/tls.js';
import {
  CAPABILITY_BITS, EXIT_MISSING_CAPABILITIES, MissingCapabilitiesError, checkAgentCapabilities, effectiveCapabilities,
  kernelChargesMemlock, missingCapabilities, neededCapabilities, type CapabilityName,
} from '../../src/agent/capabilities.js';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

let dir: string;
let other: string;
const f = (name: string): string => join(dir, name);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'natlens-sec-unit-'));
  other = mkdtempSync(join(tmpdir(), 'natlens-sec-unit-other-'));
  createCa({ dir });
  createCa({ dir: other, commonName: 'someone else' });
  issueCertificate({ caDir: dir, role: 'collector', name: 'collector', dns: ['collector.test'], ips: ['127.0.0.1'] });
  issueCertificate({ caDir: dir, role: 'agent', name: 'node1' });
  issueCertificate({ caDir: dir, role: 'query', name: 'alice' });
  issueCertificate({ caDir: dir, role: 'agent', name: 'old', days: -1 });
  issueCertificate({ caDir: other, role: 'agent', name: 'stranger' });
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(other, { recursive: true, force: true });
});

const settings = (s: Partial<TlsSettings>): TlsSettings => ({ plaintext: false, ...s });
const tlsFor = (name: string, ca = f('ca.crt')): TlsSettings => settings({ tlsCa: ca, tlsCert: f(`${name}.crt`), tlsKey: f(`${name}.key`) });
const errorOf = (fn: () => unknown): Error => {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected an error');
};

describe('natlens certs (openssl)', () => {
  it('issues a P-256 CA and leaves carrying their role as a URI SAN, keys private to the owner', () => {
    const ca = new X509Certificate(readFileSync(f('ca.crt')));
    expect(ca.ca).toBe(true);
    expect(ca.publicKey.asymmetricKeyDetails).toMatchObject({ namedCurve: 'prime256v1' });
    const collector = new X509Certificate(readFileSync(f('collector.crt')));
    expect(collector.checkIssued(ca) && collector.verify(ca.publicKey)).toBe(true);
    expect(collector.subjectAltName).toBe('URI:spiffe://natlens/collector/collector, DNS:collector.test, IP Address:127.0.0.1');
    expect(collector.subject).toContain('OU=collector');
    expect(collector.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'])); // serverAuth, clientAuth
    expect(new X509Certificate(readFileSync(f('node1.crt'))).keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']); // clientAuth only
    for (const key of ['ca.key', 'collector.key', 'node1.key']) expect(statSync(f(key)).mode & 0o777).toBe(0o600);
    const days = (Date.parse(collector.validTo) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(364);
    expect(days).toBeLessThan(366);
  });

  it('refuses to overwrite, an unknown role, a collector without names, a bad name', () => {
    expect(() => issueCertificate({ caDir: dir, role: 'agent', name: 'node1' })).toThrow(/already exist.*--force/);
    expect(() => issueCertificate({ caDir: dir, role: 'admin' as never, name: 'x' })).toThrow(/role: 'admin' must be one of agent, collector, query/);
    expect(() => issueCertificate({ caDir: dir, role: 'collector', name: 'c2' })).toThrow(/--dns .* --ip/);
    expect(() => issueCertificate({ caDir: dir, role: 'agent', name: '../etc/passwd' })).toThrow(/name: '\.\.\/etc\/passwd'/);
    expect(() => issueCertificate({ caDir: dir, role: 'collector', name: 'c3', ips: ['300.1.1.1'] })).toThrow(/'300\.1\.1\.1' is not an IP/);
    expect(() => createCa({ dir })).toThrow(/ca\.crt, .*ca\.key already exist/);
  });

  it('is a CLI: natlens certs ca / issue / token / show', () => {
    const cli = mkdtempSync(join(tmpdir(), 'natlens-sec-cli-'));
    try {
      const run = (...args: string[]) => spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'natlens'), 'certs', ...args], { encoding: 'utf8' });
      expect(run('ca', '--dir', cli).status).toBe(0);
      const issued = run('issue', '--dir', cli, '--role', 'agent', '--name', 'node7', '--days', '30');
      expect(issued.stderr).toBe('');
      expect(issued.stdout.split('\n')).toEqual([join(cli, 'node7.crt'), join(cli, 'node7.key'), '']);
      const shown = JSON.parse(run('show', join(cli, 'node7.crt'), '--json').stdout) as Record<string, unknown>;
      expect(shown).toMatchObject({ roles: ['agent'], ca: false, expired: false, subject: 'O=natlens, OU=agent, CN=node7' });
      const bad = run('issue', '--dir', cli, '--role', 'root', '--name', 'x');
      expect(bad.status).toBe(2);
      expect(bad.stderr).toContain("argument 'root' is invalid");
      const token = run('token').stdout.trim();
      expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(token).not.toBe(run('token').stdout.trim());
    } finally {
      rmSync(cli, { recursive: true, force: true });
    }
  });
});

describe('TLS settings', () => {
  it('loads a complete, matching set and reads the role', () => {
    const s = resolveTransportSecurity(tlsFor('node1'), 'agent', 'agent');
    expect(s.mode).toBe('tls');
    if (s.mode !== 'tls') return;
    expect(s.material.roles).toEqual(['agent']);
    expect(s.material.cert!.toString()).toContain('BEGIN CERTIFICATE');
  });

  it('refuses neither TLS nor --plaintext, explaining both and pointing to the docs', () => {
    const err = errorOf(() => resolveTransportSecurity(settings({}), 'collector', 'collector'));
    expect(err).toBeInstanceOf(TlsConfigError);
    expect((err as TlsConfigError).exitCode).toBe(2);
    expect(err.message).toMatch(/--tls-ca, --tls-cert and --tls-key/);
    expect(err.message).toMatch(/--plaintext/);
    expect(err.message).toMatch(/docs\/security\.md/);
  });

  it('takes --plaintext alone, and refuses it with TLS files', () => {
    expect(resolveTransportSecurity(settings({ plaintext: true }), 'agent', 'agent')).toEqual({ mode: 'plaintext' });
    expect(errorOf(() => resolveTransportSecurity({ ...tlsFor('node1'), plaintext: true }, 'agent', 'agent')).message)
      .toMatch(/--plaintext and --tls-ca, --tls-cert, --tls-key contradict/);
  });

  it('names what is missing from a partial setting', () => {
    expect(errorOf(() => resolveTransportSecurity(settings({ tlsCert: f('node1.crt') }), 'agent', 'agent')).message)
      .toMatch(/incomplete TLS settings: --tls-ca, --tls-key missing/);
    expect(errorOf(() => resolveTransportSecurity(settings({ tlsCa: f('ca.crt'), tlsKey: f('node1.key') }), 'agent', 'agent')).message)
      .toMatch(/--tls-cert missing/);
    // A query client may go with the CA alone (it then needs a token), but not with half a key pair.
    expect(resolveTransportSecurity(settings({ tlsCa: f('ca.crt') }), 'who', 'query').mode).toBe('tls');
    expect(errorOf(() => resolveTransportSecurity(settings({ tlsCa: f('ca.crt'), tlsCert: f('alice.crt') }), 'who', 'query')).message)
      .toMatch(/--tls-cert .*alice\.crt is given without --tls-key/);
  });

  it('names the file at fault: missing, not PEM, wrong key, another CA, expired, not a CA', () => {
    const notPem = f('garbage.crt');
    writeFileSync(notPem, 'hello\n');
    const cases: Array<[TlsSettings, RegExp]> = [
      [{ ...tlsFor('node1'), tlsCert: f('nope.crt') }, /--tls-cert .*nope\.crt: cannot read the certificate \(no such file\)/],
      [{ ...tlsFor('node1'), tlsCert: notPem }, /--tls-cert .*garbage\.crt: not a PEM certificate/],
      [{ ...tlsFor('node1'), tlsKey: f('alice.key') }, /--tls-key .*alice\.key is not the key of --tls-cert .*node1\.crt/],
      [{ ...tlsFor('node1'), tlsCert: join(other, 'stranger.crt'), tlsKey: join(other, 'stranger.key') }, /stranger\.crt was not issued by the CA in --tls-ca/],
      [tlsFor('old'), /--tls-cert .*old\.crt: certificate expired on .*Rotation/],
      [{ ...tlsFor('node1'), tlsCa: f('node1.crt') }, /--tls-ca .*node1\.crt: this certificate is not a CA/],
    ];
    for (const [s, message] of cases) expect(errorOf(() => resolveTransportSecurity(s, 'agent', 'agent')).message).toMatch(message);
  });

  it('takes a bundle of CAs in --tls-ca (rotation: old and new side by side)', () => {
    const bundle = f('bundle.crt');
    writeFileSync(bundle, Buffer.concat([readFileSync(f('ca.crt')), readFileSync(join(other, 'ca.crt'))]));
    expect(loadTlsMaterial({ ca: bundle, cert: join(other, 'stranger.crt'), key: join(other, 'stranger.key') }).roles).toEqual(['agent']);
    expect(loadTlsMaterial({ ca: bundle, cert: f('node1.crt'), key: f('node1.key') }).roles).toEqual(['agent']);
    expect(() => loadTlsMaterial({ ca: f('ca.crt'), cert: join(other, 'stranger.crt'), key: join(other, 'stranger.key') })).toThrow(/not issued by the CA/);
  });

  it('refuses a certificate of the wrong role for the command', () => {
    expect(errorOf(() => resolveTransportSecurity(tlsFor('alice'), 'agent', 'agent')).message)
      .toMatch(/alice\.crt has role query; this command needs a certificate with role agent .*natlens certs issue --role agent/);
    expect(errorOf(() => resolveTransportSecurity(tlsFor('node1'), 'who', 'query')).message).toMatch(/needs a certificate with role query or collector/);
    expect(resolveTransportSecurity(tlsFor('collector'), 'who', 'query').mode).toBe('tls'); // a collector may query (peer fan-out)
  });

  it('reads roles only from natlens URI SANs', () => {
    expect(rolesOfSubjectAltName('URI:spiffe://natlens/agent/node1, DNS:x')).toEqual(['agent']);
    expect(rolesOfSubjectAltName('DNS:spiffe://natlens/agent, URI:spiffe://other/query, URI:spiffe://natlens/admin')).toEqual([]);
    expect(rolesOfSubjectAltName(undefined)).toEqual([]);
    expect(loadTlsMaterial({ ca: f('ca.crt'), cert: f('collector.crt'), key: f('collector.key') }).roles).toEqual(['collector']);
  });
});

describe('query tokens', () => {
  const secret = 'Sx7-very-long-token-0123456789';

  it('reads one token per line, skipping blanks and # comments, and matches only whole tokens', () => {
    const t = QueryTokens.parse(`# ops team\n\n  ${secret}  \n${newToken()}\n`, 'tokens');
    expect(t.size).toBe(2);
    expect(t.matches(secret)).toBe(true);
    expect(t.matches(secret.slice(0, -1))).toBe(false);
    expect(t.matches(`${secret}x`)).toBe(false);
    expect(t.matches('')).toBe(false);
  });

  it('refuses a short token, spaces, or an empty file, naming the line but never the token', () => {
    for (const [text, message] of [['# c\nshort\n', /tokens:2: token shorter than 16/], ['a token with spaces in it\n', /tokens:1: a token is printable ASCII/], ['# only a comment\n', /tokens: no token/]] as const) {
      const err = errorOf(() => QueryTokens.parse(text, 'tokens'));
      expect(err.message).toMatch(message);
      expect(err.message).not.toContain('short\n');
      expect(err.message).not.toContain('spaces in');
    }
    expect(errorOf(() => QueryTokens.load(f('missing-tokens'))).message).toMatch(/--query-token-file .*missing-tokens: cannot read it \(ENOENT\)/);
  });

  it('parses the authorization header', () => {
    const md = (v?: string) => {
      const m = new grpc.Metadata();
      if (v !== undefined) m.set('authorization', v);
      return m;
    };
    expect(bearerToken(md(`Bearer ${secret}`))).toBe(secret);
    expect(bearerToken(md(`bearer   ${secret} `))).toBe(secret);
    expect(bearerToken(md(`Basic ${secret}`))).toBe('');
    expect(bearerToken(md())).toBeUndefined();
  });
});

describe('authorization on the collector', () => {
  const secret = 'Sx7-very-long-token-0123456789';
  const tokens = QueryTokens.parse(secret, 'tokens');
  const tls: ServerSecurity['transport'] = { mode: 'tls', material: { files: { ca: 'ca' }, ca: Buffer.alloc(0), roles: [] } };
  const call = (san?: string, auth?: string): CallCredentials => {
    const metadata = new grpc.Metadata();
    if (auth) metadata.set('authorization', auth);
    return { metadata, getAuthContext: () => (san ? { sslPeerCertificate: { subjectaltname: san } } : {}) };
  };
  const AGENT = 'URI:spiffe://natlens/agent/node1';
  const COLLECTOR = 'URI:spiffe://natlens/collector/c2';
  const QUERY = 'URI:spiffe://natlens/query/alice';
  const code = (d: ReturnType<typeof authorize>) => (d ? grpc.status[d.code] : 'OK');

  it('TLS: streams from agents and collectors only', () => {
    const sec = { transport: tls, queryTokens: tokens };
    expect(code(authorize(sec, 'stream', call(AGENT)))).toBe('OK');
    expect(code(authorize(sec, 'stream', call(COLLECTOR)))).toBe('OK');
    expect(code(authorize(sec, 'stream', call(QUERY)))).toBe('PERMISSION_DENIED');
    expect(code(authorize(sec, 'stream', call(undefined, `Bearer ${secret}`)))).toBe('UNAUTHENTICATED'); // a token never streams
    expect(authorize(sec, 'stream', call())!.details).toMatch(/client certificate with role agent/);
  });

  it('TLS: queries from query and collector certificates, or a valid token; never from an agent certificate alone', () => {
    const sec = { transport: tls, queryTokens: tokens };
    expect(code(authorize(sec, 'query', call(QUERY)))).toBe('OK');
    expect(code(authorize(sec, 'query', call(COLLECTOR)))).toBe('OK');
    expect(code(authorize(sec, 'query', call(undefined, `Bearer ${secret}`)))).toBe('OK');
    const denied = authorize(sec, 'query', call(AGENT))!;
    expect(grpc.status[denied.code]).toBe('PERMISSION_DENIED');
    expect(denied.details).toMatch(/role agent may not query/);
    const wrong = authorize(sec, 'query', call(undefined, 'Bearer not-the-right-token-at-all'))!;
    expect(grpc.status[wrong.code]).toBe('UNAUTHENTICATED');
    expect(wrong.details).toMatch(/token is not valid/);
    expect(wrong.details).not.toContain('not-the-right-token');
    const none = authorize(sec, 'query', call())!;
    expect(grpc.status[none.code]).toBe('UNAUTHENTICATED');
    expect(none.details).toMatch(/--token-file FILE or NATLENS_TOKEN.*role query/);
    // Without a token file a token is worth nothing.
    expect(code(authorize({ transport: tls }, 'query', call(undefined, `Bearer ${secret}`)))).toBe('UNAUTHENTICATED');
  });

  it('plain text: open for the lab, unless a token file is given for queries', () => {
    const open = { transport: { mode: 'plaintext' as const } };
    expect(code(authorize(open, 'stream', call()))).toBe('OK');
    expect(code(authorize(open, 'query', call()))).toBe('OK');
    const guarded = { ...open, queryTokens: tokens };
    expect(code(authorize(guarded, 'query', call()))).toBe('UNAUTHENTICATED');
    expect(code(authorize(guarded, 'query', call(QUERY)))).toBe('UNAUTHENTICATED'); // no TLS: a claimed certificate is not verified
    expect(code(authorize(guarded, 'query', call(undefined, `Bearer ${secret}`)))).toBe('OK');
  });
});

describe('agent capabilities', () => {
  const caps = (...names: CapabilityName[]): bigint => names.reduce((a, n) => a | (1n << BigInt(CAPABILITY_BITS[n])), 0n);
  const names = (opts: Parameters<typeof neededCapabilities>[0], kernel = '6.18.0') => neededCapabilities(opts, kernel).map((n) => n.name);

  it('needs BPF, PERFMON and NET_ADMIN for tc; SYS_ADMIN for --netns and for auto\'s feature probe; NET_ADMIN alone for ctnetlink', () => {
    expect(names({ mode: 'tc' })).toEqual(['CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN']);
    expect(names({ mode: 'auto' })).toEqual(['CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN', 'CAP_SYS_ADMIN']);
    expect(names({ mode: 'tc', netns: '/run/netns/x' })).toEqual(['CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN', 'CAP_SYS_ADMIN']);
    expect(names({ mode: 'ctnetlink' })).toEqual(['CAP_NET_ADMIN']);
    // RLIMIT_MEMLOCK charges BPF maps only before 5.11.
    expect(names({ mode: 'tc' }, '5.10.0-21-amd64')).toContain('CAP_SYS_RESOURCE');
    expect(kernelChargesMemlock('5.11.0')).toBe(false);
    expect(kernelChargesMemlock('4.19.0')).toBe(true);
  });

  it('accepts CAP_SYS_ADMIN in place of BPF and PERFMON (the kernel does), never in place of NET_ADMIN', () => {
    const needs = neededCapabilities({ mode: 'tc' }, '6.18.0');
    expect(missingCapabilities(needs, caps('CAP_SYS_ADMIN', 'CAP_NET_ADMIN'))).toEqual([]);
    expect(missingCapabilities(needs, caps('CAP_SYS_ADMIN')).map((n) => n.name)).toEqual(['CAP_NET_ADMIN']);
    expect(missingCapabilities(needs, caps('CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN'))).toEqual([]);
  });

  it('fails naming each missing capability and what it is for, with its own exit code', () => {
    const err = errorOf(() => checkAgentCapabilities({ mode: 'tc', netns: '/run/netns/n1' }, caps('CAP_BPF', 'CAP_NET_ADMIN')));
    expect(err).toBeInstanceOf(MissingCapabilitiesError);
    expect((err as MissingCapabilitiesError).exitCode).toBe(EXIT_MISSING_CAPABILITIES);
    expect(err.message).toMatch(/CAP_PERFMON: to let the verifier/);
    expect(err.message).toMatch(/CAP_SYS_ADMIN: to enter the network namespace \/run\/netns\/n1/);
    expect(err.message).not.toMatch(/CAP_BPF:|CAP_NET_ADMIN:/);
  });

  it('reads CapEff from /proc/self/status', () => {
    expect(effectiveCapabilities('Name:\tx\nCapEff:\t000001c000001000\n')).toBe(caps('CAP_BPF', 'CAP_PERFMON', 'CAP_NET_ADMIN') | (1n << 40n));
    expect(typeof effectiveCapabilities()).toBe('bigint');
  });
});
