/**
 * Re-parameterization to the deploy form: the one interface every model family and block with a
 * plain inference form implements (timm's `reparameterize_model` semantics).
 *
 *   interface Reparameterizable { reparameterize(): Module }
 *
 * `m.reparameterize()` returns a NEW module, in eval mode, that computes in eval mode the same
 * function as `m` in eval mode, with plain layers only (branches summed, BN folded into a conv
 * bias). `m` is left unchanged and keeps its own tensors (the deploy form shares none with it).
 * A whole model (RepOpt-VGG -> DeployVGG) and a single block (a CSLA conv + BN -> one Conv2d with
 * bias) implement the same method.
 *
 * `reparameterizeModel(model)` fuses any model:
 *   - a model that implements the interface itself returns its `reparameterize()` (model unchanged);
 *   - any other model (a user's network made of such blocks and ordinary layers) is converted IN
 *     PLACE, as timm's `reparameterize_model(model, inplace=True)`: each outermost submodule that
 *     implements the interface is replaced by its deploy form (`Module.replaceModule`: the parent's
 *     registry and the fields that point to it) and disposed; the model is switched to eval mode
 *     and returned. Save its state dict first to keep the trained form.
 */
import { Module } from '../nn/index.js';

/** A module with a plain inference form. */
export interface Reparameterizable {
  /** The deploy form: a new module in eval mode computing the same function in eval mode; this one is unchanged. */
  reparameterize(): Module;
}

export function isReparameterizable(m: unknown): m is Module & Reparameterizable {
  return m instanceof Module && typeof (m as Partial<Reparameterizable>).reparameterize === 'function';
}

/** Replaces every outermost reparameterizable submodule of `parent` by its deploy form; the count replaced. */
function fuseChildren(parent: Module): number {
  let n = 0;
  for (const [name, child] of parent.children()) {
    if (isReparameterizable(child)) {
      const deployed = child.reparameterize();
      parent.replaceModule(name, deployed).dispose();
      n++;
    } else {
      n += fuseChildren(child);
    }
  }
  return n;
}

/**
 * The deploy form of any model (see the file comment): its own `reparameterize()` when it has one,
 * otherwise the model itself with every reparameterizable block fused in place, in eval mode.
 * A model with nothing to fuse is an error (it would silently deploy the training form).
 */
export function reparameterizeModel(model: Module): Module {
  if (isReparameterizable(model)) return model.reparameterize();
  const fused = fuseChildren(model);
  if (fused === 0) {
    throw new Error(
      `reparameterizeModel: ${model.constructor.name} has no re-parameterizable block (no module implements reparameterize())`,
    );
  }
  return model.eval();
}
