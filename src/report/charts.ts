/**
 * The report's charts as data: what each chart plots, taken from the runs'
 * records. The page's script (client.ts) only draws these with uPlot, so what a
 * chart holds can be checked against the logs it came from.
 */
import path from 'node:path';
import type { QuantStudy, RunData } from './runs.js';
import type { Arm } from './stats.js';
import type { QuantGroup } from './quant.js';

export interface SeriesSpec {
  label: string;
  color: string;
  /** The run folder the values come from (absolute), when one run. */
  run?: string;
  /** What the values are (e.g. `loss`, `median`, `centreStd`), for tools reading the page. */
  role?: string;
  x: number[];
  y: (number | null)[];
  dash?: number[];
  width?: number;
  points?: boolean;
  pointSize?: number;
  bars?: boolean;
  /** Leave out of the legend (band edges). */
  legend?: boolean;
}

export interface ChartSpec {
  id: string;
  title: string;
  note?: string;
  xLabel: string;
  yLabel: string;
  yDigits?: number;
  /** Category names for the x axis (the series' x are 0..n-1). */
  categories?: string[];
  series: SeriesSpec[];
  /** Filled bands between two series (indices into `series`) and the fill colour. */
  bands?: [number, number, string][];
  height?: number;
  /** Spans the whole row of the chart grid. */
  wide?: boolean;
  /** No legend under the chart (the section shows one key for all its charts). */
  sharedLegend?: boolean;
  /** The initial x range (so charts of one section share their axis). */
  xRange?: [number, number];
}

const ARM_COLORS: Record<string, string> = {
  'RepOpt-VGG': '#1f6fb4',
  RepVGG: '#d1495b',
  'plain VGG': '#6c757d',
  'Hyper-Search': '#2a9d5c',
};
const PALETTE = ['#e08e0b', '#7b4fb5', '#1aa3a3', '#b5651d', '#c2417f', '#4d7c0f'];
const DASHES: (number[] | undefined)[] = [undefined, [6, 3], [2, 3], [10, 3, 2, 3], [1, 2]];

/** A stable colour per arm name. */
export function armColors(arms: Arm[]): Map<string, string> {
  const m = new Map<string, string>();
  let k = 0;
  for (const a of arms) m.set(a.name, ARM_COLORS[a.name] ?? PALETTE[k++ % PALETTE.length]);
  return m;
}

/** A run's label: its arm, with the seed when the arm has several. */
export function runLabel(arm: Arm, run: RunData): string {
  return arm.runs.length > 1 ? `${arm.name} seed ${run.seed}` : arm.name;
}

function rel(dir: string): string {
  const r = path.relative(process.cwd(), dir);
  return r && !r.startsWith('..') ? r : dir;
}

/** Seconds or minutes, whichever reads better for the longest run. */
function timeAxis(runs: RunData[]): { label: string; div: number } {
  const longest = Math.max(0, ...runs.flatMap((r) => [...r.steps.seconds, ...r.epochs.seconds].filter(Number.isFinite)));
  return longest > 300 ? { label: 'wall-clock (min)', div: 60 } : { label: 'wall-clock (s)', div: 1 };
}

