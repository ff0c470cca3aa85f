// Unix stream sockets with SCM_RIGHTS for the vhost-user front-end connection (vhost-user spec:
// "the master sends file descriptors as ancillary data"); Node's net module cannot pass fds.
// Every fd handed to JavaScript is O_CLOEXEC and O_NONBLOCK; kfsd waits on them with FdPoller.
#include "argcheck.h"
#include "errors.h"
#include "socket.h"
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <cstddef>
#include <unistd.h>
#include <vector>

namespace kfs {

namespace {

using namespace argcheck;

// The largest vhost-user fd set is SET_MEM_TABLE's: one per region, 8 in QEMU
// (VHOST_MEMORY_BASELINE_NREGIONS). 32 is this addon's limit, with room to spare.
constexpr int kMaxFds = 32;
constexpr int kSendTimeoutMs = 5000;

bool UnixAddr(Napi::Env env, const char* fn, const std::string& path, sockaddr_un* addr, socklen_t* len) {
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  if (path.empty()) return RangeErr(env, fn, "path is empty");
  // Room for the terminating NUL; abstract names (leading NUL) are refused by Str().
  if (path.size() >= sizeof(addr->sun_path)) {
    ThrowErrno(env, fn, ENAMETOOLONG);
    return false;
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

void CloseKeepErrno(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

// unixListen(path, backlog, mode): a listening socket at path whose file never has wider
// permissions than mode. Linux's unix_bind() creates the file with the socket inode's mode
// masked by the umask, so fchmod() on the still-unbound socket narrows it without touching the
// process-wide umask (which libuv's threadpool may be using to create files at this moment).
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "unixListen";
  std::string path;
  int64_t backlog, mode;
  if (!Str(info, 0, fn, "path", 4096, &path) || !Int(info, 1, fn, "backlog", 0, INT32_MAX, &backlog) ||
      !Int(info, 2, fn, "mode", 0, 0777, &mode))
    return env.Undefined();
  sockaddr_un addr;
  socklen_t addrLen;
  if (!UnixAddr(env, fn, path, &addr, &addrLen)) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    ThrowErrno(env, "socket", errno);
    return env.Undefined();
  }
  if (fchmod(fd, static_cast<mode_t>(mode)) != 0) {
    CloseKeepErrno(fd);
    ThrowErrno(env, "fchmod", errno);
    return env.Undefined();
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), addrLen) != 0) {
    CloseKeepErrno(fd);
    ThrowErrno(env, "bind", errno);
    return env.Undefined();
  }
  // The umask may have narrowed the mode further; chmod makes it exactly `mode`.
  const char* failed = nullptr;
  if (chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) failed = "chmod";
  else if (listen(fd, static_cast<int>(backlog)) != 0) failed = "listen";
  if (failed != nullptr) {
    int err = errno;
    unlink(path.c_str());
    close(fd);
    ThrowErrno(env, failed, err);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// unixConnect(path): a blocking connect (a unix-socket connect completes or fails at once unless
// the listener's backlog is full), then O_NONBLOCK for use on the event loop.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "unixConnect";
  std::string path;
  if (!Str(info, 0, fn, "path", 4096, &path)) return env.Undefined();
  sockaddr_un addr;
  socklen_t addrLen;
  if (!UnixAddr(env, fn, path, &addr, &addrLen)) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, "socket", errno);
    return env.Undefined();
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), addrLen) != 0) {
    int err = errno;
    if (err == EINTR) {
      // An interrupted connect goes on in the background: wait for it, then read its result.
      pollfd p{fd, POLLOUT, 0};
      int r;
      do r = poll(&p, 1, -1);
      while (r < 0 && errno == EINTR);
      socklen_t len = sizeof(err);
      if (r < 0) err = errno;
      else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    }
    if (err != 0) {
      close(fd);
      ThrowErrno(env, "connect", err);
      return env.Undefined();
    }
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    CloseKeepErrno(fd);
    ThrowErrno(env, "fcntl", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// accept(listenFd): the connected fd, or -1 when none is pending.
Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd;
  if (!Fd(info, 0, "accept", &lfd)) return env.Undefined();
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) return Napi::Number::New(env, fd);
    // ECONNABORTED: the client gave up before we accepted; look at the next one.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, "accept4", errno);
    return env.Undefined();
  }
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!Fd(info, 0, "peerCred", &fd)) return env.Undefined();
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ThrowErrno(env, "getsockopt(SO_PEERCRED)", errno);
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
}

// Control buffer for kMaxFds descriptors, aligned for struct cmsghdr.
union FdControl {
  char buf[CMSG_SPACE(sizeof(int) * kMaxFds)];
  cmsghdr align;
};

