/**
 * The study's report: summary.md (tables and verdicts) and one self-contained HTML page with inline
 * SVG charts (no script, nothing fetched): top-1 per arm with every seed's dot, accuracy against
 * depth, the INT8 / low-bit drop per arm (bars from zero), RepOpt-VGG against the search budget, and
 * the side-by-side speed and memory per arm (bars from zero).
 */
import { armLabel } from './plan.js';
import { QUANT_SETTINGS, type ArmSummary, type RunResult } from './results.js';
import type { StudyResult } from './run.js';
import { median } from '../train/bench.js';

const ARM_COLORS: Record<string, string> = {
  repopt: '#d62728', 'repopt-init': '#ff9896', plain: '#7f7f7f', repvgg: '#1f77b4', qarepvgg: '#2ca02c', search: '#9467bd',
};
const colorOf = (arm: string) => ARM_COLORS[arm] ?? '#8c564b';
const labelOf = armLabel;
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const pm = (m: number, sd: number, n: number, d = 2) => `${m.toFixed(d)}${n > 1 ? ` ± ${sd.toFixed(d)}` : ''}`;

// ------------------------------------------------------------------ markdown

export function studySummary(r: StudyResult): string {
  const m = r.meta;
  const lines: string[] = [];
  lines.push(`# repopt study: ${m.data}, ${m.depths.map((d) => `${d.name} (${d.convLayers} conv layers)`).join(' and ')}`);
  lines.push('');
  lines.push(`${m.seeds} seeds per arm, ${m.epochs} epoch(s) per training run, Hyper-Search ${m.searchEpochs} epoch(s); batch ${m.batchSize}, lr ${m.lr}, SGD with Nesterov momentum 0.9, wd 1e-4, label smoothing 0.1, warm-up 0.2 epochs, cosine schedule. Top-1 on the test set after the last epoch (no selection on the test set; no hyper-parameter was tuned).`);
  lines.push(`Machine: ${m.cpu} (${m.cpuFlags.filter((f) => f.startsWith('avx512') || f === 'avx2' || f === 'fma').join(' ') || 'no AVX'}), ${m.threads} threads, Node ${m.node}. ${m.date}. Training time summed over runs: ${m.trainMinutes.toFixed(0)} min.`);
  lines.push(`Command: \`${m.command}\``);
  if (r.missing.length) {
    lines.push('');
    lines.push(`Not finished when this report was made (${r.missing.length} runs): ${r.missing.join(', ')}. The tables below cover the finished runs only.`);
  }
  for (const d of m.depths) {
    const arms = r.arms.filter((a) => a.depth === d.name);
    if (!arms.length) continue;
    lines.push('');
    lines.push(`## ${d.name}: blocks ${d.blocks.join(',')} (${d.convLayers} conv layers), widths ${d.widths.join(',')}, strides ${d.strides.join(',')}`);
    lines.push('');
    lines.push(`| arm | seeds | top-1 % (mean ± sd) | ${QUANT_SETTINGS.map((s) => `drop: ${s.label}`).join(' | ')} | max|w|/std | INT8 weight error per-tensor / per-channel |`);
    lines.push(`|---|---|---:|${QUANT_SETTINGS.map(() => '---:').join('|')}|---:|---:|`);
    for (const a of arms) {
      const drops = QUANT_SETTINGS.map((s) => {
        const x = a.drops[s.key];
        return x ? pm(x.mean, x.sd, x.n) : 'n/a';
      });
      const e = a.weightErrPerTensor && a.weightErrPerChannel ? `${(a.weightErrPerTensor.mean * 100).toFixed(2)}% / ${(a.weightErrPerChannel.mean * 100).toFixed(2)}%` : 'n/a';
      lines.push(`| ${a.label} | ${a.seeds.join(',')} | ${pm(a.top1.mean, a.top1.sd, a.top1.n)} | ${drops.join(' | ')} | ${a.maxOverStd ? a.maxOverStd.mean.toFixed(1) : 'n/a'} | ${e} |`);
    }
    const vs = r.verdicts.filter((v) => v.depth === d.name);
    if (vs.length) {
      lines.push('');
      lines.push('Verdicts (Welch\'s t-test, two-sided, p < 0.05; and whether the seed ranges overlap):');
      lines.push('');
      for (const v of vs) lines.push(`- ${v.sentence}`);
    }
  }
  if (r.budget.length) {
    lines.push('');
    lines.push('## Hyper-Search budget: RepOpt-VGG top-1 against the search length');
    lines.push('');
    lines.push('0 epochs: the initial constant scales (no search); the main arm searched for the study\'s --search-epochs; longer searches where --budget-search-epochs ran.');
    lines.push('');
    lines.push('| depth | search epochs | top-1 % (mean ± sd) | seeds |');
    lines.push('|---|---:|---:|---|');
    for (const b of r.budget) lines.push(`| ${b.depth} | ${b.searchEpochs === 0 ? '0 (initial scales)' : b.searchEpochs} | ${pm(b.top1.mean, b.top1.sd, b.top1.n)} | ${b.seeds.join(',')} |`);
  }
  if (r.bench.length) {
    lines.push('');
    lines.push('## Training speed per arm (side by side, one process per run, alternating order)');
    lines.push('');
    lines.push('Batch 64 at the study\'s threads; memory is not reported here: a child\'s peak RSS on Linux includes its parent\'s at fork time (ru_maxrss survives exec), so `repopt bench --modes` from a shell measures it.');
    lines.push('');
    lines.push('| depth | arm | mode | img/s (median over rounds) |');
    lines.push('|---|---|---|---:|');
    for (const b of r.bench) lines.push(`| ${b.depth} | ${labelOf(b.arm)} | ${b.mode} (${b.optimizer}) | ${median(b.imgPerSec).toFixed(0)} |`);
  }
  const onnx = r.runs.find((x) => x.quant?.onnx);
  if (onnx?.quant?.onnx) {
    lines.push('');
    lines.push(`ONNX Runtime (WebAssembly) on the best per-tensor INT8 model (${onnx.depth} ${labelOf(onnx.arm)} seed ${onnx.seed}): top-1 agreement with our simulation ${(onnx.quant.onnx.agreement * 100).toFixed(2)}% on ${onnx.quant.onnx.images} test images, max |logit diff| ${onnx.quant.onnx.maxDiff.toFixed(4)}.`);
  }
  return lines.join('\n') + '\n';
}