/** Loss, train accuracy, validation top-1 and lr per run, against steps and against wall-clock time. */
export function trainingCharts(arms: Arm[], colors: Map<string, string>): ChartSpec[] {
  const runs = arms.flatMap((a) => a.runs);
  const t = timeAxis(runs);
  type Pick = (r: RunData) => { x: number[]; secs: number[]; y: (number | null)[]; role: string } | null;
  const metrics: { key: string; title: string; yLabel: string; yDigits?: number; pick: Pick }[] = [
    {
      key: 'loss', title: 'Training loss', yLabel: 'loss',
      pick: (r) => (r.steps.iteration.length
        ? { x: r.steps.iteration, secs: r.steps.seconds, y: r.steps.loss, role: 'step.loss' }
        : r.epochs.epoch.length ? { x: r.epochs.iteration, secs: r.epochs.seconds, y: r.epochs.trainLoss, role: 'epoch.trainLoss' } : null),
    },
    {
      key: 'trainacc', title: 'Training accuracy (per epoch)', yLabel: 'train accuracy (%)', yDigits: 1,
      pick: (r) => (r.epochs.epoch.length ? { x: r.epochs.iteration, secs: r.epochs.seconds, y: r.epochs.trainAcc.map((v) => (v === null ? null : v * 100)), role: 'epoch.trainAcc' } : null),
    },
    {
      key: 'val', title: 'Validation top-1 (per epoch)', yLabel: 'top-1 (%)', yDigits: 2,
      pick: (r) => (r.epochs.valTop1.some((v) => v !== null) ? { x: r.epochs.iteration, secs: r.epochs.seconds, y: r.epochs.valTop1.map((v) => (v === null ? null : v * 100)), role: 'epoch.valTop1' } : null),
    },
    {
      key: 'lr', title: 'Learning rate', yLabel: 'lr',
      pick: (r) => (r.steps.iteration.length
        ? { x: r.steps.iteration, secs: r.steps.seconds, y: r.steps.lr, role: 'step.lr' }
        : r.epochs.epoch.length ? { x: r.epochs.iteration, secs: r.epochs.seconds, y: r.epochs.lr, role: 'epoch.lr' } : null),
    },
  ];
  const charts: ChartSpec[] = [];
  const finite = (xs: number[]) => xs.filter(Number.isFinite);
  const lastIteration = Math.max(0, ...runs.flatMap((r) => finite([...r.steps.iteration, ...r.epochs.iteration])));
  const lastSecond = Math.max(0, ...runs.flatMap((r) => finite([...r.steps.seconds, ...r.epochs.seconds])));
  for (const m of metrics) {
    for (const axis of ['steps', 'time'] as const) {
      const series: SeriesSpec[] = [];
      for (const arm of arms) {
        arm.runs.forEach((run, k) => {
          const p = m.pick(run);
          if (!p) return;
          const x = axis === 'steps' ? p.x : p.secs.map((s) => s / t.div);
          const keep = x.map((v, i) => Number.isFinite(v) && p.y[i] !== null && Number.isFinite(p.y[i]));
          series.push({
            label: runLabel(arm, run), color: colors.get(arm.name)!, dash: DASHES[k % DASHES.length], run: run.dir, role: p.role,
            x: x.filter((_, i) => keep[i]), y: p.y.filter((_, i) => keep[i]),
          });
        });
      }
      if (!series.length) continue;
      charts.push({
        id: `curve-${m.key}-${axis}`,
        title: `${m.title} vs ${axis === 'steps' ? 'steps' : 'wall-clock time'}`,
        xLabel: axis === 'steps' ? 'iteration' : t.label,
        yLabel: m.yLabel,
        yDigits: m.yDigits,
        series,
        sharedLegend: true,
        xRange: [0, 1.03 * (axis === 'steps' ? lastIteration : lastSecond / t.div)],
      });
    }
  }
  return charts;
}

/** Training throughput and peak memory per run: a bar per arm (mean over seeds) and a dot per seed. */
export function speedCharts(arms: Arm[], colors: Map<string, string>): ChartSpec[] {
  const withEnd = arms.filter((a) => a.runs.some((r) => r.end));
  if (!withEnd.length) return [];
  const categories = withEnd.map((a) => a.name);
  const maxSeeds = Math.max(...withEnd.map((a) => a.runs.length));
  const make = (id: string, title: string, yLabel: string, pick: (r: RunData) => number | null, mean: (a: Arm) => number | null, digits: number): ChartSpec => {
    const series: SeriesSpec[] = [{ label: 'mean over seeds', color: '#4a78a8', role: 'mean', bars: true, x: categories.map((_, i) => i), y: withEnd.map(mean) }];
    for (let k = 0; k < maxSeeds; k++) {
      series.push({
        label: maxSeeds > 1 ? `seed run ${k + 1}` : 'run', color: '#222222', role: 'seed', points: true, pointSize: 7, width: 0,
        x: categories.map((_, i) => i), y: withEnd.map((a) => (a.runs[k] ? pick(a.runs[k]) : null)),
      });
    }
    return { id, title, xLabel: 'arm', yLabel, yDigits: digits, categories, series };
  };
  void colors;
  return [
    make('speed-imgps', 'Training throughput', 'img/s (training steps)', (r) => r.end?.trainImgPerSec ?? null, (a) => a.imgPerSec?.mean ?? null, 0),
    make('speed-rss', 'Peak memory (resident set)', 'peak RSS (MiB)', (r) => (r.end ? r.end.peakRssBytes / 2 ** 20 : null), (a) => (a.peakRssBytes ? a.peakRssBytes.mean / 2 ** 20 : null), 0),
  ];
}

