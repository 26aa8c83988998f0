/**
 * Fine-tuning from a pretrained checkpoint (`--pretrained FILE`) and freezing parts of a model (`--freeze`).
 *
 * `loadPretrained` loads a checkpoint of the same family and shape into a freshly built model: ours (a plain
 * state dict, best.pth / final.pth, or a run's latest.pth) or the release's own `torch.save` files (a flat state
 * dict, `{"model": ...}` / `{"state_dict": ...}`, with or without DataParallel's `module.` prefix).
 *   - The classifier (the model's last Linear) keeps the model's fresh initialisation when the checkpoint's has
 *     another number of classes (same feature width); the report names the tensors replaced.
 *   - Every other tensor must match by name and shape: a missing, unexpected or mis-shaped one is an OptionError
 *     naming it.
 *   - Hyper-Search warm start (the model in its family's `hs` mode, the checkpoint a plain target): tensors the
 *     hs model has and the checkpoint lacks (scales, extra branches) keep their initial values. For RepOpt-VGG the
 *     target's 3x3 kernel K goes into the hs 3x3 branch so that the hs block computes exactly the pretrained
 *     target's function at its initial scales: conv = (K - s_1x1 * W_1x1 - s_id * I) / s_conv at the centre tap
 *     (elsewhere K / s_conv), where W_1x1 is the hs model's own (random) initial 1x1 kernel and I the identity of
 *     channel o -> o where the block has an identity branch; BN copied; the scales start at the release's initial
 *     values (where a search from scratch starts). The 1x1 branch is not zeroed: with BN after the sum, a zero 1x1
 *     branch would leave the scales of a block without identity with no gradient (BN undoes a common scale).
 *
 * `freezeParameters` turns `requiresGrad` off for every parameter whose name starts with one of the prefixes;
 * `buildOptimizer` leaves them out. BatchNorm in a frozen part: its weight and bias are frozen like any parameter,
 * its running statistics still update in training mode (as PyTorch's `requires_grad_(False)` does; no
 * FrozenBatchNorm).
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';
import { Linear, type Module } from '../nn/index.js';
import { RepOptVGG } from '../models/repoptvgg.js';
import { OptionError } from '../errors.js';
import { loadStateDictFile } from './checkpoint.js';

export interface PretrainedReport {
  file: string;
  /** Tensors copied from the checkpoint. */
  loaded: number;
  /** Classifier tensors re-initialised (another number of classes), with the checkpoint's and the model's shape. */
  replaced: { key: string; from: number[]; to: number[] }[];
  /** Hyper-Search warm start: the model's tensors the checkpoint lacks (they keep their initial values). */
  kept: string[];
  /** Hyper-Search warm start: blocks whose 3x3 branch was derived from a target kernel (RepOpt-VGG; the 1x1 branch keeps its initialisation). */
  warmStarted: string[];
}

