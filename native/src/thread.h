#pragma once
#include <napi.h>
namespace kfs {
void InitThread(Napi::Env env, Napi::Object exports);
}
