/**
 * `repopt search`, `repopt train` and `repopt eval`: flags -> options of the library's `runTraining` /
 * `evaluateCheckpoint` (src/train/run.ts) -> printed lines.
 *   search: Hyper-Search (the `hs` model, plain SGD), writes OUT/scales.pth (+ .json)
 *   train:  --mode target (RepOptimizer from --scales), repvgg or plain baselines
 *   eval:   top-1/top-5/loss of a checkpoint on a data set
 */
import { runTraining, evaluateCheckpoint, type TrainingRunOptions, type TrainingRunResult } from '../train/run.js';
import { parseCommand, type Flags } from './flags.js';
import { EVAL_COMMAND, SEARCH_COMMAND, TRAIN_COMMAND } from './commands.js';
import { applyThreads } from './threads.js';

/** The flags search and train share. */
type SearchFlags = Omit<Flags<typeof SEARCH_COMMAND.flags>, 'stop-when-settled'>;
type Log = (line: string) => void;

/** The flags search and train share, as the library's options. */
function commonOptions(f: SearchFlags, log: Log): Omit<TrainingRunOptions, 'mode'> {
  return {
    data: f.data,
    testData: f['test-data'],
    imageSize: f['image-size'],
    augment: !f['no-augment'],
    shuffle: !f['no-shuffle'],
    evaluate: !f['no-eval'],
    workers: f.workers,
    model: { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides, file: f.model },
    init: f.init,
    pretrained: f.pretrained,
    freeze: f.freeze === undefined ? undefined : f.freeze.split(',').map((x) => x.trim()),
    epochs: f.epochs,
    batchSize: f['batch-size'],
    lr: f.lr,
    lrPer256: f['lr-per-256'],
    momentum: f.momentum,
    nesterov: f.nesterov,
    weightDecay: f.wd,
    decayAll: f['wd-all'],
    schedule: f.schedule,
    warmupEpochs: f.warmup,
    labelSmoothing: f['label-smoothing'],
    emaDecay: f.ema,
    clipNorm: f.clip,
    seed: f.seed,
    out: f.out,
    resume: f.resume,
    override: f.override,
    logEvery: f['log-every'],
    maxSteps: f['max-steps'],
    saveEvery: f['save-every'],
    saveEveryMinutes: f['save-every-min'],
    quiet: f.quiet,
    threads: f.threads,
    distTimeoutSec: f['dist-timeout'],
    syncBatchNorm: f['sync-bn'],
    overlapAllreduce: f['overlap-allreduce'],
    bucketCapMb: f['bucket-cap-mb'],
    log,
  };
}

/** `repopt search ARGS` / `repopt train ARGS` in this process (the launcher flags are handled before). */
export async function runTrainingCommand(argv: string[], command: 'search' | 'train', log: Log): Promise<TrainingRunResult> {
  if (command === 'search') {
    // Search trains the hs model with plain SGD: it has no RepOpt flags.
    const { flags: f } = parseCommand(SEARCH_COMMAND, argv);
    return runTraining({ ...commonOptions(f, log), mode: 'hs', optimizer: 'sgd', stopWhenSettled: f['stop-when-settled'] });
  }
  const { flags: f } = parseCommand(TRAIN_COMMAND, argv);
  return runTraining({
    ...commonOptions(f, log),
    mode: f.mode,
    scales: f.scales,
    identityInit: f['identity-init'],
    optimizer: f.optimizer,
    signedAdamW: f['signed-adamw'],
    customL2: f['custom-l2'],
  });
}

/**
 * `repopt eval --checkpoint FILE --data SPEC`: the model from --arch / --blocks --widths or the run's
 * config.json beside the checkpoint, the mode from --mode or the state dict, the classes from the data.
 */
export async function runEval(argv: string[], log: Log): Promise<number> {
  const { flags: f } = parseCommand(EVAL_COMMAND, argv);
  applyThreads(f.threads);
  const r = await evaluateCheckpoint({
    checkpoint: f.checkpoint,
    data: f.data,
    model: { arch: f.arch, blocks: f.blocks, widths: f.widths, strides: f.strides, file: f.model },
    mode: f.mode,
    imageSize: f['image-size'],
    batchSize: f['batch-size'],
    workers: f.workers,
  });
  if (f.json) log(JSON.stringify({ checkpoint: f.checkpoint, data: f.data, arch: r.arch, mode: r.mode, top1: r.top1, top5: r.top5, loss: r.loss, count: r.count }));
  else log(`${f.checkpoint} (${r.arch}, ${r.mode}) on ${r.dataset} test (${r.count} images): top-1 ${(r.top1 * 100).toFixed(2)}%  top-5 ${(r.top5 * 100).toFixed(2)}%  loss ${r.loss.toFixed(4)}`);
  return 0;
}