// recvMsg(fd, buf, offset, length): {bytes, fds} | null on EAGAIN; bytes 0 = peer closed.
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "recvMsg";
  int fd = -1;
  Napi::Buffer<uint8_t> buf;
  int64_t offset, length;
  if (!Fd(info, 0, fn, &fd) || !Buf(info, 1, fn, &buf)) return env.Undefined();
  const int64_t bufLen = static_cast<int64_t>(buf.Length());
  if (!Int(info, 2, fn, "offset", 0, bufLen, &offset) || !Int(info, 3, fn, "length", 1, bufLen - offset, &length))
    return env.Undefined();
  iovec iov{buf.Data() + offset, static_cast<size_t>(length)};
  FdControl control;
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, "recvmsg", errno);
    return env.Undefined();
  }
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    // Other control messages (SCM_CREDENTIALS if someone set SO_PASSCRED) carry no fds: skip.
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int v;
      std::memcpy(&v, data + i * sizeof(int), sizeof(int));
      fds.push_back(v);
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    // The kernel dropped the fds that did not fit: the message cannot be used, and the fds that
    // did arrive must not leak.
    for (int v : fds) close(v);
    ThrowErrno(env, "recvmsg", EPROTO);
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  Napi::Array arr = Napi::Array::New(env, fds.size());
  for (size_t i = 0; i < fds.size(); i++) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  o.Set("fds", arr);
  return o;
}

int64_t MonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Waits until fd is writable; false with errno set on a poll error or ETIMEDOUT after
// kSendTimeoutMs without the peer draining anything.
bool WaitWritable(int fd) {
  const int64_t deadline = MonotonicMs() + kSendTimeoutMs;
  for (;;) {
    int64_t left = deadline - MonotonicMs();
    if (left <= 0) {
      errno = ETIMEDOUT;
      return false;
    }
    pollfd p{fd, POLLOUT, 0};
    int r = poll(&p, 1, static_cast<int>(left));
    if (r > 0) return true;  // POLLERR/POLLHUP too: the next sendmsg reports the error
    if (r < 0 && errno != EINTR) return false;
  }
}

// sendMsg(fd, buf, fds): all of buf; fds ride as SCM_RIGHTS with the first byte that goes out.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "sendMsg";
  int fd = -1;
  Napi::Buffer<uint8_t> buf;
  if (!Fd(info, 0, fn, &fd) || !Buf(info, 1, fn, &buf)) return env.Undefined();
  if (info.Length() < 3 || !info[2].IsArray()) {
    TypeErr(env, fn, "fds must be an array of fds");
    return env.Undefined();
  }
  Napi::Array arr = info[2].As<Napi::Array>();
  if (arr.Length() > kMaxFds) {
    RangeErr(env, fn, "more than 32 fds");
    return env.Undefined();
  }
  std::vector<int> fds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++)
    if (!FdValue(env, arr.Get(i), fn, "fds[i]", &fds[i])) return env.Undefined();
  // Ancillary data needs at least one byte of payload to travel on a stream socket.
  if (!fds.empty() && buf.Length() == 0) {
    RangeErr(env, fn, "fds need a non-empty buffer");
    return env.Undefined();
  }
  FdControl control;
  size_t sent = 0;
  while (sent < buf.Length()) {
    iovec iov{buf.Data() + sent, buf.Length() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0 && !fds.empty()) {
      std::memset(control.buf, 0, sizeof(control.buf));
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (WaitWritable(fd)) continue;
      ThrowErrno(env, errno == ETIMEDOUT ? "sendmsg" : "poll", errno);
      return env.Undefined();
    }
    ThrowErrno(env, "sendmsg", n < 0 ? errno : EIO);
    return env.Undefined();
  }
  return env.Undefined();
}

}  // namespace

// socketPair(): a connected AF_UNIX stream pair, both ends O_CLOEXEC (a child gets one by
// dup2 in spawn's stdio, which clears the flag on the copy). fusermount3 hands the mounted
// /dev/fuse fd back over one (libfuse's _FUSE_COMMFD protocol).
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    ThrowErrno(env, "socketpair", errno);
    return env.Undefined();
  }
  Napi::Array arr = Napi::Array::New(env, 2);
  arr.Set(0u, Napi::Number::New(env, sv[0]));
  arr.Set(1u, Napi::Number::New(env, sv[1]));
  return arr;
}

// setNonBlocking(fd): O_NONBLOCK on an fd received from elsewhere (FdPoller readers drain to EAGAIN).
Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!Fd(info, 0, "setNonBlocking", &fd)) return env.Undefined();
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) ThrowErrno(env, "fcntl", errno);
  return env.Undefined();
}

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("accept", Napi::Function::New(env, Accept));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg));
}

}  // namespace kfs
