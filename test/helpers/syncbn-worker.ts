/**
 * One rank of the two-process SyncBatchNorm checks, for test/sync-batch-norm.test.ts:
 *   node dist/test/helpers/syncbn-worker.js RANK PORT [die]
 * prints one JSON line: the differentiable allreduce-sum's value and gradient, and a
 * float64 BatchNorm2d converted to SyncBatchNorm on an uneven split of one batch (rank 0
 * gets samples 0-1, rank 1 samples 2-5): output, input gradient, parameter gradients and
 * running statistics. Rank 0 also prints the batch and the layer's starting state.
 * With `die`, rank 1 exits after the forward and rank 0 reports the error of its backward.
 */
import * as torch from '../../src/torch/index.js';
import { BatchNorm2d } from '../../src/nn/index.js';
import { ProcessGroup, convertSyncBatchNorm } from '../../src/distributed/index.js';

const [rank, port] = process.argv.slice(2, 4).map(Number);
const die = process.argv[4] === 'die';
torch.setNumThreads(1);
const pg = await ProcessGroup.init({ rank, worldSize: 2, masterAddr: '127.0.0.1', masterPort: port, timeoutSec: 20 });
const r = rank + 1;
const flat = (t: torch.Tensor) => t.reshape([-1]).toArray() as number[];

// The primitive: y = a_0 + a_1 on both ranks; with loss_r = Σ c_r·y, a_r.grad = c_0 + c_1 on both.
const a = torch.tensor([r, 2 * r], { dtype: 'float64' }).requiresGrad_();
const y = pg.allreduceSumGrad(a);
y.mul(torch.tensor([r, 10], { dtype: 'float64' })).sum().backward();
const plain = pg.allreduceSumGrad(torch.tensor([r]));
const primitive = { y: y.toArray(), grad: a.grad!.toArray(), yRequiresGrad: y.requiresGrad, plain: plain.toArray(), plainRequiresGrad: plain.requiresGrad };

// The same seed on both ranks: the same batch, upstream gradient and layer.
torch.manualSeed(11);
const dtype = 'float64';
const X = torch.randn([6, 3, 4, 4], { dtype }).mul(2).add(0.5);
const G = torch.randn([6, 3, 4, 4], { dtype });
const bn = new BatchNorm2d(3, { dtype });
torch.noGrad(() => {
  bn.weight!.copy_(torch.randn([3], { dtype }));
  bn.bias!.copy_(torch.randn([3], { dtype }));
  bn.runningMean!.copy_(torch.randn([3], { dtype }));
  bn.runningVar!.copy_(torch.rand([3], { dtype }).add(0.5));
});
const start = { w: flat(bn.weight!), b: flat(bn.bias!), rm: flat(bn.runningMean!), rv: flat(bn.runningVar!) };
const converted = convertSyncBatchNorm(bn, pg);
const [from, len] = rank === 0 ? [0, 2] : [2, 4];
const x = X.narrow(0, from, len).clone().requiresGrad_();
bn.train();
const out = bn.forward(x);
if (die) {
  if (rank === 1) process.exit(3);
  await new Promise((res) => setTimeout(res, 300));
  const t0 = performance.now();
  let report: Record<string, unknown> = { error: null };
  try {
    out.mul(G.narrow(0, from, len)).sum().backward();
  } catch (e) {
    const err = pg.explain(e) as Error;
    report = { error: err.message, name: err.name, ms: performance.now() - t0 };
    try {
      await pg.allreduce([a]);
    } catch (later) {
      report.later = (later as Error).name;
    }
  }
  console.log(JSON.stringify(report));
  process.exit(0);
}
out.mul(G.narrow(0, from, len)).sum().backward();
// Evaluation mode uses the running statistics, with no collective (rank 1 alone would hang otherwise).
bn.eval();
const evalOut = rank === 1 ? flat(torch.noGrad(() => bn.forward(x.detach()))) : null;
console.log(JSON.stringify({
  rank,
  converted,
  primitive,
  ...(rank === 0 ? { X: flat(X), G: flat(G), start } : {}),
  out: flat(out.detach()),
  xGrad: flat(x.grad!),
  wGrad: flat(bn.weight!.grad!),
  bGrad: flat(bn.bias!.grad!),
  rm: flat(bn.runningMean!),
  rv: flat(bn.runningVar!),
  tracked: bn.numBatchesTracked!.item(),
  evalOut,
}));
pg.destroy();
