/**
 * Faults on real files and real processes (issue 28): a full disk (a small tmpfs; skipped, saying why,
 * where mounting is not permitted), two runs in one folder (two real CLI processes, one of them a
 * `--nproc 2` job), divergence, cut logs, resumes of finished and half-trained epochs, and the messages
 * a user reads for a file or a read-only mount where a run folder should be. Tiny models on the
 * synthetic set: each run takes about a second.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../src/torch/index.js';
import { loadPth, savePth } from '../src/io/pth.js';
import { PyOrderedDict, type PyValue } from '../src/io/pickle.js';
import { JsonlLog } from '../src/train/log.js';
import { loadTrainingCheckpoint } from '../src/train/checkpoint.js';
import { CLI, CLI_ENV, cli, exited, weights } from './helpers/runs.js';

torch.setNumThreads(1);
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'repopt-faults-'));
const MODEL = ['--blocks', '1,1,1,1', '--widths', '0.25,0.25,0.25,0.25', '--strides', '1,1,2,2,2', '--mode', 'plain'];
/** A tiny plain VGG on synthetic images: `n` images, batch 16 (8 steps per epoch for 128). */
const run = (out: string, n = 128, ...more: string[]) => {
  const defaults = [['--epochs', '1'], ['--batch-size', '16'], ['--threads', '1'], ['--workers', '0']].filter(([f]) => !more.includes(f));
  return ['train', '--data', `synthetic:${n}`, ...MODEL, ...defaults.flat(), '--no-eval', '--quiet', '--out', out, ...more];
};
const stray = (dir: string) => fs.readdirSync(dir).filter((f) => f.includes('.tmp-'));

/** A tmpfs of `size` at a fresh folder, unmounted after the test; null (the test skipped, saying why) where mount is not permitted. */
function tmpfs(t: TestContext, size: string, options = ''): string | null {
  const dir = tmp();
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${options ? `,${options}` : ''}`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (e) {
    const why = `cannot mount a tmpfs here (${String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim()}); needs root`;
    console.log(`# skipped: ${why}`);
    t.skip(why);
    return null;
  }
  t.after(() => {
    spawnSync('umount', ['-l', dir]); // lazy: a file still open after a failed assertion must not keep it mounted
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Fills the file system at `dir` until `free` bytes are left (tmpfs counts whole pages). */
function fillTo(dir: string, free: number): void {
  const avail = fs.statfsSync(dir).bavail * fs.statfsSync(dir).bsize;
  fs.writeFileSync(path.join(dir, 'filler'), Buffer.alloc(Math.max(0, avail - free)));
}

function start(args: string[]): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [CLI, ...args], { env: CLI_ENV });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  return { child, output: () => out };
}

