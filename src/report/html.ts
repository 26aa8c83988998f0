/**
 * One self-contained HTML page from run folders: the data, uPlot (inlined from
 * the npm package, MIT) and the drawing script all inside, so the file opens
 * offline, from an e-mail or an artifact store, and prints.
 */
import fs from 'node:fs';
import { writeFileAtomic } from '../io/durable.js';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { findRunDirs, findQuantStudies, loadRun, type QuantStudy, type RunData, type RunConfig } from './runs.js';
import { groupArms, spreadOf, summarize, type Arm, type Comparison } from './stats.js';
import { armColors, driftCharts, quantCharts, scaleCharts, sensitivityCharts, speedCharts, trainingCharts, weightCharts, type ChartSpec } from './charts.js';
import { CLIENT_JS } from './client.js';
import { groupQuantStudies, quantComparisons, quantSpread, type QuantGroup } from './quant.js';

export interface ReportOptions {
  title?: string;
  /** Commands that made these runs (e.g. the demo's command line), shown first under "Reproduce". */
  commands?: string[];
  /** Load final.pth checkpoints for the deployed-weight statistics (default true). */
  weights?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface ReportData {
  title: string;
  generated: string;
  runs: RunData[];
  arms: Arm[];
  studies: QuantStudy[];
  quant: QuantGroup[];
  comparisons: Comparison[];
  charts: ChartSpec[];
  header: { recipe: [string, string][]; machine: [string, string][]; versions: [string, string][]; commands: string[] };
}

const require = createRequire(import.meta.url);
const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function packageVersion(file: string): string {
  try {
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** libtorch's version from the headers the addon was built against. */
function libtorchVersion(): string {
  const root = process.env.LIBTORCH;
  const header = root ? path.join(root, 'include/torch/csrc/api/include/torch/version.h') : '/usr/include/torch/csrc/api/include/torch/version.h';
  try {
    const h = fs.readFileSync(header, 'utf8');
    const v = ['MAJOR', 'MINOR', 'PATCH'].map((k) => new RegExp(`#define TORCH_VERSION_${k} (\\d+)`).exec(h)?.[1]);
    return v.every((x) => typeof x === 'string') ? v.join('.') : 'unknown';
  } catch {
    return 'unknown';
  }
}

function gitCommit(): string | null {
  const r = spawnSync('git', ['-C', PACKAGE_ROOT, 'describe', '--always', '--dirty'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function relPath(p: string): string {
  const r = path.relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

/** The `repopt search|train` command line that reproduces a run from its config.json. */
export function reproduceCommand(c: RunConfig, dir: string): string {
  const a: string[] = ['repopt', c.command ?? 'train'];
  const add = (flag: string, v: unknown) => {
    if (v !== undefined && v !== null) a.push(flag, Array.isArray(v) ? v.join(',') : String(v));
  };
  add('--data', c.data);
  if (c.model?.arch) add('--arch', c.model.arch);
  else if (c.model?.file) add('--model', relPath(c.model.file));
  else {
    add('--blocks', c.model?.blocks);
    add('--widths', c.model?.widths);
  }
  add('--strides', c.model?.strides);
  if (c.command !== 'search') add('--mode', c.mode);
  if (c.scales) add('--scales', relPath(c.scales));
  if (c.init) add('--init', relPath(c.init));
  if (c.pretrained) add('--pretrained', relPath(c.pretrained as string));
  if (Array.isArray(c.freeze) && c.freeze.length) add('--freeze', c.freeze);
  if (c.stopWhenSettled && typeof c.stopWhenSettled === 'object') {
    const r = c.stopWhenSettled as { drift: number; epochs: number };
    add('--stop-when-settled', `${r.drift}:${r.epochs}`);
  }
  add('--epochs', c.epochs);
  add('--batch-size', c.batchSize);
  if (c.optimizer && c.optimizer !== 'sgd') add('--optimizer', c.optimizer);
  add('--lr', c.lr);
  add('--momentum', c.momentum);
  if (c.nesterov) a.push('--nesterov');
  add('--wd', c.weightDecay);
  add('--schedule', c.schedule);
  if (c.warmupEpochs) add('--warmup', c.warmupEpochs);
  add('--label-smoothing', c.labelSmoothing);
  add('--ema', c.ema);
  add('--clip', c.clip);
  add('--seed', c.seed);
  if (c.augment === false) a.push('--no-augment');
  if (c.shuffle === false) a.push('--no-shuffle');
  add('--out', relPath(dir));
  return a.map(shellQuote).join(' ');
}

const RECIPE_KEYS: [keyof RunConfig, string][] = [
  ['data', 'data'], ['optimizer', 'optimizer'], ['epochs', 'epochs'], ['batchSize', 'batch size'], ['lr', 'learning rate'],
  ['momentum', 'momentum'], ['nesterov', 'Nesterov'], ['weightDecay', 'weight decay'], ['schedule', 'schedule'],
  ['warmupEpochs', 'warm-up (epochs)'], ['labelSmoothing', 'label smoothing'], ['ema', 'EMA'], ['clip', 'clip norm'], ['augment', 'augmentation'],
];

function modelText(c: RunConfig): string {
  const m = c.model;
  if (!m) return 'unknown';
  const shape = m.arch ?? (m.file ? `${typeof c.label === 'string' ? `${c.label}, ` : ''}network file ${relPath(m.file)}` : `blocks ${m.blocks?.join(',')}, widths ${m.widths?.join(',')}`);
  return `${shape}${m.strides ? `, strides ${m.strides.join(',')}` : ''}; ${m.inChannels} input channels, ${m.numClasses} classes`;
}

/** The recipe: settings shared by every run, then what differs per arm. */
function recipeRows(runs: RunData[], arms: Arm[]): [string, string][] {
  const rows: [string, string][] = [['model', [...new Set(runs.map((r) => modelText(r.config)))].join(' | ')]];
  for (const [k, name] of RECIPE_KEYS) {
    const values = [...new Set(runs.map((r) => JSON.stringify(r.config[k] ?? null)))];
    if (values.length === 1 && values[0] === 'null') continue;
    if (values.length === 1) rows.push([name, String(JSON.parse(values[0]))]);
    else rows.push([name, arms.map((a) => `${a.name}: ${[...new Set(a.runs.map((r) => String(r.config[k] ?? '-')))].join('/')}`).join('; ')]);
  }
  rows.push(['arms', arms.map((a) => `${a.name} (${a.runs[0].config.mode ?? '?'}${a.runs[0].config.scales ? ' + searched scales' : ''})`).join(', ')]);
  const seeds = [...new Set(runs.map((r) => r.seed))].sort((a, b) => a - b);
  rows.push(['seeds', seeds.join(', ')]);
  return rows;
}

function machineRows(runs: RunData[]): [string, string][] {
  const cpus = os.cpus();
  const threads = [...new Set(runs.map((r) => r.threads).filter((t) => t !== null))];
  return [
    ['CPU', `${cpus[0]?.model?.trim() ?? 'unknown'} (${cpus.length} logical cores)`],
    ['memory', `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`],
    ['system', `${os.type()} ${os.release()} ${os.arch()}`],
    ['intra-op threads', threads.length ? threads.join(', ') : 'unknown'],
    ['runs started', (() => {
      const t = runs.map((r) => r.started).filter((s): s is string => s !== null).sort();
      return t.length ? `${t[0].slice(0, 16).replace('T', ' ')} – ${t[t.length - 1].slice(0, 16).replace('T', ' ')} UTC` : 'unknown';
    })()],
  ];
}

function versionRows(): [string, string][] {
  const commit = gitCommit();
  return [
    ['repopt', `${packageVersion(path.join(PACKAGE_ROOT, 'package.json'))}${commit ? ` (${commit})` : ''}`],
    ['Node.js', process.version],
    ['libtorch', libtorchVersion()],
    ['uPlot', packageVersion(require.resolve('uplot/package.json'))],
  ];
}

const ARM_ORDER = ['RepOpt-VGG', 'RepVGG', 'plain VGG'];
/** RepOpt-VGG first (the summary compares it with the others), Hyper-Search last, the rest as found. */
function armRank(a: Arm): number {
  const k = ARM_ORDER.indexOf(a.runs[0].arm);
  return k >= 0 ? k : a.runs[0].arm === 'Hyper-Search' ? 99 : 50;
}

/** Loads the runs and quantization results under `paths` and builds every chart. */
export function collectReport(paths: string[], o: ReportOptions = {}): ReportData {
  if (!paths.length) throw new Error('give at least one run folder');
  const dirs = findRunDirs(paths);
  const runs = dirs.map((d) => {
    o.log?.(`reading ${relPath(d)}`);
    const run = loadRun(d, { weights: o.weights });
    if (run.unreadableLines) o.log?.(`${relPath(path.join(d, 'log.jsonl'))}: skipped ${run.unreadableLines} unreadable line${run.unreadableLines === 1 ? '' : 's'}`);
    return run;
  });
  const studies = findQuantStudies([...paths, ...dirs]);
  const arms = groupArms(runs).sort((a, b) => armRank(a) - armRank(b));
  const colors = armColors(arms);
  const quant = groupQuantStudies(studies);
  const charts = [...trainingCharts(arms, colors), ...speedCharts(arms, colors), ...scaleCharts(arms, colors), ...driftCharts(arms, colors), ...weightCharts(arms, colors), ...quantCharts(quant, colors), ...sensitivityCharts(studies, colors)];
  const commands = [...(o.commands ?? []), ...runs.map((r) => reproduceCommand(r.config, r.dir)), `repopt report ${paths.map((p) => shellQuote(relPath(p))).join(' ')}`];
  return {
    title: o.title ?? 'repopt report',
    generated: new Date().toISOString(),
    runs,
    arms,
    studies,
    quant,
    comparisons: summarize(arms),
    charts,
    header: { recipe: recipeRows(runs, arms), machine: machineRows(runs), versions: versionRows(), commands },
  };
}

// ------------------------------------------------------------------ HTML

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const fmtSpread = (s: { n: number; mean: number; sd: number; min: number; max: number } | null, digits: number, scale = 1, unit = '') => {
  if (!s) return '–';
  const f = (x: number) => (x / scale).toFixed(digits);
  return s.n > 1 ? `${f(s.mean)}${unit} <span class="sd">± ${f(s.sd)} (${f(s.min)}–${f(s.max)})</span>` : `${f(s.mean)}${unit}`;
};

function keyValueTable(rows: [string, string][]): string {
  return `<table class="kv">${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('')}</table>`;
}

function chartBox(c: ChartSpec): string {
  return `<figure class="chart-box${c.wide ? ' wide' : ''}"><figcaption>${esc(c.title)}</figcaption><div class="chart" id="${esc(c.id)}" data-chart="${esc(c.id)}"></div>${c.note ? `<p class="note">${esc(c.note)}</p>` : ''}</figure>`;
}

function armsTable(d: ReportData): string {
  const head = '<tr><th>arm</th><th>runs</th><th>top-1 (test)</th><th>train img/s</th><th>peak RSS</th><th>params (train)</th><th>params (inference)</th><th>time</th></tr>';
  const rows = d.arms.map((a) => {
    const secs = a.runs.map((r) => r.end?.seconds).filter((s): s is number => s !== undefined && Number.isFinite(s));
    return `<tr><td><span class="swatch" data-arm="${esc(a.name)}"></span>${esc(a.name)}</td><td>${a.runs.length}${a.runs.length > 1 ? ` seeds (${a.runs.map((r) => r.seed).join(', ')})` : ''}</td>` +
      `<td class="num">${fmtSpread(a.top1, 2, 1, '%')}</td><td class="num">${fmtSpread(a.imgPerSec, 0)}</td>` +
      `<td class="num">${a.peakRssBytes ? fmtSpread(a.peakRssBytes, 0, 2 ** 20, ' MiB') : '–'}</td>` +
      `<td class="num">${a.params?.toLocaleString('en-US') ?? '–'}</td><td class="num">${a.deployedParams?.toLocaleString('en-US') ?? '–'}</td>` +
      `<td class="num">${secs.length ? `${(secs.reduce((x, y) => x + y, 0) / secs.length).toFixed(0)} s` : 'unfinished'}</td></tr>`;
  });
  return `<table class="grid">${head}${rows.join('')}</table>`;
}

function weightsTable(d: ReportData): string {
  const picked = d.arms.filter((a) => a.runs[0].arm !== 'Hyper-Search').map((a) => ({ a, r: a.runs.find((r) => r.weights) })).filter((x) => x.r);
  if (!picked.length) return '';
  const layers = [...new Set(picked.flatMap((x) => x.r!.weights!.map((w) => w.layer)))];
  const f = (x: number | null | undefined, dg = 4) => (x === null || x === undefined ? '–' : x.toFixed(dg));
  const head = `<tr><th rowspan="2">layer</th>${picked.map((x) => `<th colspan="4">${esc(x.a.name)}</th>`).join('')}</tr>` +
    `<tr>${picked.map(() => '<th>std</th><th>centre</th><th>around</th><th>max/std</th>').join('')}</tr>`;
  const rows = layers.map((l) => `<tr><td>${esc(l)}</td>${picked.map((x) => {
    const w = x.r!.weights!.find((v) => v.layer === l);
    return w ? `<td class="num">${f(w.std)}</td><td class="num">${f(w.centreStd)}</td><td class="num">${f(w.surroundStd)}</td><td class="num">${(w.maxAbs / w.std).toFixed(1)}</td>` : '<td colspan="4">–</td>';
  }).join('')}</tr>`);
  return `<table class="grid compact">${head}${rows.join('')}</table>`;
}

function quantTable(g: QuantGroup): string {
  const seeds = g.files.length;
  const cell = (arm: string, i: number) => {
    const sp = quantSpread(g, arm, i);
    if (!sp) return '<td>–</td>';
    const base = quantSpread(g, arm, 0)!.mean;
    const v = sp.mean - base;
    const drop = i === 0 ? '' : ` <span class="${v < -1 ? 'bad' : 'sd'}">(${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(1)})</span>`;
    return `<td class="num">${sp.mean.toFixed(2)}${seeds > 1 ? ` <span class="sd">± ${sp.sd.toFixed(2)}</span>` : ''}${drop}</td>`;
  };
  const rows = g.configs.map((c, i) => `<tr><td>${esc(i === 0 ? 'FP32 deployed' : c)}</td>${g.arms.map((n) => cell(n, i)).join('')}</tr>`);
  if (g.arms.some((n) => g.onnxAgreement[n].length)) {
    rows.push(`<tr><td>ONNX Runtime vs simulation: same top-1 class</td>${g.arms.map((n) => {
      const a = spreadOf(g.onnxAgreement[n]);
      return a ? `<td class="num">${a.mean.toFixed(2)}%</td>` : '<td>–</td>';
    }).join('')}</tr>`);
  }
  const words = quantComparisons(g);
  return `<p class="note">${g.files.map((f) => esc(relPath(f))).join(', ')}: calibrated on ${g.calibImages} training images, top-1 on ${g.testImages} test images` +
    `${seeds > 1 ? `, mean ± sd over ${seeds} seeds` : ''}; change in points from FP32 in brackets. ` +
    `INT8: 8-bit weights and activations; Wn: n-bit weights (8-bit activations); then the activation observer (minmax, percentile, mse) and the weight scales (per output channel "ch" or per tensor).</p>` +
    `<table class="grid compact"><tr><th>configuration</th>${g.arms.map((n) => `<th>${esc(n)}</th>`).join('')}</tr>${rows.join('')}</table>` +
    (words.length ? `<ul class="summary">${words.map((c) => `<li class="${c.exceedsSpread === true ? 'yes' : c.exceedsSpread === false ? 'no' : ''}">${esc(c.sentence)}</li>`).join('')}</ul>` : '');
}

/** Per-layer sensitivity of every arm that measured it (quant-demo --sensitivity): the ranking and the curve over K. */
function sensitivityTables(studies: QuantStudy[]): string {
  const pc = (x: number) => `${(x * 100).toFixed(2)}`;
  const out: string[] = [];
  for (const s of studies) {
    for (const [arm, r] of Object.entries(s.arms)) {
      const sens = r.sensitivity;
      if (!sens) continue;
      const rows = sens.layers.map((l, i) => `<tr><td class="num">${i + 1}</td><td>${esc(l.layer)}</td><td class="num">${pc(l.int8Drop)}</td><td class="num">${pc(l.lowBitsDrop)}</td><td class="num">${pc(l.logitError)}</td></tr>`);
      let curve = '';
      if (sens.curve?.length) {
        const runtime = sens.curve[0].runtime;
        curve = `<table class="grid compact"><tr><th>kept in float (K)</th><th>layers</th><th>simulated top-1</th><th>${esc(runtime)} top-1</th><th>agreement</th><th>ms / image</th></tr>` +
          sens.curve.map((p) => `<tr><td class="num">${p.k}</td><td>${esc(p.floatLayers.join(', ') || '–')}</td><td class="num">${pc(p.simTop1)}</td><td class="num">${pc(p.onnxTop1)}</td><td class="num">${pc(p.agreement)}%</td><td class="num">${p.msPerImage.toFixed(3)}</td></tr>`).join('') + '</table>';
      }
      out.push(`<h3>${esc(arm)} <span class="sd">(${esc(relPath(s.file))})</span></h3>` +
        `<p class="note">One layer quantized at a time (its weights, input and output; the rest FP32), ${esc(sens.observer)} activations, ${sens.perChannel ? 'per-channel' : 'per-tensor'} weights, on ${sens.images} test images; FP32 top-1 ${pc(sens.fp32Top1)}%. Drops in points, most sensitive first; logit error = relative RMS change of the logits (breaks ties). The curve keeps the K most sensitive layers in float (repopt export --keep-float K writes that file); latency at batch 1, 1 thread.</p>` +
        `<div class="cols2"><table class="grid compact"><tr><th>rank</th><th>layer</th><th>INT8 drop</th><th>W${sens.lowBits} drop</th><th>logit error %</th></tr>${rows.join('')}</table>${curve}</div>`);
    }
  }
  return out.join('');
}

const CSS = `
:root { --fg: #1d2330; --muted: #5f6b7a; --line: #dde2e8; --bg: #ffffff; --panel: #f6f8fa; --accent: #1f6fb4; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 40px; }
header.top { border-bottom: 2px solid var(--accent); margin-bottom: 12px; }
h1 { font-size: 24px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 10px; }
nav { border-bottom: 1px solid var(--line); padding: 6px 0; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 12px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.card h3 { margin: 2px 0 6px; font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
table { border-collapse: collapse; }
table.kv th { text-align: left; font-weight: 600; padding: 1px 10px 1px 0; vertical-align: top; white-space: nowrap; color: var(--muted); }
table.kv td { padding: 1px 0; }
table.grid { width: 100%; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
table.grid th, table.grid td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; }
table.grid th { background: var(--panel); font-weight: 600; }
table.grid td.num { text-align: right; white-space: nowrap; }
table.compact { width: auto; min-width: 50%; }
table.compact th, table.compact td { padding: 2px 10px; font-size: 12.5px; }
.sd { color: var(--muted); font-size: 12px; }
.bad { color: #b3261e; font-size: 12px; font-weight: 600; }
.key { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 4px 0 10px; font-size: 12.5px; }
.key span { display: inline-flex; align-items: center; gap: 6px; }
.key i { display: inline-block; width: 26px; height: 0; border-top-width: 2.5px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: baseline; }
pre.cmd { background: #0f1720; color: #e6edf3; padding: 10px 12px; border-radius: 6px; overflow-x: auto; font-size: 12px; line-height: 1.5; white-space: pre-wrap; word-break: break-all; }
ul.summary { padding-left: 18px; margin: 6px 0; }
ul.summary li { margin: 3px 0; }
li.yes::marker { color: #2a9d5c; } li.no::marker { color: #b3261e; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px 20px; }
.charts.three { grid-template-columns: repeat(3, minmax(0, 1fr)); }
figure.chart-box { margin: 0; min-width: 0; break-inside: avoid; page-break-inside: avoid; }
figure.chart-box.wide { grid-column: 1 / -1; }
figure.chart-box figcaption { font-weight: 600; font-size: 13px; margin: 0 0 2px 4px; }
.chart { width: 100%; min-height: 120px; }
.note { color: var(--muted); font-size: 12.5px; margin: 4px 0 8px; }
.uplot .u-legend { font-size: 12px; text-align: left; }
.uplot .u-legend .u-series th { font-weight: 500; }
footer { margin-top: 30px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
@media (max-width: 900px) { .charts, .charts.three { grid-template-columns: minmax(0, 1fr); } }
@media print {
  @page { size: A4; margin: 12mm; }
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  .charts, .charts.three { grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px 12px; }
  pre.cmd { background: #fff; color: #000; border: 1px solid #999; }
  .uplot .u-legend { font-size: 9pt; }
  a { color: inherit; text-decoration: none; }
}
.cols2 { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
`;

/** One key for charts that share their series (colour per arm, line style per seed). */
function sharedKey(charts: ChartSpec[]): string {
  const seen = new Map<string, { color: string; dash?: number[] }>();
  for (const c of charts) for (const s of c.series) if (!seen.has(s.label)) seen.set(s.label, { color: s.color, dash: s.dash });
  const style = (dash?: number[]) => (!dash ? 'solid' : dash[0] <= 2 ? 'dotted' : 'dashed');
  return `<div class="key">${[...seen].map(([label, v]) => `<span><i style="border-top-style: ${style(v.dash)}; border-top-color: ${v.color}"></i>${esc(label)}</span>`).join('')}</div>`;
}

/** The page. */
export function renderReport(d: ReportData): string {
  const uplotJs = fs.readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8');
  const uplotCss = fs.readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  const colors = armColors(d.arms);
  const section = (prefix: string) => d.charts.filter((c) => c.id.startsWith(prefix));
  const grid = (cs: ChartSpec[], cls = '') => (cs.length ? `<div class="charts ${cls}">${cs.map(chartBox).join('')}</div>` : '');
  const sections: [string, string, string][] = [];
  sections.push(['summary', 'Summary', armsTable(d) + (d.comparisons.length
    ? `<ul class="summary">${d.comparisons.map((c) => `<li class="${c.exceedsSpread === true ? 'yes' : c.exceedsSpread === false ? 'no' : ''}">${esc(c.sentence)}</li>`).join('')}</ul>`
    : '<p class="note">One trained arm: nothing to compare.</p>')]);
  const curves = section('curve-');
  if (curves.length) sections.push(['curves', 'Training curves', `<p class="note">Left: against training steps; right: against wall-clock time since each run started (pauses between resumed sessions included). Loss and lr per logged step (per epoch when the run logged no steps); accuracies per epoch. Drag to zoom, double-click to reset.</p>${sharedKey(curves)}${grid(curves)}`]);
  const speed = section('speed-');
  if (speed.length) sections.push(['speed', 'Speed and memory', `<p class="note">Throughput of the training steps (forward, backward, optimizer; data loading excluded) and the peak resident memory of each run's process; bars are means over seeds, dots single runs. Parameters at training and inference time are in the summary table.</p>${grid(speed)}`]);
  const scales = section('scales-');
  if (scales.length) sections.push(['scales', 'Hyper-Search: the searched scales', `<p class="note">Per layer, the distribution over output channels of each branch's trainable scale after the search: median (line), 25th–75th percentiles (dark band), min–max (light band). These become the Grad Mults of the RepOpt target model.</p>${grid(scales, scales.length >= 3 ? 'three' : '')}`]);
  const diverged = d.runs.filter((r) => r.diverged);
  if (diverged.length) {
    const items = diverged.map((r) => {
      const v = r.diverged!;
      return `<li>${esc(relPath(r.dir))} (${esc(r.arm)}): at iteration ${v.iteration}${v.lr === null ? '' : `, lr ${v.lr}`}: ${esc(v.what)}; ` +
        `${v.lastSaved === null ? 'no checkpoint was written' : `latest.pth keeps iteration ${v.lastSaved}`}</li>`;
    }).join('');
    sections.push(['diverged', 'Runs that diverged', `<p class="note">These runs stopped because their loss or weights became NaN or infinite; no checkpoint holding them was written. Resume from the last finite checkpoint with a lower learning rate: <code>repopt train ... --resume --override lr --lr LOWER</code>.</p><ul class="summary">${items}</ul>`]);
  }
  const drift = section('drift-');
  if (drift.length) {
    const stops = d.runs.filter((r) => r.end?.stopReason).map((r) => `<li>${esc(relPath(r.dir))}: ${esc(r.end!.stopReason!)}</li>`).join('');
    sections.push(['drift', 'Hyper-Search: has it settled?', `<p class="note">Per epoch of a search, how much its scales still move: for each scale tensor (one layer and branch) the relative change ||s<sub>t</sub> − s<sub>t−1</sub>|| / ||s<sub>t−1</sub>|| over the epoch, its max and median over tensors (log10); and the mean of a few tensors over epochs. <code>repopt search --stop-when-settled DRIFT[:EPOCHS]</code> ends a search once the max stays below DRIFT.</p>${stops ? `<ul class="summary">${stops}</ul>` : ''}${grid(drift)}`]);
  }
  const weights = section('weights-');
  if (weights.length) sections.push(['weights', 'Deployed weights (Table 11 of the paper)', `<p class="note">Kernels of the deployed plain network (BN folded, branches fused) from each run's final.pth. A multi-branch baseline's identity and 1x1 branches are added onto the centre tap when it is fused (RepVGG); the RepOpt target's Grad Mults act on the same tap during training. The paper's point (its Table 11) is the size of the difference: where RepVGG's centre std and max|w|/std are larger, its weights carry the outliers that cost it at low bit widths (see Quantization).</p>${grid(weights)}${weightsTable(d)}`]);
  if (d.quant.length) sections.push(['quant', 'Quantization', `${grid(section('quant-'))}${d.quant.map(quantTable).join('')}`]);
  const sens = sensitivityTables(d.studies);
  if (sens) sections.push(['sensitivity', 'Per-layer sensitivity and partial INT8', `${grid(section('sensitivity-'))}${sens}`]);
  const h = d.header;
  const swatchCss = d.arms.map((a) => `.swatch[data-arm="${esc(a.name)}"] { background: ${colors.get(a.name)}; }`).join('\n');
  const json = JSON.stringify({ charts: d.charts }).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(d.title)}</title>
<style>${uplotCss}</style>
<style>${CSS}
${swatchCss}</style>
</head>
<body>
<main>
<header class="top">
<h1>${esc(d.title)}</h1>
<p class="sub">${d.runs.length} run${d.runs.length === 1 ? '' : 's'} in ${d.arms.length} arm${d.arms.length === 1 ? '' : 's'}; made ${esc(d.generated.slice(0, 19).replace('T', ' '))} UTC.</p>
</header>
<nav>${sections.map(([id, title]) => `<a href="#${id}">${esc(title)}</a>`).join('')}<a href="#reproduce">Reproduce</a></nav>
<div class="cards">
<div class="card"><h3>Recipe</h3>${keyValueTable(h.recipe)}</div>
<div class="card"><h3>Machine</h3>${keyValueTable(h.machine)}</div>
<div class="card"><h3>Versions</h3>${keyValueTable(h.versions)}</div>
</div>
${sections.map(([id, title, body]) => `<section id="${id}"><h2>${esc(title)}</h2>${body}</section>`).join('\n')}
<section id="reproduce"><h2>Reproduce</h2><pre class="cmd">${h.commands.map(esc).join('\n')}</pre></section>
<footer>Made by <code>repopt report</code> from ${d.runs.map((r) => esc(relPath(r.dir))).join(', ')}. Charts drawn with uPlot (MIT licence, © Leon Sorokin), included in this file; the page fetches nothing.</footer>
</main>
<script type="application/json" id="report-data">${json}</script>
<script>${uplotJs}</script>
<script>${CLIENT_JS}</script>
</body>
</html>
`;
}

/** Builds the report of `paths` and writes it to `out` atomically. */
export function writeReport(paths: string[], out: string, o: ReportOptions = {}): { file: string; data: ReportData; bytes: number } {
  const data = collectReport(paths, o);
  const html = renderReport(data);
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  writeFileAtomic(out, html, 'report');
  return { file: out, data, bytes: Buffer.byteLength(html) };
}
