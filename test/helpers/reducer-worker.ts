/**
 * One rank of the two-process check of gradient averaging overlapped with backward, for
 * test/distributed.test.ts:  node dist/test/helpers/reducer-worker.js RANK PORT [unused]
 * A small model (conv -> BN -> linear, the same init on both ranks, different inputs per rank), 1 KiB
 * buckets: after backward and BEFORE averageGradients every bucket is already in flight; after it the
 * gradients equal the plain post-backward average. Prints one JSON line.
 * With `unused`, a parameter outside the loss makes averageGradients a clear error on both ranks.
 */
import * as torch from '../../src/torch/index.js';
import { F } from '../../src/torch/index.js';
import { BatchNorm2d, Conv2d, Linear, Module } from '../../src/nn/index.js';
import { DataParallel, ProcessGroup } from '../../src/distributed/index.js';

class Net extends Module {
  readonly conv = this.registerModule('conv', new Conv2d(3, 8, 3, { padding: 1 }));
  readonly bn = this.registerModule('bn', new BatchNorm2d(8));
  readonly fc = this.registerModule('fc', new Linear(8 * 4 * 4, 5));
  readonly spare = this.registerModule('spare', new Linear(2, 2));
  constructor(readonly useSpare: boolean) {
    super();
  }
  forward(x: torch.Tensor): torch.Tensor {
    const y = this.fc.forward(F.relu(this.bn.forward(this.conv.forward(x))).flatten(1));
    return this.useSpare ? y.add(this.spare.forward(torch.ones([1, 2])).sum()) : y;
  }
}

const [rank, port] = process.argv.slice(2, 4).map(Number);
const unused = process.argv[4] === 'unused';
torch.setNumThreads(1);
const pg = await ProcessGroup.init({ rank, worldSize: 2, masterAddr: '127.0.0.1', masterPort: port, timeoutSec: 20 });
const dp = new DataParallel(pg, 1024);
torch.manualSeed(3);
const model = new Net(!unused);
torch.manualSeed(100 + rank); // each rank its own batch
const x = torch.randn([4, 3, 4, 4]);
const y = torch.tensor([0, 1, 2, 3], { dtype: 'int64' });
const step = () => F.crossEntropy(model.forward(x), y).backward();
const grads = () => Object.fromEntries(model.namedParameters().map(([n, p]) => [n, p.grad ? (p.grad.reshape([-1]).toArray() as number[]) : null]));

// Reference: backward, then the plain post-backward average.
let expected = {};
if (!unused) {
  step();
  await dp.averageGradients(model);
  expected = grads();
  model.zeroGrad();
}
dp.overlapGradients(model);
const out: Record<string, unknown> = { rank };
for (let k = 0; k < 2; k++) { // twice: the reducer resets between steps
  step();
  const during = dp.overlapState!;
  if (unused) {
    try {
      await dp.averageGradients(model);
      out.error = null;
    } catch (e) {
      out.error = (e as Error).message;
      out.name = (e as Error).name;
    }
    await pg.barrier(); // the group is still usable
    break;
  }
  await dp.averageGradients(model);
  out[`step${k}`] = { buckets: during.buckets, launchedBeforeAverage: during.launched, grads: grads() };
  model.zeroGrad();
}
out.expected = expected;
console.log(JSON.stringify(out));
dp.stopOverlap();
pg.destroy();