/** The Hyper-Search scales: per branch, their distribution over channels per layer (median, quartiles, min-max). */
export function scaleCharts(arms: Arm[], colors: Map<string, string>): ChartSpec[] {
  const runs = arms.flatMap((a) => a.runs.filter((r) => r.scales).map((r) => ({ arm: a, run: r })));
  if (!runs.length) return [];
  const branches = [...new Set(runs.flatMap((x) => x.run.scales!.map((s) => s.branch)))];
  const charts: ChartSpec[] = [];
  for (const branch of branches) {
    const layers = [...new Set(runs.flatMap((x) => x.run.scales!.filter((s) => s.branch === branch).map((s) => s.layer)))];
    const series: SeriesSpec[] = [];
    const bands: [number, number, string][] = [];
    runs.forEach(({ arm, run }, k) => {
      const color = runs.length > 1 ? PALETTE[k % PALETTE.length] : (colors.get(arm.name) ?? '#2a9d5c');
      const at = (f: (s: NonNullable<RunData['scales']>[number]) => number | null) =>
        layers.map((l) => {
          const s = run.scales!.find((v) => v.branch === branch && v.layer === l);
          return s ? f(s) : null;
        });
      const label = runs.length > 1 ? `${runLabel(arm, run)}: ` : '';
      // Quartile bands for one search run; with several (seeds) a min-max band each keeps the chart readable.
      const hasQuartiles = runs.length === 1 && run.scales!.some((s) => s.q25 !== null);
      const hasMedian = run.scales!.some((s) => s.median !== null);
      const base = series.length;
      const xs = layers.map((_, i) => i);
      series.push({ label: `${label}max`, color: color + '55', role: 'max', run: run.dir, x: xs, y: at((s) => s.max), width: 1, points: false, legend: false });
      if (hasQuartiles) series.push({ label: `${label}75th pct`, color: color + '88', role: 'q75', run: run.dir, x: xs, y: at((s) => s.q75), width: 1, points: false, legend: false });
      series.push({ label: `${label}${hasMedian ? 'median' : 'mean'}`, color, role: hasMedian ? 'median' : 'mean', run: run.dir, x: xs, y: at((s) => (hasMedian ? s.median : s.mean)), width: 2.2, points: true });
      if (hasQuartiles) series.push({ label: `${label}25th pct`, color: color + '88', role: 'q25', run: run.dir, x: xs, y: at((s) => s.q25), width: 1, points: false, legend: false });
      series.push({ label: `${label}min`, color: color + '55', role: 'min', run: run.dir, x: xs, y: at((s) => s.min), width: 1, points: false, legend: false });
      const last = series.length - 1;
      bands.push([base, last, color + '1f']);
      if (hasQuartiles) bands.push([base + 1, last - 1, color + '40']);
    });
    charts.push({
      id: `scales-${branch.replace(/[^A-Za-z0-9_-]/g, '_')}`,
      title: `Searched scales: ${branch === 'conv' ? '3x3 conv' : branch} branch`,
      xLabel: 'layer',
      yLabel: 'scale',
      yDigits: 3,
      categories: layers,
      series,
      bands,
    });
  }
  return charts;
}

/**
 * A Hyper-Search that says when it is done (src/train/drift.ts): per search run, the median and max drift of the
 * scales per epoch (log10 of the relative change), and the trajectories of a few scale tensors' means over epochs
 * (up to 6, spread over the network, of the first search run).
 */