async function until(ready: () => boolean, boundMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!ready()) {
    if (Date.now() - t0 > boundMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Parsed here (not with the library's reader) so these tests also run against older code. */
function readLog(file: string): { records: Record<string, unknown>[]; unreadable: number } {
  const records: Record<string, unknown>[] = [];
  let unreadable = 0;
  for (const l of fs.readFileSync(file, 'utf8').split('\n').filter((x) => x.trim())) {
    try {
      records.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      unreadable++;
    }
  }
  return { records, unreadable };
}
const readJsonl = (file: string) => readLog(file).records;

/** The names of floating tensors holding NaN or inf. */
const nonFinite = (file: string) =>
  torch.tidy(() => [...weights(file)].filter(([, t]) => torch.isFloating(t.dtype) && !Number.isFinite(t.abs().max().to('float64').item())).map(([k]) => k));

// ------------------------------------------------------------------ 1. disk full

test('disk full: a save that does not fit keeps the previous checkpoint and stops the run, naming the file and the free space', (t) => {
  const m = tmpfs(t, '2m');
  if (!m) return;
  // A checkpoint is ~830 KB: the first latest.pth fits, the second's temporary file does not.
  fillTo(m, 1_300_000);
  const out = path.join(m, 'r');
  const r = cli(run(out, 128, '--epochs', '2', '--save-every', '2'));
  assert.equal(r.status, 1, r.stderr);
  assert.doesNotMatch(r.stdout, /done/);
  assert.match(r.stderr, new RegExp(`cannot write checkpoint ${out}/latest\\.pth: no space left on the disk \\(\\d+(\\.\\d)? (KiB|bytes) free, [\\d.]+ KiB needed\\); its previous content is kept`));
  const ck = loadTrainingCheckpoint(path.join(out, 'latest.pth')); // loads: the step-2 checkpoint, whole
  assert.equal(ck.state.iteration, 2);
  for (const x of ck.model.values()) x.dispose();
  assert.deepEqual(stray(out), [], 'no temporary file left behind');
  assert.equal(readLog(path.join(out, 'log.jsonl')).unreadable, 0);
});

test('disk full: a log record that does not fit is an error and leaves no partial line; savePth never leaves a short file', (t) => {
  const m = tmpfs(t, '256k');
  if (!m) return;
  const file = path.join(m, 'log.jsonl');
  const log = new JsonlLog(file);
  log.write('start', { ok: true });
  const before = fs.readFileSync(file);
  fillTo(m, 8192);
  assert.throws(() => log.write('step', { blob: 'x'.repeat(64 * 1024) }), (e: Error) => e.name === 'WriteError' && e.message.includes(file) && /no space left on the disk \(.* free/.test(e.message));
  log.close();
  assert.ok(fs.readFileSync(file).equals(before), 'the file is as before the failed record');

  const pth = path.join(m, 'w.pth');
  fs.rmSync(path.join(m, 'filler'));
  torch.tidy(() => savePth(pth, new PyOrderedDict<PyValue>([['w', torch.zeros([8])]])));
  const good = fs.readFileSync(pth);
  fillTo(m, 16384);
  assert.throws(() => torch.tidy(() => savePth(pth, new PyOrderedDict<PyValue>([['w', torch.zeros([64 * 1024])]]))), /cannot write checkpoint .*w\.pth: no space left on the disk.*previous content is kept/);
  assert.ok(fs.readFileSync(pth).equals(good), 'the previous checkpoint is kept');
  assert.deepEqual(stray(m), []);
});

// ------------------------------------------------------------------ 2. two runs in one folder

test('two runs in one folder: the second (and a --resume) is refused with the holder\'s pid; started together, exactly one runs; a stale lock is taken over', async () => {
  const d = tmp();
  const out = path.join(d, 'r');
  const first = start(run(out, 5000, '--lr', '0.1')); // ~5 s: still running while the others try
  const lockFile = path.join(out, 'run.lock');
  await until(() => fs.existsSync(lockFile) && fs.readFileSync(lockFile, 'utf8').includes('}'), 20_000, 'the first run\'s lock');
  for (const more of [['--lr', '0.05'], ['--lr', '0.1', '--resume']]) {
    const r = cli(run(out, 5000, ...more));
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`${out} is in use by another run \\(pid ${first.child.pid}\\b`));
  }
  assert.equal(await exited(first.child, 60_000), 0, first.output());
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).lr, 0.1);
  assert.ok(!fs.existsSync(lockFile), 'released at the end');

  // Started together: the O_EXCL lock lets exactly one through.
  const both = [start(run(path.join(d, 'pair'), 3000, '--lr', '0.1')), start(run(path.join(d, 'pair'), 3000, '--lr', '0.05'))];
  const codes = await Promise.all(both.map((p) => exited(p.child, 60_000)));
  assert.deepEqual([...codes].sort(), [0, 1], both.map((p) => p.output()).join('\n'));
  const loser = both[codes.indexOf(1)];
  const winner = both[codes.indexOf(0)];
  assert.match(loser.output(), new RegExp(`in use by another run \\(pid ${winner.child.pid}\\b`));
  const lrs = readJsonl(path.join(d, 'pair', 'log.jsonl')).filter((r) => r.type === 'start').map((r) => (r.config as { lr: number }).lr);
  assert.equal(lrs.length, 1, 'one run in the log');

  // A lock left by a killed run (its pid gone) does not block.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  fs.mkdirSync(path.join(d, 'stale'));
  fs.writeFileSync(path.join(d, 'stale', 'run.lock'), JSON.stringify({ pid: Number(dead.stdout), host: os.hostname(), procStart: null, started: 'then' }));
  const r = cli(run(path.join(d, 'stale'), 64));
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!fs.existsSync(path.join(d, 'stale', 'run.lock')));
});

