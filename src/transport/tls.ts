/**
 * Transport security of every natlens connection (agent -> collector, collector -> peer collector,
 * query client -> collector): mutual TLS from PEM files, or plain text as an explicit lab opt-in.
 *
 * Files are read once at start-up (a restart picks up renewed certificates; see docs/security.md).
 * What a peer may do is decided by the role in its certificate: a URI SAN spiffe://natlens/ROLE
 * (ROLE = agent | collector | query, optionally followed by /NAME); the server side checks it in
 * auth.ts. Every problem is a TlsConfigError naming the flag and file at fault.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { NatlensError } from '../util/errors.js';

/** A TLS setting that cannot work (missing, unreadable, mismatched, expired): exit code 2, like a bad flag. */
export class TlsConfigError extends NatlensError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, exitCode: 2 });
  }
}

export const ROLES = ['agent', 'collector', 'query'] as const;
export type Role = (typeof ROLES)[number];
/** A certificate's role is its URI SAN under this prefix: spiffe://natlens/agent[/NAME]. */
export const ROLE_URI_PREFIX = 'spiffe://natlens/';
export const SECURITY_DOC = 'docs/security.md';

export interface TlsFiles {
  /** The CA that issued every natlens certificate: peers are verified against it. */
  ca: string;
  /** This process's certificate and key. Optional only for query clients using a token. */
  cert?: string;
  key?: string;
}

export interface TlsMaterial {
  files: TlsFiles;
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** Roles of this process's own certificate. */
  roles: Role[];
  /** notAfter of this process's certificate (for start-up logs). */
  expires?: string;
}

export type TransportSecurity =
  | { mode: 'tls'; material: TlsMaterial; /** Name to verify the server's certificate against, instead of the target host. */ serverName?: string }
  | { mode: 'plaintext' };

/** The TLS settings as config.ts resolves them for every command. */
export interface TlsSettings {
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsServerName?: string;
  plaintext: boolean;
}

/** Roles named by URI SANs in a subjectAltName string ("URI:spiffe://natlens/agent, DNS:x"). */
export function rolesOfSubjectAltName(san: string | undefined): Role[] {
  const roles = new Set<Role>();
  for (const entry of (san ?? '').split(/,\s*/)) {
    // Node quotes SAN values holding unusual characters ("URI:\"...\""): those are never natlens roles.
    if (!entry.startsWith(`URI:${ROLE_URI_PREFIX}`)) continue;
    const role = entry.slice(`URI:${ROLE_URI_PREFIX}`.length).split('/')[0];
    if ((ROLES as readonly string[]).includes(role!)) roles.add(role as Role);
  }
  return [...roles];
}

function readFile(path: string, flag: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new TlsConfigError(`${flag} ${path}: cannot read the ${what} (${why})`, { cause: err });
  }
}

function parseCertificate(pem: Buffer, path: string, flag: string, what: string): X509Certificate {
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TlsConfigError(`${flag} ${path}: not a PEM certificate (no "BEGIN CERTIFICATE" block); the ${what} must be PEM`);
  }
  try {
    return new X509Certificate(pem);
  } catch (err) {
    throw new TlsConfigError(`${flag} ${path}: the ${what} cannot be parsed: ${(err as Error).message}`, { cause: err });
  }
}

function checkValidity(cert: X509Certificate, path: string, flag: string, now: Date): void {
  if (new Date(cert.validTo) <= now) {
    throw new TlsConfigError(`${flag} ${path}: certificate expired on ${cert.validTo}; issue a new one (${SECURITY_DOC}, "Rotation")`);
  }
  if (new Date(cert.validFrom) > now) {
    throw new TlsConfigError(`${flag} ${path}: certificate is not valid before ${cert.validFrom} (is this machine's clock right?)`);
  }
}

/**
 * Reads and checks the PEM files: each is readable and PEM, the key belongs to the certificate,
 * the certificate was issued by the CA and is valid now. Errors name the flag and the file.
 */
export function loadTlsMaterial(files: TlsFiles, now = new Date()): TlsMaterial {
  const ca = readFile(files.ca, '--tls-ca', 'CA certificate');
  // A bundle of several CAs is allowed (rotating the CA: old and new trusted side by side).
  const caCerts = (ca.toString('latin1').match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [ca.toString('latin1')])
    .map((pem) => parseCertificate(Buffer.from(pem, 'latin1'), files.ca, '--tls-ca', 'CA certificate'));
  for (const caCert of caCerts) {
    if (!caCert.ca) throw new TlsConfigError(`--tls-ca ${files.ca}: this certificate is not a CA (basicConstraints CA:FALSE); give the CA that issued the certificates`);
  }
  const valid = caCerts.filter((c) => new Date(c.validTo) > now && new Date(c.validFrom) <= now);
  if (valid.length === 0) checkValidity(caCerts[0]!, files.ca, '--tls-ca', now);
  if ((files.cert === undefined) !== (files.key === undefined)) {
    throw new TlsConfigError(files.cert === undefined
      ? `--tls-key ${files.key} is given without --tls-cert: give both (the certificate and its key)`
      : `--tls-cert ${files.cert} is given without --tls-key: give both (the certificate and its key)`);
  }
  if (files.cert === undefined || files.key === undefined) return { files, ca, roles: [] };
  const cert = readFile(files.cert, '--tls-cert', 'certificate');
  const certificate = parseCertificate(cert, files.cert, '--tls-cert', 'certificate');
  const key = readFile(files.key, '--tls-key', 'private key');
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey(key);
  } catch (err) {
    throw new TlsConfigError(`--tls-key ${files.key}: not a readable PEM private key (${(err as Error).message}); an encrypted key is not supported`, { cause: err });
  }
  if (!certificate.checkPrivateKey(keyObject)) {
    throw new TlsConfigError(`--tls-key ${files.key} is not the key of --tls-cert ${files.cert}: give the key the certificate was issued for`);
  }
  if (!valid.some((caCert) => certificate.checkIssued(caCert) && certificate.verify(caCert.publicKey))) {
    throw new TlsConfigError(`--tls-cert ${files.cert} was not issued by the CA in --tls-ca ${files.ca} (issuer: ${certificate.issuer.replace(/\n/g, ', ')}); peers would refuse it`);
  }
  checkValidity(certificate, files.cert, '--tls-cert', now);
  return { files, ca, cert, key, roles: rolesOfSubjectAltName(certificate.subjectAltName), expires: certificate.validTo };
}

