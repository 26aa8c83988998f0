/**
 * Deterministic release of native memory: tidy scopes, dispose, `using`, and a
 * long training loop whose RSS and live-tensor count must stay flat.
 */
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';

type Tensor = torch.Tensor;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

test('tidy frees everything created inside except the returned tensor', () => {
  const base = torch.liveTensors();
  const a = torch.ones([3]);
  assert.equal(torch.liveTensors(), base + 1);
  const out = torch.tidy(() => {
    const b = a.mul(2);
    const c = b.add(1).exp();
    c.sum();
    assert.ok(torch.liveTensors() >= base + 5);
    return c.sub(b);
  });
  assert.equal(torch.liveTensors(), base + 2, 'only a and the result are alive');
  assert.equal(out.isDisposed, false);
  assert.equal(a.isDisposed, false, 'tensors from outside the scope are untouched');
  assert.ok(Math.abs(out.toArray()[0] - (Math.exp(3) - 2)) < 1e-5);
  out.dispose();
  a.dispose();
  assert.equal(torch.liveTensors(), base);
});

test('tidy keeps returned arrays, plain objects, maps and nested structures; frees the rest', () => {
  const base = torch.liveTensors();
  const inner: Tensor[] = [];
  const res = torch.tidy(() => {
    const x = torch.arange(4, undefined, 1, { dtype: 'float32' });
    const t1 = x.mul(2);
    const t2 = x.add(1);
    const t3 = x.neg();
    inner.push(x, x.square(), x.sqrt());
    const m = new Map<string, Tensor>([['m', x.sub(1)]]);
    return { list: [t1, { deep: t2 }], single: t3, m, n: 5, s: 'str' };
  });
  assert.equal(torch.liveTensors(), base + 4);
  for (const t of inner) assert.equal(t.isDisposed, true);
  assert.deepEqual(res.list[0] instanceof torch.Tensor ? (res.list[0] as Tensor).toArray() : null, [0, 2, 4, 6]);
  assert.deepEqual((res.list[1] as { deep: Tensor }).deep.toArray(), [1, 2, 3, 4]);
  assert.deepEqual(res.single.toArray(), [-0, -1, -2, -3]);
  assert.deepEqual(res.m.get('m')!.toArray(), [-1, 0, 1, 2]);
  (res.list[0] as Tensor).dispose();
  (res.list[1] as { deep: Tensor }).deep.dispose();
  res.single.dispose();
  res.m.get('m')!.dispose();
  assert.equal(torch.liveTensors(), base);
  // returning an array of tensors from an op (chunk) keeps all of them
  const parts = torch.tidy(() => torch.arange(6).chunk(3));
  assert.equal(torch.liveTensors(), base + 3);
  parts.forEach((p) => p.dispose());
  assert.equal(torch.liveTensors(), base);
});

test('nested tidy: inner results move to the outer scope and are freed there unless returned', () => {
  const base = torch.liveTensors();
  let innerKept: Tensor | null = null;
  let innerTemp: Tensor | null = null;
  const outer = torch.tidy(() => {
    const x = torch.ones([2, 2]);
    innerKept = torch.tidy(() => {
      innerTemp = x.mul(3);
      return innerTemp.add(1);
    });
    assert.equal(innerTemp!.isDisposed, true, 'inner temporaries freed at the inner scope end');
    assert.equal(innerKept.isDisposed, false);
    const deeper = torch.tidy(() => torch.tidy(() => x.add(innerKept!)));
    return deeper.mul(2);
  });
  assert.equal(innerKept!.isDisposed, true, 'not returned by the outer scope, so freed there');
  assert.deepEqual(outer.toArray(), [10, 10, 10, 10]);
  assert.equal(torch.liveTensors(), base + 1);
  outer.dispose();
  assert.equal(torch.liveTensors(), base);
});

test('tidy frees on throw; keep() exempts; grads and random draws are tracked too', () => {
  const base = torch.liveTensors();
  assert.throws(() => torch.tidy(() => {
    torch.ones([5]).mul(2);
    throw new Error('inside');
  }), /inside/);
  assert.equal(torch.liveTensors(), base);
  let kept: Tensor | null = null;
  torch.tidy(() => {
    kept = torch.keep(torch.zeros([3]));
    torch.zeros([3]);
  });
  assert.equal(kept!.isDisposed, false);
  assert.equal(torch.liveTensors(), base + 1);
  kept!.dispose();
  const w = torch.randn([4], { requiresGrad: true });
  torch.tidy(() => {
    w.mul(w).sum().backward();
    const g = w.grad!;
    assert.equal(g.numel, 4);
  });
  // the grad handle was freed, the grad itself lives on in w
  assert.equal(torch.liveTensors(), base + 1);
  assert.ok(w.grad !== null);
  w.dispose();
  assert.throws(() => torch.tidy(() => Promise.resolve(1) as unknown as number), /synchronous/);
});

