#pragma once
#include <napi.h>
namespace kfs {
void InitPoll(Napi::Env env, Napi::Object exports);
}
