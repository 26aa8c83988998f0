/**
 * Paths the tests share: the repository root and the release's scale files, copied into
 * test/fixtures/scales with their MIT licence (DingXiaoH/RepOptimizers, the release of
 * Ding et al., ICLR 2023, arXiv 2205.15242).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SCALES_DIR = path.resolve(REPO_ROOT, 'test/fixtures/scales');
export const scaleFile = (name: string) => path.join(SCALES_DIR, name);