test('a tensor dropped without dispose() is released by GC', async () => {
  gc();
  await tick();
  const base = torch.liveTensors();
  (() => {
    for (let i = 0; i < 10; i++) torch.ones([1000]);
  })();
  assert.equal(torch.liveTensors(), base + 10);
  for (let i = 0; i < 5 && torch.liveTensors() > base; i++) {
    gc();
    await tick();
  }
  assert.equal(torch.liveTensors(), base);
});

test('dispose is idempotent; Symbol.dispose / `using` release the tensor', () => {
  const base = torch.liveTensors();
  const t = torch.ones([10]);
  t.dispose();
  t.dispose();
  t.dispose();
  assert.equal(t.isDisposed, true);
  assert.equal(torch.liveTensors(), base);
  // a view and its base are independent handles on one storage
  const b = torch.ones([4]);
  const v = b.view([2, 2]);
  b.dispose();
  assert.deepEqual(v.toArray(), [1, 1, 1, 1], 'the view keeps the storage alive');
  v.dispose();
  assert.equal(torch.liveTensors(), base);

  let escaped: Tensor | null = null;
  {
    using u = torch.zeros([7]);
    escaped = u;
    assert.equal(torch.liveTensors(), base + 1);
  }
  assert.equal(escaped!.isDisposed, true);
  assert.equal(torch.liveTensors(), base);
  const s = torch.ones([2]);
  s[Symbol.dispose]();
  assert.equal(s.isDisposed, true);
  s[Symbol.dispose]();
  assert.equal(torch.liveTensors(), base);
});

test('in-place ops and clamp with number bounds leave no native handles behind (no tidy needed)', () => {
  const a = torch.ones([4]);
  const b = torch.full([4], 2);
  const list = [torch.ones([2]), torch.ones([3])];
  const others = [torch.ones([2]), torch.ones([3])];
  const base = torch.liveTensors();
  a.mul_(b).add_(b, 0.5).sub_(1).div_(b).addcmul_(b, b, 0.1).addcdiv_(b, b, 0.1).mul_(2).add_(1);
  a.clamp_(0, 10).sqrt_().relu_().lerp_(b, 0.5).copy_(b).fill_(3).zero_().uniform_().normal_();
  torch.foreach.add_(list, others, 2);
  torch.foreach.mul_(list, 0.5);
  torch.foreach.addcdiv_(list, others, others, 0.1);
  torch.foreach.zero_(list);
  assert.equal(torch.liveTensors(), base, 'in-place calls must not keep result handles alive');
  const c = a.clamp(b, 1.5); // the number bound becomes a temporary tensor inside
  assert.equal(torch.liveTensors(), base + 1);
  for (const t of [a, b, c, ...list, ...others]) t.dispose();
});

interface Net {
  convW: Tensor;
  convB: Tensor;
  bnW: Tensor;
  bnB: Tensor;
  rm: Tensor;
  rv: Tensor;
  linW: Tensor;
  linB: Tensor;
}

function makeNet(g: torch.Generator): Net {
  const p = (shape: number[], scale: number) => torch.randn(shape, { generator: g }).mul_(scale).requiresGrad_(true);
  return {
    convW: p([8, 3, 3, 3], 0.2),
    convB: p([8], 0.01),
    bnW: torch.ones([8], { requiresGrad: true }),
    bnB: torch.zeros([8], { requiresGrad: true }),
    rm: torch.zeros([8]),
    rv: torch.ones([8]),
    linW: p([10, 8], 0.3),
    linB: p([10], 0.01),
  };
}

function trainStep(net: Net, x: Tensor, y: Tensor, lr: number): number {
  return torch.tidy(() => {
    let h = F.conv2d(x, net.convW, net.convB, { padding: 1 });
    h = F.batchNorm(h, net.rm, net.rv, { weight: net.bnW, bias: net.bnB, training: true });
    h = F.relu(h);
    h = F.maxPool2d(h, 2);
    h = F.adaptiveAvgPool2d(h, 1).flatten(1);
    const logits = F.linear(h, net.linW, net.linB);
    const loss = F.crossEntropy(logits, y, { labelSmoothing: 0.1 });
    loss.backward();
    torch.noGrad(() => {
      for (const p of [net.convW, net.convB, net.bnW, net.bnB, net.linW, net.linB]) {
        p.add_(p.grad!, -lr);
        p.grad = null;
      }
    });
    return loss.item();
  });
}

