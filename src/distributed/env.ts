/**
 * Where this process sits in a data-parallel job, from torchrun's environment
 * variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT), which `repopt ... --nproc N` sets for its workers too.
 */
export interface DistEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  masterAddr: string;
  masterPort: number;
}

function intVar(env: NodeJS.ProcessEnv, name: string, dflt?: number): number {
  const v = env[name];
  if (v === undefined || v === '') {
    if (dflt === undefined) throw new Error(`${name} is not set (torchrun-style launch needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)`);
    return dflt;
  }
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got '${v}'`);
  return n;
}

/** The job described by the environment, or null when this is a single-process run (no WORLD_SIZE, or 1). */
export function distEnvFrom(env: NodeJS.ProcessEnv = process.env): DistEnv | null {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return null;
  const worldSize = intVar(env, 'WORLD_SIZE');
  if (worldSize < 1) throw new Error(`WORLD_SIZE must be at least 1, got ${worldSize}`);
  if (worldSize === 1) return null;
  const rank = intVar(env, 'RANK');
  if (rank >= worldSize) throw new Error(`RANK ${rank} is not below WORLD_SIZE ${worldSize}`);
  const masterPort = intVar(env, 'MASTER_PORT');
  if (masterPort < 1 || masterPort > 65535) throw new Error(`MASTER_PORT must be in 1..65535, got ${masterPort}`);
  return {
    rank,
    worldSize,
    localRank: intVar(env, 'LOCAL_RANK', rank),
    localWorldSize: intVar(env, 'LOCAL_WORLD_SIZE', worldSize),
    masterAddr: env.MASTER_ADDR || '127.0.0.1',
    masterPort,
  };
}
