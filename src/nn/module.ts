/// <reference lib="esnext.disposable" preserve="true" />
/**
 * Module: PyTorch's nn.Module in TypeScript. Parameters, buffers and children
 * are registered by name, so `namedParameters()` and `stateDict()` produce
 * PyTorch's dotted keys (`stage1.0.conv.weight`) and checkpoints move between
 * this project and PyTorch unchanged.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';

export type StateDict = Map<string, Tensor>;

export interface LoadResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

export abstract class Module {
  training = true;
  readonly #params = new Map<string, Tensor | null>();
  readonly #buffers = new Map<string, Tensor | null>();
  readonly #modules = new Map<string, Module>();

  abstract forward(x: Tensor): Tensor;

  /** Shorthand for forward. */
  call(x: Tensor): Tensor {
    return this.forward(x);
  }

  protected registerParameter(name: string, t: Tensor | null): Tensor {
    if (t) {
      torch.keep(t);
      t.requiresGrad_(true);
    }
    this.#params.set(name, t);
    return t as Tensor;
  }

  protected registerBuffer(name: string, t: Tensor | null): Tensor {
    if (t) torch.keep(t);
    this.#buffers.set(name, t);
    return t as Tensor;
  }

  protected registerModule<M extends Module>(name: string, m: M): M {
    this.#modules.set(name, m);
    return m;
  }

  /** Replaces a registered parameter or buffer tensor (the old one is disposed). */
  protected replaceTensor(name: string, t: Tensor): void {
    const inParams = this.#params.has(name);
    const table = inParams ? this.#params : this.#buffers;
    if (!table.has(name)) throw new Error(`no parameter or buffer named '${name}'`);
    table.get(name)?.dispose();
    torch.keep(t);
    if (inParams) t.requiresGrad_(true);
    table.set(name, t);
  }

  /**
   * Replaces the registered child `name` by `m` (Python's `setattr(parent, name, m)`): the registry
   * entry, and every own field of this module that holds the old child, directly or as an element
   * of an array field, so a `forward` that reads `this.block` or `this.layers[i]` uses `m`.
   * Returns the old child, which the caller now owns (dispose it when done).
   */
  replaceModule(name: string, m: Module): Module {
    const old = this.#modules.get(name);
    if (!old) throw new Error(`replaceModule: no child module named '${name}'`);
    this.#modules.set(name, m);
    const fields = this as unknown as Record<string, unknown>;
    for (const key of Object.keys(fields)) {
      const v = fields[key];
      if (v === old) fields[key] = m;
      else if (Array.isArray(v)) v.forEach((e, i) => { if (e === old) v[i] = m; });
    }
    return old;
  }

  children(): [string, Module][] {
    return [...this.#modules.entries()];
  }

  *namedModules(prefix = ''): Generator<[string, Module]> {
    yield [prefix, this];
    for (const [name, m] of this.#modules) yield* m.namedModules(prefix ? `${prefix}.${name}` : name);
  }

  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [mp, m] of this.namedModules(prefix)) {
      for (const [n, p] of m.#params) if (p) out.push([mp ? `${mp}.${n}` : n, p]);
    }
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  namedBuffers(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [mp, m] of this.namedModules(prefix)) {
      for (const [n, b] of m.#buffers) if (b) out.push([mp ? `${mp}.${n}` : n, b]);
    }
    return out;
  }

  /** Number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((s, p) => s + p.numel, 0);
  }

  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  zeroGrad(): void {
    for (const p of this.parameters()) p.grad = null;
  }

  /**
   * Parameters and buffers by dotted name, in PyTorch's order (each module's
   * parameters, then its buffers, then its children). The tensors are detached
   * aliases: they share memory with the module.
   */
  stateDict(): StateDict {
    const sd: StateDict = new Map();
    const visit = (m: Module, prefix: string) => {
      for (const [n, p] of m.#params) if (p) sd.set(prefix + n, torch.keep(p.detach()));
      for (const [n, b] of m.#buffers) if (b) sd.set(prefix + n, torch.keep(b.detach()));
      for (const [n, c] of m.#modules) visit(c, `${prefix}${n}.`);
    };
    visit(this, '');
    return sd;
  }

  /**
   * Copies values from a state dict into this module's tensors (dtype converted).
   * A shape mismatch is always an error naming the key; with `strict` (default)
   * missing and unexpected keys are errors too.
   */
  loadStateDict(sd: StateDict | Record<string, Tensor>, strict = true): LoadResult {
    const entries = sd instanceof Map ? sd : new Map(Object.entries(sd));
    const own = new Map<string, Tensor>([...this.namedParameters(), ...this.namedBuffers()]);
    const missingKeys = [...own.keys()].filter((k) => !entries.has(k));
    const unexpectedKeys = [...entries.keys()].filter((k) => !own.has(k));
    if (strict && (missingKeys.length || unexpectedKeys.length)) {
      const parts = [];
      if (missingKeys.length) parts.push(`missing keys: ${missingKeys.join(', ')}`);
      if (unexpectedKeys.length) parts.push(`unexpected keys: ${unexpectedKeys.join(', ')}`);
      throw new Error(`loadStateDict: ${parts.join('; ')}`);
    }
    for (const [k, src] of entries) {
      const dst = own.get(k);
      if (!dst) continue;
      const a = dst.shape;
      const b = src.shape;
      if (a.length !== b.length || a.some((d, i) => d !== b[i])) {
        throw new Error(`loadStateDict: shape mismatch for '${k}': checkpoint [${b.join(', ')}], model [${a.join(', ')}]`);
      }
    }
    torch.noGrad(() => {
      torch.tidy(() => {
        for (const [k, src] of entries) own.get(k)?.copy_(src);
      });
    });
    return { missingKeys, unexpectedKeys };
  }

  /** Frees every parameter and buffer of this module tree. */
  dispose(): void {
    for (const [, t] of [...this.namedParameters(), ...this.namedBuffers()]) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
