/**
 * One rank of a two-process collective check, for test/distributed.test.ts:
 *   node dist/test/helpers/pg-worker.js RANK PORT [die]
 * prints one JSON line with the results (or, with `die`, rank 1 exits after the
 * first barrier and rank 0 reports the error its next collective gets and how long it took).
 */
import * as torch from '../../src/torch/index.js';
import { ProcessGroup } from '../../src/distributed/index.js';

const [rank, port] = process.argv.slice(2, 4).map(Number);
const die = process.argv[4] === 'die';
torch.setNumThreads(1);
const pg = await ProcessGroup.init({ rank, worldSize: 2, masterAddr: '127.0.0.1', masterPort: port, timeoutSec: 20 });
const r = rank + 1;
// A float tensor, a non-contiguous one, a float64 and an int64: mixed dtypes, several buckets.
const a = torch.tensor([r, 10 * r, 100 * r]);
const b = torch.tensor([[r, 2 * r], [3 * r, 4 * r]]).transpose(0, 1);
const c = torch.tensor([0.5 * r], { dtype: 'float64' });
const d = torch.tensor([r, -r], { dtype: 'int64' });
await pg.allreduce([a, b, c], { average: true, bucketBytes: 8 });
await pg.allreduce([d], { op: 'max' });
const e = torch.tensor([rank, rank, rank]);
const f = torch.tensor([[rank, rank], [rank, rank]]).transpose(0, 1);
await pg.broadcast([e, f], 1, 4);
await pg.barrier();
if (die) {
  if (rank === 1) process.exit(3);
  await new Promise((res) => setTimeout(res, 300));
  const t0 = performance.now();
  try {
    await pg.allreduce([a]);
    console.log(JSON.stringify({ error: null }));
  } catch (err) {
    console.log(JSON.stringify({ error: (err as Error).message, ms: performance.now() - t0, name: (err as Error).name }));
  }
  process.exit(0);
}
console.log(JSON.stringify({ rank, a: a.toArray(), b: b.contiguous().toArray(), c: c.toArray(), d: d.toArray(), e: e.toArray(), f: f.contiguous().toArray() }));
pg.destroy();
