/**
 * A Hyper-Search that says when it is done: the drift of the scales from epoch to epoch.
 *
 * After every epoch of a search the family's `extractScales(model)` gives the scales by name (any family, user
 * networks included). Per scale tensor (one layer and branch, e.g. `stage2.1.scale_1x1.weight`) the drift is its
 * relative change since the previous epoch, ||s_t - s_{t-1}|| / ||s_{t-1}|| (L2 over channels); the epoch's record
 * gets the median and the max over tensors (`scaleDrift`) and each tensor's mean (`scaleMeans`, the report's
 * trajectories).
 *
 * Settled: with `stopWhenSettled: { drift: D, epochs: E }` the search ends once the max drift has stayed below D
 * for E epochs in a row (the scales are written as at the planned end; the reason is in the log and the result).
 * A resumed search: the first epoch after the resume measures the drift since the resume (`sinceResume`), which
 * does not count towards settling, and the start (and so the at-initial-values warning) is not known.
 * Warnings: the scales still at their initial values (max relative change since the start below 1e-4, e.g. a
 * learning rate too small), and oscillation: at least half the tensors' means reversed direction (the sign of
 * their per-epoch change flipped) in each of the last two epochs.
 */
import type { Module } from '../nn/index.js';
import type { ModelFamily } from '../models/family.js';
import { OptionError } from '../errors.js';

export interface SettleRule {
  /** Max relative change per epoch of every scale tensor below this ... */
  drift: number;
  /** ... for this many epochs in a row (default 2). */
  epochs?: number;
}
export const SETTLE_EPOCHS_DEFAULT = 2;
/** Below this relative change since the start, the scales count as still at their initial values. */
export const AT_INIT_TOLERANCE = 1e-4;

/** `DRIFT[:EPOCHS]` (the CLI's `--stop-when-settled`) as a rule; an OptionError names what is wrong. */
export function parseSettleRule(text: string): SettleRule {
  const m = /^([^:]+)(?::(.+))?$/.exec(text.trim());
  const drift = m ? Number(m[1]) : NaN;
  const epochs = m?.[2] === undefined ? SETTLE_EPOCHS_DEFAULT : Number(m[2]);
  if (!(drift > 0 && Number.isFinite(drift)) || !(Number.isInteger(epochs) && epochs >= 1)) {
    throw new OptionError('stopWhenSettled', `stopWhenSettled takes DRIFT[:EPOCHS] (a positive relative change per epoch, e.g. 0.01, and a positive whole number of epochs, default ${SETTLE_EPOCHS_DEFAULT}), got '${text}'`);
  }
  return { drift, epochs };
}

export function checkSettleRule(r: SettleRule): Required<SettleRule> {
  const epochs = r.epochs ?? SETTLE_EPOCHS_DEFAULT;
  if (!(r.drift > 0 && Number.isFinite(r.drift)) || !(Number.isInteger(epochs) && epochs >= 1)) {
    throw new OptionError('stopWhenSettled', `stopWhenSettled needs drift > 0 and epochs a positive integer, got drift ${r.drift}, epochs ${epochs}`);
  }
  return { drift: r.drift, epochs };
}

type Snapshot = Map<string, number[]>;

const norm = (v: readonly number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
const mean = (v: readonly number[]) => v.reduce((s, x) => s + x, 0) / v.length;
function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}
function relChange(now: readonly number[], before: readonly number[]): number {
  const d = now.map((x, i) => x - before[i]);
  return norm(d) / Math.max(norm(before), 1e-12);
}

/** What one epoch adds to its log record. */
export interface DriftEpoch {
  /** Median and max over scale tensors of the relative change since the previous epoch; epochs in a row below the rule's drift. */
  scaleDrift: { median: number; max: number; tensors: number; settled: number; threshold: number | null; sinceStart: number; reversed: number; sinceResume?: boolean };
  /** Mean of each scale tensor (trajectories). */
  scaleMeans: Record<string, number>;
  /** Warnings of this epoch (also on stderr). */
  scaleWarnings?: string[];
}

export interface DriftStep {
  record: DriftEpoch;
  /** Why the search stops here (settled), or null. */
  stop: string | null;
}

export class ScaleDrift {
  readonly #family: ModelFamily;
  readonly #model: Module;
  readonly #rule: Required<SettleRule> | null;
  readonly #initial: Snapshot;
  #previous: Snapshot;
  #previousDelta: Map<string, number> | null = null;
  #reversedRun = 0;
  #settled = 0;
  #warnedInit = false;
  #warnedOscillation = false;
  /** Resumed: the first epoch's drift covers only the part since the resume (not counted towards settling), the start is unknown. */
  #resumed: boolean;

