/** Tensor element types and their libtorch (c10::ScalarType) codes. */

export type DType =
  | 'float32'
  | 'float64'
  | 'float16'
  | 'bfloat16'
  | 'int64'
  | 'int32'
  | 'int16'
  | 'int8'
  | 'uint8'
  | 'bool';

export const DTYPE_CODE: Record<DType, number> = {
  uint8: 0,
  int8: 1,
  int16: 2,
  int32: 3,
  int64: 4,
  float16: 5,
  float32: 6,
  float64: 7,
  bool: 11,
  bfloat16: 15,
};

const BY_CODE = new Map<number, DType>(Object.entries(DTYPE_CODE).map(([k, v]) => [v, k as DType]));

export function dtypeFromCode(code: number): DType {
  const d = BY_CODE.get(code);
  if (!d) throw new Error(`unsupported libtorch scalar type code ${code}`);
  return d;
}

export type TypedArray =
  | Float32Array
  | Float64Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint16Array;

/** The typed array a dtype reads into (bool as 0/1 bytes, halfs as raw 16-bit patterns). */
export interface DTypeArrays {
  float32: Float32Array;
  float64: Float64Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int64: BigInt64Array;
  int32: Int32Array;
  int16: Int16Array;
  int8: Int8Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}

export function typedArrayFor(dtype: DType, buf: ArrayBuffer): TypedArray {
  switch (dtype) {
    case 'float32': return new Float32Array(buf);
    case 'float64': return new Float64Array(buf);
    case 'float16':
    case 'bfloat16': return new Uint16Array(buf);
    case 'int64': return new BigInt64Array(buf);
    case 'int32': return new Int32Array(buf);
    case 'int16': return new Int16Array(buf);
    case 'int8': return new Int8Array(buf);
    case 'uint8':
    case 'bool': return new Uint8Array(buf);
  }
}

/** The dtype a typed array holds by default. */
export function dtypeOfArray(a: TypedArray): DType {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Float64Array) return 'float64';
  if (a instanceof BigInt64Array) return 'int64';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Int16Array) return 'int16';
  if (a instanceof Int8Array) return 'int8';
  if (a instanceof Uint16Array) return 'float16';
  return 'uint8';
}

export function isFloating(d: DType): boolean {
  return d === 'float32' || d === 'float64' || d === 'float16' || d === 'bfloat16';
}

export const MEMORY_FORMAT = { contiguous: 0, preserve: 1, channelsLast: 2 } as const;
export type MemoryFormat = keyof typeof MEMORY_FORMAT;
