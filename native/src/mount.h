#pragma once
#include <napi.h>
namespace kfs {
void InitMount(Napi::Env env, Napi::Object exports);
}
