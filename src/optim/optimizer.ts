/**
 * The optimizer base: parameter groups over named parameters, per-parameter
 * state, and the one hook RepOptimizers need: an optional constant Grad Mult
 * per parameter name, applied to the raw gradient before anything else (so
 * SGD's coupled weight decay is added after the mult, as the method requires).
 * Subclasses implement `update` for one group; everything else is shared.
 */
import * as torch from '../torch/index.js';
import { foreach, type Tensor } from '../torch/index.js';

export type NamedParameters = Iterable<[string, Tensor]>;

export interface GroupSpec<H> {
  params: NamedParameters;
  /** Hyper-parameters for this group; the optimizer's defaults fill the rest. */
  options?: Partial<H>;
}

export interface Group<H> {
  names: string[];
  params: Tensor[];
  hyper: H;
}

/** Per-parameter optimizer state (momentum buffers, moments, step counts). */
export type ParamState = Map<string, Tensor>;

export interface OptimizerStateDict<H> {
  /** State per parameter name. */
  state: Map<string, ParamState>;
  groups: { names: string[]; hyper: H }[];
  step: number;
}

export abstract class Optimizer<H extends { lr: number }> {
  readonly groups: Group<H>[];
  protected readonly state = new Map<string, ParamState>();
  /** Steps taken (shared by all groups). */
  stepCount = 0;
  #mults = new Map<string, Tensor>();

  constructor(params: NamedParameters | GroupSpec<H>[], readonly defaults: H) {
    const specs: GroupSpec<H>[] = isGroupSpecs(params) ? params : [{ params }];
    const seen = new Set<string>();
    this.groups = specs.map((spec) => {
      const entries = [...spec.params];
      for (const [n] of entries) {
        if (seen.has(n)) throw new Error(`parameter '${n}' appears in more than one group`);
        seen.add(n);
      }
      return { names: entries.map(([n]) => n), params: entries.map(([, p]) => p), hyper: { ...defaults, ...spec.options } };
    });
    for (const g of this.groups) this.validate(g.hyper);
  }

  protected validate(h: H): void {
    if (!(h.lr >= 0)) throw new RangeError(`invalid learning rate ${h.lr}`);
  }