export function driftCharts(arms: Arm[], colors: Map<string, string>): ChartSpec[] {
  const runs = arms.flatMap((a) => a.runs.filter((r) => r.epochs.driftMax.some((v) => v !== null)).map((r) => ({ arm: a, run: r })));
  if (!runs.length) return [];
  const log10 = (v: number | null) => (v !== null && v > 0 ? Math.log10(v) : null);
  const drift: SeriesSpec[] = [];
  runs.forEach(({ arm, run }, k) => {
    const color = runs.length > 1 ? PALETTE[k % PALETTE.length] : (colors.get(arm.name) ?? '#2a9d5c');
    const label = runs.length > 1 ? `${runLabel(arm, run)}: ` : '';
    drift.push({ label: `${label}max`, color, role: 'driftMax', run: run.dir, x: run.epochs.epoch, y: run.epochs.driftMax.map(log10), width: 2, points: true });
    drift.push({ label: `${label}median`, color, role: 'driftMedian', run: run.dir, x: run.epochs.epoch, y: run.epochs.driftMedian.map(log10), dash: [6, 3], width: 1.5, points: true });
  });
  const first = runs[0].run;
  const keys = Object.keys(first.epochs.scaleMeans.find((m) => m !== null) ?? {});
  const pick = keys.length <= 6 ? keys : [...new Set(Array.from({ length: 6 }, (_, i) => keys[Math.round((i * (keys.length - 1)) / 5)]))];
  const trajectories: SeriesSpec[] = pick.map((key, i) => ({
    label: key.replace(/\.weight$/, ''), color: PALETTE[i % PALETTE.length], role: 'scaleMean', run: first.dir,
    x: first.epochs.epoch, y: first.epochs.scaleMeans.map((m) => (m && typeof m[key] === 'number' ? m[key] : null)), width: 1.8, points: true,
  }));
  return [
    { id: 'drift-epoch', title: 'Hyper-Search: drift of the scales per epoch', note: 'log10 of the relative change of each scale tensor (layer and branch) over the epoch: max and median over tensors', xLabel: 'epoch', yLabel: 'log10 relative change', yDigits: 2, series: drift },
    { id: 'drift-trajectories', title: `Hyper-Search: scale trajectories${runs.length > 1 ? ` (${runLabel(runs[0].arm, first)})` : ''}`, note: 'mean over channels of a few scale tensors after each epoch', xLabel: 'epoch', yLabel: 'mean scale', yDigits: 3, series: trajectories },
  ];
}

/** The paper's Table 11 per layer: std of the deployed kernels at the centre tap and at the 8 surrounding taps. */
export function weightCharts(arms: Arm[], colors: Map<string, string>): ChartSpec[] {
  const picked = arms.filter((a) => a.runs[0].arm !== 'Hyper-Search').map((a) => ({ arm: a, run: a.runs.find((r) => r.weights) })).filter((x) => x.run);
  if (!picked.length) return [];
  const layers = [...new Set(picked.flatMap((x) => x.run!.weights!.filter((w) => w.centreStd !== null).map((w) => w.layer)))];
  const xs = layers.map((_, i) => i);
  const at = (run: RunData, f: (w: NonNullable<RunData['weights']>[number]) => number | null) =>
    layers.map((l) => {
      const w = run.weights!.find((v) => v.layer === l);
      return w ? f(w) : null;
    });
  const names = layers.map((l) => l.replace(/\.conv$/, ''));
  const std: SeriesSpec[] = [];
  const ratio: SeriesSpec[] = [];
  const outliers: SeriesSpec[] = [];
  for (const { arm, run } of picked) {
    const color = colors.get(arm.name)!;
    std.push({ label: `${arm.name} centre`, color, role: 'centreStd', run: run!.dir, x: xs, y: at(run!, (w) => w.centreStd), points: true, width: 2 });
    std.push({ label: `${arm.name} around`, color, role: 'surroundStd', run: run!.dir, x: xs, y: at(run!, (w) => w.surroundStd), points: true, dash: [5, 4], width: 1.5 });
    ratio.push({ label: arm.name, color, role: 'centre/around', run: run!.dir, x: xs, y: at(run!, (w) => (w.centreStd !== null && w.surroundStd ? w.centreStd / w.surroundStd : null)), points: true, width: 2 });
    outliers.push({ label: arm.name, color, role: 'maxAbs/std', run: run!.dir, x: xs, y: at(run!, (w) => w.maxAbs / w.std), points: true, width: 2 });
  }
  const seedNote = arms.some((a) => a.runs.length > 1) ? ' (the first seed of each arm)' : '';
  return [
    { id: 'weights-std', title: `Deployed kernels: std at the centre tap vs the 8 surrounding taps${seedNote}`, xLabel: 'layer', yLabel: 'std', yDigits: 3, categories: names, series: std, wide: true, height: 280 },
    { id: 'weights-ratio', title: 'Centre / surrounding std per layer', xLabel: 'layer', yLabel: 'centre / around', yDigits: 2, categories: names, series: ratio },
    { id: 'weights-outliers', title: 'Outliers: max |w| / std per layer', xLabel: 'layer', yLabel: 'max|w| / std', yDigits: 1, categories: names, series: outliers },
  ];
}

