// Guest memory and its doorbells for vhost-user: mmap of the fds from VHOST_USER_SET_MEM_TABLE,
// memfd_create, eventfds (kick/call) and a full memory fence for virtqueue index updates
// (virtio 1.2, 2.7.13: the device reads descriptors only after it has read avail->idx).
//
// A mapping is exposed as 1 GiB external Buffers ("chunks"), because guest RAM can exceed the
// largest single Buffer. The munmap waits until the region is unmapped (or collected) AND every
// chunk Buffer has been collected: a reference count shared by the chunk finalizers and the
// region, so no reachable Buffer ever points at unmapped memory.
#include "argcheck.h"
#include "errors.h"
#include "memory.h"
#include <algorithm>
#include <atomic>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kfs {

namespace {

using namespace argcheck;

constexpr int64_t kChunkSize = int64_t{1} << 30;
constexpr int64_t kMaxMapLength = int64_t{1} << 47;
constexpr int64_t kMaxSafeInteger = 9007199254740991;  // 2^53 - 1
constexpr size_t kMfdNameMax = 249;                    // memfd_create(2): 249 bytes excluding NUL

// One mmap; freed by the last Release().
struct Mapping {
  void* addr;
  size_t length;
  std::atomic<uint32_t> refs;
};

void Release(Mapping* m) {
  if (m->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    munmap(m->addr, m->length);
    delete m;
  }
}

void FinalizeChunk(napi_env, void*, void* hint) { Release(static_cast<Mapping*>(hint)); }

// Set by Mmap() around the construction so that `new region.constructor(...)` from JavaScript
// cannot make a region out of anything else.
thread_local Mapping* g_constructing = nullptr;

class MappedRegion : public Napi::ObjectWrap<MappedRegion> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "MappedRegion", {InstanceMethod("unmap", &MappedRegion::Unmap)});
  }

  // Takes over the creator's reference to the mapping and adds one per chunk Buffer.
  explicit MappedRegion(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MappedRegion>(info) {
    Napi::Env env = info.Env();
    if (g_constructing == nullptr) {
      TypeErr(env, "MappedRegion", "regions are made by mmap()");
      return;
    }
    mapping_ = g_constructing;
    g_constructing = nullptr;
    const size_t count = (mapping_->length + kChunkSize - 1) / kChunkSize;
    Napi::Array chunks = Napi::Array::New(env, count);
    uint8_t* base = static_cast<uint8_t*>(mapping_->addr);
    for (size_t i = 0; i < count; i++) {
      size_t off = i * static_cast<size_t>(kChunkSize);
      size_t len = std::min(static_cast<size_t>(kChunkSize), mapping_->length - off);
      mapping_->refs.fetch_add(1, std::memory_order_relaxed);
      napi_value buf;
      if (napi_create_external_buffer(env, len, base + off, FinalizeChunk, mapping_, &buf) != napi_ok) {
        mapping_->refs.fetch_sub(1, std::memory_order_relaxed);  // no Buffer, so no finalizer
        if (!env.IsExceptionPending()) ThrowErrno(env, "napi_create_external_buffer", ENOMEM);
        return;  // the destructor drops our reference; the chunks made so far keep theirs
      }
      chunks.Set(static_cast<uint32_t>(i), Napi::Value(env, buf));
    }
    Napi::Object self = info.This().As<Napi::Object>();
    self.DefineProperties({
        Napi::PropertyDescriptor::Value("length", Napi::Number::New(env, static_cast<double>(mapping_->length)), napi_enumerable),
        Napi::PropertyDescriptor::Value("chunkSize", Napi::Number::New(env, static_cast<double>(kChunkSize)), napi_enumerable),
        Napi::PropertyDescriptor::Value("chunks", chunks, napi_enumerable),
    });
  }

  ~MappedRegion() override { Drop(); }

 private:
  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    Drop();
    return info.Env().Undefined();
  }

  void Drop() {
    if (mapping_ == nullptr) return;
    Release(mapping_);
    mapping_ = nullptr;
  }

  Mapping* mapping_ = nullptr;
};

