/**
 * Loads the native addon (native/repopt.cc) and types its surface.
 * Tensor and generator handles are opaque N-API externals owned by libtorch.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

declare const handleBrand: unique symbol;
/** An opaque native tensor handle (an N-API external holding an at::Tensor). */
export type Handle = { readonly [handleBrand]: 'Tensor' };
declare const generatorBrand: unique symbol;
export type GeneratorHandle = { readonly [generatorBrand]: 'Generator' };
declare const groupBrand: unique symbol;
/** An opaque c10d process group (native/distributed.cc). */
export type GroupHandle = { readonly [groupBrand]: 'ProcessGroup' };
declare const reducerBrand: unique symbol;
/** An opaque gradient reducer: allreduces overlapped with backward (native/distributed.cc). */
export type ReducerHandle = { readonly [reducerBrand]: 'Reducer' };

export interface NewGroupOptions {
  masterAddr: string;
  masterPort: number;
  rank: number;
  worldSize: number;
  timeoutMs: number;
  backend: 'gloo' | 'nccl';
  /** Gloo: bind to this network interface (GLOO_SOCKET_IFNAME). */
  interface?: string;
  /** Gloo: bind to this host name or address. */
  hostname?: string;
}

export type ReduceOpName = 'sum' | 'max' | 'min' | 'product';

/** The native cache of large CPU tensor buffers (native/cpu-allocator.cc), in bytes and request counts. */
export interface CpuCacheStats {
  /** Whether the cache is libtorch's CPU allocator in this process (REPOPT_CPU_CACHE=0: not). */
  installed: boolean;
  /** Buffers of at least 1 MiB in use by tensors. */
  liveBytes: number;
  /** Buffers kept for reuse. */
  cachedBytes: number;
  hits: number;
  misses: number;
}

