// describeError: every cause once, in order, without the repetition of wrappers that quote their cause.
import { describe, expect, it } from 'vitest';
import { NatlensError, describeError } from '../../src/util/errors.js';

describe('describeError', () => {
  it('chains distinct causes', () => {
    const err = new NatlensError('--token-file f: cannot read it (ENOENT)', { cause: new Error("ENOENT: no such file or directory, open 'f'") });
    expect(describeError(err)).toBe("--token-file f: cannot read it (ENOENT): caused by: ENOENT: no such file or directory, open 'f'");
  });

  it('says a message once when a wrapper already quotes it (grpc-js "16 UNAUTHENTICATED: " prefix included)', () => {
    const grpcError = new Error('16 UNAUTHENTICATED: query refused: the token is not valid');
    const auth = new NatlensError('UNAUTHENTICATED: query refused: the token is not valid', { cause: grpcError });
    const top = new NatlensError(`who: collector c: ${auth.message}`, { cause: auth });
    expect(describeError(top)).toBe('who: collector c: UNAUTHENTICATED: query refused: the token is not valid');
  });
});
