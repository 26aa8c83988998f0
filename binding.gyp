{
  "targets": [
    {
      "target_name": "repopt",
      "sources": ["native/repopt.cc", "native/distributed.cc", "native/cpu-allocator.cc", "native/kernels.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(node scripts/libtorch-paths.cjs include)"
      ],
      "libraries": ["<!@(node scripts/libtorch-paths.cjs libs)"],
      "defines": ["NAPI_EXPERIMENTAL", "NAPI_CPP_EXCEPTIONS", "<!@(node scripts/libtorch-paths.cjs defines)"],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-O2", "-fopenmp-simd", "-ffp-contract=off", "-Wno-unused-parameter", "-Wno-deprecated-declarations"]
    }
  ]
}