test('two runs in one folder, data-parallel: the --nproc 2 launcher holds the lock for its workers; a second run is refused with its pid', async () => {
  const d = tmp();
  const out = path.join(d, 'r');
  const job = start([...run(out, 3000), '--nproc', '2']);
  const lockFile = path.join(out, 'run.lock');
  await until(() => fs.existsSync(lockFile) && fs.readFileSync(lockFile, 'utf8').includes('}'), 20_000, 'the launcher\'s lock');
  assert.equal(JSON.parse(fs.readFileSync(lockFile, 'utf8')).pid, job.child.pid);
  const r = cli(run(out, 1500));
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`in use by another run \\(pid ${job.child.pid}\\b`));
  assert.equal(await exited(job.child, 90_000), 0, job.output());
  assert.ok(fs.existsSync(path.join(out, 'final.pth')));
  assert.ok(!fs.existsSync(lockFile));
});

// ------------------------------------------------------------------ 3. divergence

test('divergence: no checkpoint holds NaN/inf, the run stops with a diverged record (lr 3000 with warm-up; lr 1e6 with and without --save-every)', () => {
  const d = tmp();
  // The loss stays finite (~1e18) but BatchNorm's running_var becomes inf: caught before the epoch's save.
  const a = cli(run(`${d}/a`, 128, '--lr', '3000', '--warmup', '2', '--epochs', '2'));
  assert.equal(a.status, 1, a.stderr);
  assert.doesNotMatch(a.stdout, /done/);
  assert.match(a.stderr, /training diverged at iteration \d+ \(lr [\d.e+]+\): .*running_var holds inf \(not saved\); no checkpoint was written/);
  for (const f of ['latest.pth', 'best.pth', 'final.pth']) assert.ok(!fs.existsSync(`${d}/a/${f}`), `${f} not written`);
  const rec = readJsonl(`${d}/a/log.jsonl`).find((r) => r.type === 'diverged');
  assert.ok(rec && String(rec.what).includes('running_var'), 'a diverged record');

  const b = cli(run(`${d}/b`, 128, '--lr', '1e6', '--epochs', '2', '--save-every', '2'));
  assert.equal(b.status, 1, b.stderr);
  assert.match(b.stderr, /diverged .*latest\.pth keeps iteration 2, the last finite state/);
  assert.deepEqual(nonFinite(`${d}/b/latest.pth`), [], 'latest.pth is finite');
  assert.equal(readJsonl(`${d}/b/log.jsonl`).find((r) => r.type === 'diverged')?.lastSaved, 2);

  // Without periodic saves the loss becomes NaN first (iteration 11 here): recorded, nothing saved.
  const c = cli(run(`${d}/c`, 512, '--lr', '1e6'));
  assert.equal(c.status, 1, c.stderr);
  assert.match(c.stderr, /training diverged at iteration \d+ \(lr [\d.e+]+\): the loss became NaN; no checkpoint was written/);
  assert.equal(readJsonl(`${d}/c/log.jsonl`).find((r) => r.type === 'diverged')?.loss, 'NaN');
  assert.ok(!fs.existsSync(`${d}/c/latest.pth`));

  // The report lists the diverged runs with where they stopped and what was kept.
  const rep = cli(['report', `${d}/b`, `${d}/c`, '--out', `${d}/r.html`, '--no-weights']);
  assert.equal(rep.status, 0, rep.stderr);
  const html = fs.readFileSync(`${d}/r.html`, 'utf8');
  assert.ok(html.includes('Runs that diverged'), 'a section of diverged runs');
  assert.match(html, /latest\.pth keeps iteration 2/);
  assert.match(html, /the loss became NaN; no checkpoint was written/);
});

