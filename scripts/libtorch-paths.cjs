// Prints compiler/linker flags for libtorch, for binding.gyp.
// Default: Debian's libtorch-dev. LIBTORCH=/path/to/torch (a folder with include/ and lib/,
// e.g. a pip PyTorch's torch/ folder) builds against another copy, with an rpath to it.
// Distributed training: Gloo (CPU) when its headers are there (Debian's libgloo-dev);
// REPOPT_NCCL=1 adds NCCL for a CUDA build of libtorch (CUDA_HOME, default /usr/local/cuda).
'use strict';
const fs = require('fs');
const path = require('path');

const root = process.env.LIBTORCH;
const what = process.argv[2];
let include, libdir;
if (root) {
  include = [path.join(root, 'include'), path.join(root, 'include/torch/csrc/api/include')];
  libdir = path.join(root, 'lib');
} else {
  include = ['/usr/include', '/usr/include/torch/csrc/api/include'];
  libdir = null;
}
if (!fs.existsSync(path.join(include[0], 'ATen/ATen.h'))) {
  process.stderr.write(
    `libtorch headers not found under ${include[0]}.\n` +
      'Install Debian\'s libtorch: apt-get install libtorch-dev libopenblas0-pthread\n' +
      'or point LIBTORCH at a libtorch folder (one with include/ and lib/).\n',
  );
  process.exit(1);
}
const nccl = process.env.REPOPT_NCCL === '1';
const cudaHome = process.env.CUDA_HOME || '/usr/local/cuda';
const gloo = [include[0], '/usr/include'].some((dir) => fs.existsSync(path.join(dir, 'gloo/algorithm.h')));
if (what === 'include') {
  if (nccl) include.push(path.join(cudaHome, 'include'));
  console.log(include.join(' '));
} else if (what === 'libs') {
  const flags = [];
  if (libdir) flags.push(`-L${libdir}`, `-Wl,-rpath,${libdir}`);
  flags.push('-Wl,--no-as-needed', '-ltorch', '-ltorch_cpu', '-lc10');
  if (nccl) flags.push('-ltorch_cuda', '-lc10_cuda', `-L${path.join(cudaHome, 'lib64')}`, '-lcudart');
  flags.push('-Wl,--as-needed');
  console.log(flags.join(' '));
} else if (what === 'defines') {
  // pip wheels before PyTorch 2.x were built with the old C++ ABI; let the user say so.
  const abi = process.env.LIBTORCH_CXX11_ABI;
  const defines = [];
  if (abi !== undefined) defines.push(`_GLIBCXX_USE_CXX11_ABI=${abi === '0' ? 0 : 1}`);
  if (gloo) defines.push('USE_C10D_GLOO');
  if (nccl) defines.push('USE_C10D_NCCL', 'USE_CUDA');
  console.log(defines.join(' '));
} else {
  process.exit(2);
}