const shapeText = (s: readonly number[]) => `[${s.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** The parameter names of the model's classifier: its last Linear module. */
export function classifierKeys(model: Module): string[] {
  let last: string | null = null;
  for (const [name, m] of model.namedModules()) if (m instanceof Linear) last = name;
  if (last === null) return [];
  const prefix = last ? `${last}.` : '';
  return model.namedParameters().map(([n]) => n).filter((n) => n.startsWith(prefix) && !n.slice(prefix.length).includes('.'));
}

/** A one-line account of what `loadPretrained` did. */
export function describePretrained(r: PretrainedReport): string {
  const parts = [`pretrained ${r.file}: ${r.loaded} tensors loaded`];
  if (r.replaced.length) parts.push(`classifier re-initialised (${r.replaced.map((x) => `${x.key} ${shapeText(x.from)} -> ${shapeText(x.to)}`).join(', ')})`);
  if (r.warmStarted.length) parts.push(`Hyper-Search warm start: ${r.warmStarted.length} blocks' 3x3 branch from the target kernel (the block computes the target's function at the initial scales)`);
  if (r.kept.length) parts.push(`${r.kept.length} tensors the checkpoint lacks keep their initial values (${r.kept.slice(0, 4).join(', ')}${r.kept.length > 4 ? ', ...' : ''})`);
  return parts.join('; ');
}

/**
 * Loads a pretrained checkpoint into `model` (see the module comment). `warmStart`: the model is a Hyper-Search
 * model, and tensors the checkpoint lacks may keep their initial values.
 */
export function loadPretrained(model: Module, file: string, opts: { warmStart?: boolean } = {}): PretrainedReport {
  let raw: Map<string, Tensor>;
  try {
    raw = loadStateDictFile(file);
  } catch (e) {
    throw new OptionError('pretrained', `pretrained checkpoint: ${(e as Error).message}`);
  }
  const keys = [...raw.keys()];
  const strip = keys.length > 0 && keys.every((k) => k.startsWith('module.'));
  const sd = new Map([...raw].map(([k, t]) => [strip ? k.slice('module.'.length) : k, t]));
  try {
    const own = new Map<string, Tensor>([...model.namedParameters(), ...model.namedBuffers()]);
    const head = new Set(classifierKeys(model));
    const report: PretrainedReport = { file, loaded: 0, replaced: [], kept: [], warmStarted: [] };
    // The classifier: another number of classes (the same feature width) keeps the fresh initialisation.
    const headW = [...head].find((k) => k.endsWith('weight'));
    const ckW = headW ? sd.get(headW)?.shape : undefined;
    const ownW = headW ? own.get(headW)!.shape : undefined;
    const newHead = !!(ckW && ownW && ckW.length === 2 && ownW.length === 2 && ckW[1] === ownW[1] && ckW[0] !== ownW[0]);
    // RepOpt-VGG Hyper-Search from a target: the blocks whose hs-only tensors the checkpoint lacks.
    const vggWarm = opts.warmStart && model instanceof RepOptVGG ? model.layout.map((b) => b.name).filter((p) => own.has(`${p}.scale_conv.weight`) && !sd.has(`${p}.scale_conv.weight`) && sd.has(`${p}.conv.weight`)) : [];
    const derived = new Set(vggWarm.flatMap((p) => [`${p}.conv.weight`, `${p}.conv_1x1.weight`]));
    const problems: string[] = [];
    for (const [k, t] of sd) {
      const dst = own.get(k);
      if (!dst) problems.push(`${k} ${shapeText(t.shape)} is in the checkpoint but not in the model`);
      else if (!sameShape(dst.shape, t.shape) && !(newHead && head.has(k))) problems.push(`${k}: checkpoint ${shapeText(t.shape)}, model ${shapeText(dst.shape)}`);
    }
    for (const [k, t] of own) {
      if (sd.has(k) || derived.has(k)) continue;
      if (opts.warmStart) report.kept.push(k);
      else problems.push(`${k} ${shapeText(t.shape)} is in the model but not in the checkpoint`);
    }
    if (problems.length) {
      throw new OptionError('pretrained', `${file} does not fit the model (same family and shape needed; a classifier with another number of classes is re-initialised): ${problems.slice(0, 6).join('; ')}${problems.length > 6 ? `; and ${problems.length - 6} more` : ''}`);
    }
    torch.noGrad(() =>
      torch.tidy(() => {
        for (const [k, t] of sd) {
          if (derived.has(k)) continue;
          const dst = own.get(k)!;
          if (newHead && head.has(k)) {
            report.replaced.push({ key: k, from: t.shape, to: dst.shape });
            continue;
          }
          dst.copy_(t);
          report.loaded++;
        }
        for (const p of vggWarm) {
          const K = sd.get(`${p}.conv.weight`)!;
          const [cout, cin] = K.shape;
          const s = own.get(`${p}.scale_conv.weight`)!;
          const t = own.get(`${p}.scale_1x1.weight`)!.toArray();
          const w1 = own.get(`${p}.conv_1x1.weight`)!.to('float32').toArray();
          const id = own.get(`${p}.scale_identity.weight`)?.toArray();
          // What the 1x1 and identity branches add at the centre tap: s_1x1[o] W_1x1[o, i] + s_id[o] [o == i].
          const centre = new Float32Array(cout * cin * 9);
          for (let o = 0; o < cout; o++) {
            for (let i = 0; i < cin; i++) centre[(o * cin + i) * 9 + 4] = t[o] * w1[o * cin + i] + (id && o === i ? id[o] : 0);
          }
          own.get(`${p}.conv.weight`)!.copy_(K.to('float32').sub(torch.fromTypedArray(centre, [cout, cin, 3, 3])).div(s.reshape([cout, 1, 1, 1])));
          report.loaded++;
          report.warmStarted.push(p);
        }
      }),
    );
    return report;
  } finally {
    for (const t of raw.values()) t.dispose();
  }
}

/** Freezes the parameters whose names start with a prefix (an OptionError names a prefix that matches none); returns their names. */
export function freezeParameters(model: Module, prefixes: readonly string[]): string[] {
  const named = model.namedParameters();
  const frozen: string[] = [];
  for (const prefix of prefixes) {
    if (!prefix) throw new OptionError('freeze', 'freeze takes parameter name prefixes (e.g. stage0,stage1); got an empty one');
    const hits = named.filter(([n]) => n.startsWith(prefix));
    if (!hits.length) {
      const roots = [...new Set(named.map(([n]) => n.split('.')[0]))];
      throw new OptionError('freeze', `no parameter name starts with '${prefix}' (the model's top-level names: ${roots.slice(0, 12).join(', ')}${roots.length > 12 ? ', ...' : ''})`);
    }
    for (const [n, p] of hits) {
      p.requiresGrad = false;
      frozen.push(n);
    }
  }
  return [...new Set(frozen)];
}
