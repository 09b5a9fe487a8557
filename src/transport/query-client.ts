/** The query API's client: `natlens who`, and collectors asking their peers. */
import * as grpc from '@grpc/grpc-js';
import { NatlensError } from '../util/errors.js';
import type { EtpRequest, EtpResponse, WhoRequest, WhoResponse } from './proto.generated.js';
import { QueryServiceClient, channelOptions, clientCredentials } from './grpc-services.js';

export class QueryUnavailableError extends NatlensError {}

export class QueryClient {
  private readonly client: QueryServiceClient;

  constructor(readonly target: string, private readonly timeoutMs = 15_000) {
    this.client = new QueryServiceClient(target, clientCredentials(), channelOptions()) as unknown as QueryServiceClient;
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
      invoke(new grpc.Metadata(), { deadline }, (err, res) => {
        if (err) {
          const e = err as grpc.ServiceError;
          const why = e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED
            ? `not reachable (${e.details || e.message}); is 'natlens collector' running there?`
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
