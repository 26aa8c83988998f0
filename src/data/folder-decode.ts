/**
 * Child process of folder datasets: reads {files, size} as JSON on stdin, decodes
 * each image with sharp to RGB size x size (alpha dropped, grey expanded), and
 * writes all of them as CHW uint8 to stdout. On failure: one line on stderr naming
 * the file and the reason, exit status 2.
 */
import { createRequire } from 'node:module';

type SharpFn = (input: string, opts?: { failOn?: string }) => {
  removeAlpha(): ReturnType<SharpFn>;
  toColourspace(c: string): ReturnType<SharpFn>;
  resize(w: number, h: number, o: { fit: string; kernel?: string }): ReturnType<SharpFn>;
  raw(): ReturnType<SharpFn>;
  toBuffer(o: { resolveWithObject: true }): Promise<{ data: Buffer; info: { width: number; height: number; channels: number } }>;
};

async function main(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  const { files, size } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { files: string[]; size: number };
  let sharp: SharpFn;
  try {
    sharp = createRequire(import.meta.url)('sharp') as SharpFn;
  } catch (e) {
    throw new Error(`the sharp package cannot be loaded (npm install sharp): ${(e as Error).message}`);
  }
  const sz = 3 * size * size;
  const out = Buffer.alloc(files.length * sz);
  let next = 0;
  const one = async (i: number) => {
    const file = files[i];
    let res;
    try {
      res = await sharp(file, { failOn: 'error' }).removeAlpha().toColourspace('srgb').resize(size, size, { fit: 'fill' }).raw().toBuffer({ resolveWithObject: true });
    } catch (e) {
      throw new Error(`${file}: cannot decode image: ${(e as Error).message}`);
    }
    const { data, info } = res;
    const ch = info.channels;
    if (info.width !== size || info.height !== size || (ch !== 1 && ch !== 3 && ch !== 4) || data.length !== size * size * ch)
      throw new Error(`${file}: unexpected decoded layout ${info.width}x${info.height}x${ch}`);
    const hw = size * size;
    const o = i * sz;
    for (let p = 0; p < hw; p++) {
      const s = p * ch;
      out[o + p] = data[s];
      out[o + hw + p] = data[ch >= 3 ? s + 1 : s];
      out[o + 2 * hw + p] = data[ch >= 3 ? s + 2 : s];
    }
  };
  const worker = async () => {
    while (next < files.length) await one(next++);
  };
  await Promise.all(Array.from({ length: Math.min(8, files.length) }, worker));
  await new Promise<void>((resolve, reject) => process.stdout.write(out, (err) => (err ? reject(err) : resolve())));
}

main().catch((e: Error) => {
  process.stderr.write(`${e.message}\n`);
  process.exitCode = 2;
});
