{
  "targets": [
    {
      "target_name": "kfs_native",
      "sources": ["src/addon.cc", "src/file.cc", "src/mount.cc", "src/poll.cc", "src/socket.cc", "src/memory.cc", "src/passthrough.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-O2"]
    }
  ]
}