/** The quantization study: top-1 per configuration, one line per arm (mean over seeds, min-max band). */
export function quantCharts(groups: QuantGroup[], colors: Map<string, string>): ChartSpec[] {
  return groups.map((g, k) => {
    const xs = g.configs.map((_, j) => j);
    const series: SeriesSpec[] = [];
    const bands: [number, number, string][] = [];
    g.arms.forEach((n, i) => {
      const color = colors.get(n) ?? ARM_COLORS[n] ?? PALETTE[i % PALETTE.length];
      const seeds = g.files.length;
      const at = (f: (v: number[]) => number | null) => g.top1[n].map((v) => {
        const ok = v.filter(Number.isFinite);
        return ok.length ? f(ok) : null;
      });
      if (seeds > 1) {
        series.push({ label: `${n} max`, color: color + '55', role: 'max', x: xs, y: at((v) => Math.max(...v)), width: 1, points: false, legend: false });
        series.push({ label: `${n} min`, color: color + '55', role: 'min', x: xs, y: at((v) => Math.min(...v)), width: 1, points: false, legend: false });
        bands.push([series.length - 2, series.length - 1, color + '26']);
      }
      series.push({ label: seeds > 1 ? `${n} (mean of ${seeds} seeds)` : n, color, role: 'top1', x: xs, y: at((v) => v.reduce((a, b) => a + b, 0) / v.length), points: true, width: 2 });
    });
    return {
      id: `quant-${k}`,
      title: `Quantization: top-1 per configuration (${rel(g.dir)}${g.files.length > 1 ? `, ${g.files.length} seeds` : ''})`,
      xLabel: 'configuration',
      yLabel: 'top-1 (%)',
      yDigits: 1,
      categories: g.configs,
      series,
      bands,
      height: 300,
      wide: true,
    };
  });
}

/** Partial INT8: top-1 (simulated and ONNX Runtime) and latency over K, the layers kept in float, per arm that measured it. */
export function sensitivityCharts(studies: QuantStudy[], colors: Map<string, string>): ChartSpec[] {
  const out: ChartSpec[] = [];
  studies.forEach((s, k) => {
    const arms = Object.entries(s.arms).filter(([, r]) => r.sensitivity?.curve?.length);
    if (!arms.length) return;
    const acc: SeriesSpec[] = [];
    const lat: SeriesSpec[] = [];
    arms.forEach(([n, r], i) => {
      const color = colors.get(n) ?? ARM_COLORS[n] ?? PALETTE[i % PALETTE.length];
      const c = r.sensitivity!.curve!;
      const x = c.map((p) => p.k);
      acc.push({ label: `${n} simulated`, color, role: 'simTop1', x, y: c.map((p) => p.simTop1 * 100), points: true, width: 2, dash: [6, 4] });
      acc.push({ label: `${n} ${c[0].runtime}`, color, role: 'onnxTop1', x, y: c.map((p) => p.onnxTop1 * 100), points: true, width: 2 });
      lat.push({ label: `${n} ${c[0].runtime}`, color, role: 'msPerImage', x, y: c.map((p) => p.msPerImage), points: true, width: 2 });
    });
    out.push({ id: `sensitivity-acc-${k}`, title: 'Partial INT8: top-1 over layers kept in float', xLabel: 'K (most sensitive layers kept in float)', yLabel: 'top-1 (%)', yDigits: 1, series: acc });
    out.push({ id: `sensitivity-lat-${k}`, title: 'Partial INT8: ONNX Runtime latency over K', xLabel: 'K (most sensitive layers kept in float)', yLabel: 'ms / image (batch 1)', yDigits: 3, series: lat });
  });
  return out;
}
