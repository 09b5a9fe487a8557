/**
 * The security flags every connecting command shares (agent, collector, who, etp), and reading
 * them into a TransportSecurity and, for queries, a bearer token. See docs/security.md.
 */
import { Option, type Command } from 'commander';
import { readFileSync } from 'node:fs';
import { SECURITY_DOC, TlsConfigError, resolveTransportSecurity, type Role, type TlsSettings } from '../transport/tls.js';
import type { QueryAccess } from '../transport/query-client.js';

/** Adds --tls-ca, --tls-cert, --tls-key, --tls-server-name and --plaintext (and --token-file for query clients). */
export function addSecurityOptions(cmd: Command, role: Role): Command {
  const own = role === 'query' ? 'this client\'s certificate (role query; optional with a token)' : `this ${role}'s certificate (role ${role})`;
  cmd
    .option('--tls-ca <file>', 'PEM CA certificate that issued every natlens certificate (env NATLENS_TLS_CA)')
    .option('--tls-cert <file>', `PEM ${own} (env NATLENS_TLS_CERT)`)
    .option('--tls-key <file>', 'PEM private key of --tls-cert (env NATLENS_TLS_KEY)')
    .option('--tls-server-name <name>', `verify the ${role === 'collector' ? 'peers\'' : 'collector\'s'} certificate for this name, not the target host (env NATLENS_TLS_SERVER_NAME)`)
    .addOption(new Option('--plaintext', 'no TLS and no authentication, for a lab only (env NATLENS_PLAINTEXT=true)'));
  if (role === 'query') cmd.option('--token-file <file>', 'bearer token for the query API, read from this file (env NATLENS_TOKEN_FILE; or the token in NATLENS_TOKEN)');
  if (role === 'collector') cmd.option('--query-token-file <file>', 'bearer tokens the query API accepts, one per line, # comments (env NATLENS_QUERY_TOKEN_FILE)');
  return cmd;
}

/** The raw flag values for resolveConfig. */
export function securityFlags(opts: Record<string, unknown>): Record<string, string | boolean | undefined> {
  return {
    tlsCa: opts.tlsCa as string | undefined,
    tlsCert: opts.tlsCert as string | undefined,
    tlsKey: opts.tlsKey as string | undefined,
    tlsServerName: opts.tlsServerName as string | undefined,
    plaintext: opts.plaintext === true ? true : undefined,
    tokenFile: opts.tokenFile as string | undefined,
    queryTokenFile: opts.queryTokenFile as string | undefined,
  };
}

/** The query token: from --token-file (its first line that is not blank or a # comment), else NATLENS_TOKEN. */
export function readQueryToken(cfg: { tokenFile?: string; token?: string }): string | undefined {
  if (cfg.tokenFile === undefined) return cfg.token;
  let text: string;
  try {
    text = readFileSync(cfg.tokenFile, 'utf8');
  } catch (err) {
    throw new TlsConfigError(`--token-file ${cfg.tokenFile}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
  }
  const token = text.split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#'));
  if (!token) throw new TlsConfigError(`--token-file ${cfg.tokenFile}: no token in the file`);
  return token;
}

/**
 * How `who` / `etp` reach the collector: TLS (the CA, and a query certificate or a token) or
 * --plaintext (a token is still sent when one is given: a lab collector may ask for one).
 */
export function queryAccess(cfg: TlsSettings & { tokenFile?: string; token?: string }, command: string): QueryAccess {
  const security = resolveTransportSecurity(cfg, command, 'query');
  const token = readQueryToken(cfg);
  if (security.mode === 'tls' && !security.material.cert && token === undefined) {
    throw new TlsConfigError(
      `${command}: the query API needs authentication: a certificate with role query (--tls-cert, --tls-key) ` +
        `or a token (--token-file FILE or NATLENS_TOKEN); see ${SECURITY_DOC}`,
    );
  }
  return { security, token };
}
