/**
 * Per-call cost of a trivial op (a + b on two 1-element float32 tensors), to
 * know what the N-API binding + boxed dispatcher + Tensor wrapper cost per op.
 * bench/op_overhead.py measures the same in PyTorch.
 *
 *   node dist/bench/op-overhead.js [--n 200000] [--reps 5]
 *
 * Prints one JSON line, ns per call (median over reps) for:
 *   napiNoop     native.gradEnabled(): a bare N-API call (the floor)
 *   rawCall      native.call(add) + native.dispose: dispatcher, IValue conversion, no Tensor object
 *   tensorAdd    a.add(b) + dispose(): the public API outside tidy
 *   tensorAddTidy  a.add(b) inside one torch.tidy per 100 calls (the training-loop pattern)
 *   inplaceAdd   a.add_(b): an in-place op (its result handle released by the Tensor layer)
 */
import * as torch from '../src/torch/index.js';
import { native } from '../src/torch/native.js';
import { defOp } from '../src/torch/ops.js';

function argNum(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? dflt : Number(process.argv[i + 1]);
}

const N = argNum('n', 200_000);
const REPS = argNum('reps', 5);
torch.setNumThreads(1);

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[s.length >> 1];
};

function time(fn: (n: number) => void): number {
  fn(Math.min(N, 20_000)); // warm up (JIT, operator lookup)
  const ns: number[] = [];
  for (let r = 0; r < REPS; r++) {
    const t0 = process.hrtime.bigint();
    fn(N);
    ns.push(Number(process.hrtime.bigint() - t0) / N);
  }
  return median(ns);
}

const a = torch.keep(torch.ones([1]));
const b = torch.keep(torch.ones([1]));
const addOp = defOp('aten::add.Tensor');

const out = {
  impl: 'repopt',
  n: N,
  napiNoop: time((n) => {
    for (let i = 0; i < n; i++) native.gradEnabled();
  }),
  rawCall: time((n) => {
    const ah = a.handle;
    const bh = b.handle;
    for (let i = 0; i < n; i++) native.dispose(addOp(ah, bh) as never);
  }),
  tensorAdd: time((n) => {
    for (let i = 0; i < n; i++) a.add(b).dispose();
  }),
  tensorAddTidy: time((n) => {
    for (let i = 0; i < n; i += 100) {
      torch.tidy(() => {
        for (let k = 0; k < 100; k++) a.add(b);
      });
    }
  }),
  inplaceAdd: time((n) => {
    const c = torch.zeros([1]);
    for (let i = 0; i < n; i++) c.add_(b);
    c.dispose();
  }),
  liveTensors: torch.liveTensors(),
};
console.log(JSON.stringify(out));
a.dispose();
b.dispose();
