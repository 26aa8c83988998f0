/**
 * The study's plan (issue 25): which runs it trains, with which recipe, in which folders. Pure data,
 * no libtorch: `repopt study --help` and the tests read it without loading the addon.
 *
 * Per depth and seed, on the same data and budget:
 *   - `search`      Hyper-Search (the hs model, trainable scales, plain SGD), writes scales.pth
 *   - `repopt`      RepOpt-VGG: the plain target model, RepSGD with Grad Mults from the searched scales
 *   - `repopt-init` RepOpt-VGG from the paper's initial constant scales, no search ("do I need the search?")
 *   - `plain`       the same target model with ordinary SGD
 *   - `repvgg`      RepVGG: multi-branch training (3x3-BN + 1x1-BN + BN identity)
 *   - `qarepvgg`    QARepVGG: 3x3-BN + bare 1x1 + identity, BN after the sum
 * and, for the search budget, RepOpt-VGG from searches of other lengths (`repopt-search-E`).
 */
export interface StudyDepth {
  /** Folder and label: e.g. 'shallow', 'deep'. */
  name: string;
  blocks: number[];
  widths: number[];
  strides: number[];
}

export interface StudyOptions {
  /** Output folder (resumable: a finished run is not trained again). */
  out: string;
  /** Training data (default Fashion-MNIST from Debian's dataset-fashion-mnist). */
  data: string;
  depths: StudyDepth[];
  /** Seeds 0..seeds-1 of every arm. */
  seeds: number;
  epochs: number;
  searchEpochs: number;
  /** Other Hyper-Search lengths (epochs) for the search-budget curve, on `budgetDepth`, each followed by a RepOpt run. */
  budgetSearchEpochs: number[];
  /** The depth of the search-budget curve (default: the deepest). */
  budgetDepth?: string;
  batchSize: number;
  lr: number;
  /** Test images for the quantization rows (default: all). The drop is paired (FP32 and quantized on the same images). */
  quantTestImages?: number;
  /** Train nothing: report the runs that are finished (the summary lists the missing ones). */
  reportOnly?: boolean;
  /** Training images that calibrate INT8 activations. */
  calibImages: number;
  /** Images checked in ONNX Runtime for the best INT8 model. */
  onnxImages: number;
  /** Side-by-side training-step benchmark per arm: rounds (0: none). */
  benchRounds: number;
  threads?: number;
  /** The arms to train (default: all). */
  arms?: StudyArm[];
  /** The command line, for the report's "Reproduce" section. */
  command?: string;
  log?: (line: string) => void;
}

export type StudyArm = 'repopt' | 'repopt-init' | 'plain' | 'repvgg' | 'qarepvgg';
export const STUDY_ARMS: readonly StudyArm[] = ['repopt', 'repopt-init', 'plain', 'repvgg', 'qarepvgg'];

export const ARM_LABELS: Record<StudyArm, string> = {
  repopt: 'RepOpt-VGG (searched scales)',
  'repopt-init': 'RepOpt-VGG (initial scales, no search)',
  plain: 'plain VGG',
  repvgg: 'RepVGG',
  qarepvgg: 'QARepVGG',
};

/** A run's label: an arm's, or the search-budget runs'. */
export function armLabel(arm: string): string {
  const budget = /^repopt-search-(\d+)$/.exec(arm);
  if (budget) return `RepOpt-VGG (${budget[1]}-epoch search)`;
  if (arm === 'search') return 'Hyper-Search (hs)';
  return (ARM_LABELS as Record<string, string>)[arm] ?? arm;
}

/** The training mode of each arm's run. */
export const ARM_MODES: Record<StudyArm, string> = { repopt: 'target', 'repopt-init': 'target', plain: 'plain', repvgg: 'repvgg', qarepvgg: 'qarepvgg' };