  /**
   * Sets the constant Grad Mults (RepOptimizer), keyed by parameter name.
   * Each must match its parameter's shape; unknown names are an error. The optimizer keeps its own
   * reference to each (an alias, freed by `dispose()`); the caller's tensors stay the caller's.
   */
  setGradMults(mults: Map<string, Tensor>): void {
    const shapes = new Map<string, number[]>();
    for (const g of this.groups) g.names.forEach((n, i) => shapes.set(n, g.params[i].shape));
    for (const [name, m] of mults) {
      const s = shapes.get(name);
      if (!s) throw new Error(`Grad Mult for unknown parameter '${name}'`);
      const ms = m.shape;
      if (ms.length !== s.length || ms.some((d, i) => d !== s[i])) {
        throw new Error(`Grad Mult for '${name}' has shape [${ms.join(', ')}], parameter has [${s.join(', ')}]`);
      }
    }
    for (const m of this.#mults.values()) m.dispose();
    this.#mults = new Map([...mults].map(([n, m]) => [n, torch.keep(m.detach())]));
  }

  gradMult(name: string): Tensor | undefined {
    return this.#mults.get(name);
  }

  get gradMults(): ReadonlyMap<string, Tensor> {
    return this.#mults;
  }

  /**
   * The effective gradients of a group's parameters that have one: grad (x Grad Mult), the
   * mults applied in one foreach call. `owned[i]` marks fresh tensors (the multiplied ones)
   * that an update may modify in place; the others are the parameters' own .grad.
   */
  protected gradients(group: Group<H>): { names: string[]; params: Tensor[]; grads: Tensor[]; owned: boolean[] } {
    const { names, params, grads, mults } = this.withGrads(group);
    const multIdx = mults.flatMap((m, k) => (m ? [k] : []));
    if (multIdx.length) {
      const scaled = foreach.mul(multIdx.map((k) => grads[k]), multIdx.map((k) => mults[k]!));
      multIdx.forEach((k, j) => (grads[k] = scaled[j]));
    }
    return { names, params, grads, owned: mults.map((m) => !!m) };
  }

  /** A group's parameters that have a gradient: their names, the raw .grad and the Grad Mult, if any. */
  protected withGrads(group: Group<H>): { names: string[]; params: Tensor[]; grads: Tensor[]; mults: (Tensor | undefined)[] } {
    const names: string[] = [];
    const params: Tensor[] = [];
    const grads: Tensor[] = [];
    const mults: (Tensor | undefined)[] = [];
    group.params.forEach((p, i) => {
      const g = p.grad;
      if (!g) return;
      names.push(group.names[i]);
      params.push(p);
      grads.push(g);
      mults.push(this.#mults.get(group.names[i]));
    });
    return { names, params, grads, mults };
  }

  protected stateOf(name: string): ParamState {
    let s = this.state.get(name);
    if (!s) {
      s = new Map();
      this.state.set(name, s);
    }
    return s;
  }

  /** Stores a tensor in a parameter's state (kept out of tidy scopes; replaces and frees any old one). */
  protected setState(name: string, key: string, t: Tensor): Tensor {
    const s = this.stateOf(name);
    s.get(key)?.dispose();
    s.set(key, torch.keep(t));
    return t;
  }

  protected abstract update(group: Group<H>, params: Tensor[], grads: Tensor[], names: string[], owned: boolean[]): void;

  /** One group's step (inside step()'s noGrad + tidy): its effective gradients, then update. */
  protected stepGroup(group: Group<H>): void {
    const { names, params, grads, owned } = this.gradients(group);
    if (params.length) this.update(group, params, grads, names, owned);
  }

  step(): void {
    this.stepCount++;
    torch.noGrad(() =>
      torch.tidy(() => {
        for (const group of this.groups) this.stepGroup(group);
      }),
    );
  }

  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad = null;
  }

  /** The learning rate of every group (schedulers set it per step). */
  setLr(lr: number | ((group: Group<H>, index: number) => number)): void {
    this.groups.forEach((g, i) => {
      g.hyper.lr = typeof lr === 'number' ? lr : lr(g, i);
    });
  }

  /** The optimizer's state for checkpoints (Grad Mults are not state: they are rebuilt from scales). */
  stateDict(): OptimizerStateDict<H> {
    const state = new Map<string, ParamState>();
    for (const [n, s] of this.state) state.set(n, new Map([...s].map(([k, t]) => [k, torch.keep(t.detach())])));
    return { state, groups: this.groups.map((g) => ({ names: [...g.names], hyper: { ...g.hyper } })), step: this.stepCount };
  }

  loadStateDict(sd: OptimizerStateDict<H>): void {
    if (sd.groups.length !== this.groups.length) {
      throw new Error(`optimizer state has ${sd.groups.length} parameter groups, this optimizer ${this.groups.length}`);
    }
    sd.groups.forEach((g, i) => {
      const mine = this.groups[i];
      if (g.names.length !== mine.names.length || g.names.some((n, k) => n !== mine.names[k])) {
        throw new Error(`optimizer state group ${i} holds different parameters than this optimizer`);
      }
      mine.hyper = { ...mine.hyper, ...g.hyper };
    });
    const known = new Set(this.groups.flatMap((g) => g.names));
    for (const [name, s] of sd.state) {
      if (!known.has(name)) throw new Error(`optimizer state for unknown parameter '${name}'`);
      for (const [k, t] of s) this.setState(name, k, t.clone());
    }
    this.stepCount = sd.step;
  }

  dispose(): void {
    for (const s of this.state.values()) for (const t of s.values()) t.dispose();
    this.state.clear();
    for (const m of this.#mults.values()) m.dispose();
    this.#mults.clear();
  }
}

function isGroupSpecs<H>(p: NamedParameters | GroupSpec<H>[]): p is GroupSpec<H>[] {
  return Array.isArray(p) && p.length > 0 && !Array.isArray(p[0]) && typeof p[0] === 'object' && 'params' in (p[0] as object);
}
