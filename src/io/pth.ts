/**
 * PyTorch zip checkpoints (`torch.save` / `torch.load`, `.pth`).
 *
 * Layout of an archive (prefix `archive/` on save; on load, whatever the first
 * entry's top folder is):
 *   <prefix>/data.pkl      protocol-2 pickle of the object
 *   <prefix>/byteorder     "little" (written by newer torch; read if present)
 *   <prefix>/data/<key>    raw storage bytes, one record per storage
 *   <prefix>/version       "3\n"
 *
 * Values come back in the JS representation documented in ./pickle.ts
 * (dict → Map, OrderedDict → PyOrderedDict, tuple → PyTuple, ...), with tensors
 * as `Tensor`s of the tensor layer. A `torch.save(model.state_dict())` file loads
 * as a `PyOrderedDict` of name → Tensor in file order; its `_metadata` attribute
 * is kept in `.attrs`.
 *
 * Tensors returned by `loadPth` own their memory (each is a clone of a view
 * of its storage); views that shared a storage in Python no longer share
 * memory after loading. On save, each distinct Tensor object gets its own
 * (contiguous) storage; the same Tensor object written twice is stored once
 * and loads as one object in Python.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { Tensor, fromTypedArray, isFloating, type DType, type TypedArray } from '../torch/index.js';
import { typedArrayFor } from '../torch/dtype.js';
import {
  pickle,
  unpickle,
  PyCallable,
  PyGlobal,
  PyOrderedDict,
  PyPersistent,
  PyReduce,
  PyTuple,
  type PyValue,
  type UnpickleOptions,
} from './pickle.js';
import { openZip, writeZip } from './zip.js';
import { WriteError, fsyncDir, reasonOf, writeFileAtomic } from './durable.js';
import { dirname } from 'node:path';

export type { PyValue } from './pickle.js';

/** Python storage class name for each dtype. */
export const STORAGE_CLASS: Record<DType, string> = {
  float32: 'FloatStorage',
  float64: 'DoubleStorage',
  float16: 'HalfStorage',
  bfloat16: 'BFloat16Storage',
  int64: 'LongStorage',
  int32: 'IntStorage',
  int16: 'ShortStorage',
  int8: 'CharStorage',
  uint8: 'ByteStorage',
  bool: 'BoolStorage',
};

const DTYPE_OF_STORAGE = new Map<string, DType>(Object.entries(STORAGE_CLASS).map(([d, s]) => [s, d as DType]));

/** Python dtype attribute names (`torch.float32`, `torch.half`, ...). */
const DTYPE_OF_TORCH_ATTR: Record<string, DType> = {
  float32: 'float32',
  float: 'float32',
  float64: 'float64',
  double: 'float64',
  float16: 'float16',
  half: 'float16',
  bfloat16: 'bfloat16',
  int64: 'int64',
  long: 'int64',
  int32: 'int32',
  int: 'int32',
  int16: 'int16',
  short: 'int16',
  int8: 'int8',
  uint8: 'uint8',
  bool: 'bool',
};

export const ITEM_SIZE: Record<DType, number> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** A problem with the checkpoint's content found while rebuilding it (reported with the file name). */
class CheckpointError extends Error {}

/** Marker for a storage class global (`torch.FloatStorage`, `torch.UntypedStorage`, ...). */
class StorageType extends PyGlobal {
  constructor(
    module: string,
    name: string,
    readonly dtype: DType,
  ) {
    super(module, name);
  }
}

/** A storage record referenced by a persistent id; materialized lazily. */
class StorageRef {
  tensor: Tensor | undefined;
  constructor(
    readonly key: string,
    readonly dtype: DType,
    readonly numel: number,
  ) {}
}

function storageTypeFromGlobal(g: PyValue): DType | undefined {
  if (g instanceof StorageType) return g.dtype;
  if (g instanceof PyGlobal && g.module === 'torch') return DTYPE_OF_TORCH_ATTR[g.name];
  return undefined;
}

function typedArrayOf(dtype: DType, bytes: Uint8Array, numel: number): TypedArray {
  // fresh, aligned buffer (entry data may sit at an unaligned offset)
  const buf = new ArrayBuffer(numel * ITEM_SIZE[dtype]);
  new Uint8Array(buf).set(bytes.subarray(0, buf.byteLength));
  return typedArrayFor(dtype, buf);
}

