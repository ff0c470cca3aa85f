#pragma once
#include <napi.h>
namespace kfs {
void InitSched(Napi::Env env, Napi::Object exports);
}
