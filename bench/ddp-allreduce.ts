/**
 * Allreduce throughput of our c10d binding, one rank of a Gloo group:
 *   node dist/bench/ddp-allreduce.js --rank R --world W --port P --arch NAME [--iters N] [--warmup N] [--bucket-mb 25]
 * averages the model's gradient-shaped tensors (DDP's way: flat buckets of --bucket-mb, each divided by
 * the world size then summed) --iters times; rank 0 prints one JSON line.
 *   node dist/bench/ddp-allreduce.js --dump-shapes --arch NAME   prints the shapes (the PyTorch side reads them)
 */
import * as torch from '../src/torch/index.js';
import { ProcessGroup } from '../src/distributed/index.js';
import { buildModel } from '../src/train/setup.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt?: string): string => {
  const i = args.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < args.length) return args[i + 1];
  if (dflt === undefined) throw new Error(`--${name} is required`);
  return dflt;
};
const arch = opt('arch', 'RepOpt-VGG-A0');
const model = buildModel({ arch, inChannels: 3, numClasses: 1000 }, 'target');
const shapes = model.parameters().map((p) => p.shape);
model.dispose();
if (args.includes('--dump-shapes')) {
  console.log(JSON.stringify(shapes));
  process.exit(0);
}
const rank = Number(opt('rank'));
const world = Number(opt('world', '2'));
const iters = Number(opt('iters', '10'));
const warmup = Number(opt('warmup', '2'));
const bucketBytes = Number(opt('bucket-mb', '25')) * 1024 * 1024;
torch.setNumThreads(Number(opt('threads', '1')));
torch.manualSeed(rank);
const grads = shapes.map((s) => torch.randn(s));
const pg = await ProcessGroup.init({ rank, worldSize: world, masterAddr: '127.0.0.1', masterPort: Number(opt('port')), timeoutSec: 120 });
for (let i = 0; i < warmup; i++) await pg.allreduce(grads, { average: true, bucketBytes });
await pg.barrier();
const times: number[] = [];
for (let i = 0; i < iters; i++) {
  const t0 = performance.now();
  await pg.allreduce(grads, { average: true, bucketBytes });
  times.push(performance.now() - t0);
}
await pg.barrier();
const bytes = shapes.reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0) * 4;
const checksum = torch.tidy(() => grads.reduce((s, g) => s + g.to('float64').sum().item(), 0));
if (rank === 0) {
  const med = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)];
  console.log(JSON.stringify({ impl: 'repopt', arch, world, bytes, tensors: shapes.length, bucketMiB: bucketBytes / 2 ** 20, msMedian: med, gbPerSec: bytes / (med / 1000) / 1e9, times, checksum }));
}
pg.destroy();
