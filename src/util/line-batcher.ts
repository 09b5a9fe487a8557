/**
 * Collects lines and hands them to `write` as one string per event-loop turn, or sooner once
 * `maxBytes` are waiting.
 */
export class LineBatcher {
  private parts: string[] = [];
  private bytes = 0;
  private scheduled = false;

  constructor(
    private readonly write: (text: string) => void,
    private readonly maxBytes = 256 * 1024,
  ) {}

  push(line: string): void {
    this.parts.push(line);
    this.bytes += line.length;
    if (this.bytes >= this.maxBytes) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.scheduled = false;
    if (this.parts.length === 0) return;
    const text = this.parts.join('');
    this.parts = [];
    this.bytes = 0;
    this.write(text);
  }
}
