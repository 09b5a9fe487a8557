/** The query API's client: `natlens who`, and collectors asking their peers. */
import * as grpc from '@grpc/grpc-js';
import { NatlensError } from '../util/errors.js';
import type { WhoRequest, WhoResponse } from './proto.generated.js';
import { QueryServiceClient, channelOptions, clientCredentials } from './grpc-services.js';

export class QueryUnavailableError extends NatlensError {}

export class QueryClient {
  private readonly client: QueryServiceClient;

  constructor(readonly target: string, private readonly timeoutMs = 15_000) {
    this.client = new QueryServiceClient(target, clientCredentials(), channelOptions()) as unknown as QueryServiceClient;
  }

  who(req: WhoRequest): Promise<WhoResponse> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      this.client.Who(req, new grpc.Metadata(), { deadline }, (err, res) => {
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
