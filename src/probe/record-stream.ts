/**
 * Splits the probe's stdout byte stream into whole records. A pipe delivers at most 64 KB per
 * read, so a record may straddle two chunks: the tail is kept and completed by the next chunk.
 */
import { NL_RECORD_SIZE } from './record-layout.generated.js';

export class RecordFramer {
  private tail: Buffer = Buffer.alloc(0);

  /**
   * Calls `onRecord(buf, offset)` for every complete record, in order. The framing is settled
   * before any callback runs: a callback that throws cannot put the stream out of step.
   */
  push(chunk: Buffer, onRecord: (buf: Buffer, offset: number) => void): void {
    let buf = chunk;
    if (this.tail.length > 0) {
      buf = Buffer.concat([this.tail, chunk]);
    }
    const whole = buf.length - (buf.length % NL_RECORD_SIZE);
    // Copy the remainder: the chunk's memory may be reused by the stream.
    this.tail = whole === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(whole));
    for (let off = 0; off < whole; off += NL_RECORD_SIZE) onRecord(buf, off);
  }

  /** Bytes of an incomplete record still waiting (non-zero at end of stream = truncated output). */
  get pendingBytes(): number {
    return this.tail.length;
  }
}
