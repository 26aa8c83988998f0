/**
 * The PyTorch reference for tests: runs a Python snippet under Debian's
 * python3-torch (REPOPT_PYTHON overrides the interpreter) and exchanges tensors
 * as JSON ({shape, dtype, data}). Inputs are made in TypeScript and sent over,
 * so both sides compute on identical numbers.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as torch from '../../src/torch/index.js';

export const PYTHON = process.env.REPOPT_PYTHON ?? '/usr/bin/python3';

export interface JsonTensor {
  shape: number[];
  dtype: torch.DType;
  data: number[];
}

export function toJson(t: torch.Tensor): JsonTensor {
  return { shape: t.shape, dtype: t.dtype, data: t.toArray() };
}

export function fromJson(j: JsonTensor): torch.Tensor {
  return torch.tensor(j.data, { dtype: j.dtype }).reshape(j.shape);
}

const PRELUDE = `
import sys, json, math
import torch
torch.set_num_threads(1)
_DT = {'float32': torch.float32, 'float64': torch.float64, 'int64': torch.int64, 'int32': torch.int32,
       'uint8': torch.uint8, 'bool': torch.bool, 'int8': torch.int8, 'int16': torch.int16}
_NAMES = {v: k for k, v in _DT.items()}
def T(j, grad=False):
    t = torch.tensor(j['data'], dtype=torch.float64).to(_DT[j['dtype']]).reshape(j['shape'])
    return t.requires_grad_(True) if grad else t
def J(x):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        vals = x.reshape(-1).tolist()
        vals = [float(v) if isinstance(v, float) else int(v) for v in vals]
        return {'shape': list(x.shape), 'dtype': _NAMES[x.dtype], 'data': vals}
    if isinstance(x, (list, tuple)):
        return [J(v) for v in x]
    if isinstance(x, dict):
        return {k: J(v) for k, v in x.items()}
    return x
IN = json.load(sys.stdin)
`;

/** Runs `body` (which reads `IN` and assigns `OUT`) and returns OUT converted by J(). */
export function runPython<T = unknown>(body: string, input: unknown = null): T {
  const script = `${PRELUDE}\n${body}\nprint(json.dumps(J(OUT)))\n`;
  const out = execFileSync(PYTHON, ['-c', script], {
    input: JSON.stringify(input),
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  return JSON.parse(out) as T;
}

/** Runs a plain Python script with arguments (for file round trips). */
export function runPythonScript(script: string, args: string[] = []): string {
  return execFileSync(PYTHON, ['-c', script, ...args], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
}

/** max |a - b| / max(1, max |b|): a scale-aware closeness measure. */
export function maxRelDiff(a: torch.Tensor | JsonTensor, b: torch.Tensor | JsonTensor): number {
  const av = a instanceof torch.Tensor ? a.toArray() : a.data;
  const bv = b instanceof torch.Tensor ? b.toArray() : b.data;
  if (av.length !== bv.length) throw new Error(`length mismatch ${av.length} vs ${bv.length}`);
  let diff = 0;
  let scale = 1;
  for (let i = 0; i < av.length; i++) {
    diff = Math.max(diff, Math.abs(av[i] - bv[i]));
    scale = Math.max(scale, Math.abs(bv[i]));
  }
  return diff / scale;
}

/** The reply of a PyTorch script that ran a model forward and backward: logits, d input, d every parameter. */
export interface PyForwardBackward {
  y: JsonTensor;
  gx: JsonTensor;
  grads: Record<string, JsonTensor>;
}

/**
 * Our model's forward (`y`) and backward (`x.grad`, every parameter's grad) equal PyTorch's, element by
 * element within 1e-9 relative (float64), and PyTorch saw exactly our parameters.
 */
export function assertSameForwardBackward(model: { namedParameters(): [string, torch.Tensor][] }, y: torch.Tensor, x: torch.Tensor, py: PyForwardBackward): void {
  const close = (a: number[], b: number[], what: string) => a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= 1e-9 * (1 + Math.abs(b[i])), `${what}[${i}]: ${v} vs ${b[i]}`));
  close(y.toArray(), py.y.data, 'logits');
  close(x.grad!.toArray(), py.gx.data, 'd input');
  const params = new Map(model.namedParameters());
  assert.equal(Object.keys(py.grads).length, params.size);
  for (const [k, g] of Object.entries(py.grads)) close(params.get(k)!.grad!.toArray(), g.data, `d ${k}`);
}