// ------------------------------------------------------------------ SVG

interface Frame {
  w: number;
  h: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
  y0: number;
  y1: number;
}
const W = 640;
const H = 300;
const frame = (y0: number, y1: number): Frame => ({ w: W, h: H, left: 60, right: 20, top: 20, bottom: 70, y0, y1 });
const yAt = (f: Frame, v: number) => f.top + ((f.y1 - v) / (f.y1 - f.y0)) * (f.h - f.top - f.bottom);

function niceTicks(lo: number, hi: number, n = 5): number[] {
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0 || 1));
  const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

function axes(f: Frame, yLabel: string): string {
  const ticks = niceTicks(f.y0, f.y1);
  const x0 = f.left;
  const x1 = f.w - f.right;
  let s = `<line x1="${x0}" y1="${f.top}" x2="${x0}" y2="${f.h - f.bottom}" stroke="#333"/>`;
  for (const t of ticks) {
    const y = yAt(f, t);
    s += `<line x1="${x0 - 4}" y1="${y}" x2="${x1}" y2="${y}" stroke="${t === 0 ? '#333' : '#e5e5e5'}"/><text x="${x0 - 6}" y="${y + 4}" text-anchor="end" font-size="11">${t}</text>`;
  }
  s += `<text transform="translate(14 ${(f.top + f.h - f.bottom) / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(yLabel)}</text>`;
  return s;
}

const svg = (title: string, body: string, cls: string) =>
  `<figure class="${cls}"><figcaption>${esc(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">${body}</svg></figure>`;