test('--resume --override lr continues with another learning rate, recorded in the log and config.json; without it the change is refused', () => {
  const d = tmp();
  assert.equal(cli(run(`${d}/r`, 128, '--lr', '0.05', '--max-steps', '3')).status, 0);
  const refused = cli(run(`${d}/r`, 128, '--lr', '0.02', '--resume'));
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /different settings \(lr\).*override: lr/);
  assert.equal(cli(run(`${d}/r`, 128, '--lr', '0.02', '--override', 'lr')).status, 2, '--override without --resume');
  const r = cli(run(`${d}/r`, 128, '--lr', '0.02', '--resume', '--override', 'lr'));
  assert.equal(r.status, 0, r.stderr);
  const resume = readJsonl(`${d}/r/log.jsonl`).find((x) => x.type === 'resume');
  assert.deepEqual(resume?.overrides, { lr: { from: 0.05, to: 0.02 } });
  assert.equal(JSON.parse(fs.readFileSync(`${d}/r/config.json`, 'utf8')).lr, 0.02);
  assert.equal(readJsonl(`${d}/r/log.jsonl`).filter((x) => x.type === 'end').length, 1);
});

test('eval, deploy, export and --init refuse a checkpoint holding NaN or inf, naming the file', () => {
  const d = tmp();
  assert.equal(cli(run(`${d}/r`, 64)).status, 0);
  const sd = weights(`${d}/r/final.pth`);
  const bad = `${d}/r/nan.pth`;
  torch.tidy(() => {
    const od = new PyOrderedDict<PyValue>();
    for (const [k, v] of sd) od.set(k, k.endsWith('running_var') ? v.mul(Infinity) : v);
    savePth(bad, od);
  });
  for (const args of [['eval', '--checkpoint', bad, '--data', 'synthetic:64'], ['deploy', '--checkpoint', bad, '--out', `${d}/dep.pth`],
    ['export', '--checkpoint', bad, '--out', `${d}/m.onnx`], run(`${d}/init`, 64, '--init', bad)]) {
    const r = cli(args);
    assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`${bad}: the weights hold non-finite values \\(.*running_var \\(inf\\)\\)`), args[0]);
  }
  assert.ok(!fs.existsSync(`${d}/dep.pth`) && !fs.existsSync(`${d}/m.onnx`));
});

// ------------------------------------------------------------------ 4. logs and the report

test('logs: a cut last line is skipped and counted by report, and removed when the run resumes; whole lines only', () => {
  const d = tmp();
  assert.equal(cli(run(`${d}/r`, 128, '--max-steps', '3', '--log-every', '1')).status, 0);
  const log = `${d}/r/log.jsonl`;
  const whole = fs.readFileSync(log, 'utf8');
  fs.writeFileSync(log, whole + whole.split('\n')[1].slice(0, 40)); // a crash mid-record
  const rep = cli(['report', `${d}/r`, '--no-weights', '--out', `${d}/report.html`]);
  assert.equal(rep.status, 0, rep.stderr);
  assert.match(rep.stdout, /log\.jsonl: skipped 1 unreadable line\b/);
  const r = cli(run(`${d}/r`, 128, '--resume'));
  assert.equal(r.status, 0, r.stderr);
  const after = readLog(log);
  assert.equal(after.unreadable, 0, 'the cut line is gone');
  assert.ok(fs.readFileSync(log, 'utf8').startsWith(whole));
  assert.equal(after.records.find((x) => x.type === 'resume')?.repairedLogBytes, 40);
});

