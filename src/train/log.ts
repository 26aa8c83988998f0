/**
 * Structured training logs: one JSON object per line (JSONL), appended and
 * flushed per record, so a crash loses nothing and tools (or a later HTML
 * report) can read them while training runs. Every record has `type`, `time`
 * (ISO) and `rank` (0 for single-process runs; one file per rank later).
 *
 * Lines are whole or absent: a record is written in full (a short write on a
 * full disk continues) or cut back off the file before the error is thrown,
 * and a line left cut by a crash is removed when the log is opened again.
 */
import fs from 'node:fs';
import { WriteError, reasonOf, writeAll } from '../io/durable.js';

export class JsonlLog {
  readonly #fd: number;
  /** Bytes of a cut last line (a crash mid-write) removed on opening; 0 when the log ended cleanly. */
  readonly repairedBytes: number;
  constructor(readonly path: string, readonly rank = 0) {
    try {
      this.#fd = fs.openSync(path, 'a+');
      this.repairedBytes = cutPartialLine(this.#fd);
    } catch (e) {
      throw new WriteError(path, (e as NodeJS.ErrnoException).code, `cannot write log ${path}: ${reasonOf(e, path)}`);
    }
  }
  write(type: string, record: Record<string, unknown>): void {
    const line = new TextEncoder().encode(`${JSON.stringify({ type, time: new Date().toISOString(), rank: this.rank, ...record })}\n`);
    const size = fs.fstatSync(this.#fd).size;
    try {
      writeAll(this.#fd, line);
    } catch (e) {
      // Never leave part of a line: cut the file back to where the record began.
      try {
        fs.ftruncateSync(this.#fd, size);
      } catch {
        // The error below says what went wrong; a cut line is skipped by readers and removed on reopening.
      }
      throw new WriteError(this.path, (e as NodeJS.ErrnoException).code, `cannot write log ${this.path}: ${reasonOf(e, this.path, line.length)}`);
    }
  }
  close(): void {
    try {
      fs.fsyncSync(this.#fd);
    } catch {
      // Best effort: every record was already handed to the system.
    }
    fs.closeSync(this.#fd);
  }
}

/** Removes a last line without its newline (a record cut by a crash); returns the bytes removed. */
function cutPartialLine(fd: number): number {
  const size = fs.fstatSync(fd).size;
  if (size === 0) return 0;
  const chunk = Buffer.alloc(Math.min(size, 1 << 16));
  let end = size;
  // Scan back for the last newline (records are far shorter than a chunk; a longer tail is read chunk by chunk).
  while (end > 0) {
    const start = Math.max(0, end - chunk.length);
    const n = fs.readSync(fd, chunk, 0, end - start, start);
    const last = chunk.subarray(0, n).lastIndexOf(0x0a);
    if (last >= 0) {
      const keep = start + last + 1;
      if (keep === size) return 0;
      fs.ftruncateSync(fd, keep);
      return size - keep;
    }
    end = start;
  }
  fs.ftruncateSync(fd, 0);
  return size;
}

export interface JsonlContents {
  records: Record<string, unknown>[];
  /** Lines that are not a JSON object (a cut last line, stray bytes): skipped. */
  unreadable: number;
}

/** A JSONL log's records, skipping (and counting) lines that do not parse. */
export function readJsonlCounted(path: string): JsonlContents {
  const records: Record<string, unknown>[] = [];
  let unreadable = 0;
  for (const l of fs.readFileSync(path, 'utf8').split('\n')) {
    if (!l.trim()) continue;
    try {
      const r = JSON.parse(l) as unknown;
      if (r !== null && typeof r === 'object' && !Array.isArray(r)) records.push(r as Record<string, unknown>);
      else unreadable++;
    } catch {
      unreadable++;
    }
  }
  return { records, unreadable };
}

/** A JSONL log's records (unreadable lines skipped; readJsonlCounted counts them). */
export function readJsonl(path: string): Record<string, unknown>[] {
  return readJsonlCounted(path).records;
}