/** Top-1 per arm at one depth: every seed a dot, the mean a bar-free tick with ±1 sd (a zoomed axis: no bars). */
function seedDots(depth: string, arms: ArmSummary[], runs: RunResult[]): string {
  const vals = runs.map((r) => r.top1 * 100);
  const lo = Math.floor(Math.min(...vals) - 0.5);
  const hi = Math.ceil(Math.max(...vals) + 0.5);
  const f = frame(lo, hi);
  const step = (f.w - f.left - f.right) / arms.length;
  let body = axes(f, 'top-1 (%), test set');
  arms.forEach((a, i) => {
    const cx = f.left + step * (i + 0.5);
    const rs = runs.filter((r) => r.arm === a.arm);
    rs.forEach((r, k) => {
      body += `<circle class="seed-dot" data-arm="${a.arm}" data-seed="${r.seed}" cx="${cx - 12 + (24 * k) / Math.max(1, rs.length - 1)}" cy="${yAt(f, r.top1 * 100)}" r="4" fill="${colorOf(a.arm)}" fill-opacity="0.75"><title>seed ${r.seed}: ${(r.top1 * 100).toFixed(2)}%</title></circle>`;
    });
    const m = a.top1.mean;
    body += `<line x1="${cx - 22}" x2="${cx + 22}" y1="${yAt(f, m)}" y2="${yAt(f, m)}" stroke="#000" stroke-width="2"/>`;
    if (a.top1.n > 1) body += `<line x1="${cx}" x2="${cx}" y1="${yAt(f, m - a.top1.sd)}" y2="${yAt(f, m + a.top1.sd)}" stroke="#000"/>`;
    body += `<text x="${cx}" y="${f.h - f.bottom + 16}" text-anchor="middle" font-size="11">${esc(labelOf(a.arm).replace(/ \(.*\)$/, ''))}</text>`;
    const sub = /\((.*)\)$/.exec(labelOf(a.arm))?.[1];
    if (sub) body += `<text x="${cx}" y="${f.h - f.bottom + 30}" text-anchor="middle" font-size="10" fill="#555">${esc(sub)}</text>`;
    body += `<text x="${cx}" y="${f.h - f.bottom + 46}" text-anchor="middle" font-size="10">${m.toFixed(2)}</text>`;
  });
  return svg(`${depth}: top-1 per arm, each seed a dot, the mean a black tick with ±1 sd (axis zoomed to the data)`, body, 'chart seeds');
}

/** Grouped bars from zero: one group per arm, one bar per quantization setting, whiskers ±1 sd. */
function dropBars(depth: string, arms: ArmSummary[]): string {
  const settings = QUANT_SETTINGS.slice(0, 4);
  const vals = arms.flatMap((a) => settings.map((s) => a.drops[s.key]).filter((x) => x).map((x) => [x!.mean - x!.sd, x!.mean + x!.sd]).flat());
  if (!vals.length) return '';
  const f = frame(Math.min(0, Math.floor(Math.min(...vals))), Math.max(0.5, Math.ceil(Math.max(...vals) * 1.1 * 2) / 2));
  const group = (f.w - f.left - f.right) / arms.length;
  const bw = (group * 0.8) / settings.length;
  const shades = ['#222', '#666', '#999', '#ccc'];
  let body = axes(f, 'top-1 drop (points) vs FP32');
  arms.forEach((a, i) => {
    settings.forEach((s, j) => {
      const x = a.drops[s.key];
      if (!x) return;
      const bx = f.left + group * i + group * 0.1 + bw * j;
      const y0 = yAt(f, 0);
      const y = yAt(f, x.mean);
      body += `<rect class="drop-bar" x="${bx}" y="${Math.min(y, y0)}" width="${bw - 2}" height="${Math.abs(y - y0)}" fill="${colorOf(a.arm)}" stroke="${shades[j]}" stroke-width="2"><title>${esc(labelOf(a.arm))}, ${s.label}: ${x.mean.toFixed(2)} ± ${x.sd.toFixed(2)} points</title></rect>`;
      if (x.n > 1) body += `<line x1="${bx + bw / 2 - 1}" x2="${bx + bw / 2 - 1}" y1="${yAt(f, x.mean - x.sd)}" y2="${yAt(f, x.mean + x.sd)}" stroke="#000"/>`;
    });
    body += `<text x="${f.left + group * (i + 0.5)}" y="${f.h - f.bottom + 16}" text-anchor="middle" font-size="11">${esc(labelOf(a.arm).replace(/ \(.*\)$/, ''))}</text>`;
  });
  settings.forEach((s, j) => {
    body += `<rect x="${f.left + j * 150}" y="${f.h - 22}" width="12" height="12" fill="#fff" stroke="${shades[j]}" stroke-width="2"/><text x="${f.left + j * 150 + 16}" y="${f.h - 12}" font-size="10">${esc(s.label)}</text>`;
  });
  return svg(`${depth}: top-1 lost to quantization per arm (bars from zero, ±1 sd over seeds; below zero: a gain)`, body, 'chart drops');
}

