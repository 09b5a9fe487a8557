import { NatlensError } from '../util/errors.js';

/**
 * A Kubernetes API problem natlens cannot work around: no usable kubeconfig, an API server that
 * cannot be reached or refuses a list. The message names what was tried (file, URL, resource).
 */
export class K8sError extends NatlensError {
  /** The resource being listed or watched ("pods"), when the error is about one. */
  readonly resource: string | undefined;
  /** The request URL, when the error is about one. */
  readonly url: string | undefined;
  /** HTTP status of the failed request; undefined for connection errors. */
  readonly statusCode: number | undefined;

  constructor(message: string, options: { cause?: unknown; resource?: string; url?: string; statusCode?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.resource = options.resource;
    this.url = options.url;
    this.statusCode = options.statusCode;
  }
}