// mmap(fd, offset, length, writable): a MAP_SHARED mapping as a MappedRegion.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "mmap";
  int fd = -1;
  int64_t offset, length;
  bool writable;
  if (!Fd(info, 0, fn, &fd) || !Int(info, 1, fn, "offset", 0, kMaxSafeInteger, &offset) ||
      !Int(info, 2, fn, "length", 1, kMaxMapLength, &length) || !Bool(info, 3, fn, "writable", &writable))
    return env.Undefined();
  const int64_t page = sysconf(_SC_PAGESIZE);
  if (offset % page != 0) {
    RangeErr(env, fn, "offset is not a multiple of the page size");
    return env.Undefined();
  }
  // Both are below 2^53, so the sum cannot overflow int64.
  const int64_t end = offset + length;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ThrowErrno(env, "fstat", errno);
    return env.Undefined();
  }
  // Touching a page past the end of a regular file raises SIGBUS, which would kill kfsd.
  if (S_ISREG(st.st_mode) && end > st.st_size) {
    RangeErr(env, fn, "offset + length is past the end of the file (" + std::to_string(st.st_size) + " bytes)");
    return env.Undefined();
  }
  const int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* addr = ::mmap(nullptr, static_cast<size_t>(length), prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (addr == MAP_FAILED) {
    ThrowErrno(env, "mmap", errno);
    return env.Undefined();
  }
  Mapping* m = new Mapping{addr, static_cast<size_t>(length), {1}};
  Napi::FunctionReference* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  g_constructing = m;
  Napi::Object region = ctor->New({});
  if (g_constructing != nullptr) {  // the constructor never ran: the mapping is still ours
    g_constructing = nullptr;
    Release(m);
  }
  return env.IsExceptionPending() ? env.Undefined() : region;
}

// memfdCreate(name, size): an anonymous shared-memory file of size bytes (sparse).
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "memfdCreate";
  std::string name;
  int64_t size;
  if (!Str(info, 0, fn, "name", kMfdNameMax, &name) || !Int(info, 1, fn, "size", 0, kMaxSafeInteger, &size))
    return env.Undefined();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, "memfd_create", errno);
    return env.Undefined();
  }
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "ftruncate", err);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Fence(const Napi::CallbackInfo& info) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return info.Env().Undefined();
}

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "eventfd";
  int64_t initval;
  bool nonblock;
  if (!Int(info, 0, fn, "initval", 0, UINT32_MAX, &initval) || !Bool(info, 1, fn, "nonblock", &nonblock))
    return env.Undefined();
  int fd = eventfd(static_cast<unsigned>(initval), EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));
  if (fd < 0) {
    ThrowErrno(env, "eventfd", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// eventfdRead(fd): the counter (reset to 0 by the read), or 0 when it was already 0 on a
// non-blocking eventfd. Values above 2^53 lose precision; kick/call counters never get there.
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!Fd(info, 0, "eventfdRead", &fd)) return env.Undefined();
  uint64_t value = 0;
  ssize_t n;
  do n = read(fd, &value, sizeof(value));
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Napi::Number::New(env, 0);
  if (n != static_cast<ssize_t>(sizeof(value))) {
    ThrowErrno(env, "read(eventfd)", n < 0 ? errno : EINVAL);  // short read: not an eventfd
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(value));
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "eventfdWrite";
  int fd = -1;
  int64_t v;
  if (!Fd(info, 0, fn, &fd) || !Int(info, 1, fn, "value", 1, kMaxSafeInteger, &v)) return env.Undefined();
  uint64_t value = static_cast<uint64_t>(v);
  ssize_t n;
  do n = write(fd, &value, sizeof(value));
  while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof(value))) ThrowErrno(env, "write(eventfd)", n < 0 ? errno : EINVAL);
  return env.Undefined();
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  // The constructor lives as long as the addon's environment; mmap() reaches it as its data.
  Napi::FunctionReference* ctor = new Napi::FunctionReference(Napi::Persistent(MappedRegion::Define(env)));
  env.AddCleanupHook([ctor] { delete ctor; });
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap", ctor));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("fence", Napi::Function::New(env, Fence));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
}

}  // namespace kfs
