/**
 * Issues natlens's certificates with openssl (Node's crypto verifies X.509 but cannot create it):
 * a CA, then per-role leaf certificates. Keys are ECDSA P-256; the role is a URI SAN
 * spiffe://natlens/ROLE/NAME (tls.ts reads it back), the Subject says the same for humans
 * (O=natlens, OU=ROLE, CN=NAME). What each role may do: docs/security.md.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NatlensError } from '../util/errors.js';
import { ROLES, ROLE_URI_PREFIX, type Role } from './tls.js';

export class CertIssueError extends NatlensError {}

/** The openssl binary (NATLENS_OPENSSL overrides). */
export const OPENSSL = process.env.NATLENS_OPENSSL || 'openssl';
export const DEFAULT_CA_DAYS = 3650;
export const DEFAULT_LEAF_DAYS = 365;

export interface IssuedFiles {
  cert: string;
  key: string;
}

export interface CaOptions {
  /** Written as DIR/ca.crt and DIR/ca.key (0600). */
  dir: string;
  days?: number;
  commonName?: string;
  /** Replace existing files. */
  force?: boolean;
}

export interface LeafOptions {
  /** Holds ca.crt and ca.key. */
  caDir: string;
  /** Where NAME.crt and NAME.key go. Default: caDir. */
  outDir?: string;
  role: Role;
  /** The node (agent), the collector, the user or script (query): CN and the SAN path. */
  name: string;
  /** DNS names and IP addresses a collector is reached by (server certificate). */
  dns?: string[];
  ips?: string[];
  /** Validity in days from now. Negative values issue an already expired certificate (for tests). */
  days?: number;
  force?: boolean;
}

const NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$/;
const DNS_NAME = /^(?:\*\.)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function openssl(args: string[], what: string): void {
  try {
    execFileSync(OPENSSL, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') throw new CertIssueError(`${what}: '${OPENSSL}' not found: install openssl (or set NATLENS_OPENSSL to its path)`, { cause: err });
    throw new CertIssueError(`${what}: openssl ${args[0]} failed: ${e.stderr?.toString().trim() || e.message}`, { cause: err });
  }
}

function refuseOverwrite(paths: string[], force: boolean | undefined): void {
  if (force) return;
  const existing = paths.filter((p) => existsSync(p));
  if (existing.length) throw new CertIssueError(`${existing.join(', ')} already exist${existing.length === 1 ? 's' : ''}: remove, choose another name, or pass --force`);
}

function checkDays(days: number, allowPast: boolean): void {
  if (!Number.isInteger(days) || days === 0 || (!allowPast && days < 0) || days > 36_500) {
    throw new CertIssueError(`days: '${days}' must be a whole number from 1 to 36500`);
  }
}

function withTemp<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'natlens-certs-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function newKey(path: string, what: string): void {
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', path], what);
  chmodSync(path, 0o600);
}

function install(from: string, to: string, mode: number): void {
  copyFileSync(from, to);
  chmodSync(to, mode);
}

const serial = (): string => `0x${randomBytes(16).toString('hex').replace(/^[89a-f]/, '1')}`; // positive, 128 bits

/** A self-signed CA for natlens (pathlen 0: it signs leaves only). */
export function createCa(o: CaOptions): IssuedFiles {
  const days = o.days ?? DEFAULT_CA_DAYS;
  checkDays(days, false);
  const files = { cert: join(o.dir, 'ca.crt'), key: join(o.dir, 'ca.key') };
  refuseOverwrite([files.cert, files.key], o.force);
  mkdirSync(o.dir, { recursive: true });
  withTemp((tmp) => {
    const cnf = join(tmp, 'ca.cnf');
    writeFileSync(cnf, [
      '[req]', 'distinguished_name = dn', 'prompt = no', '[dn]',
      '[ca]', 'basicConstraints = critical, CA:TRUE, pathlen:0', 'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash', '',
    ].join('\n'));
    const key = join(tmp, 'ca.key');
    newKey(key, 'CA key');
    openssl(['req', '-x509', '-new', '-config', cnf, '-extensions', 'ca', '-key', key, '-subj', `/O=natlens/CN=${o.commonName ?? 'natlens CA'}`,
      '-days', String(days), '-sha256', '-set_serial', serial(), '-out', join(tmp, 'ca.crt')], 'CA certificate');
    // Written last, together: a failure leaves no half CA behind.
    install(key, files.key, 0o600);
    install(join(tmp, 'ca.crt'), files.cert, 0o644);
  });
  return files;
}

/** A leaf certificate for one role, signed by the CA in caDir. */
export function issueCertificate(o: LeafOptions): IssuedFiles {
  if (!(ROLES as readonly string[]).includes(o.role)) throw new CertIssueError(`role: '${o.role}' must be one of ${ROLES.join(', ')}`);
  if (!NAME.test(o.name)) throw new CertIssueError(`name: '${o.name}' must be letters, digits, '.', '_' or '-' (at most 63), e.g. the node name`);
  const days = o.days ?? DEFAULT_LEAF_DAYS;
  checkDays(days, true);
  const dns = o.dns ?? [];
  const ips = o.ips ?? [];
  for (const d of dns) if (!DNS_NAME.test(d)) throw new CertIssueError(`dns: '${d}' is not a DNS name`);
  for (const ip of ips) if (isIP(ip) === 0) throw new CertIssueError(`ip: '${ip}' is not an IP address`);
  if (o.role === 'collector' && dns.length + ips.length === 0) {
    throw new CertIssueError('a collector certificate needs the names agents and clients dial: --dns (e.g. natlens-collector.natlens.svc) and/or --ip (e.g. 127.0.0.1)');
  }
  const ca = { cert: join(o.caDir, 'ca.crt'), key: join(o.caDir, 'ca.key') };
  for (const p of [ca.cert, ca.key]) if (!existsSync(p)) throw new CertIssueError(`${p} not found: create the CA first ('natlens certs ca --dir ${o.caDir}')`);
  const outDir = o.outDir ?? o.caDir;
  const files = { cert: join(outDir, `${o.name}.crt`), key: join(outDir, `${o.name}.key`) };
  refuseOverwrite([files.cert, files.key], o.force);
  mkdirSync(outDir, { recursive: true });
  withTemp((tmp) => {
    const san = [`URI:${ROLE_URI_PREFIX}${o.role}/${o.name}`, ...dns.map((d) => `DNS:${d}`), ...ips.map((ip) => `IP:${ip}`)];
    // A collector is a server (agents, queries) and a client (its peers); the others are clients.
    const eku = o.role === 'collector' ? 'serverAuth, clientAuth' : 'clientAuth';
    const ext = join(tmp, 'leaf.ext');
    writeFileSync(ext, [
      'basicConstraints = critical, CA:FALSE', 'keyUsage = critical, digitalSignature', `extendedKeyUsage = ${eku}`,
      `subjectAltName = ${san.join(', ')}`, 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid', '',
    ].join('\n'));
    const key = join(tmp, 'leaf.key');
    newKey(key, `${o.role} key`);
    const csr = join(tmp, 'leaf.csr');
    openssl(['req', '-new', '-key', key, '-subj', `/O=natlens/OU=${o.role}/CN=${o.name}`, '-out', csr], `${o.role} certificate request`);
    openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', serial(), '-days', String(days), '-sha256',
      '-extfile', ext, '-out', join(tmp, 'leaf.crt')], `${o.role} certificate`);
    install(key, files.key, 0o600);
    install(join(tmp, 'leaf.crt'), files.cert, 0o644);
  });
  return files;
}

/** A random bearer token for --query-token-file (256 bits, base64url). */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}