test('--resume of a finished run says "already finished" and changes nothing', () => {
  const d = tmp();
  assert.equal(cli(run(`${d}/r`, 64)).status, 0);
  const snap = () => Object.fromEntries(fs.readdirSync(`${d}/r`).map((f) => [f, fs.readFileSync(`${d}/r/${f}`).toString('base64')]));
  const before = snap();
  const r = cli(run(`${d}/r`, 64, '--resume'));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /already finished: .* \(epoch 1 of 1\); nothing changed/);
  assert.deepEqual(snap(), before);
});

test('a mid-epoch resume logs the epoch\'s train loss and accuracy of an uninterrupted run (the running sums are in the checkpoint)', () => {
  const d = tmp();
  assert.equal(cli(run(`${d}/whole`, 128)).status, 0);
  assert.equal(cli(run(`${d}/cut`, 128, '--max-steps', '3')).status, 0);
  assert.equal(cli(run(`${d}/cut`, 128, '--resume')).status, 0);
  const epoch = (dir: string) => readJsonl(`${dir}/log.jsonl`).filter((x) => x.type === 'epoch');
  const [w] = epoch(`${d}/whole`);
  const c = epoch(`${d}/cut`);
  assert.equal(c.length, 1);
  assert.equal(c[0].trainLoss, w.trainLoss);
  assert.equal(c[0].trainAcc, w.trainAcc);
});

// ------------------------------------------------------------------ 5. messages

test('messages in the user\'s words: --out naming a file, a read-only mount (no temporary file left), a full disk at start', (t) => {
  const d = tmp();
  fs.writeFileSync(`${d}/file`, 'x');
  let r = cli(run(`${d}/file`, 64));
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`run folder ${d}/file is a file, not a folder`));
  r = cli(run(`${d}/file/sub`, 64));
  assert.match(r.stderr, new RegExp(`cannot make run folder ${d}/file/sub: ${d}/file is a file, not a folder`));

  const ro = tmpfs(t, '1m');
  if (!ro) return;
  fs.mkdirSync(`${ro}/existing`);
  execFileSync('mount', ['-o', 'remount,ro', ro]);
  for (const out of [`${ro}/existing`, `${ro}/new/run`]) {
    r = cli(run(out, 64));
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`${out}: the file system is read-only`));
  }
  assert.deepEqual(fs.readdirSync(`${ro}/existing`), []);

  const full = tmpfs(t, '64k');
  if (!full) return;
  fillTo(full, 0);
  r = cli(run(`${full}/r`, 64));
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`${full}/r.*no space left on the disk \\(0 bytes free`));
});

test('messages: a checkpoint of another architecture names the file (eval, --init); --workers above the cores warns as PyTorch\'s DataLoader', () => {
  const d = tmp();
  assert.equal(cli(run(`${d}/r`, 64)).status, 0);
  const file = `${d}/r/final.pth`;
  for (const args of [['eval', '--checkpoint', file, '--data', 'synthetic:64', '--arch', 'RepOpt-VGG-A0'], ['train', '--data', 'synthetic:64', '--arch', 'RepOpt-VGG-A0', '--mode', 'plain', '--init', file, '--out', `${d}/x`, '--quiet']]) {
    const r = cli(args);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`${file}: does not fit the model RepOpt-VGG-A0 .*\\d+ missing keys: [^,]+(, [^,]+){5}, \\.\\.\\.$`, 'm'), args[0]);
    assert.ok(r.stderr.length < 600, 'a few keys, not hundreds');
  }
  const many = os.availableParallelism() + 1;
  const r = cli(run(`${d}/w`, 64, '--workers', String(many), '--max-steps', '1'));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`warning: ${many} loader workers requested; the suggested maximum on this system is ${os.availableParallelism()}`));
});
