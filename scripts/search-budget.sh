#!/usr/bin/env bash
# The search-budget table of docs/fine-tuning.md: Hyper-Search epochs (0/1/2), from scratch and warm-started from a
# pretrained target, vs the top-1 of RepOpt training with the searched scales, on Fashion-MNIST with a small custom
# RepOpt-VGG. Resumable: every step whose output exists is skipped; run it again after an interruption.
#   nohup scripts/search-budget.sh runs/search-budget 0 1 > runs/search-budget.log 2>&1 &
# (folder, then seeds). Summary: scripts/search-budget.sh runs/search-budget --table
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/search-budget}; shift || true
CLI="node dist/src/cli/main.js"
NET="--data fashion-mnist --blocks 1,2,2,1 --widths 0.25,0.25,0.25,0.5 --strides 1,1,2,2,2 --batch-size 128 --threads ${THREADS:-1} --quiet"
if [ "${1:-}" = "--table" ]; then
  python3 - "$OUT" <<'PY'
import json, sys, glob, os, statistics
out = sys.argv[1]
acc = {}
for f in sorted(glob.glob(f'{out}/seed-*/train-*/log.jsonl')):
    end = [json.loads(l) for l in open(f) if '"type":"end"' in l]
    if not end: continue
    seed = f.split('/seed-')[1].split('/')[0]
    arm = os.path.basename(os.path.dirname(f))[len('train-'):]
    acc.setdefault(arm, {})[seed] = end[-1]['valTop1'] * 100
pre = {}
for f in sorted(glob.glob(f'{out}/seed-*/pretrain/log.jsonl')):
    end = [json.loads(l) for l in open(f) if '"type":"end"' in l]
    if end: pre[f.split('/seed-')[1].split('/')[0]] = end[-1]['valTop1'] * 100
fmt = lambda d: ' / '.join(f'{v:.2f}' for _, v in sorted(d.items())) + (f' (mean {statistics.mean(d.values()):.2f})' if len(d) > 1 else '')
print('| search epochs | search from scratch: RepOpt top-1 % | warm-started search: RepOpt top-1 % |')
print('|---|---|---|')
print(f"| 0 (initial scales) | {fmt(acc.get('e0', {}))} | (same scales) |")
for e in (1, 2):
    print(f"| {e} | {fmt(acc.get(f'scratch-e{e}', {}))} | {fmt(acc.get(f'warm-e{e}', {}))} |")
print(f'\npretrained target (plain, 1 epoch): top-1 {fmt(pre)}')
PY
  exit 0
fi
SEEDS=${*:-0}
for SEED in $SEEDS; do
  D=$OUT/seed-$SEED
  mkdir -p "$D"
  # The pretrained target: the plain form trained 1 epoch (what a user's pretrained checkpoint is).
  [ -f "$D/pretrain/final.pth" ] || $CLI train --mode plain $NET --epochs 1 --lr 0.05 --seed $SEED --out "$D/pretrain" --resume
  # 0 search epochs: the hs model's initial scales.
  [ -f "$D/scales-e0.pth" ] || node --input-type=module -e "
    import { familyOf } from './dist/src/models/index.js';
    const spec = { blocks: [1,2,2,1], widths: [0.25,0.25,0.25,0.5], strides: [1,1,2,2,2], inChannels: 1, numClasses: 10 };
    const f = familyOf(spec); const m = f.create(spec, f.hsMode); const s = f.extractScales(m);
    f.saveScales('$D/scales-e0.pth', s, m, f.label(spec));"
  # Searches of 2 epochs at a constant lr; the scales after epoch 1 are latest.pth at step 469 (--max-steps), then --resume.
  for START in scratch warm; do
    S=$D/search-$START
    PRE=""; [ $START = warm ] && PRE="--pretrained $D/pretrain/final.pth"
    if [ ! -f "$D/scales-$START-e1.pth" ]; then
      $CLI search $NET $PRE --epochs 2 --schedule constant --lr 0.05 --seed $SEED --no-eval --out "$S" --resume --max-steps 469
      cp "$S/latest.pth" "$D/scales-$START-e1.pth"
    fi
    [ -f "$S/scales.pth" ] || $CLI search $NET $PRE --epochs 2 --schedule constant --lr 0.05 --seed $SEED --no-eval --out "$S" --resume
    cp -n "$S/scales.pth" "$D/scales-$START-e2.pth"
  done
  # RepOpt training (from scratch, Rule of Initialization) with each set of scales, 1 epoch.
  for ARM in e0 scratch-e1 scratch-e2 warm-e1 warm-e2; do
    [ -f "$D/train-$ARM/final.pth" ] || $CLI train --mode target --scales "$D/scales-$ARM.pth" $NET --epochs 1 --lr 0.05 --seed $SEED --out "$D/train-$ARM" --resume
  done
done