/**
 * Node runs N-API finalizers from the event loop, so even disposed handles keep
 * a small wrapper (~0.5 kB) until the loop turns; a training loop that never
 * yields accumulates them. Yield every this many steps, as an async trainer does.
 */
const YIELD_EVERY = 100;

test('memory stability: 5,000 training steps of a small conv net do not grow RSS or live tensors', async () => {
  const threads = torch.getNumThreads();
  torch.setNumThreads(1);
  try {
    const g = new torch.Generator(0);
    const net = makeNet(g);
    const x = torch.randn([8, 3, 16, 16], { generator: g });
    const y = torch.randint(0, 10, [8], { generator: g });
    // let earlier garbage (wrappers dropped without dispose) be finalized first
    gc();
    await tick();
    const live0 = torch.liveTensors();
    const first = trainStep(net, x, y, 0.1);
    let last = first;
    let rss500 = 0;
    let live500 = 0;
    const t0 = Date.now();
    for (let step = 2; step <= 5000; step++) {
      last = trainStep(net, x, y, 0.1);
      assert.ok(Number.isFinite(last), `step ${step}: loss ${last}`);
      if (step % YIELD_EVERY === 0) await tick();
      if (step === 500) {
        gc();
        await tick();
        rss500 = process.memoryUsage().rss;
        live500 = torch.liveTensors();
      }
    }
    gc();
    await tick();
    const rss5000 = process.memoryUsage().rss;
    const live5000 = torch.liveTensors();
    const growthMB = (rss5000 - rss500) / 2 ** 20;
    const secs = (Date.now() - t0) / 1000;
    console.log(`# 5000 steps in ${secs.toFixed(1)} s; rss@500 ${(rss500 / 2 ** 20).toFixed(1)} MB, rss@5000 ${(rss5000 / 2 ** 20).toFixed(1)} MB, growth ${growthMB.toFixed(2)} MB; loss ${first.toFixed(4)} -> ${last.toFixed(4)}`);
    assert.equal(live500, live0, 'no tensors left behind by a step (at 500)');
    assert.equal(live5000, live0, 'no tensors left behind by a step (at 5000)');
    assert.ok(growthMB < 20, `RSS grew by ${growthMB.toFixed(1)} MB between step 500 and 5000`);
    assert.ok(last < first, `training reduced the loss (${first} -> ${last})`);
    // the parameters were really updated in place and stayed leaves
    assert.equal(net.convW.isLeaf, true);
    assert.equal(net.convW.grad, null);
    assert.ok(net.rm.abs().sum().item() > 0, 'running mean was updated');
    for (const t of [...Object.values(net), x, y]) t.dispose();
  } finally {
    torch.setNumThreads(threads);
  }
  assert.equal(torch.getNumThreads(), threads);
});

const MiB = 2 ** 20;

