// kfs native addon: only the syscalls JavaScript cannot make (see architecture.md, Boundaries).
#include <napi.h>
#include "file.h"
#include "mount.h"
#include "poll.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  kfs::InitFile(env, exports);
  kfs::InitMount(env, exports);
  kfs::InitPoll(env, exports);
  return exports;
}

NODE_API_MODULE(kfs_native, Init)
