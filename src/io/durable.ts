/**
 * Writes that are complete or an error. `fs.writeSync` may write fewer bytes than asked (a full disk
 * does this before it answers ENOSPC) and says so only in its return value; these helpers loop until
 * every byte is written, check the file's size, fsync the file and (after a rename) its folder, and
 * turn the system's error codes into messages that name the path and say why in the user's words
 * (the free space on a full disk, a read-only file system, a file where a folder was expected).
 */
import fs from 'node:fs';
import path from 'node:path';

/** A write that failed: `path` is the file the user would look for; the message says why and, for ENOSPC, the free space. */
export class WriteError extends Error {
  constructor(readonly path: string, readonly code: string | undefined, message: string) {
    super(message);
    this.name = 'WriteError';
  }
}

/** Bytes free to an unprivileged writer on the file system holding `p` (its nearest existing parent), or null. */
export function freeBytes(p: string): number | null {
  let dir = path.resolve(p);
  for (;;) {
    try {
      const s = fs.statfsSync(dir);
      return s.bavail * s.bsize;
    } catch {
      const up = path.dirname(dir);
      if (up === dir) return null;
      dir = up;
    }
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** The reason for a system error in the user's words. */
export function reasonOf(e: unknown, p: string, needed?: number): string {
  const code = (e as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT': {
      const free = freeBytes(p);
      return `no space left on the disk (${free === null ? 'free space unknown' : `${formatBytes(free)} free`}${needed !== undefined ? `, ${formatBytes(needed)} needed` : ''})`;
    }
    case 'EROFS':
      return 'the file system is read-only';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'ENOTDIR':
      return 'a part of the path is a file, not a folder';
    case 'EISDIR':
      return 'it is a folder';
    default:
      return (e as Error).message;
  }
}

/** Writes all of `data` at the file's current position (or append end); a short write continues, zero progress is ENOSPC. */
export function writeAll(fd: number, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) {
    const n = fs.writeSync(fd, data, off, data.length - off);
    if (n <= 0) throw Object.assign(new Error('no space left on device, write'), { code: 'ENOSPC' });
    off += n;
  }
}

/** fsync of a folder, so a rename into it survives a crash (not every file system allows it: ignored there). */
export function fsyncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // EINVAL / EISDIR on file systems without directory fsync: the rename is as durable as they make it.
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/**
 * Writes `data` to `file` atomically: a temporary file in the same folder, written in full, its size
 * checked, fsynced, renamed over `file`, the folder fsynced. On any failure the temporary file is removed,
 * `file` keeps its previous content, and a WriteError names `file` and the reason. `what` labels the file
 * in the message (e.g. "checkpoint").
 */
export function writeFileAtomic(file: string, data: Uint8Array | string, what = 'file'): void {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'w');
    writeAll(fd, bytes);
    fs.fsyncSync(fd);
    const size = fs.fstatSync(fd).size;
    if (size !== bytes.length) throw new Error(`wrote ${size} of ${bytes.length} bytes`);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
    fsyncDir(path.dirname(file));
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new WriteError(file, (e as NodeJS.ErrnoException).code, `cannot write ${what} ${file}: ${reasonOf(e, file, bytes.length)}; ${fs.existsSync(file) ? 'its previous content is kept' : 'nothing was written'}`);
  }
}

/**
 * mkdir -p one level at a time (recursive mkdir answers ENOENT on a read-only file system, this the real
 * reason, EROFS); returns the folders made, outermost first.
 */
function mkdirEach(dir: string): string[] {
  const missing: string[] = [];
  let p = path.resolve(dir);
  while (!fs.existsSync(p)) {
    missing.push(p);
    const up = path.dirname(p);
    if (up === p) break;
    p = up;
  }
  const made: string[] = [];
  for (const m of missing.reverse()) {
    try {
      fs.mkdirSync(m);
      made.push(m);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.statSync(m).isDirectory()) throw e; // EEXIST: made meanwhile
    }
  }
  return made;
}

/** Removes the folders `ensureWritableDir` made if they are still empty (a run refused before writing anything). */
export function removeIfEmpty(made: readonly string[]): void {
  for (const m of [...made].reverse()) {
    try {
      fs.rmdirSync(m);
    } catch {
      return; // not empty (or gone): keep it and its parents
    }
  }
}

/**
 * Makes `dir` (and its parents) a folder to write in, or a WriteError in the user's words: a file in the
 * way, a read-only file system, no permission, a full disk. Returns the folders it made, outermost first.
 */
export function ensureWritableDir(dir: string, what = 'folder'): string[] {
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(dir);
  } catch {
    // Not there yet: made below.
  }
  if (st && !st.isDirectory()) throw new WriteError(dir, 'ENOTDIR', `${what} ${dir} is a file, not a folder; choose a folder`);
  let made: string[] = [];
  try {
    if (!st) made = mkdirEach(dir);
    fs.accessSync(dir, fs.constants.W_OK);
    return made;
  } catch (e) {
    removeIfEmpty(made);
    const code = (e as NodeJS.ErrnoException).code;
    // mkdir under a file reports EEXIST or ENOTDIR: name the file that is in the way.
    if (code === 'EEXIST' || code === 'ENOTDIR') {
      let p = path.resolve(dir);
      while (path.dirname(p) !== p && !fs.existsSync(p)) p = path.dirname(p);
      throw new WriteError(dir, code, `cannot make ${what} ${dir}: ${p} is a file, not a folder`);
    }
    throw new WriteError(dir, code, `cannot ${st ? 'write in' : 'make'} ${what} ${dir}: ${reasonOf(e, dir)}`);
  }
}