test('large-buffer CPU cache: a freed buffer is reused for the same size only, and released once unused for a step', () => {
  assert.equal(torch.cpuCacheStats().installed, true, 'the cache is the CPU allocator by default');
  torch.emptyCpuCache();
  const s0 = torch.cpuCacheStats();
  assert.equal(s0.cachedBytes, 0);
  const a = torch.zeros([512 * 1024]); // 2 MiB of float32
  const s1 = torch.cpuCacheStats();
  assert.equal(s1.liveBytes - s0.liveBytes, 2 * MiB);
  assert.equal(s1.misses - s0.misses, 1);
  a.dispose();
  assert.equal(torch.cpuCacheStats().cachedBytes, 2 * MiB, 'kept for reuse, not returned');
  const small = torch.zeros([1000]); // under 1 MiB: glibc's, not the cache's
  const b = torch.ones([512 * 1024]); // the same size: the cached buffer, filled anew
  const c = torch.full([768 * 1024], 2); // 3 MiB: another size, never a piece of the 2 MiB block
  const s2 = torch.cpuCacheStats();
  assert.equal(s2.hits - s1.hits, 1);
  assert.equal(s2.misses - s1.misses, 1);
  assert.equal(s2.cachedBytes, 0);
  assert.equal(s2.liveBytes - s0.liveBytes, 5 * MiB);
  assert.equal(b.sum().item(), 512 * 1024, 'a reused buffer holds what the op wrote');
  assert.equal(c.sum().item(), 2 * 768 * 1024);
  for (const t of [small, b, c]) t.dispose();
  assert.equal(torch.cpuCacheStats().cachedBytes, 5 * MiB);
  // step boundaries: what no request took during a whole step goes back to the system
  torch.collectHandles(); // both blocks were in use during this window: kept
  assert.equal(torch.cpuCacheStats().cachedBytes, 5 * MiB);
  const again = torch.empty([512 * 1024]); // the 2 MiB block is used in the next window...
  again.dispose();
  torch.collectHandles(); // ...the 3 MiB one is not: released
  assert.equal(torch.cpuCacheStats().cachedBytes, 2 * MiB);
  // no block of its size: a smaller request (a smaller last batch) takes a cached one of at most twice its size
  const s3 = torch.cpuCacheStats();
  const smaller = torch.zeros([384 * 1024]); // 1.5 MiB
  const s4 = torch.cpuCacheStats();
  assert.deepEqual([s4.hits - s3.hits, s4.misses - s3.misses, s4.cachedBytes, s4.liveBytes - s3.liveBytes], [1, 0, 0, 2 * MiB]);
  smaller.dispose();
  torch.emptyCpuCache();
  assert.equal(torch.cpuCacheStats().cachedBytes, 0);
  assert.equal(torch.cpuCacheStats().liveBytes, s0.liveBytes);
});

test('large-buffer CPU cache: a training loop stops mapping memory after its first steps and trains the same numbers as libtorch\'s allocator', () => {
  // a child process per allocator (REPOPT_CPU_CACHE is read once, at load)
  const torchUrl = new URL('../src/torch/index.js', import.meta.url).href;
  const script = `
    import * as torch from ${JSON.stringify(torchUrl)};
    const { F } = torch;
    torch.setNumThreads(1);
    const g = new torch.Generator(0);
    const w = torch.randn([16, 3, 3, 3], { generator: g }).mul_(0.2).requiresGrad_(true);
    const bw = torch.ones([16], { requiresGrad: true });
    const bb = torch.zeros([16], { requiresGrad: true });
    const lw = torch.randn([10, 16], { generator: g }).mul_(0.3).requiresGrad_(true);
    const x = torch.randn([16, 3, 64, 64], { generator: g }); // activations of 4 MiB
    const y = torch.randint(0, 10, [16], { generator: g });
    const losses = [], misses = [], held = [];
    for (let i = 0; i < 8; i++) {
      losses.push(torch.tidy(() => {
        const h = F.relu(F.batchNorm(F.conv2d(x, w, null, { padding: 1 }), null, null, { weight: bw, bias: bb, training: true }));
        const loss = F.crossEntropy(F.linear(F.adaptiveAvgPool2d(h, 1).flatten(1), lw), y);
        loss.backward();
        torch.noGrad(() => { for (const p of [w, bw, bb, lw]) { p.add_(p.grad, -0.1); p.grad = null; } });
        return loss.item();
      }));
      torch.collectHandles();
      const s = torch.cpuCacheStats();
      misses.push(s.misses);
      held.push(s.liveBytes + s.cachedBytes);
    }
    console.log(JSON.stringify({ installed: torch.cpuCacheStats().installed, losses, misses, held }));`;
  const run = (env: NodeJS.ProcessEnv) => {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, ...env } });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as { installed: boolean; losses: number[]; misses: number[]; held: number[] };
  };
  const cached = run({});
  const plain = run({ REPOPT_CPU_CACHE: '0' });
  assert.equal(cached.installed, true);
  assert.equal(plain.installed, false);
  assert.deepEqual(cached.losses, plain.losses, 'the allocator changes no value');
  assert.ok(cached.losses[7] < cached.losses[0], `trained (${cached.losses[0]} -> ${cached.losses[7]})`);
  assert.ok(cached.misses[0] > 0, 'the first step maps its large buffers');
  for (let i = 2; i < 8; i++) {
    assert.equal(cached.misses[i], cached.misses[1], `step ${i + 1} mapped new memory (misses ${cached.misses.join(', ')})`);
    assert.equal(cached.held[i], cached.held[1], `step ${i + 1}: the cache grew (${cached.held.join(', ')})`);
  }
  assert.deepEqual(plain.misses, new Array(8).fill(0));
});
