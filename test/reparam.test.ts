/**
 * The re-parameterization interface: a whole model (RepOpt-VGG, every mode) and a user's own network
 * of RepOpt-VGG blocks and ordinary layers fuse to a plain form computing the same eval-mode function;
 * the model-level form leaves the trained model intact, the walker converts in place and frees the
 * replaced blocks; a model with nothing to fuse is refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import * as torch from '../src/torch/index.js';
import { F, type Tensor } from '../src/torch/index.js';
import { Conv2d, Linear, Module, ReLU, Sequential } from '../src/nn/index.js';
import { RepOptVGG, LinearAddBlock, RepVGGBlock, TargetBlock, type VGGBlockInfo } from '../src/models/repoptvgg.js';
import { DeployBlock, DeployVGG } from '../src/deploy/fuse.js';
import { isReparameterizable, reparameterizeModel } from '../src/repopt/reparam.js';

torch.setNumThreads(1);
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Non-trivial BN statistics, BN affines and branch scales, so fusion has something to fold. */
function randomize(m: Module, seed: number): void {
  torch.manualSeed(seed);
  torch.noGrad(() => {
    for (const [name, t] of [...m.namedParameters(), ...m.namedBuffers()]) {
      if (name.endsWith('running_var')) t.uniform_(0.3, 2.0);
      else if (name.endsWith('running_mean')) t.normal_(0, 0.3);
      else if (t.ndim === 1 && name.endsWith('.weight')) t.uniform_(-1.5, 1.5);
      else if (t.ndim === 1 && name.endsWith('.bias')) t.normal_(0, 0.2);
    }
  });
}

const rel = (a: Tensor, b: Tensor) => torch.tidy(() => a.sub(b).abs().max().item() / Math.max(1e-12, a.abs().max().item()));

test('RepOptVGG.reparameterize / reparameterizeModel: a new DeployVGG with the same eval outputs; the model is unchanged', () => {
  for (const mode of ['target', 'hs', 'csla', 'repvgg'] as const) {
    const model = new RepOptVGG({ numBlocks: [1, 2, 1, 1], widthMultiplier: [0.25, 0.25, 0.25, 0.25], numClasses: 5, mode, strides: [1, 1, 2, 1, 2], dtype: 'float64' });
    randomize(model, 3);
    model.eval();
    assert.ok(isReparameterizable(model));
    const before = new Map(model.stateDict());
    const x = torch.randn([2, 3, 12, 12], { dtype: 'float64' });
    const deployed = reparameterizeModel(model);
    assert.ok(deployed instanceof DeployVGG && (deployed as Module) !== model, mode);
    assert.equal(deployed.training, false);
    torch.noGrad(() => {
      const e = rel(model.forward(x), deployed.forward(x));
      assert.ok(e < 1e-12, `${mode}: relative error ${e}`);
    });
    // the trained model keeps its own tensors, unchanged
    for (const [k, t] of model.stateDict()) assert.equal(rel(before.get(k)!, t), 0, `${mode} ${k}`);
    deployed.dispose();
    model.dispose();
  }
});

/** A user's own network: a stem conv, RepOpt-VGG blocks held in a field, an array and a Sequential, a head. */
class UserNet extends Module {
  readonly stem: Conv2d;
  readonly first: Module;
  readonly body: Sequential;
  readonly extra: Module[];
  readonly head: Linear;
  constructor() {
    super();
    const info = (name: string, cin: number, cout: number, stride: number): VGGBlockInfo =>
      ({ name, inChannels: cin, outChannels: cout, stride, identity: cin === cout && stride === 1, scaleInit: 1 });
    const o = { dtype: 'float64' as const };
    this.stem = this.registerModule('stem', new Conv2d(3, 4, 3, { padding: 1, dtype: 'float64' }));
    this.first = this.registerModule('first', new LinearAddBlock(info('first', 4, 4, 1), o));
    this.body = this.registerModule('body', new Sequential(new RepVGGBlock(info('body.0', 4, 6, 2), o), new ReLU(), new TargetBlock(info('body.2', 6, 6, 1), o)));
    this.extra = [this.registerModule('extra', new LinearAddBlock(info('extra', 6, 6, 1), { ...o, csla: true }))];
    this.head = this.registerModule('head', new Linear(6, 3, o));
  }
  forward(x: Tensor): Tensor {
    let y = this.first.forward(this.stem.forward(x));
    y = this.extra[0].forward(this.body.forward(y));
    return this.head.forward(F.adaptiveAvgPool2d(y, 1).flatten(1));
  }
}

test('reparameterizeModel on a user network: blocks in fields, arrays and Sequentials become DeployBlocks in place, same eval outputs', async () => {
  torch.manualSeed(5);
  const net = new UserNet();
  randomize(net, 9);
  net.eval();
  const x = torch.randn([3, 3, 10, 10], { dtype: 'float64' });
  const want = torch.noGrad(() => net.forward(x));
  const oldBlocks = [net.first, net.body.layers[0], net.body.layers[2], net.extra[0]];
  // Undisposed garbage (state-dict aliases, outputs) is released at V8's collections, which allocation in
  // fusion may trigger: collect it now so that the count below sees only what reparameterizeModel frees.
  for (let i = 0; i < 2; i++) {
    gc();
    await tick();
  }
  const live = torch.liveTensors();
  const freed = oldBlocks.reduce((s, b) => s + b.parameters().length + b.namedBuffers().length, 0);
  const out = reparameterizeModel(net);
  assert.equal(out, net);
  // the replaced training blocks are freed; 4 x (weight, bias) deploy tensors were added
  assert.ok(freed > 8);
  assert.equal(torch.liveTensors(), live - freed + 8);
  for (const b of [net.first, net.body.layers[0], net.body.layers[2], net.extra[0]]) assert.ok(b instanceof DeployBlock);
  assert.ok(net.body.layers[1] instanceof ReLU);
  assert.deepEqual(
    [...net.stateDict().keys()].filter((k) => !k.startsWith('stem') && !k.startsWith('head')),
    ['first.conv.weight', 'first.conv.bias', 'body.0.conv.weight', 'body.0.conv.bias', 'body.2.conv.weight', 'body.2.conv.bias', 'extra.conv.weight', 'extra.conv.bias'],
  );
  const e = torch.noGrad(() => rel(want, net.forward(x)));
  assert.ok(e < 1e-12, `relative error ${e}`);
  net.dispose();
});

test('reparameterizeModel refuses a model with nothing to fuse; replaceModule names the missing child', () => {
  const plain = new Sequential(new Conv2d(3, 4, 3), new ReLU());
  assert.throws(() => reparameterizeModel(plain), /Sequential has no re-parameterizable block/);
  assert.throws(() => plain.replaceModule('7', new ReLU()), /no child module named '7'/);
  plain.dispose();
});
