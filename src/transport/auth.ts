/**
 * Who may call what on the collector's gRPC server.
 *
 *   AgentService.Stream   certificate role agent (a node's events) or collector (a peer forwarding)
 *   QueryService.Who/Etp  certificate role query or collector (a peer fanning out), or a bearer
 *                         token from the collector's --query-token-file
 *
 * A certificate counts only when the TLS stack verified it against the CA (grpc-js reports no peer
 * certificate otherwise). In plain-text mode (the lab) the stream is open, and queries are open
 * unless a token file is given. Denials carry a message saying how to authenticate; tokens are
 * never logged nor echoed.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { SECURITY_DOC, TlsConfigError, rolesOfSubjectAltName, type Role, type TransportSecurity } from './tls.js';

/** Shortest token accepted: 16 characters of a random token are ~96 bits with base64. */
export const MIN_TOKEN_LENGTH = 16;
const TOKEN_PATTERN = /^[\x21-\x7e]+$/;

/** The bearer tokens the query API accepts, compared in constant time. */
export class QueryTokens {
  private constructor(private readonly digests: Buffer[], readonly path: string) {}

  /** One token per line; blank lines and lines starting with # are ignored. Errors name the line, never the token. */
  static load(path: string): QueryTokens {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new TlsConfigError(`--query-token-file ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
    }
    return QueryTokens.parse(text, path);
  }

  static parse(text: string, path: string): QueryTokens {
    const digests: Buffer[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      if (!TOKEN_PATTERN.test(line)) throw new TlsConfigError(`${path}:${i + 1}: a token is printable ASCII without spaces (one token per line, # starts a comment line)`);
      if (line.length < MIN_TOKEN_LENGTH) throw new TlsConfigError(`${path}:${i + 1}: token shorter than ${MIN_TOKEN_LENGTH} characters; make one with 'natlens certs token'`);
      digests.push(digest(line));
    });
    if (digests.length === 0) throw new TlsConfigError(`${path}: no token in the file (one per line; make one with 'natlens certs token')`);
    return new QueryTokens(digests, path);
  }

  get size(): number {
    return this.digests.length;
  }

  /** True when `token` is one of the tokens. Compares digests of equal length against every token, without early exit. */
  matches(token: string): boolean {
    const d = digest(token);
    let found = false;
    for (const t of this.digests) found = timingSafeEqual(d, t) || found;
    return found;
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

export interface ServerSecurity {
  transport: TransportSecurity;
  /** Bearer tokens the query API accepts. */
  queryTokens?: QueryTokens;
}

export type Service = 'stream' | 'query';

/** What authorization reads of a server call (any grpc-js server call has both). */
export interface CallCredentials {
  getAuthContext(): { sslPeerCertificate?: { subjectaltname?: string } } | null;
  metadata: grpc.Metadata;
}

export interface Denial {
  code: grpc.status;
  details: string;
}

/** The call's verified certificate roles (empty without TLS or without a verified client certificate). */
export function peerRoles(call: Pick<CallCredentials, 'getAuthContext'>): Role[] {
  let ctx: ReturnType<CallCredentials['getAuthContext']> | undefined;
  try {
    ctx = call.getAuthContext();
  } catch {
    ctx = undefined;
  }
  return rolesOfSubjectAltName(ctx?.sslPeerCertificate?.subjectaltname);
}

/** The token of an `authorization: Bearer TOKEN` header; '' when there is a header that is not a bearer token; undefined without one. */
export function bearerToken(metadata: grpc.Metadata): string | undefined {
  const values = metadata.get('authorization');
  if (values.length === 0) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(String(values[0]));
  return m ? m[1]! : '';
}

const STREAM_ROLES: Role[] = ['agent', 'collector'];
const QUERY_ROLES: Role[] = ['query', 'collector'];

/** null when the call may proceed, else the status to end it with. */
export function authorize(security: ServerSecurity | undefined, service: Service, call: CallCredentials): Denial | null {
  const transport = security?.transport;
  const tls = transport?.mode === 'tls';
  if (service === 'stream') {
    if (!tls) return null;
    const roles = peerRoles(call);
    if (roles.some((r) => STREAM_ROLES.includes(r))) return null;
    if (roles.length) {
      return { code: grpc.status.PERMISSION_DENIED, details: `a certificate with role ${roles.join(', ')} may not stream events: agents need role agent (${SECURITY_DOC})` };
    }
    return { code: grpc.status.UNAUTHENTICATED, details: `streaming events needs a client certificate with role agent issued by the collector's CA (--tls-cert, --tls-key; ${SECURITY_DOC})` };
  }
  const tokens = security?.queryTokens;
  if (!tls && !tokens) return null; // plain-text lab mode, announced at start-up
  const roles = tls ? peerRoles(call) : [];
  if (roles.some((r) => QUERY_ROLES.includes(r))) return null;
  const token = bearerToken(call.metadata);
  const how = tokens
    ? `send a token from the collector's token file (--token-file FILE or NATLENS_TOKEN)${tls ? ', or use a certificate with role query (--tls-cert, --tls-key)' : ''}`
    : 'use a certificate with role query issued by the collector\'s CA (--tls-cert, --tls-key)';
  if (token !== undefined) {
    if (token !== '' && tokens?.matches(token)) return null;
    const why = token === '' ? 'the authorization header is not "Bearer TOKEN"' : tokens ? 'the token is not valid' : 'this collector accepts no tokens';
    return { code: grpc.status.UNAUTHENTICATED, details: `query refused: ${why}; ${how} (${SECURITY_DOC})` };
  }
  if (roles.length) {
    return { code: grpc.status.PERMISSION_DENIED, details: `a certificate with role ${roles.join(', ')} may not query: ${how} (${SECURITY_DOC})` };
  }
  return { code: grpc.status.UNAUTHENTICATED, details: `the query API needs authentication: ${how} (${SECURITY_DOC})` };
}
