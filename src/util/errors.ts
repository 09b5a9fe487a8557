/** Base class of every error natlens raises on purpose: a message a user can act on, the cause kept. */
export class NatlensError extends Error {
  /** Process exit code the CLI uses when this error ends it. */
  readonly exitCode: number;
  constructor(message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.exitCode = options?.exitCode ?? 1;
  }
}

/** Wrong flags or values: exit code 2, like every Unix tool. */
export class UsageError extends NatlensError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, exitCode: 2 });
  }
}

/** Human-readable text of any thrown value, with its causes. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && cur !== null && depth < 5; depth++) {
    if (cur instanceof Error) {
      // A wrapper usually repeats its cause's message: say each thing once.
      const stripped = cur.message.replace(/^\d+ [A-Z_]+: /, ''); // grpc-js prefixes "CODE NAME: "
      if (!parts.some((p) => p.includes(stripped))) parts.push(cur.message);
      cur = (cur as { cause?: unknown }).cause;
    } else {
      parts.push(String(cur));
      break;
    }
  }
  return parts.join(': caused by: ');
}

/**
 * User-supplied text for an error message: JSON-quoted (control characters escaped, so a message
 * cannot rewrite a terminal or a log line) and cut to `max` characters.
 */
export function quoteInput(text: string, max = 100): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}...` : text);
}
