// mount(2) and umount2(2) for the FUSE transport (Node has neither).
#include "errors.h"
#include "mount.h"
#include <sys/mount.h>
#include <string>

namespace kfs {

static bool ArgString(const Napi::CallbackInfo& info, size_t i, std::string* out, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) return ThrowType(info.Env(), what);
  *out = info[i].As<Napi::String>().Utf8Value();
  if (out->find('\0') != std::string::npos || out->size() > 4096) return ThrowType(info.Env(), what);
  return true;
}

// mount(source, target, fstype, flags, data)
static Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string source, target, fstype, data;
  int64_t flags;
  if (!ArgString(info, 0, &source, "source must be a string") || !ArgString(info, 1, &target, "target must be a string") ||
      !ArgString(info, 2, &fstype, "fstype must be a string") || !ArgInt64(info, 3, &flags, "flags must be an integer") ||
      !ArgString(info, 4, &data, "data must be a string"))
    return env.Undefined();
  if (mount(source.c_str(), target.c_str(), fstype.c_str(), static_cast<unsigned long>(flags), data.c_str()) != 0)
    ThrowErrno(env, "mount", errno);
  return env.Undefined();
}

// umount2(target, flags)
static Napi::Value Umount2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string target;
  int64_t flags;
  if (!ArgString(info, 0, &target, "target must be a string") || !ArgInt64(info, 1, &flags, "flags must be an integer"))
    return env.Undefined();
  if (umount2(target.c_str(), static_cast<int>(flags)) != 0) ThrowErrno(env, "umount2", errno);
  return env.Undefined();
}

void InitMount(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("umount2", Napi::Function::New(env, Umount2));
  Napi::Object f = Napi::Object::New(env);
  f.Set("MS_RDONLY", static_cast<double>(MS_RDONLY));
  f.Set("MS_NOSUID", static_cast<double>(MS_NOSUID));
  f.Set("MS_NODEV", static_cast<double>(MS_NODEV));
  f.Set("MS_NOATIME", static_cast<double>(MS_NOATIME));
  f.Set("MNT_DETACH", static_cast<double>(MNT_DETACH));
  f.Set("MNT_FORCE", static_cast<double>(MNT_FORCE));
  exports.Set("MS", f);
}

}  // namespace kfs