function byteSwap(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += size) for (let k = 0; k < size; k++) out[i + k] = bytes[i + size - 1 - k];
  return out;
}

function intList(v: PyValue, what: string): number[] {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : null;
  if (!items) throw new CheckpointError(`${what} must be a tuple of ints`);
  return items.map((x) => {
    if (typeof x === 'number' && Number.isInteger(x)) return x;
    if (typeof x === 'bigint' && Number.isSafeInteger(Number(x))) return Number(x);
    throw new CheckpointError(`${what} must be a tuple of ints`);
  });
}

export interface LoadPthOptions extends UnpickleOptions {}

/**
 * Load a PyTorch zip checkpoint from a path or from its bytes. Tensors are
 * created with the tensor layer; call `dispose()` on them (or use a scope).
 */
export function loadPth(source: string | Uint8Array, options: LoadPthOptions = {}): PyValue {
  let bytes: Uint8Array;
  let label: string;
  if (typeof source === 'string') {
    label = source;
    try {
      bytes = fs.readFileSync(source);
    } catch (e) {
      throw new Error(`${label}: cannot read checkpoint (${(e as Error).message})`);
    }
  } else {
    label = '<bytes>';
    bytes = source;
  }
  return loadPthBytes(bytes, label, options);
}

/** Async variant of {@link loadPth} (the file is read asynchronously; parsing is synchronous). */
export async function loadPthAsync(source: string | Uint8Array, options: LoadPthOptions = {}): Promise<PyValue> {
  if (typeof source !== 'string') return loadPthBytes(source, '<bytes>', options);
  let bytes: Uint8Array;
  try {
    bytes = await fsp.readFile(source);
  } catch (e) {
    throw new Error(`${source}: cannot read checkpoint (${(e as Error).message})`);
  }
  return loadPthBytes(bytes, source, options);
}

