// Argument checks for the vhost-user primitives (socket.cc, memory.cc). A bad argument throws
// TypeError (wrong type) or RangeError (out of range) carrying errno EINVAL / code 'EINVAL', so
// callers can treat it like any other system error; nothing a caller passes reaches a syscall
// unchecked.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstdint>
#include <string>

namespace kfs {
namespace argcheck {

inline void SetEinval(Napi::Error& e, const char* fn) {
  e.Set("errno", Napi::Number::New(e.Env(), EINVAL));
  e.Set("code", Napi::String::New(e.Env(), "EINVAL"));
  e.Set("syscall", Napi::String::New(e.Env(), fn));
}

// Always returns false so that checks read `if (!Int(...)) return;`.
inline bool TypeErr(Napi::Env env, const char* fn, const std::string& what) {
  Napi::Error e = Napi::TypeError::New(env, std::string(fn) + ": " + what);
  SetEinval(e, fn);
  e.ThrowAsJavaScriptException();
  return false;
}

inline bool RangeErr(Napi::Env env, const char* fn, const std::string& what) {
  Napi::Error e = Napi::RangeError::New(env, std::string(fn) + ": " + what);
  SetEinval(e, fn);
  e.ThrowAsJavaScriptException();
  return false;
}

// An integer JS number in [lo, hi] (hi at most 2^53 - 1, so every value is exact).
inline bool IntValue(Napi::Env env, Napi::Value v, const char* fn, const char* name, int64_t lo, int64_t hi, int64_t* out) {
  if (!v.IsNumber()) return TypeErr(env, fn, std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  // The range test comes first: it also rejects NaN and ±Infinity before the integer cast.
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)))
    return RangeErr(env, fn, std::string(name) + " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  if (d != static_cast<double>(static_cast<int64_t>(d))) return RangeErr(env, fn, std::string(name) + " must be an integer");
  *out = static_cast<int64_t>(d);
  return true;
}

inline bool Int(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t lo, int64_t hi, int64_t* out) {
  return IntValue(info.Env(), info.Length() > i ? info[i] : info.Env().Undefined(), fn, name, lo, hi, out);
}

inline bool FdValue(Napi::Env env, Napi::Value v, const char* fn, const char* name, int* out) {
  int64_t x;
  if (!IntValue(env, v, fn, name, 0, INT32_MAX, &x)) return false;
  *out = static_cast<int>(x);
  return true;
}

inline bool Fd(const Napi::CallbackInfo& info, size_t i, const char* fn, int* out) {
  return FdValue(info.Env(), info.Length() > i ? info[i] : info.Env().Undefined(), fn, "fd", out);
}

inline bool Bool(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, bool* out) {
  if (info.Length() <= i || !info[i].IsBoolean()) return TypeErr(info.Env(), fn, std::string(name) + " must be a boolean");
  *out = info[i].As<Napi::Boolean>().Value();
  return true;
}

// A string without NUL bytes (it becomes a C string) of at most maxBytes UTF-8 bytes.
inline bool Str(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, size_t maxBytes, std::string* out) {
  if (info.Length() <= i || !info[i].IsString()) return TypeErr(info.Env(), fn, std::string(name) + " must be a string");
  *out = info[i].As<Napi::String>().Utf8Value();
  if (out->find('\0') != std::string::npos) return RangeErr(info.Env(), fn, std::string(name) + " contains a NUL byte");
  if (out->size() > maxBytes) return RangeErr(info.Env(), fn, std::string(name) + " longer than " + std::to_string(maxBytes) + " bytes");
  return true;
}

inline bool Buf(const Napi::CallbackInfo& info, size_t i, const char* fn, Napi::Buffer<uint8_t>* out) {
  if (info.Length() <= i || !info[i].IsBuffer()) return TypeErr(info.Env(), fn, "buffer must be a Buffer");
  *out = info[i].As<Napi::Buffer<uint8_t>>();
  return true;
}

}  // namespace argcheck
}  // namespace kfs
