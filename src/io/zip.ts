/**
 * Minimal ZIP access for PyTorch checkpoints, on top of `fflate`.
 *
 * Reading: entries are located through the central directory (PyTorch's
 * writer puts zero sizes in the local headers and uses a data descriptor;
 * fflate's `unzipSync` takes sizes from the central directory and only uses
 * the local header for the name/extra lengths). We additionally scan the
 * central directory ourselves to validate every entry (bounds, size, CRC-32)
 * so that truncated or corrupt archives raise clear errors instead of
 * silently returning short data.
 *
 * Writing: stored (uncompressed) entries only. Like PyTorch's writer, each
 * entry's data is aligned to 64 bytes by padding the local header with an
 * extra field (id 0x4246, "FB"), so storages could be memory-mapped.
 */
import { unzipSync, zipSync, type Zippable } from 'fflate';
import * as zlib from 'node:zlib';

export interface ZipEntryInfo {
  name: string;
  compressedSize: number;
  size: number;
  crc32: number;
  method: number;
  localHeaderOffset: number;
}

const EOCD_SIG = 0x06054b50;
const CDH_SIG = 0x02014b50;
const LFH_SIG = 0x04034b50;

// CRC-32 (IEEE); node:zlib.crc32 when available (Node >= 20.15), table fallback otherwise.
let crcTable: Uint32Array | undefined;
export function crc32(data: Uint8Array): number {
  const z = zlib as unknown as { crc32?: (d: Uint8Array) => number };
  if (typeof z.crc32 === 'function') return z.crc32(data) >>> 0;
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[i] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Parse the central directory (with ZIP64 support) and check each entry lies within the file. */
export function listZipEntries(data: Uint8Array, label = '<bytes>'): ZipEntryInfo[] {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const n = data.length;
  if (n < 22) throw new Error(`${label}: not a zip archive (file is only ${n} bytes)`);
  let e = -1;
  for (let i = n - 22; i >= 0 && i >= n - 22 - 65535; i--) {
    if (dv.getUint32(i, true) === EOCD_SIG) {
      e = i;
      break;
    }
  }
  if (e < 0) {
    const isZipStart = n >= 4 && dv.getUint32(0, true) === LFH_SIG;
    throw new Error(
      isZipStart
        ? `${label}: truncated or corrupt zip archive (end of central directory record not found)`
        : `${label}: not a zip archive (no end of central directory record; legacy non-zip torch.save files are not supported)`,
    );
  }
  let count = dv.getUint16(e + 10, true);
  let cdOffset = dv.getUint32(e + 16, true);
  // ZIP64 end of central directory locator
  if (e >= 20 && dv.getUint32(e - 20, true) === 0x07064b50) {
    const z64 = Number(dv.getBigUint64(e - 12, true));
    if (z64 + 56 <= n && dv.getUint32(z64, true) === 0x06064b50) {
      count = Number(dv.getBigUint64(z64 + 32, true));
      cdOffset = Number(dv.getBigUint64(z64 + 48, true));
    }
  }
  const entries: ZipEntryInfo[] = [];
  let o = cdOffset;
  const dec = new TextDecoder();
  for (let i = 0; i < count; i++) {
    if (o + 46 > n || dv.getUint32(o, true) !== CDH_SIG) {
      throw new Error(`${label}: corrupt zip central directory (entry ${i} at offset ${o})`);
    }
    const method = dv.getUint16(o + 10, true);
    const crc = dv.getUint32(o + 16, true);
    let csize = dv.getUint32(o + 20, true);
    let size = dv.getUint32(o + 24, true);
    const fnl = dv.getUint16(o + 28, true);
    const exl = dv.getUint16(o + 30, true);
    const cml = dv.getUint16(o + 32, true);
    let lho = dv.getUint32(o + 42, true);
    if (o + 46 + fnl + exl + cml > n) throw new Error(`${label}: corrupt zip central directory (entry ${i})`);
    const name = dec.decode(data.subarray(o + 46, o + 46 + fnl));
    // ZIP64 extended information
    let x = o + 46 + fnl;
    const xend = x + exl;
    while (x + 4 <= xend) {
      const id = dv.getUint16(x, true);
      const len = dv.getUint16(x + 2, true);
      if (id === 1) {
        let p = x + 4;
        if (size === 0xffffffff) (size = Number(dv.getBigUint64(p, true))), (p += 8);
        if (csize === 0xffffffff) (csize = Number(dv.getBigUint64(p, true))), (p += 8);
        if (lho === 0xffffffff) lho = Number(dv.getBigUint64(p, true));
      }
      x += 4 + len;
    }
    if (lho + 30 > n || dv.getUint32(lho, true) !== LFH_SIG) {
      throw new Error(`${label}: corrupt zip archive (bad local header for ${name})`);
    }
    const dataStart = lho + 30 + dv.getUint16(lho + 26, true) + dv.getUint16(lho + 28, true);
    if (dataStart + csize > n) {
      throw new Error(`${label}: truncated zip archive (entry ${name} needs ${csize} bytes at offset ${dataStart}, file has ${n})`);
    }
    entries.push({ name, compressedSize: csize, size, crc32: crc, method, localHeaderOffset: lho });
    o += 46 + fnl + exl + cml;
  }
  return entries;
}

export interface ZipReader {
  readonly entries: ZipEntryInfo[];
  names(): string[];
  has(name: string): boolean;
  /** Read an entry (validated against its CRC-32 and size). Throws if missing. */
  read(name: string): Uint8Array;
}

/** Open a zip archive held in memory. `label` (e.g. the file path) is used in error messages. */
export function openZip(data: Uint8Array, label = '<bytes>'): ZipReader {
  const entries = listZipEntries(data, label);
  const byName = new Map(entries.map((en) => [en.name, en]));
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(data);
  } catch (err) {
    throw new Error(`${label}: corrupt zip archive (${(err as Error).message})`);
  }
  return {
    entries,
    names: () => entries.map((en) => en.name),
    has: (name) => byName.has(name),
    read(name: string): Uint8Array {
      const info = byName.get(name);
      const d = files[name];
      if (!info || !d) throw new Error(`${label}: zip entry ${name} not found`);
      if (d.length !== info.size) {
        throw new Error(`${label}: zip entry ${name} has ${d.length} bytes, expected ${info.size}`);
      }
      if (crc32(d) !== info.crc32) throw new Error(`${label}: zip entry ${name} is corrupt (CRC-32 mismatch)`);
      return d;
    },
  };
}

/** Build a zip of stored (uncompressed) entries, in the given order, data aligned to `align` bytes. */
export function writeZip(entries: Array<[name: string, data: Uint8Array]>, align = 64): Uint8Array {
  const enc = new TextEncoder();
  const files: Zippable = {};
  let offset = 0;
  const seen = new Set<string>();
  for (const [name, data] of entries) {
    if (seen.has(name)) throw new Error(`writeZip: duplicate entry ${name}`);
    seen.add(name);
    const nameLen = enc.encode(name).length;
    // local header (30) + name + extra field header (4) + padding
    const headerEnd = offset + 30 + nameLen + 4;
    const pad = align > 1 ? (align - (headerEnd % align)) % align : 0;
    const extra = { 0x4246: new Uint8Array(pad).fill(0x5a) };
    files[name] = [data, { level: 0, extra, mtime: new Date(1980, 0, 1, 0, 0, 0) }];
    offset = headerEnd + pad + data.length;
  }
  // fflate iterates object keys in insertion order (our names are never integer-like:
  // they contain a '/'), guard anyway.
  const keys = Object.keys(files);
  if (keys.some((k, i) => k !== entries[i][0])) throw new Error('writeZip: entry names must not be integer-like');
  return zipSync(files);
}
