#pragma once
#include <napi.h>
namespace kfs {
void InitFile(Napi::Env env, Napi::Object exports);
}