/** Lines over a numeric x: one per series, points with ±1 sd whiskers. */
function lineChart(title: string, xLabel: string, yLabel: string, series: { name: string; color: string; points: { x: number; m: number; sd: number; n: number; label?: string }[] }[], cls: string): string {
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return '';
  const ys = pts.flatMap((p) => [p.m - p.sd, p.m + p.sd]);
  const xs = [...new Set(pts.map((p) => p.x))].sort((a, b) => a - b);
  const f = frame(Math.floor(Math.min(...ys) - 0.5), Math.ceil(Math.max(...ys) + 0.5));
  const xAt = (x: number) => f.left + 40 + ((xs.indexOf(x)) / Math.max(1, xs.length - 1)) * (f.w - f.left - f.right - 80);
  let body = axes(f, yLabel);
  for (const x of xs) body += `<text x="${xAt(x)}" y="${f.h - f.bottom + 16}" text-anchor="middle" font-size="11">${esc(pts.find((p) => p.x === x)?.label ?? String(x))}</text>`;
  body += `<text x="${(f.left + f.w - f.right) / 2}" y="${f.h - f.bottom + 34}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`;
  series.forEach((s, i) => {
    const p = [...s.points].sort((a, b) => a.x - b.x);
    body += `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${p.map((q) => `${xAt(q.x)},${yAt(f, q.m)}`).join(' ')}"/>`;
    for (const q of p) {
      body += `<circle class="line-point" cx="${xAt(q.x)}" cy="${yAt(f, q.m)}" r="3.5" fill="${s.color}"><title>${esc(s.name)}: ${q.m.toFixed(2)}${q.n > 1 ? ` ± ${q.sd.toFixed(2)}` : ''}</title></circle>`;
      if (q.n > 1) body += `<line x1="${xAt(q.x)}" x2="${xAt(q.x)}" y1="${yAt(f, q.m - q.sd)}" y2="${yAt(f, q.m + q.sd)}" stroke="${s.color}"/>`;
    }
    body += `<rect x="${f.left + (i % 3) * 190}" y="${f.h - 30 + Math.floor(i / 3) * 14}" width="10" height="10" fill="${s.color}"/><text x="${f.left + (i % 3) * 190 + 14}" y="${f.h - 21 + Math.floor(i / 3) * 14}" font-size="10">${esc(s.name)}</text>`;
  });
  return svg(title, body, cls);
}

/** Bars from zero: img/s per arm and depth. */
function benchBars(r: StudyResult): string {
  if (!r.bench.length) return '';
  const depths = [...new Set(r.bench.map((b) => b.depth))];
  const arms = [...new Set(r.bench.map((b) => b.arm))];
  const vals = r.bench.map((b) => median(b.imgPerSec));
  const f = frame(0, Math.max(...vals) * 1.1);
  const group = (f.w - f.left - f.right) / depths.length;
  const bw = (group * 0.8) / arms.length;
  let body = axes(f, 'training img/s (median over rounds)');
  depths.forEach((d, i) => {
    arms.forEach((a, j) => {
      const b = r.bench.find((x) => x.depth === d && x.arm === a);
      if (!b) return;
      const v = median(b.imgPerSec);
      const bx = f.left + group * i + group * 0.1 + bw * j;
      body += `<rect class="bench-bar" x="${bx}" y="${yAt(f, v)}" width="${bw - 2}" height="${yAt(f, 0) - yAt(f, v)}" fill="${colorOf(a)}"><title>${esc(d)} ${esc(labelOf(a))}: ${v.toFixed(0)} img/s</title></rect>`;
      body += `<text x="${bx + bw / 2}" y="${yAt(f, v) - 3}" text-anchor="middle" font-size="9">${v.toFixed(0)}</text>`;
    });
    body += `<text x="${f.left + group * (i + 0.5)}" y="${f.h - f.bottom + 16}" text-anchor="middle" font-size="11">${esc(d)}</text>`;
  });
  arms.forEach((a, j) => {
    body += `<rect x="${f.left + (j % 3) * 190}" y="${f.h - 40 + Math.floor(j / 3) * 14}" width="10" height="10" fill="${colorOf(a)}"/><text x="${f.left + (j % 3) * 190 + 14}" y="${f.h - 31 + Math.floor(j / 3) * 14}" font-size="10">${esc(labelOf(a))}</text>`;
  });
  return svg('Training speed per arm, side by side in one run (bars from zero)', body, 'chart bench');
}

