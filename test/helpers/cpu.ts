/** What this CPU can run, for tests that must pass on every CPU of the machine kind (AVX-512 or not). */
import { readFileSync } from 'node:fs';

/** The ATEN_CPU_CAPABILITY settings this CPU can run (libtorch dies on one it lacks), from /proc/cpuinfo. */
export function cpuCapabilities(): Set<string> {
  let flags = new Set<string>();
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    flags = new Set((/^flags\s*:(.*)$/m.exec(info)?.[1] ?? '').trim().split(/\s+/));
  } catch {
    // not Linux: only the baseline is known to run
  }
  const caps = new Set(['default']);
  if (flags.has('avx2') && flags.has('fma')) caps.add('avx2');
  if (['avx512f', 'avx512bw', 'avx512vl', 'avx512dq'].every((f) => flags.has(f)) && caps.has('avx2')) caps.add('avx512');
  return caps;
}

