#pragma once
#include <napi.h>
namespace kfs {
// mmap (MappedRegion), memfdCreate, fence, eventfd, eventfdRead, eventfdWrite.
void InitMemory(Napi::Env env, Napi::Object exports);
}
