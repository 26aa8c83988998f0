#!/usr/bin/env bash
# Installs whatever is missing, then builds what is stale. Idempotent; quick when all is present.
#   Debian packages: libtorch-dev (the maths), libopenblas0-pthread (fast BLAS), libgloo-dev (Gloo headers:
#                    data-parallel training on libtorch's c10d),
#                    python3-torch (the PyTorch reference for tests and benchmarks), python3-onnx (ONNX checker),
#                    dataset-fashion-mnist (the demo's data); with --test also chromium (the report's browser test)
#   npm packages, the native addon (native/ -> build/Release/repopt.node), the TypeScript build (dist/).
# In an installed package (`npx repopt setup`: no src/ beside this script) only what a library user needs:
#   libtorch-dev, libopenblas0-pthread, a C++ toolchain for node-gyp, and the addon, built inside the package.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# The tools' own output (apt, npm, node-gyp, tsc: hundreds of lines on a first run) goes to a log;
# one line per stage here, and the log's path with its last lines when a stage fails.
log=${REPOPT_SETUP_LOG:-${TMPDIR:-/tmp}/repopt-setup-$(id -u).log}
: >"$log" 2>/dev/null || log=/dev/null
quietly() {
  if ! "$@" >>"$log" 2>&1; then
    say "failed: $*"
    [ "$log" = /dev/null ] || { tail -n 30 "$log" >&2; say "the whole output is in $log"; }
    exit 1
  fi
}

installed=0
[ -d src ] || installed=1

missing=()
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/ATen/ATen.h ]; then missing+=(libtorch-dev); fi
dpkg-query -W -f='${Status}' libopenblas0-pthread 2>/dev/null | grep -q 'ok installed' || missing+=(libopenblas0-pthread)
# Gloo's headers: libtorch's ProcessGroupGloo (data-parallel training, --nproc) is compiled against them.
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/gloo/algorithm.h ]; then missing+=(libgloo-dev); fi
if [ "$installed" = 1 ]; then
  # node-gyp needs a C++ compiler, make and python3 (only when the addon is not built yet)
  if [ ! -f build/Release/repopt.node ]; then
    command -v g++ >/dev/null && command -v make >/dev/null || missing+=(g++ make)
    command -v python3 >/dev/null || missing+=(python3)
  fi
else
  if [ "${REPOPT_SKIP_PYTHON:-0}" != 1 ] && ! /usr/bin/python3 -c 'import torch' >/dev/null 2>&1; then missing+=(python3-torch); fi
  # The official ONNX checker, for the export tests (they skip it when absent).
  if [ "${REPOPT_SKIP_PYTHON:-0}" != 1 ] && ! /usr/bin/python3 -c 'import onnx' >/dev/null 2>&1; then missing+=(python3-onnx); fi
  # The demo's data set (Fashion-MNIST, ~30 MB) from Debian.
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
  # --test (npm test): a real browser for the HTML report's test, driven by puppeteer-core (which downloads none).
  if [ "${1:-}" = --test ] && [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then missing+=(chromium); fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-get update -qq
    quietly apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "missing Debian packages: ${missing[*]}"
    say "install them with: sudo apt-get install ${missing[*]}"
    say "(or set LIBTORCH to a libtorch folder with include/ and lib/ to build against another copy)"
    exit 1
  fi
fi

if [ "$installed" = 0 ] && { [ ! -f node_modules/.package-lock.json ] || [ package.json -nt node_modules/.package-lock.json ] ||
   { [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; }; then
  say "installing npm packages"
  if [ -f package-lock.json ]; then quietly npm ci --no-audit --no-fund; else quietly npm install --no-audit --no-fund; fi
fi

addon=build/Release/repopt.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp scripts/libtorch-paths.cjs -newer "$addon" 2>/dev/null | head -n 1)" ]; then
  say "building the native addon (about 30 s)"
  quietly node scripts/build-native.mjs
fi

if [ "$installed" = 1 ]; then
  # the installed package ships dist/; check that the addon loads from here
  node -e "import('./dist/src/torch/index.js').then((t) => t.tensor([1, 2]).sum().item() === 3 || process.exit(1))" ||
    { say "the addon was built but does not load"; exit 1; }
  say "ready: import { ... } from 'repopt'"
  exit 0
fi

stamp=dist/.build-stamp
if [ ! -f "$stamp" ] || [ -n "$(find src test bench tsconfig.json -newer "$stamp" -name '*.ts' -o -newer "$stamp" -name 'tsconfig.json' 2>/dev/null | head -n 1)" ]; then
  say "compiling TypeScript"
  quietly npx tsc -p tsconfig.json
  touch "$stamp"
fi
