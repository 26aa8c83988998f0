/** What the training tests share: the CLI as a child process, a run's weights, and their relative difference. */
import { spawnSync, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import * as torch from '../../src/torch/index.js';
import { loadPth, extractStateDict } from '../../src/io/pth.js';
import { REPO_ROOT } from './paths.js';

export const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
export const CLI_ENV = { ...process.env, CI: 'true' };

/** Runs `repopt ARGS` to the end (CI=true: plain progress lines). */
export function cli(args: string[], env: NodeJS.ProcessEnv = CLI_ENV): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The state dict in a checkpoint file. */
export function weights(file: string): Map<string, torch.Tensor> {
  return extractStateDict(loadPth(file), file);
}

/** max |a - b| / max |b|, in float64. */
export function maxRel(a: torch.Tensor, b: torch.Tensor): number {
  return torch.tidy(() => {
    const scale = Math.max(b.abs().max().to('float64').item(), 1e-12);
    return a.to('float64').sub(b.to('float64')).abs().max().item() / scale;
  });
}

/** Resolves with a child's exit code (128 + signal number if killed); rejects after boundMs: a hang. */
export function exited(child: ChildProcess, boundMs: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process still running after ${boundMs} ms (a hang)`)), boundMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? (signal ? 128 + os.constants.signals[signal] : null));
    });
  });
}
