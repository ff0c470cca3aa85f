// kfs native addon: only the syscalls JavaScript cannot make (see architecture.md, Boundaries).
#include <napi.h>
#include "file.h"
#include "mount.h"
#include "poll.h"
#include "socket.h"
#include "memory.h"
#include "passthrough.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  kfs::InitFile(env, exports);
  kfs::InitMount(env, exports);
  kfs::InitPoll(env, exports);
  kfs::InitSocket(env, exports);
  kfs::InitMemory(env, exports);
  kfs::InitPassthrough(env, exports);
  return exports;
}

NODE_API_MODULE(kfs_native, Init)