function mdToHtml(md: string): string {
  const out: string[] = [];
  let table: string[][] | null = null;
  const flush = () => {
    if (!table) return;
    const [head, , ...rows] = table;
    out.push(`<table><thead><tr>${head.map((c) => `<th>${esc(c)}</th>`).join('')}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`).join('')}</tbody></table>`);
    table = null;
  };
  for (const line of md.split('\n')) {
    if (line.startsWith('|')) {
      (table ??= []).push(line.slice(1, -1).split(' | ').map((c) => c.trim()));
      continue;
    }
    flush();
    if (line.startsWith('# ')) out.push(`<h1>${esc(line.slice(2))}</h1>`);
    else if (line.startsWith('## ')) out.push(`<h2>${esc(line.slice(3))}</h2>`);
    else if (line.startsWith('- ')) out.push(`<p class="verdict">${esc(line.slice(2))}</p>`);
    else if (line.trim()) out.push(`<p>${esc(line).replace(/`([^`]+)`/g, '<code>$1</code>')}</p>`);
  }
  flush();
  return out.join('\n');
}

export function renderStudyReport(r: StudyResult): string {
  const charts: string[] = [];
  for (const d of r.meta.depths) {
    const arms = r.arms.filter((a) => a.depth === d.name);
    const runs = r.runs.filter((x) => x.depth === d.name && arms.some((a) => a.arm === x.arm));
    if (!arms.length) continue;
    charts.push(seedDots(`${d.name} (${d.convLayers} conv layers)`, arms, runs));
    charts.push(dropBars(`${d.name} (${d.convLayers} conv layers)`, arms));
  }
  const armsSeen = [...new Set(r.arms.map((a) => a.arm))].filter((a) => !a.startsWith('repopt-search-'));
  if (r.meta.depths.length > 1) {
    charts.push(lineChart('Top-1 against depth (mean ± 1 sd over seeds; axis zoomed)', 'conv layers', 'top-1 (%)', armsSeen.map((arm) => ({
      name: labelOf(arm), color: colorOf(arm),
      points: r.arms.filter((a) => a.arm === arm).map((a) => {
        const d = r.meta.depths.find((x) => x.name === a.depth)!;
        return { x: d.convLayers, m: a.top1.mean, sd: a.top1.sd, n: a.top1.n, label: `${d.convLayers} (${d.name})` };
      }),
    })), 'chart depth'));
  }
  if (r.budget.length) {
    const depths = [...new Set(r.budget.map((b) => b.depth))];
    charts.push(lineChart('RepOpt-VGG top-1 against Hyper-Search epochs (0: the initial constant scales; mean ± 1 sd)', 'Hyper-Search epochs', 'top-1 (%)', depths.map((d, i) => ({
      name: `RepOpt-VGG, ${d}`, color: ['#d62728', '#ff7f0e'][i % 2],
      points: r.budget.filter((b) => b.depth === d).map((b) => ({ x: b.searchEpochs, m: b.top1.mean, sd: b.top1.sd, n: b.top1.n })),
    })), 'chart budget'));
  }
  charts.push(benchBars(r));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>repopt study</title>
<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.3em}p.verdict{margin:.3em 0 .3em 1em;font-size:14px}code{background:#f3f3f3;padding:1px 3px}</style>
</head><body>
${mdToHtml(studySummary(r))}
<h2>Charts</h2>
${charts.filter(Boolean).join('\n')}
</body></html>
`;
}
