#pragma once
#include <napi.h>
namespace kfs {
void InitPassthrough(Napi::Env env, Napi::Object exports);
}