function loadPthBytes(bytes: Uint8Array, label: string, options: LoadPthOptions): PyValue {
  const zip = openZip(bytes, label);
  const names = zip.names();
  if (names.length === 0) throw new Error(`${label}: empty zip archive (not a torch.save checkpoint)`);
  const slash = names[0].indexOf('/');
  let prefix = slash >= 0 ? names[0].slice(0, slash) : '';
  if (!zip.has(`${prefix}/data.pkl`)) {
    const alt = names.find((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (!alt) throw new Error(`${label}: missing data.pkl (not a torch.save zip checkpoint; entries: ${names.slice(0, 5).join(', ')})`);
    prefix = alt.slice(0, alt.indexOf('/'));
  }
  let bigEndian = false;
  if (zip.has(`${prefix}/byteorder`)) {
    const bo = new TextDecoder().decode(zip.read(`${prefix}/byteorder`)).trim();
    if (bo === 'big') bigEndian = true;
    else if (bo !== 'little') throw new Error(`${label}: unknown byteorder record ${JSON.stringify(bo)}`);
  }

  const storages = new Map<string, StorageRef>();
  const created: Tensor[] = [];

  const materialize = (ref: StorageRef): Tensor => {
    if (ref.tensor) return ref.tensor;
    const rec = `${prefix}/data/${ref.key}`;
    if (!zip.has(rec)) throw new CheckpointError(`missing storage record ${rec}`);
    let data: Uint8Array;
    try {
      data = zip.read(rec);
    } catch (e) {
      throw new CheckpointError((e as Error).message.replace(`${label}: `, ''));
    }
    const need = ref.numel * ITEM_SIZE[ref.dtype];
    if (data.length !== need) {
      throw new CheckpointError(
        `storage ${rec} has ${data.length} bytes, expected ${need} (${ref.numel} x ${ref.dtype}); size mismatch`,
      );
    }
    if (bigEndian && ITEM_SIZE[ref.dtype] > 1) data = byteSwap(data, ITEM_SIZE[ref.dtype]);
    ref.tensor = fromTypedArray(typedArrayOf(ref.dtype, data, ref.numel), [ref.numel], ref.dtype);
    return ref.tensor;
  };

  const rebuildTensor = (args: PyValue[], name: string): Tensor => {
    const [storage, offset, size, stride, requiresGrad] = args;
    if (!(storage instanceof StorageRef)) throw new CheckpointError(`${name}: first argument is not a storage`);
    const off = typeof offset === 'bigint' ? Number(offset) : offset;
    if (typeof off !== 'number' || !Number.isInteger(off) || off < 0) throw new CheckpointError(`${name}: bad storage offset`);
    const sz = intList(size, 'tensor size');
    const st = intList(stride, 'tensor stride');
    if (sz.length !== st.length) throw new CheckpointError(`${name}: size and stride lengths differ`);
    let maxIndex = off;
    let empty = false;
    for (let i = 0; i < sz.length; i++) {
      if (sz[i] < 0 || st[i] < 0) throw new CheckpointError(`${name}: negative size or stride`);
      if (sz[i] === 0) empty = true;
      maxIndex += (sz[i] - 1) * st[i];
    }
    if (!empty && maxIndex >= storage.numel) {
      throw new CheckpointError(
        `tensor [${sz}] (stride [${st}], offset ${off}) is out of bounds for storage ${storage.key} of ${storage.numel} elements`,
      );
    }
    const base = materialize(storage);
    const view = base.asStrided(sz, st, empty ? 0 : off);
    const t = view.clone();
    view.dispose();
    created.push(t);
    if (requiresGrad === true && isFloating(t.dtype)) t.requiresGrad_(true);
    return t;
  };

  const findClass = (module: string, name: string): PyValue | undefined => {
    const q = `${module}.${name}`;
    switch (q) {
      case 'torch._utils._rebuild_tensor_v2':
      case 'torch._utils._rebuild_tensor':
        return new PyCallable(module, name, (args) => rebuildTensor(args, q));
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        return new PyCallable(module, name, (args) => {
          const [data, requiresGrad] = args;
          if (!(data instanceof Tensor)) throw new CheckpointError(`${q}: data is not a tensor`);
          if (typeof requiresGrad === 'boolean' && isFloating(data.dtype)) {
            data.requiresGrad_(requiresGrad);
          }
          return data;
        });
      case 'torch.Size':
        return new PyCallable(module, name, (args) => new PyTuple(args.length ? [...(args[0] as Iterable<PyValue>)] : []));
      case 'torch.storage.UntypedStorage':
      case 'torch.UntypedStorage':
      case 'torch.storage._UntypedStorage':
        return new StorageType(module, name, 'uint8');
    }
    if (module === 'torch' || module === 'torch.storage' || module === 'torch.cuda') {
      const d = DTYPE_OF_STORAGE.get(name);
      if (d) return new StorageType(module, name, d);
    }
    return undefined;
  };

  const persistentLoad = (pid: PyValue): PyValue => {
    const items = pid instanceof PyTuple ? pid.items : Array.isArray(pid) ? pid : null;
    if (!items || items[0] !== 'storage' || items.length < 5) {
      throw new CheckpointError(`unsupported persistent id in data.pkl`);
    }
    const [, stype, key, , numel0] = items;
    const dtype = storageTypeFromGlobal(stype);
    if (!dtype) {
      const n = stype instanceof PyGlobal ? stype.qualname : String(stype);
      throw new CheckpointError(`unsupported storage type ${n}`);
    }
    const k = String(key);
    const numel = typeof numel0 === 'bigint' ? Number(numel0) : numel0;
    if (typeof numel !== 'number' || !Number.isInteger(numel) || numel < 0) throw new CheckpointError(`bad storage size for ${k}`);
    let ref = storages.get(k);
    if (!ref) {
      ref = new StorageRef(k, dtype, numel);
      storages.set(k, ref);
    }
    return ref as unknown as PyValue;
  };

  const pkl = zip.read(`${prefix}/data.pkl`);
  try {
    return unpickle(pkl, { persistentLoad, findClass }, options);
  } catch (e) {
    for (const t of created) t.dispose();
    // report content problems found by the hooks directly; keep the pickle position as context
    const err = e as Error;
    const cause = err.cause instanceof CheckpointError ? err.cause : err instanceof CheckpointError ? err : undefined;
    const at = /at byte (\d+)$/.exec(err.message);
    const msg = cause ? `${cause.message}${at ? ` (data.pkl byte ${at[1]})` : ''}` : err.message;
    throw new Error(`${label}: ${msg}`, { cause: err });
  } finally {
    for (const ref of storages.values()) ref.tensor?.dispose();
  }
}

/** Serialize a value (tensors included) to the bytes of a torch.save zip checkpoint. */
export function serializePth(value: PyValue, archiveName = 'archive'): Uint8Array {
  const records: Array<[string, Uint8Array]> = [];
  let nextKey = 0;
  const reduce = (obj: object): PyValue | undefined => {
    if (!(obj instanceof Tensor)) return undefined;
    const dtype = obj.dtype;
    const shape = obj.shape;
    const data = obj.toTypedArray(); // contiguous copy
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const numel = shape.reduce((a, b) => a * b, 1);
    if (bytes.length !== numel * ITEM_SIZE[dtype]) throw new Error(`savePth: tensor data size mismatch for ${obj.toString()}`);
    const key = String(nextKey++);
    records.push([`${archiveName}/data/${key}`, bytes]);
    const stride: number[] = new Array(shape.length);
    let s = 1;
    for (let i = shape.length - 1; i >= 0; i--) {
      stride[i] = s;
      s *= Math.max(shape[i], 1);
    }
    const pid = new PyPersistent(new PyTuple(['storage', new PyGlobal('torch', STORAGE_CLASS[dtype]), key, 'cpu', numel]));
    return new PyReduce(
      new PyGlobal('torch._utils', '_rebuild_tensor_v2'),
      new PyTuple([pid, 0, new PyTuple(shape), new PyTuple(stride), obj.requiresGrad, new PyOrderedDict()]),
    );
  };
  const pkl = pickle(value, { reduce });
  const enc = new TextEncoder();
  return writeZip([
    [`${archiveName}/data.pkl`, pkl],
    [`${archiveName}/byteorder`, enc.encode('little')],
    ...records,
    [`${archiveName}/version`, enc.encode('3\n')],
  ]);
}

/**
 * Write `value` as a torch.save-compatible zip checkpoint. Atomic and complete: the bytes go to a
 * temporary file in the same folder, all of them (a short write on a full disk continues or fails),
 * are flushed, then renamed over `path`, so a failure never leaves a half-written checkpoint and
 * keeps the previous one. Failures are WriteErrors naming `path` and the reason (the free space).
 */
export function savePth(path: string, value: PyValue, archiveName = 'archive'): void {
  writeFileAtomic(path, serializePth(value, archiveName), 'checkpoint');
}

export async function savePthAsync(path: string, value: PyValue, archiveName = 'archive'): Promise<void> {
  const bytes = serializePth(value, archiveName);
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fh = await fsp.open(tmp, 'w');
    try {
      await fh.writeFile(bytes); // loops over short writes itself
      await fh.sync();
      const size = (await fh.stat()).size;
      if (size !== bytes.length) throw new Error(`wrote ${size} of ${bytes.length} bytes`);
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, path);
    fsyncDir(dirname(path));
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw new WriteError(path, (e as NodeJS.ErrnoException).code, `cannot write checkpoint ${path}: ${reasonOf(e, path, bytes.length)}; ${fs.existsSync(path) ? 'its previous content is kept' : 'nothing was written'}`);
  }
}

/**
 * The name → Tensor mapping of a loaded checkpoint: the value itself when it is a
 * dict of tensors, or the first of `model` / `state_dict` / `model_state_dict` /
 * `net` / `module` holding one. Non-tensor entries are skipped. Throws if none found.
 */
export function extractStateDict(value: PyValue, label = 'checkpoint'): Map<string, Tensor> {
  const asSd = (v: PyValue): Map<string, Tensor> | undefined => {
    if (!(v instanceof Map)) return undefined;
    const out = new Map<string, Tensor>();
    for (const [k, t] of v) if (typeof k === 'string' && t instanceof Tensor) out.set(k, t);
    return out.size > 0 ? out : undefined;
  };
  if (value instanceof Map) {
    for (const key of ['model', 'state_dict', 'model_state_dict', 'net', 'module']) {
      const sd = asSd(value.get(key) as PyValue);
      if (sd) return sd;
    }
    const sd = asSd(value);
    if (sd) return sd;
  }
  throw new Error(`${label}: no state dict (mapping of names to tensors) found`);
}
