/**
 * Structured training logs: one JSON object per line (JSONL), appended and
 * flushed per record, so a crash loses nothing and tools (or a later HTML
 * report) can read them while training runs. Every record has `type`, `time`
 * (ISO) and `rank` (0 for single-process runs; one file per rank later).
 */
import fs from 'node:fs';

export class JsonlLog {
  readonly #fd: number;
  constructor(readonly path: string, readonly rank = 0) {
    this.#fd = fs.openSync(path, 'a');
  }
  write(type: string, record: Record<string, unknown>): void {
    fs.writeSync(this.#fd, `${JSON.stringify({ type, time: new Date().toISOString(), rank: this.rank, ...record })}\n`);
  }
  close(): void {
    fs.closeSync(this.#fd);
  }
}

export function readJsonl(path: string): Record<string, unknown>[] {
  return fs
    .readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
