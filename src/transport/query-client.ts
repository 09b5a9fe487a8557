/** The query API's client: `natlens who`, and collectors asking their peers. */
import * as grpc from '@grpc/grpc-js';
import { NatlensError } from '../util/errors.js';
import type { EtpRequest, EtpResponse, WhoRequest, WhoResponse } from './proto.generated.js';
import { QueryServiceClient, channelOptions, clientCredentials } from './grpc-services.js';
import type { TransportSecurity } from './tls.js';

export class QueryUnavailableError extends NatlensError {}
/** The collector refused the credentials (UNAUTHENTICATED, PERMISSION_DENIED). */
export class QueryAuthError extends QueryUnavailableError {}

/** How a query client proves who it is: its TLS certificate (security) and/or a bearer token. */
export interface QueryAccess {
  security?: TransportSecurity;
  /** Sent as `authorization: Bearer TOKEN` on every call. */
  token?: string;
}

export class QueryClient {
  private readonly client: QueryServiceClient;

  constructor(readonly target: string, private readonly timeoutMs = 15_000, private readonly access: QueryAccess = {}) {
    this.client = new QueryServiceClient(target, clientCredentials(access.security), channelOptions({ security: access.security })) as unknown as QueryServiceClient;
  }

  who(req: WhoRequest): Promise<WhoResponse> {
    return this.call((md, opts, cb) => this.client.Who(req, md, opts, cb));
  }

  etp(req: EtpRequest): Promise<EtpResponse> {
    return this.call((md, opts, cb) => this.client.Etp(req, md, opts, cb));
  }

  private call<Res>(invoke: (md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => void): Promise<Res> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      const md = new grpc.Metadata();
      if (this.access.token !== undefined) md.set('authorization', `Bearer ${this.access.token}`);
      invoke(md, { deadline }, (err, res) => {
        if (err) {
          const e = err as grpc.ServiceError;
          if (e.code === grpc.status.UNAUTHENTICATED || e.code === grpc.status.PERMISSION_DENIED) {
            reject(new QueryAuthError(`${grpc.status[e.code]}: ${e.details || e.message}`, { cause: err }));
            return;
          }
          // A TLS mismatch (plain text against TLS, an unknown CA, a refused certificate) also shows as UNAVAILABLE.
          const tlsHint = this.access.security?.mode === 'tls' ? 'its TLS settings and certificates match ours' : 'it runs with --plaintext too';
          const why = e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED
            ? `not reachable (${e.details || e.message}); is 'natlens collector' running there, and ${tlsHint}?`
            : e.details || e.message;
          reject(new QueryUnavailableError(why, { cause: err }));
        } else resolve(res!);
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