export interface NativeBinding {
  opHandle(name: string, overload: string): number;
  opSchema(id: number): string;
  call(id: number, args: unknown[]): unknown;
  fromBuffer(data: ArrayBufferView | ArrayBuffer, shape: number[], dtype: number): Handle;
  toBuffer(h: Handle): ArrayBuffer;
  shape(h: Handle): number[];
  strides(h: Handle): number[];
  dtype(h: Handle): number;
  requiresGrad(h: Handle): boolean;
  isLeaf(h: Handle): boolean;
  gradFnName(h: Handle): string | null;
  isContiguous(h: Handle, channelsLast: boolean): boolean;
  isDisposed(h: Handle): boolean;
  storageId(h: Handle): bigint;
  setRequiresGrad(h: Handle, value: boolean): void;
  backward(tensors: Handle[], grads: (Handle | null)[] | null, retainGraph: boolean, createGraph: boolean): void;
  grad(h: Handle): Handle | null;
  setGrad(h: Handle, g: Handle | null): void;
  gradEnabled(): boolean;
  setGradEnabled(enabled: boolean): void;
  dispose(h: Handle): void;
  liveTensors(): number;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  manualSeed(seed: number | bigint): void;
  newGenerator(seed: number | bigint): GeneratorHandle;
  generatorState(g: GeneratorHandle): Handle;
  setGeneratorState(g: GeneratorHandle, state: Handle): void;
  parallelInfo(): string;
  cpuCacheStats(): CpuCacheStats;
  blasNumThreads(): number;
  trimCpuCache(): void;
  emptyCpuCache(): void;
  distBackends(): { gloo: boolean; nccl: boolean };
  distNewGroup(o: NewGroupOptions): Promise<GroupHandle>;
  distAllreduce(g: GroupHandle, tensors: Handle[], op: ReduceOpName, divisor: number, bucketBytes: number): Promise<void>;
  distBroadcast(g: GroupHandle, tensors: Handle[], root: number, bucketBytes: number): Promise<void>;
  distBarrier(g: GroupHandle): Promise<void>;
  distAllreduceSumGrad(g: GroupHandle, t: Handle): Handle;
  /** Fused training-mode BatchNorm [+ ReLU] (native/kernels.cc); null where it does not apply. */
  batchNormTrain(
    input: Handle,
    weight: Handle | null,
    bias: Handle | null,
    runningMean: Handle | null,
    runningVar: Handle | null,
    momentum: number,
    eps: number,
    relu: boolean,
  ): Handle | null;
  /** One fused SGD step in place (native/kernels.cc); the momentum buffers it created, or null where it does not apply. */
  sgdStep(
    params: Handle[],
    grads: Handle[],
    mults: (Handle | null)[],
    bufs: (Handle | null)[],
    hyper: { lr: number; momentum: number; dampening: number; weightDecay: number; nesterov: boolean },
  ): (Handle | null)[] | null;
  /** conv2d with native/kernels.cc's weight gradient for tiny outputs; null where it does not apply. */
  convSmallOutput(input: Handle, weight: Handle, stride: [number, number], padding: [number, number], maxPixels: number): Handle | null;
  convSmallOutputProblems(): { chain: number; libtorch: number };
  fusedKernelModel(): { lanes: number; fma: boolean; isa: 'avx512' | 'avx2' | 'default'; hostIsa: 'avx512' | 'avx2' | 'default' } | null;
  distFailed(g: GroupHandle): boolean;
  distReducerNew(g: GroupHandle, params: Handle[], bucketBytes: number, firstBucketBytes: number, divisor: number): ReducerHandle;
  distReducerInfo(r: ReducerHandle): { buckets: number[][]; launchSeconds: number; launched: number; missing: number[] };
  distReducerFinish(r: ReducerHandle): Promise<void>;
  distReducerDetach(r: ReducerHandle): void;
  distDestroy(g: GroupHandle): void;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

function load(): NativeBinding {
  const candidates = [
    process.env.REPOPT_ADDON,
    path.join(root, 'build/Release/repopt.node'),
    path.join(root, 'build/Debug/repopt.node'),
  ].filter((p): p is string => !!p);
  const file = candidates.find((p) => existsSync(p));
  if (!file) {
    throw new Error(
      'repopt native addon not built. Run `npm run setup` (installs libtorch-dev and builds the addon), ' +
        'or build it with `npm run build:native` once libtorch is installed (apt-get install libtorch-dev).',
    );
  }
  // libgomp (libtorch's thread pool) reads its wait policy when it loads, i.e. on this require.
  // Its default spins idle threads for a while after each parallel region; with anything else
  // on the cores (our data-loader worker, another process) the spinning threads get
  // descheduled at every barrier: measured 62-75 img/s vs 680 img/s passive on a loaded 2-core
  // machine. Passive waiting unless the user chose a policy.
  if (process.env.OMP_WAIT_POLICY === undefined && process.env.GOMP_SPINCOUNT === undefined) {
    process.env.OMP_WAIT_POLICY = 'PASSIVE';
  }
  const require = createRequire(import.meta.url);
  try {
    return require(file) as NativeBinding;
  } catch (e) {
    const msg = (e as Error).message;
    if (/lib(torch|c10)[^ ]*\.so/.test(msg)) {
      throw new Error(
        `libtorch shared libraries not found (${msg}). Install them with: apt-get install libtorch-dev ` +
          'libopenblas0-pthread — or, for a custom LIBTORCH build, add its lib/ folder to LD_LIBRARY_PATH.',
      );
    }
    throw e;
  }
}

export const native: NativeBinding = load();

/**
 * Primes glibc malloc's dynamic thresholds (a performance setting only; no
 * values change). glibc serves requests above M_MMAP_THRESHOLD (128 KiB at
 * start) with fresh mmaps and, when a freed mmapped chunk is larger than the
 * threshold (and at most 32 MiB), raises the threshold to its size and the heap
 * trim threshold to twice that. Training frees and reallocates the same
 * multi-MiB activations every step; with the thresholds still low they go back
 * to the kernel each step and come back as page faults (about 19k minor faults,
 * tens of ms, per SmallVGG C=32 step; 4k in Python, whose start-up happens to
 * raise the thresholds). Allocating and freeing one untouched 31 MiB block at
 * load raises them as if a large tensor had been freed: 2k faults per step.
 * Set REPOPT_NO_MALLOC_PRIME=1 to skip. Other allocators just see one
 * allocation that is never touched.
 * With the addon's large-buffer cache (the default; REPOPT_CPU_CACHE=0 turns
 * it off) the addon primes glibc natively and serves every buffer of 1 MiB or
 * more itself, without page faults and without the heap fragmentation that
 * the 31 MiB threshold caused near a memory cap (native/cpu-allocator.cc,
 * `cpuCacheStats` in gc.ts); glibc keeps only the smaller ones.
 */
function primeAllocator(b: NativeBinding): void {
  if (process.platform !== 'linux' || process.env.REPOPT_NO_MALLOC_PRIME === '1') return;
  // With the large-buffer cache (native/cpu-allocator.cc, the default) the addon primes glibc itself,
  // with malloc: a tensor of 31 MiB would just sit in the cache.
  if (b.cpuCacheStats().installed) return;
  try {
    const empty = b.opHandle('aten::empty', 'memory_format');
    b.dispose(b.call(empty, [[31 * 1024 * 1024], 0 /* uint8 */]) as Handle);
  } catch {
    // Not essential: only a performance setting.
  }
}
primeAllocator(native);
