// File primitives Node lacks: flock(2), fallocate(2), BLKGETSIZE64, preadv2 (RWF_NOWAIT or blocking).
#include "argcheck.h"
#include "errors.h"
#include "file.h"
#include <fcntl.h>
#include <climits>
#include <sys/uio.h>
#include <vector>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sched.h>
#include <time.h>

namespace kfs {

// flock(fd, exclusive, nonblocking): an advisory whole-file lock; EWOULDBLOCK when held.
static Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (info.Length() < 3 || !info[1].IsBoolean() || !info[2].IsBoolean()) {
    ThrowType(env, "flock(fd, exclusive: boolean, nonblock: boolean)");
    return env.Undefined();
  }
  int op = info[1].As<Napi::Boolean>() ? LOCK_EX : LOCK_SH;
  if (info[2].As<Napi::Boolean>()) op |= LOCK_NB;
  if (flock(fd, op) != 0) ThrowErrno(env, "flock", errno);
  return env.Undefined();
}

// fallocate(fd, mode, offset, length) with the raw FALLOC_FL_* mode bits.
static Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t mode, off, len;
  if (!ArgFd(info, 0, &fd) || !ArgInt64(info, 1, &mode, "mode must be an integer") ||
      !ArgInt64(info, 2, &off, "offset must be a non-negative integer") ||
      !ArgInt64(info, 3, &len, "length must be a non-negative integer"))
    return env.Undefined();
  if (mode > 0xff) {
    ThrowType(env, "unknown fallocate mode bits");
    return env.Undefined();
  }
  if (fallocate(fd, static_cast<int>(mode), off, len) != 0) ThrowErrno(env, "fallocate", errno);
  return env.Undefined();
}

// Size in bytes of a block device (regular files: use fstat from Node).
static Napi::Value BlockDeviceSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
    ThrowErrno(env, "ioctl(BLKGETSIZE64)", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(size));
}

// readInto(fd, buffer): one read(2) into the whole buffer; returns the byte count, or -errno
// (EAGAIN on an empty non-blocking fd is an answer here, not an exception: it is the common
// case when draining /dev/fuse).
static Napi::Value ReadInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsBuffer()) {
    ThrowType(env, "readInto(fd, buffer)");
    return env.Undefined();
  }
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  ssize_t n = read(fd, buf.Data(), buf.Length());
  return Napi::Number::New(env, n < 0 ? -errno : static_cast<double>(n));
}

// readPolling(fd, buffer, micros): readInto, but an empty non-blocking fd is read again until
// `micros` have passed, with sched_yield() between tries so that a task waiting for this CPU
// (the client the last reply woke, if the scheduler put it here) runs first. The byte count,
// or -errno (-EAGAIN: nothing came in time). Used to keep a FUSE server awake for a client's
// next request (src/transport/fusedev.ts).
static Napi::Value ReadPolling(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "readPolling(fd, buffer, micros)";
  int fd = -1;
  int64_t micros = 0;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsBuffer()) {
    ThrowType(env, fn);
    return env.Undefined();
  }
  if (!argcheck::Int(info, 2, fn, "micros", 0, 1000000, &micros)) return env.Undefined();
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const int64_t limitNs = micros * 1000;
  for (;;) {
    ssize_t n = read(fd, buf.Data(), buf.Length());
    if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
    if (errno != EAGAIN) return Napi::Number::New(env, -errno);
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) * 1000000000LL + (t.tv_nsec - t0.tv_nsec) >= limitNs) return Napi::Number::New(env, -EAGAIN);
    sched_yield();
  }
}

// One preadv2 with flags RWF_NOWAIT (nowait) or 0, retried on EINTR: the byte count or -errno.
static Napi::Value Preadv2Result(Napi::Env env, int fd, const struct iovec* iov, int n, int64_t pos, bool nowait) {
  ssize_t got;
  do got = preadv2(fd, iov, n, static_cast<off_t>(pos), nowait ? RWF_NOWAIT : 0);
  while (got < 0 && errno == EINTR);
  return Napi::Number::New(env, got < 0 ? -errno : static_cast<double>(got));
}

// preadv(fd, buffers, position, nowait): one preadv2 filling the buffers in order from
// `position`; the byte count (short at the end of the file, or with nowait when only part of
// the range is in the page cache), or -errno. nowait (RWF_NOWAIT): -EAGAIN when none of it is
// cached, so that a caller that must not stall the event loop on the disk reads on the thread
// pool instead; without it the read may wait for the disk (a caller with nothing else to do).
static Napi::Value Preadv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "preadv";
  int fd = -1;
  int64_t pos;
  bool nowait;
  if (!argcheck::Fd(info, 0, fn, &fd)) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsArray()) {
    argcheck::TypeErr(env, fn, "buffers must be an array of Buffers");
    return env.Undefined();
  }
  if (!argcheck::Int(info, 2, fn, "position", 0, 9007199254740991LL, &pos) || !argcheck::Bool(info, 3, fn, "nowait", &nowait))
    return env.Undefined();
  Napi::Array arr = info[1].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n == 0 || n > IOV_MAX) {
    argcheck::RangeErr(env, fn, "between 1 and IOV_MAX buffers");
    return env.Undefined();
  }
  std::vector<struct iovec> iov(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsBuffer()) {
      argcheck::TypeErr(env, fn, "buffers must be an array of Buffers");
      return env.Undefined();
    }
    Napi::Buffer<uint8_t> b = v.As<Napi::Buffer<uint8_t>>();
    iov[i].iov_base = b.Data();
    iov[i].iov_len = b.Length();
  }
  return Preadv2Result(env, fd, iov.data(), static_cast<int>(n), pos, nowait);
}

// preadvAt(fd, buffer, offset, length, position, nowait): preadv into buffer[offset,
// offset+length), without building an array (the common case: one guest buffer).
static Napi::Value PreadvAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "preadvAt";
  int fd = -1;
  int64_t off, len, pos;
  bool nowait;
  Napi::Buffer<uint8_t> buf;
  if (!argcheck::Fd(info, 0, fn, &fd) || !argcheck::Buf(info, 1, fn, &buf)) return env.Undefined();
  int64_t size = static_cast<int64_t>(buf.Length());
  if (!argcheck::Int(info, 2, fn, "offset", 0, size, &off) || !argcheck::Int(info, 3, fn, "length", 0, size - off, &len) ||
      !argcheck::Int(info, 4, fn, "position", 0, 9007199254740991LL, &pos) || !argcheck::Bool(info, 5, fn, "nowait", &nowait))
    return env.Undefined();
  struct iovec iov = {buf.Data() + off, static_cast<size_t>(len)};
  return Preadv2Result(env, fd, &iov, 1, pos, nowait);
}

void InitFile(Napi::Env env, Napi::Object exports) {
  exports.Set("preadvAt", Napi::Function::New(env, PreadvAt));
  exports.Set("readInto", Napi::Function::New(env, ReadInto));
  exports.Set("readPolling", Napi::Function::New(env, ReadPolling));
  exports.Set("preadv", Napi::Function::New(env, Preadv));
  exports.Set("flock", Napi::Function::New(env, Flock));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("blockDeviceSize", Napi::Function::New(env, BlockDeviceSize));
  Napi::Object fl = Napi::Object::New(env);
  fl.Set("KEEP_SIZE", FALLOC_FL_KEEP_SIZE);
  fl.Set("PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE);
  fl.Set("ZERO_RANGE", FALLOC_FL_ZERO_RANGE);
  exports.Set("FALLOC_FL", fl);
}

}  // namespace kfs
