{
  "targets": [
    {
      "target_name": "lorakit",
      "sources": [
        "csrc/napi/addon.cc",
        "csrc/napi/storage.cc",
        "csrc/napi/nn.cc",
        "csrc/cpu/parallel.cc",
        "csrc/cpu/tensor.cc",
        "csrc/cpu/gemm.cc",
        "csrc/cpu/lora.cc",
        "csrc/cpu/nf4.cc",
        "csrc/cpu/adamw.cc",
        "csrc/cpu/norm.cc",
        "csrc/cpu/attention.cc",
        "csrc/cpu/activation.cc",
        "csrc/cpu/embedding.cc",
        "csrc/cpu/loss.cc",
        "csrc/cpu/linalg.cc",
        "csrc/cpu/decode.cc",
        "csrc/napi/linalg.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-ffp-contract=off", "-fno-math-errno"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3", "-ffp-contract=off", "-fno-math-errno"]
      },
      "msvs_settings": {"VCCLCompilerTool": {"ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17", "/fp:precise"]}}
    }
  ]
}
