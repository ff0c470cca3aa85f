// Shared helpers for the kfs addon: argument checks and errno-carrying exceptions.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstring>
#include <string>

namespace kfs {

// Throws a JS Error shaped like Node's system errors: {code, errno, syscall}.
inline void ThrowErrno(Napi::Env env, const char* syscall, int err) {
  std::string msg = std::string(syscall) + ": " + std::strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  const char* name = strerrorname_np(err);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.ThrowAsJavaScriptException();
}

inline bool ThrowType(Napi::Env env, const char* what) {
  Napi::TypeError::New(env, what).ThrowAsJavaScriptException();
  return false;
}

// A non-negative integer argument that fits in int64 and, for fds, in int.
inline bool ArgInt64(const Napi::CallbackInfo& info, size_t i, int64_t* out, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) return ThrowType(info.Env(), what);
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<int64_t>(d)))
    return ThrowType(info.Env(), what);
  *out = static_cast<int64_t>(d);
  return true;
}

inline bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* out) {
  int64_t v;
  if (!ArgInt64(info, i, &v, "fd must be a non-negative integer")) return false;
  if (v > 0x7fffffff) return ThrowType(info.Env(), "fd out of range");
  *out = static_cast<int>(v);
  return true;
}

}  // namespace kfs
