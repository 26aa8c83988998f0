/**
 * One run per folder: OUT/run.lock, created with O_EXCL (so of two runs started together exactly one
 * gets it), holds the holder's pid, host and process start time. A second run (or a --resume while the
 * first still runs) is refused with the holder's pid. A lock whose process is gone (SIGKILL, a crash)
 * is stale and taken over; the process start time (Linux /proc) tells a reused pid from the holder.
 * Released when the run ends, on signals (the run stops through its normal path) and at process exit.
 * A data-parallel launcher takes the lock for its workers and names it in REPOPT_RUN_LOCK.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WriteError, ensureWritableDir, reasonOf, removeIfEmpty, writeAll } from '../io/durable.js';

export const LOCK_FILE = 'run.lock';
/** Set by `repopt train --nproc N` for its workers: the lock it holds for them (rank 0 checks it, nobody takes it again). */
export const LOCK_ENV = 'REPOPT_RUN_LOCK';

interface LockInfo {
  pid: number;
  host: string;
  /** Process start time in clock ticks since boot (Linux), to tell a reused pid apart. */
  procStart: string | null;
  started: string;
}

function procStart(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the command name (field 2) may hold spaces, so count after its closing parenthesis.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function readLock(file: string): LockInfo | null {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<LockInfo>;
    return typeof v.pid === 'number' ? { pid: v.pid, host: String(v.host ?? ''), procStart: v.procStart ?? null, started: String(v.started ?? '') } : null;
  } catch {
    return null; // being written, or garbage
  }
}

/** Whether the lock's holder still runs (unknowable for another host: assumed running). */
function alive(l: LockInfo): boolean {
  if (l.host !== os.hostname()) return true;
  try {
    process.kill(l.pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  const now = procStart(l.pid);
  return l.procStart === null || now === null || now === l.procStart;
}

/** Another run holds the folder (the message names its pid). */
export class RunLockedError extends Error {
  constructor(readonly out: string, readonly holder: number | null, message: string) {
    super(message);
    this.name = 'RunLockedError';
  }
}

export interface RunLock {
  readonly file: string;
  release(): void;
}

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** Takes OUT/run.lock for this process (OUT must exist), or throws a RunLockedError naming the holder. */
export function lockRunFolder(out: string): RunLock {
  const file = path.join(out, LOCK_FILE);
  const held = process.env[LOCK_ENV];
  if (held !== undefined && path.resolve(held) === path.resolve(file)) {
    // The launcher holds it for this job; it also releases it.
    const l = readLock(file);
    if (l && l.pid === process.ppid) return { file, release: () => {} };
  }
  const info: LockInfo = { pid: process.pid, host: os.hostname(), procStart: procStart(process.pid), started: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = fs.openSync(file, 'wx');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new WriteError(file, (e as NodeJS.ErrnoException).code, `cannot start a run in ${out}: cannot write ${file}: ${reasonOf(e, file)}`);
      const l = readLock(file);
      if (l === null) {
        // Just created by another run that has not written its pid yet (or garbage left by a crash).
        if (attempt < 20) {
          sleep(50);
          continue;
        }
        throw new RunLockedError(out, null, `${out} is locked by another run (${file} holds no pid); if no run uses this folder, delete ${file}`);
      }
      if (alive(l)) {
        throw new RunLockedError(out, l.pid, `${out} is in use by another run (pid ${l.pid}${l.host !== os.hostname() ? ` on ${l.host}` : ''}, since ${l.started}); wait for it to end or choose another folder`);
      }
      if (attempt >= 5) throw new RunLockedError(out, l.pid, `${out}: cannot take the stale lock ${file} of pid ${l.pid}; delete it if no run uses this folder`);
      breakStale(file, l);
      continue;
    }
    try {
      writeAll(fd, new TextEncoder().encode(JSON.stringify(info) + '\n'));
      fs.fsyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      throw new WriteError(file, (e as NodeJS.ErrnoException).code, `cannot start a run in ${out}: cannot write ${file}: ${reasonOf(e, file)}`);
    }
    fs.closeSync(fd);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      process.off('exit', release);
      // Only our own lock: a stale-lock takeover by another run must not be undone.
      if (readLock(file)?.pid === process.pid) fs.rmSync(file, { force: true });
    };
    process.on('exit', release);
    return { file, release };
  }
}

/**
 * Removes a stale lock so that exactly one of the runs that found it takes over: the lock is renamed away
 * (atomic; only one rename of the same file succeeds) and removed only if it was still the stale holder's.
 */
function breakStale(file: string, stale: LockInfo): void {
  const aside = `${file}.stale-${process.pid}`;
  try {
    fs.renameSync(file, aside);
  } catch {
    return; // another run moved it first: try again
  }
  const moved = readLock(aside);
  if (moved && moved.pid !== stale.pid && alive(moved)) {
    // A live run took the lock in between: put it back (link fails if yet another run holds the name).
    try {
      fs.linkSync(aside, file);
    } catch {
      // The name is taken again; that run's lock stands.
    }
  }
  fs.rmSync(aside, { force: true });
}

/**
 * Makes the run folder (one level at a time, so a read-only mount says so) and locks it for a run's
 * lifetime; `release()` unlocks and removes the folders it made if the run left them empty.
 */
export function holdRunFolder(out: string): { lock: RunLock; release(): void } {
  const made = ensureWritableDir(out, 'run folder');
  let lock: RunLock;
  try {
    lock = lockRunFolder(out);
  } catch (e) {
    removeIfEmpty(made);
    throw e;
  }
  return {
    lock,
    release() {
      lock.release();
      removeIfEmpty(made); // a run refused before it wrote anything leaves no folder behind
    },
  };
}
