/**
 * Image-folder datasets: DIR/<class>/<image>, classes = sorted sub-folder names
 * (DIR/train and DIR/test or DIR/val are used for the splits when present).
 * Images are decoded once, with sharp, to RGB imageSize x imageSize (resized
 * without keeping the aspect ratio, like torchvision Resize((s, s))) into memory.
 *
 * sharp's API is asynchronous while openDataset is not, so the decoding runs in
 * a child Node process (folder-decode.js) that writes the pixels to stdout.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InMemoryDataset, sharedBytes, sharedInt32 } from './memory.js';

export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp'];

const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

export interface FolderListing {
  root: string;
  classNames: string[];
  files: string[];
  labels: number[];
}

/** Lists DIR (or DIR/<split>) as classes and image files, both sorted by name. */
export function listFolder(dir: string, split: 'train' | 'test'): FolderListing {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`folder: ${dir} is not a folder`);
  const candidates = split === 'train' ? ['train'] : ['test', 'val'];
  let root = dir;
  for (const c of candidates) {
    const p = path.join(dir, c);
    if (existsSync(p) && statSync(p).isDirectory()) {
      root = p;
      break;
    }
  }
  const classNames = readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory() || (e.isSymbolicLink() && statSync(path.join(root, e.name)).isDirectory()))
    .map((e) => e.name)
    .filter((n) => !n.startsWith('.'))
    .sort(byCodePoint);
  if (classNames.length === 0) throw new Error(`folder: ${root} has no class sub-folders (expected ${root}/<class>/<image>)`);
  const files: string[] = [];
  const labels: number[] = [];
  classNames.forEach((cls, k) => {
    const names = readdirSync(path.join(root, cls))
      .filter((f) => IMAGE_EXTENSIONS.includes(path.extname(f).toLowerCase()) && !f.startsWith('.'))
      .sort(byCodePoint);
    for (const f of names) {
      files.push(path.join(root, cls, f));
      labels.push(k);
    }
  });
  if (files.length === 0) throw new Error(`folder: no images (${IMAGE_EXTENSIONS.join(', ')}) in the class folders of ${root}`);
  return { root, classNames, files, labels };
}

export function readFolder(dir: string, split: 'train' | 'test', imageSize: number): InMemoryDataset {
  if (!Number.isInteger(imageSize) || imageSize <= 0 || imageSize > 4096) throw new Error(`folder: imageSize must be an integer in [1, 4096], got ${imageSize}`);
  const { classNames, files, labels } = listFolder(dir, split);
  const sz = 3 * imageSize * imageSize;
  const pixels = sharedBytes(files.length * sz);
  decodeImages(files, imageSize, pixels);
  const lab = sharedInt32(files.length);
  lab.set(labels);
  return new InMemoryDataset({ name: 'folder', split, numClasses: classNames.length, channels: 3, height: imageSize, width: imageSize, classNames }, pixels, lab);
}

/** Decodes `files` to RGB CHW size x size into `out` (files.length * 3 * size * size bytes), in a child process. */
export function decodeImages(files: string[], size: number, out: Uint8Array): void {
  const script = fileURLToPath(new URL('./folder-decode.js', import.meta.url));
  const expect = files.length * 3 * size * size;
  if (out.length !== expect) throw new Error(`decodeImages: output holds ${out.length} bytes, need ${expect}`);
  const r = spawnSync(process.execPath, [script], {
    input: JSON.stringify({ files, size }),
    maxBuffer: expect + (1 << 20),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  if (r.error) throw new Error(`folder: cannot run the image decoder (${script}): ${r.error.message}`);
  if (r.status !== 0) {
    const msg = r.stderr.toString('utf8').trim() || `exit status ${r.status}${r.signal ? `, signal ${r.signal}` : ''}`;
    throw new Error(`folder: ${msg}`);
  }
  if (r.stdout.length !== expect) throw new Error(`folder: the image decoder returned ${r.stdout.length} bytes, expected ${expect}`);
  out.set(r.stdout);
}
