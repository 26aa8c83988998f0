/**
 * libtorch errors surface as JS Errors carrying libtorch's message (without the
 * C++ backtrace), bad arguments to the raw ops are TypeErrors, and the process
 * keeps working afterwards.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as torch from '../src/torch/index.js';
import { F } from '../src/torch/index.js';

/** Asserts `fn` throws an Error (of `type`) whose message matches `re` and carries no C++ backtrace. */
function throwsLike(fn: () => unknown, re: RegExp, type: new (...a: never[]) => Error = Error): Error {
  let caught: unknown = null;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== null, `expected a throw matching ${re}`);
  assert.ok(caught instanceof type, `expected a ${type.name}, got ${String(caught)}`);
  const msg = (caught as Error).message;
  assert.match(msg, re);
  assert.doesNotMatch(msg, /Exception raised from|frame #\d/, 'no C++ backtrace in the message');
  return caught as Error;
}

test('shape mismatch in add', () => {
  torch.tidy(() => {
    throwsLike(() => torch.ones([2, 3]).add(torch.ones([2, 4])), /The size of tensor a \(3\) must match the size of tensor b \(4\) at non-singleton dimension 1/);
    throwsLike(() => torch.ones([2, 3]).add_(torch.ones([3, 3])), /must match/);
    throwsLike(() => torch.ones([2, 3]).reshape([4]), /shape '\[4\]' is invalid for input of size 6/);
    throwsLike(() => torch.ones([2, 3]).T.view([6]), /view size is not compatible with input tensor's size and stride/);
    throwsLike(() => torch.cat([torch.ones([2, 3]), torch.ones([2, 4])]), /Sizes of tensors must match except in dimension 0/);
    throwsLike(() => torch.ones([2, 3]).matmul(torch.ones([2, 3])), /cannot be multiplied \(2x3 and 2x3\)/);
  });
});

test('dtype mismatch: matmul float vs double, index_select with a float index', () => {
  torch.tidy(() => {
    throwsLike(() => torch.ones([2, 3]).matmul(torch.ones([3, 2], { dtype: 'float64' })), /expected scalar type Float but found Double/);
    throwsLike(() => torch.ones([3, 3]).indexSelect(0, torch.tensor([0, 1])), /index_select\(\): Expected dtype int32 or int64 for index/);
    throwsLike(() => F.crossEntropy(torch.ones([2, 3]), torch.tensor([0, 1])), /expected scalar type Long but found Float/);
    throwsLike(() => torch.ones([2], { dtype: 'int64' }).add_(torch.ones([2]), 0.5), /result type Float can't be cast to the desired output type Long/);
  });
});

test('out-of-range index: indexSelect, select, narrow, dims', () => {
  torch.tidy(() => {
    const t = torch.ones([3, 3]);
    throwsLike(() => t.indexSelect(0, torch.tensor([0n, 5n])), /index out of range in self/);
    throwsLike(() => t.select(0, 5), /select\(\): index 5 out of range for tensor of size \[3, 3\] at dimension 0/);
    throwsLike(() => t.narrow(1, 2, 4), /start \(2\) \+ length \(4\) exceeds dimension size \(3\)/);
    throwsLike(() => t.sum(4), /Dimension out of range \(expected to be in range of \[-2, 1\], but got 4\)/);
    throwsLike(() => F.crossEntropy(torch.ones([2, 3]), torch.tensor([0n, 7n])), /Target 7 is out of bounds/);
    throwsLike(() => t.size(3), /dimension 3 out of range for a 2-d tensor/, RangeError);
  });
});

test('conv2d with the wrong channel count', () => {
  torch.tidy(() => {
    throwsLike(
      () => F.conv2d(torch.ones([1, 4, 8, 8]), torch.ones([8, 3, 3, 3])),
      /Given groups=1, weight of size \[8, 3, 3, 3\], expected input\[1, 4, 8, 8\] to have 3 channels, but got 4 channels instead/,
    );
    throwsLike(() => F.conv2d(torch.ones([1, 4, 8, 8]), torch.ones([8, 2, 3, 3]), null, { groups: 4 }), /expected input\[1, 4, 8, 8\] to have 8 channels/);
    throwsLike(() => F.conv2d(torch.ones([1, 3, 2, 2]), torch.ones([8, 3, 3, 3])), /Kernel size can't be greater than actual input size/);
    throwsLike(() => F.batchNorm(torch.ones([2, 3, 4, 4]), torch.zeros([4]), torch.ones([4]), { training: true }), /running_mean should contain 3 elements not 4/);
  });
});

test('use after dispose()', () => {
  const t = torch.ones([2]);
  t.dispose();
  assert.equal(t.isDisposed, true);
  throwsLike(() => t.add(1), /Tensor used after dispose\(\)/);
  throwsLike(() => torch.ones([2]).add(t), /Tensor used after dispose\(\) \(other\)/);
  throwsLike(() => t.shape, /used after dispose/);
  throwsLike(() => t.toArray(), /used after dispose/);
  throwsLike(() => t.backward(), /used after dispose/);
  throwsLike(() => torch.cat([torch.ones([2]), t]), /used after dispose/);
  throwsLike(() => t.grad, /used after dispose/);
  t.dispose(); // still idempotent after the failures
});

test('wrong argument types to the raw ops', () => {
  torch.tidy(() => {
    const h = torch.ones([2]).handle;
    throwsLike(() => torch.defOp('aten::mul.Scalar')(h, 'abc'), /argument 'other' must be a number or boolean/, TypeError);
    throwsLike(() => torch.defOp('aten::mul.Tensor')(h, 3), /expected a Tensor for other/, TypeError);
    throwsLike(() => torch.defOp('aten::mul.Tensor')('not a tensor', h), /expected a Tensor for self/, TypeError);
    throwsLike(() => torch.defOp('aten::sum.dim_IntList')(h, [0.5], false), /argument 'dim' must be an integer, got 0\.5/, TypeError);
    throwsLike(() => torch.defOp('aten::sum.dim_IntList')(h, [0], 'yes'), /argument 'keepdim' must be a boolean/, TypeError);
    throwsLike(() => torch.defOp('aten::sum.dim_IntList')(h, 'x', false), /argument 'dim' must be an array/, TypeError);
    throwsLike(() => torch.defOp('aten::mul.Tensor')(h), /aten::mul: missing argument 'other'/, TypeError);
    throwsLike(() => torch.defOp('aten::neg')(h, 1, 2), /aten::neg: too many arguments \(3 > 1\)/, TypeError);
    throwsLike(() => torch.defOp('aten::pad')(h, [1, 1], 7), /argument 'mode' must be a string/, TypeError);
    throwsLike(() => torch.defOp('aten::pad')(h, [1, 1], 'nonsense'), /nonsense/);
    // through the typed API: a string where a number is expected reaches the same checks
    throwsLike(() => torch.ones([2]).mul('3' as unknown as torch.Tensor), /private member|expected a Tensor/, TypeError);
    throwsLike(() => torch.zeros([2, 'a' as unknown as number]), /argument 'size' must be an integer/, TypeError);
    throwsLike(() => torch.fromTypedArray(new Float32Array(3), [2, 2]), /fromBuffer: shape \[2, 2\] needs 16 bytes, got 12/, RangeError);
    throwsLike(() => torch.setNumThreads(0), /positive integer/, RangeError);
  });
});

test('unknown op name via defOp', () => {
  const bad = torch.defOp('aten::no_such_op'); // resolved lazily
  throwsLike(() => bad(1), /unknown operator aten::no_such_op/);
  throwsLike(() => bad(1), /unknown operator aten::no_such_op/); // and again, not cached as valid
  throwsLike(() => torch.defOp('aten::add.NoSuchOverload')(1), /unknown operator aten::add\.NoSuchOverload/);
  throwsLike(() => torch.schemaOf('aten::nope'), /unknown operator aten::nope/);
  assert.match(torch.schemaOf('aten::add.Tensor'), /^aten::add\.Tensor\(Tensor self, Tensor other, \*, Scalar alpha=1\) -> Tensor/);
});

test('autograd errors', () => {
  torch.tidy(() => {
    throwsLike(() => torch.ones([2]).sum().backward(), /element 0 of tensors does not require grad and does not have a grad_fn/);
    const x = torch.ones([2], { requiresGrad: true });
    const y = x.mul(x).sum();
    y.backward();
    throwsLike(() => y.backward(), /Trying to backward through the graph a second time/);
    throwsLike(() => torch.ones([2], { dtype: 'int64' }).requiresGrad_(true), /Only Tensors of floating point.*can require gradients/);
  });
});

test('after all of them, normal ops still work and nothing leaked', () => {
  const before = torch.liveTensors();
  const v = torch.tidy(() => {
    // a failing op inside tidy still frees what the scope created
    assert.throws(() => torch.tidy(() => torch.ones([3]).mul(2).add(torch.ones([4]))), /must match/);
    const a = torch.tensor([[1, 2], [3, 4]]);
    return a.matmul(a).add(1).sum().item();
  });
  assert.equal(v, 7 + 10 + 15 + 22 + 4);
  assert.equal(torch.liveTensors(), before);
  const x = torch.tensor([1, 2, 3], { requiresGrad: true });
  x.mul(x).sum().backward();
  assert.deepEqual(x.grad!.toArray(), [2, 4, 6]);
});
