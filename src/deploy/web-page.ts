/**
 * The static page of `repopt export --web`: index.html (data inline) and app.js, which runs the FP32
 * and INT8 ONNX files in onnxruntime-web's WebAssembly build (one thread, so no cross-origin isolation is
 * needed) from the same folder. The page records what it computed in `window.repoptWeb` so a test in a
 * real browser can compare it with our library's predictions. Plain ES2020 module, no dependencies.
 */

/** What index.html embeds (JSON in a script tag). */
export interface WebPageData {
  title: string;
  channels: number;
  height: number;
  width: number;
  classes: string[];
  /** float32 (v/255 - mean)/std for v in 0..255 per channel (the data set's normalization), base64 of little-endian floats. */
  lut: string;
  /** Embedded test images: uint8 CHW pixels (base64), label, and our library's top-5 (FP32 libtorch, INT8 simulated). */
  samples: { pixels: string; label: number; ours: { fp32: [number, number][]; int8: [number, number][] } }[];
  models: { fp32: string; int8: string };
  /** What the INT8 file is (observer, calibration, layers kept in float). */
  int8Note: string;
  ortVersion: string;
}

const escapeJson = (s: string) => s.replace(/</g, '\\u003c');
const escapeHtml = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c] ?? c);

export function webPageHtml(d: WebPageData): string {
  const gray = d.channels === 1;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>${escapeHtml(d.title)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
#strip { display: flex; flex-wrap: wrap; gap: 6px; }
#strip canvas { width: 56px; height: 56px; image-rendering: pixelated; border: 2px solid #ccc; cursor: pointer; }
#strip canvas.sel { border-color: #1f6feb; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; } td.p { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: 10px; background: #1f6feb; vertical-align: middle; }
#pad { width: 280px; height: 280px; background: #000; touch-action: none; cursor: crosshair; }
.muted { color: #666; } .bad { color: #b00; }
</style>
</head>
<body>
<h1>${escapeHtml(d.title)}</h1>
<p class="muted">ONNX Runtime Web ${escapeHtml(d.ortVersion)} (WebAssembly, 1 thread), all files local. FP32: the deployed network. INT8: ${escapeHtml(d.int8Note)}.</p>
<p id="status">loading models…</p>
<h2>Test images</h2>
<div id="strip"></div>
<p class="muted">Click an image. ✓: the page's top-1 equals our library's (libtorch FP32, simulated INT8).</p>
<h2>${gray ? 'Draw' : 'Your image'}</h2>
${gray
  ? '<div class="cols"><div><canvas id="pad" width="280" height="280"></canvas><br><button id="clear">clear</button> <span class="muted">draw with the mouse; it is classified when you let go</span></div></div>'
  : '<input type="file" id="file" accept="image/*"> <span class="muted">resized to ' + d.width + 'x' + d.height + '</span>'}
<h2>Prediction <span id="which" class="muted"></span></h2>
<div class="cols"><div><h3>FP32</h3><div id="fp32"></div></div><div><h3>INT8</h3><div id="int8"></div></div></div>
<h2>All test images</h2>
<table id="summary"><thead><tr><th>#</th><th>label</th><th>FP32</th><th>ms</th><th>INT8</th><th>ms</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="repopt-web">${escapeJson(JSON.stringify(d))}</script>
<script type="module" src="app.js"></script>
</body>
</html>
`;
}

/** app.js: loads both models, classifies the strip, then whatever is drawn or picked. */
export const WEB_APP_JS = String.raw`import * as ort from './ort.wasm.bundle.min.mjs';

// One thread: threads need SharedArrayBuffer, hence cross-origin isolation headers a plain file server lacks.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = { wasm: new URL('ort-wasm-simd-threaded.wasm', import.meta.url).href };
ort.env.logLevel = 'error';

const data = JSON.parse(document.getElementById('repopt-web').textContent);
const state = { ready: false, error: null, samples: [], last: null, classify: null };
window.repoptWeb = state;
const C = data.channels, H = data.height, W = data.width;

function b64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
const lutBytes = b64(data.lut);
const lut = new Float32Array(lutBytes.buffer, lutBytes.byteOffset, lutBytes.byteLength / 4);

/** uint8 CHW pixels -> the normalized float input, exactly as the library's data loader. */
function toInput(pixels) {
  const hw = H * W;
  const x = new Float32Array(C * hw);
  for (let c = 0; c < C; c++) for (let i = 0; i < hw; i++) x[c * hw + i] = lut[c * 256 + pixels[c * hw + i]];
  return new ort.Tensor('float32', x, [1, C, H, W]);
}

function top5(logits) {
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  const e = Array.from(logits, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v, i) => [i, v / s]).sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, 5);
}

async function run(session, pixels) {
  const input = toInput(pixels);
  const t0 = performance.now();
  const out = await session.run({ input });
  const ms = performance.now() - t0;
  return { top5: top5(out.logits.data), ms };
}

function drawPixels(canvas, pixels) {
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(W, H);
  const hw = H * W;
  for (let i = 0; i < hw; i++) {
    const r = pixels[i], g = C === 3 ? pixels[hw + i] : r, b = C === 3 ? pixels[2 * hw + i] : r;
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function table(r, ours) {
  const rows = r.top5.map(([k, p], i) =>
    '<tr><td>' + data.classes[k] + (i === 0 && ours ? (ours[0][0] === k ? ' ✓' : ' <span class="bad">≠ ' + data.classes[ours[0][0]] + '</span>') : '') +
    '</td><td class="p">' + (100 * p).toFixed(2) + '%</td><td><span class="bar" style="width:' + Math.round(120 * p) + 'px"></span></td></tr>').join('');
  return '<table>' + rows + '</table><p class="muted">' + r.ms.toFixed(2) + ' ms</p>';
}

let sessions;
async function classify(pixels, label, ours) {
  const fp32 = await run(sessions.fp32, pixels);
  const int8 = await run(sessions.int8, pixels);
  document.getElementById('fp32').innerHTML = table(fp32, ours && ours.fp32);
  document.getElementById('int8').innerHTML = table(int8, ours && ours.int8);
  document.getElementById('which').textContent = label;
  state.last = { fp32, int8 };
  return state.last;
}
state.classify = (pixels) => classify(Uint8Array.from(pixels), '(given)', null);

async function main() {
  const opts = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  sessions = {
    fp32: await ort.InferenceSession.create(data.models.fp32, opts),
    int8: await ort.InferenceSession.create(data.models.int8, opts),
  };
  // One untimed run each: the first run of a session allocates and tunes, and would skew the latency column.
  if (data.samples.length) for (const k of ['fp32', 'int8']) await run(sessions[k], b64(data.samples[0].pixels));
  const strip = document.getElementById('strip');
  const body = document.querySelector('#summary tbody');
  const cells = [];
  for (const [i, s] of data.samples.entries()) {
    const pixels = b64(s.pixels);
    const cv = document.createElement('canvas');
    cv.width = W; cv.height = H; cv.title = '#' + i + ': ' + data.classes[s.label];
    drawPixels(cv, pixels);
    strip.appendChild(cv);
    const fp32 = await run(sessions.fp32, pixels);
    const int8 = await run(sessions.int8, pixels);
    state.samples.push({ fp32, int8 });
    const mark = (r, o) => data.classes[r.top5[0][0]] + (r.top5[0][0] === o[0][0] ? ' ✓' : ' ≠');
    const tr = document.createElement('tr');
    tr.innerHTML = '<td>' + i + '</td><td>' + data.classes[s.label] + '</td><td>' + mark(fp32, s.ours.fp32) + '</td><td class="p">' + fp32.ms.toFixed(2) +
      '</td><td>' + mark(int8, s.ours.int8) + '</td><td class="p">' + int8.ms.toFixed(2) + '</td>';
    body.appendChild(tr);
    cells.push(cv);
    cv.addEventListener('click', () => {
      cells.forEach((c) => c.classList.remove('sel'));
      cv.classList.add('sel');
      classify(pixels, '#' + i + ' (' + data.classes[s.label] + ')', s.ours);
    });
  }
  if (cells.length) cells[0].click();
  const agreeF = state.samples.filter((r, i) => r.fp32.top5[0][0] === data.samples[i].ours.fp32[0][0]).length;
  const agreeI = state.samples.filter((r, i) => r.int8.top5[0][0] === data.samples[i].ours.int8[0][0]).length;
  const med = (k) => { const t = state.samples.map((r) => r[k].ms).sort((a, b) => a - b); return t[t.length >> 1]; };
  document.getElementById('status').textContent = 'top-1 equal to our library: FP32 ' + agreeF + '/' + cells.length + ', INT8 ' + agreeI + '/' + cells.length +
    '; median latency FP32 ' + med('fp32').toFixed(2) + ' ms, INT8 ' + med('int8').toFixed(2) + ' ms per image';
  setupInput();
  state.ready = true;
}

/** H x W pixels (uint8 CHW) of a canvas or image, through the browser's resampling. */
function grab(source, sw, sh) {
  const cv = document.createElement('canvas');
  cv.width = W; cv.height = H;
  const ctx = cv.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, 0, 0, sw, sh, 0, 0, W, H);
  const rgba = ctx.getImageData(0, 0, W, H).data;
  const hw = H * W;
  const px = new Uint8Array(C * hw);
  for (let i = 0; i < hw; i++) for (let c = 0; c < C; c++) px[c * hw + i] = rgba[4 * i + c];
  return px;
}

function setupInput() {
  if (C === 1) {
    const pad = document.getElementById('pad');
    const ctx = pad.getContext('2d');
    const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, pad.width, pad.height); };
    clear();
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 22; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
    let down = false;
    const at = (e) => { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
    pad.addEventListener('pointerdown', (e) => { down = true; const [x, y] = at(e); ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x, y); ctx.stroke(); });
    pad.addEventListener('pointermove', (e) => { if (!down) return; const [x, y] = at(e); ctx.lineTo(x, y); ctx.stroke(); });
    const up = () => { if (!down) return; down = false; classify(grab(pad, pad.width, pad.height), '(drawing)', null); };
    pad.addEventListener('pointerup', up);
    pad.addEventListener('pointerleave', up);
    document.getElementById('clear').addEventListener('click', clear);
  } else {
    document.getElementById('file').addEventListener('change', async (e) => {
      const f = e.target.files[0];
      if (!f) return;
      const bmp = await createImageBitmap(f);
      classify(grab(bmp, bmp.width, bmp.height), '(' + f.name + ')', null);
    });
  }
}

main().catch((e) => {
  state.error = String(e && e.message || e);
  document.getElementById('status').textContent = 'error: ' + state.error;
  console.error(e);
});
`;
