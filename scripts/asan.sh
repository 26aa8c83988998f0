#!/usr/bin/env bash
# The native addon under AddressSanitizer (npm run test:asan): builds build-asan/repopt.node from
# native/*.cc with -fsanitize=address (the flags of binding.gyp otherwise), then runs the
# native-heavy test files with libasan preloaded into Node and REPOPT_ADDON pointing at that build.
# Any heap overflow, use after free or double free in the addon (or in libtorch code it calls on
# memory ASan sees) aborts the run with ASan's report. Leak checking is off: Node and libtorch keep
# process-lifetime allocations that are not leaks.
#   npm run test:asan                 # the default set of test files
#   npm run test:asan -- pickle pth   # test files whose names contain these words
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null # the normal build and dist/ (the tests), quietly

out=build-asan
mkdir -p "$out"
addon="$out/repopt.node"
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" | head -n 1)" ]; then
  echo "asan: building $addon (a few minutes)" >&2
  napi=$(node -p "require('node-addon-api').include_dir")
  nodeinc=$(node -p "require('path').resolve(process.execPath, '../../include/node')")
  [ -f "$nodeinc/node_api.h" ] || nodeinc=/usr/include/node
  includes=(-I"$napi" -I"$nodeinc")
  for d in $(node scripts/libtorch-paths.cjs include); do includes+=(-I"$d"); done
  defines=(-DNAPI_EXPERIMENTAL -DNAPI_CPP_EXCEPTIONS)
  for d in $(node scripts/libtorch-paths.cjs defines); do defines+=(-D"$d"); done
  flags=(-std=c++17 -fPIC -fexceptions -frtti -O1 -g -fno-omit-frame-pointer -fsanitize=address -fopenmp-simd -ffp-contract=off -w)
  objs=()
  for src in native/*.cc; do
    obj="$out/$(basename "${src%.cc}").o"
    g++ "${flags[@]}" "${defines[@]}" "${includes[@]}" -c "$src" -o "$obj" &
    objs+=("$obj")
  done
  wait
  # shellcheck disable=SC2046
  g++ -shared -fsanitize=address -o "$addon" "${objs[@]}" $(node scripts/libtorch-paths.cjs libs)
fi

files=("$@")
[ ${#files[@]} -gt 0 ] || files=(fused-kernels memory onednn-guard eval-loop-memory distributed pickle pth autograd torch-ops)
tests=()
for f in "${files[@]}"; do
  for t in dist/test/*"$f"*.test.js; do [ -f "$t" ] && tests+=("$t"); done
done
echo "asan: ${tests[*]}" >&2
export LD_PRELOAD="$(g++ -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:abort_on_error=1:halt_on_error=1"
export REPOPT_ADDON="$PWD/$addon"
exec node --test --test-reporter=spec "${tests[@]}"