/**
 * The transport security a command asked for: TLS files, or --plaintext; never both, never neither.
 * `needs` is what this command's own certificate must be: 'agent', 'collector', or 'query' (a
 * query client may go without a certificate when it sends a token instead).
 */
export function resolveTransportSecurity(s: TlsSettings, command: string, needs: Role): TransportSecurity {
  const given = [['--tls-ca', s.tlsCa], ['--tls-cert', s.tlsCert], ['--tls-key', s.tlsKey]] as const;
  const anyTls = given.some(([, v]) => v !== undefined);
  if (s.plaintext) {
    if (anyTls) {
      throw new TlsConfigError(`${command}: --plaintext and ${given.filter(([, v]) => v !== undefined).map(([f]) => f).join(', ')} contradict each other: choose TLS or plain text`);
    }
    return { mode: 'plaintext' };
  }
  if (!anyTls) {
    throw new TlsConfigError(
      `${command}: no transport security chosen. Give --tls-ca, --tls-cert and --tls-key (or NATLENS_TLS_CA, ` +
        `NATLENS_TLS_CERT, NATLENS_TLS_KEY) for mutual TLS, or --plaintext (NATLENS_PLAINTEXT=true) to run ` +
        `unencrypted and unauthenticated, for a lab only. Issuing certificates: 'natlens certs --help' and ${SECURITY_DOC}.`,
    );
  }
  const missing = given.filter(([flag, v]) => v === undefined && !(needs === 'query' && flag !== '--tls-ca')).map(([f]) => f);
  if (missing.length) {
    throw new TlsConfigError(`${command}: incomplete TLS settings: ${missing.join(', ')} missing (mutual TLS needs the CA, this ${needs}'s certificate and its key; see ${SECURITY_DOC})`);
  }
  const material = loadTlsMaterial({ ca: s.tlsCa!, cert: s.tlsCert, key: s.tlsKey });
  if (material.cert) {
    const accepted: Role[] = needs === 'query' ? ['query', 'collector'] : [needs];
    if (!material.roles.some((r) => accepted.includes(r))) {
      throw new TlsConfigError(
        `${command}: --tls-cert ${s.tlsCert} has ${material.roles.length ? `role ${material.roles.join(', ')}` : 'no natlens role'}; ` +
          `this command needs a certificate with role ${accepted.join(' or ')} (URI SAN ${ROLE_URI_PREFIX}${accepted[0]}); ` +
          `issue one with 'natlens certs issue --role ${accepted[0]}' (${SECURITY_DOC})`,
      );
    }
  }
  return { mode: 'tls', material, serverName: s.tlsServerName };
}

/** Channel credentials: TLS verifying the server against the CA, presenting our certificate if we have one. */
export function channelCredentialsFor(security: TransportSecurity | undefined): grpc.ChannelCredentials {
  if (!security || security.mode === 'plaintext') return grpc.credentials.createInsecure();
  const m = security.material;
  return grpc.credentials.createSsl(m.ca, m.key ?? null, m.cert ?? null);
}

/** Channel options TLS needs: the server name to verify when the target is an address the certificate does not name. */
export function channelSecurityOptions(security: TransportSecurity | undefined): grpc.ChannelOptions {
  if (security?.mode === 'tls' && security.serverName) {
    return { 'grpc.ssl_target_name_override': security.serverName, 'grpc.default_authority': security.serverName };
  }
  return {};
}

/**
 * A provider that hands out fixed PEM data (no file watching: certificates change on restart).
 * Listeners are called on the next microtask: grpc-js registers its server's watcher only after
 * adding the listeners, and an update delivered synchronously would never reach it.
 */
function staticProvider(m: TlsMaterial): grpc.experimental.CertificateProvider {
  return {
    addCaCertificateListener: (l) => queueMicrotask(() => l({ caCertificate: m.ca })),
    removeCaCertificateListener: () => {},
    addIdentityCertificateListener: (l) => queueMicrotask(() => l({ certificate: m.cert!, privateKey: m.key! })),
    removeIdentityCertificateListener: () => {},
  };
}

/**
 * Server credentials. With TLS the server always asks for a client certificate and verifies it
 * against the CA. requireClientCertificate: refuse, during the handshake, every client without a
 * certificate from the CA (no token holders can then connect). Otherwise a client without one still
 * gets TLS, and is only let through to the query API with a valid bearer token (auth.ts): a
 * certificate counts only when the TLS stack verified it (grpc-js reports no peer certificate
 * otherwise).
 */
export function serverCredentialsFor(security: TransportSecurity | undefined, requireClientCertificate = true): grpc.ServerCredentials {
  if (!security || security.mode === 'plaintext') return grpc.ServerCredentials.createInsecure();
  const m = security.material;
  if (!m.cert || !m.key) throw new TlsConfigError('a TLS server needs its own certificate and key (--tls-cert, --tls-key)');
  if (requireClientCertificate) return grpc.ServerCredentials.createSsl(m.ca, [{ cert_chain: m.cert, private_key: m.key }], true);
  const provider = staticProvider(m);
  return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false);
}
