/** Paths the tests share: the repository root and the release's scale files beside it. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SCALES_DIR = path.resolve(REPO_ROOT, '../shared/reference/scales');
export const scaleFile = (name: string) => path.join(SCALES_DIR, name);