  /** Takes the model's scales now as the start (and as the previous epoch's). `resumed`: the last epoch record of a resumed run. */
  constructor(family: ModelFamily, model: Module, rule?: SettleRule | null, resumed?: Record<string, unknown>) {
    this.#family = family;
    this.#model = model;
    this.#rule = rule ? checkSettleRule(rule) : null;
    this.#initial = this.#snapshot();
    this.#previous = this.#initial;
    this.#resumed = resumed !== undefined;
    this.#warnedInit = this.#resumed;
    const d = resumed?.scaleDrift as DriftEpoch['scaleDrift'] | undefined;
    if (d && typeof d.settled === 'number') this.#settled = d.settled;
  }

  #snapshot(): Snapshot {
    const scales = this.#family.extractScales(this.#model);
    try {
      return new Map([...scales].map(([k, t]) => [k, t.to('float64').toArray()]));
    } finally {
      for (const t of scales.values()) t.dispose();
    }
  }

  /** The end of an epoch (1-based `epoch` of `epochs`). */
  epoch(epoch: number, epochs: number): DriftStep {
    const now = this.#snapshot();
    const keys = [...now.keys()].filter((k) => this.#previous.has(k));
    const drifts = keys.map((k) => relChange(now.get(k)!, this.#previous.get(k)!));
    const sinceStart = keys.length ? Math.max(...keys.map((k) => relChange(now.get(k)!, this.#initial.get(k)!))) : 0;
    const delta = new Map(keys.map((k) => [k, mean(now.get(k)!) - mean(this.#previous.get(k)!)]));
    let reversed = 0;
    if (this.#previousDelta) {
      const both = keys.filter((k) => delta.get(k) !== 0 && (this.#previousDelta!.get(k) ?? 0) !== 0);
      reversed = both.length ? both.filter((k) => Math.sign(delta.get(k)!) !== Math.sign(this.#previousDelta!.get(k)!)).length / keys.length : 0;
    }
    this.#reversedRun = reversed >= 0.5 ? this.#reversedRun + 1 : 0;
    const max = drifts.length ? Math.max(...drifts) : 0;
    const med = drifts.length ? median(drifts) : 0;
    const partial = this.#resumed;
    this.#resumed = false;
    if (this.#rule && !partial) this.#settled = max < this.#rule.drift ? this.#settled + 1 : 0;
    const warnings: string[] = [];
    if (sinceStart < AT_INIT_TOLERANCE && !this.#warnedInit) {
      this.#warnedInit = true;
      warnings.push(`the scales are still at their initial values after epoch ${epoch} (largest relative change since the start ${sinceStart.toExponential(1)}): is the learning rate too small?`);
    }
    if (this.#reversedRun >= 2 && !this.#warnedOscillation) {
      this.#warnedOscillation = true;
      warnings.push(`the scales oscillate: ${Math.round(reversed * 100)}% of the scale tensors reversed direction in epoch ${epoch} (and at least half did in the epoch before); a lower learning rate may settle them`);
    }
    const record: DriftEpoch = {
      scaleDrift: { median: med, max, tensors: keys.length, settled: this.#settled, threshold: this.#rule?.drift ?? null, sinceStart, reversed, ...(partial ? { sinceResume: true } : {}) },
      scaleMeans: Object.fromEntries([...now].map(([k, v]) => [k, mean(v)])),
      ...(warnings.length ? { scaleWarnings: warnings } : {}),
    };
    this.#previous = now;
    this.#previousDelta = delta;
    const stop = this.#rule && this.#settled >= this.#rule.epochs && epoch < epochs
      ? `scales settled: drift below ${this.#rule.drift} (max over ${keys.length} scale tensors) for ${this.#settled} epoch${this.#settled === 1 ? '' : 's'} in a row; stopped after epoch ${epoch} of ${epochs}`
      : null;
    return { record, stop };
  }

  /** The progress line's text of an epoch's drift. */
  static describe(r: DriftEpoch, rule?: SettleRule | null): string {
    const d = r.scaleDrift;
    const f = (x: number) => x.toExponential(2);
    return `scale drift median ${f(d.median)} max ${f(d.max)}${rule ? ` (below ${rule.drift} for ${d.settled}/${rule.epochs ?? SETTLE_EPOCHS_DEFAULT} epochs)` : ''}`;
  }
}