export const SHALLOW: StudyDepth = { name: 'shallow', blocks: [2, 2, 2, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [1, 1, 2, 2, 2] };
export const DEEP: StudyDepth = { name: 'deep', blocks: [4, 6, 16, 1], widths: [0.25, 0.25, 0.25, 0.25], strides: [1, 1, 2, 2, 2] };

/** Conv layers of a depth: the stem, every block, no classifier. */
export const convLayers = (d: StudyDepth) => 1 + d.blocks.reduce((a, b) => a + b, 0);

export const STUDY_DEFAULTS = {
  data: 'fashion-mnist',
  depths: [SHALLOW, DEEP],
  seeds: 3,
  epochs: 1,
  searchEpochs: 1,
  budgetSearchEpochs: [],
  batchSize: 64,
  lr: 0.1,
  calibImages: 2048,
  onnxImages: 1000,
  benchRounds: 3,
  quantTestImages: 2000,
} as const;

/** The demo's recipe (SGD, Nesterov momentum, the release's weight decay rule, label smoothing, a short warm-up). */
export function recipeArgs(o: Pick<StudyOptions, 'batchSize' | 'lr'>): Record<string, unknown> {
  return { batchSize: o.batchSize, lr: o.lr, momentum: 0.9, nesterov: true, weightDecay: 1e-4, labelSmoothing: 0.1, warmupEpochs: 0.2 };
}

export interface PlannedRun {
  /** Unique key: depth/seed/arm. */
  key: string;
  depth: string;
  seed: number;
  /** An arm, 'search', or 'search-E' / 'repopt-search-E' of the budget curve. */
  arm: string;
  dir: string;
  /** runTraining options (JSON), less out / resume / log. */
  options: Record<string, unknown>;
  /** A scale file this run needs from another run (its search), or the initial scales the study writes. */
  needs?: string;
}

export function seedDir(out: string, depth: string, seed: number): string {
  return `${out}/${depth}/seed-${seed}`;
}

/**
 * Every run of the study in the order it trains them: depth by depth (shallow first), seed by seed,
 * the search and the arms; then QARepVGG's runs; then the search-budget runs (so an interrupted
 * study has its main comparison first).
 */
export function planRuns(o: StudyOptions): PlannedRun[] {
  const arms = o.arms ?? STUDY_ARMS;
  const runs: PlannedRun[] = [];
  const budgetDepth = o.budgetDepth ?? o.depths[o.depths.length - 1]?.name;
  for (const d of o.depths) {
    const model = { blocks: d.blocks, widths: d.widths, strides: d.strides };
    for (let seed = 0; seed < o.seeds; seed++) {
      const base = seedDir(o.out, d.name, seed);
      const common = { data: o.data, model, seed, epochs: o.epochs, ...recipeArgs(o), ...(o.threads ? { threads: o.threads } : {}) };
      const search = `${base}/search`;
      const needsSearch = arms.includes('repopt');
      if (needsSearch) runs.push({ key: `${d.name}/${seed}/search`, depth: d.name, seed, arm: 'search', dir: search, options: { ...common, mode: 'hs', epochs: o.searchEpochs } });
      for (const arm of arms) {
        const dir = `${base}/${arm}`;
        const options: Record<string, unknown> = { ...common, mode: ARM_MODES[arm] };
        if (arm === 'repopt') options.scales = `${search}/scales.pth`;
        if (arm === 'repopt-init') options.scales = `${base}/initial-scales.pth`;
        runs.push({ key: `${d.name}/${seed}/${arm}`, depth: d.name, seed, arm, dir, options, needs: options.scales as string | undefined });
      }
      if (d.name === budgetDepth && arms.includes('repopt')) {
        for (const e of o.budgetSearchEpochs) {
          const sdir = `${base}/search-${e}`;
          runs.push({ key: `${d.name}/${seed}/search-${e}`, depth: d.name, seed, arm: `search-${e}`, dir: sdir, options: { ...common, mode: 'hs', epochs: e } });
          runs.push({ key: `${d.name}/${seed}/repopt-search-${e}`, depth: d.name, seed, arm: `repopt-search-${e}`, dir: `${base}/repopt-search-${e}`, options: { ...common, mode: 'target', scales: `${sdir}/scales.pth` }, needs: `${sdir}/scales.pth` });
        }
      }
    }
  }
  const budget = (r: PlannedRun) => /^(repopt-)?search-\d/.test(r.arm);
  const qa = (r: PlannedRun) => r.arm === 'qarepvgg';
  return [...runs.filter((r) => !qa(r) && !budget(r)), ...runs.filter(qa), ...runs.filter(budget)];
}
