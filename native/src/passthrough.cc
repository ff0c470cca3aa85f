// Host-directory primitives for PassthroughFs (kfsd --shared-dir): the *at system calls on
// O_PATH descriptors that Node lacks, openat2(2) with RESOLVE_BENEATH, and per-thread
// credential switching for creations. Confinement rests on three rules kept here:
//  - a name from the guest is one path component (no '/', no NUL), checked before any call;
//  - names are only resolved relative to a node's descriptor, never followed when they are
//    symlinks (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW, and *at calls that do not follow);
//  - openat2 always carries RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, so even ".." or a symlink
//    swapped in by a racing host process cannot take a lookup out of the directory.
// Operations on a node itself (xattrs, chmod, truncate, reopening with real access modes) go
// through /proc/self/fd/N, the magic link of the server's own O_PATH descriptor, as virtiofsd
// does: it names exactly that inode and is never re-followed as a symlink.
#include "errors.h"
#include "passthrough.h"
#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <string>
#include <vector>

namespace kfs {
namespace {

constexpr size_t kNameMax = 255;
constexpr size_t kPathMax = 4096;
constexpr size_t kXattrSizeMax = 65536;

bool ArgSigned(const Napi::CallbackInfo& info, size_t i, int64_t lo, int64_t hi, int64_t* out, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) return ThrowType(info.Env(), what);
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d)))
    return ThrowType(info.Env(), what);
  *out = static_cast<int64_t>(d);
  return true;
}

// One path component from the guest: 1..255 bytes, no '/' and no NUL.
bool ArgName(const Napi::CallbackInfo& info, size_t i, std::string* out) {
  // napi_get_buffer_info once: the C++ wrapper asks V8 for the buffer again for each accessor.
  napi_env env = info.Env();
  bool is_buffer = false;
  void* data = nullptr;
  size_t length = 0;
  if (info.Length() <= i || napi_is_buffer(env, info[i], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, info[i], &data, &length) != napi_ok)
    return ThrowType(info.Env(), "name must be a Buffer");
  if (length == 0 || length > kNameMax) return ThrowType(info.Env(), "name must be 1..255 bytes");
  out->assign(static_cast<const char*>(data), length);
  if (out->find('/') != std::string::npos || out->find('\0') != std::string::npos)
    return ThrowType(info.Env(), "name must be a single path component (no '/' or NUL)");
  return true;
}

// Bytes without NUL, 1..max long (symlink targets, xattr names as strings or Buffers).
bool ArgBytes(const Napi::CallbackInfo& info, size_t i, size_t max, std::string* out, const char* what) {
  if (info.Length() <= i) return ThrowType(info.Env(), what);
  if (info[i].IsBuffer()) {
    auto b = info[i].As<Napi::Buffer<char>>();
    out->assign(b.Data(), b.Length());
  } else if (info[i].IsString()) {
    *out = info[i].As<Napi::String>().Utf8Value();
  } else {
    return ThrowType(info.Env(), what);
  }
  if (out->empty() || out->size() > max || out->find('\0') != std::string::npos) return ThrowType(info.Env(), what);
  return true;
}

// uid/gid arguments: -1 means "unchanged" / "do not switch".
bool ArgId(const Napi::CallbackInfo& info, size_t i, int64_t* out, const char* what) {
  return ArgSigned(info, i, -1, 0xfffffffeLL, out, what);
}

std::string ProcPath(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

int ProcSelfFd() {
  static int fd = -1;
  if (fd < 0) fd = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
  return fd;
}

// Creations run with the caller's fsuid/fsgid (and umask), so that the host kernel assigns
// ownership, applies setgid-directory inheritance and default ACLs exactly as for a local
// caller. fsuid is per thread: only the calling (main) thread changes. Switching to a non-zero
// fsuid drops the effective filesystem capabilities for the call; switching back restores them.
class CredSwitch {
 public:
  CredSwitch(int64_t uid, int64_t gid, int64_t mask) {
    if (mask >= 0) {
      old_mask_ = umask(static_cast<mode_t>(mask));
      mask_set_ = true;
    }
    if (uid >= 0 && gid >= 0 && geteuid() == 0 && (uid != 0 || gid != 0)) {
      old_gid_ = setfsgid(static_cast<gid_t>(gid));
      old_uid_ = setfsuid(static_cast<uid_t>(uid));
      active_ = true;
      if (static_cast<int64_t>(setfsuid(static_cast<uid_t>(-1))) != uid ||
          static_cast<int64_t>(setfsgid(static_cast<gid_t>(-1))) != gid)
        failed_ = true;
    }
  }
  ~CredSwitch() {
    if (active_) {
      setfsuid(static_cast<uid_t>(old_uid_));
      setfsgid(static_cast<gid_t>(old_gid_));
    }
    if (mask_set_) umask(old_mask_);
  }
  bool failed() const { return failed_; }

 private:
  bool active_ = false, failed_ = false, mask_set_ = false;
  int old_uid_ = 0, old_gid_ = 0;
  mode_t old_mask_ = 0;
};

// Optional trailing (uid, gid, umask): -1 each when absent.
bool ArgCred(const Napi::CallbackInfo& info, size_t i, int64_t* uid, int64_t* gid, int64_t* mask) {
  *uid = *gid = *mask = -1;
  if (info.Length() <= i || info[i].IsUndefined()) return true;
  return ArgId(info, i, uid, "uid must be -1 or a uid") && ArgId(info, i + 1, gid, "gid must be -1 or a gid") &&
         ArgSigned(info, i + 2, -1, 0777, mask, "umask must be -1 or 0..0777");
}

Napi::Value Fd(Napi::Env env, int fd) {
  return Napi::Number::New(env, fd);
}

// openat2(dirfd, name, flags, mode[, uid, gid, umask]) -> fd, confined beneath dirfd.
Napi::Value Openat2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  std::string name;
  int64_t flags, mode, uid, gid, mask;
  if (!ArgFd(info, 0, &dirfd) || !ArgName(info, 1, &name) ||
      !ArgSigned(info, 2, 0, 0x7fffffff, &flags, "flags must be open(2) flags") ||
      !ArgSigned(info, 3, 0, 07777, &mode, "mode must be 0..07777") || !ArgCred(info, 4, &uid, &gid, &mask))
    return env.Undefined();
  struct open_how how = {};
  how.flags = static_cast<uint64_t>(flags) | O_CLOEXEC;
  // openat2 refuses a mode without O_CREAT/O_TMPFILE.
  how.mode = (flags & (O_CREAT | __O_TMPFILE)) ? static_cast<uint64_t>(mode) : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  int fd, err = 0;
  {
    CredSwitch cred(uid, gid, mask);
    if (cred.failed()) {
      ThrowErrno(env, "setfsuid", EPERM);
      return env.Undefined();
    }
    fd = static_cast<int>(syscall(SYS_openat2, dirfd, name.c_str(), &how, sizeof how));
    if (fd < 0) err = errno;
  }
  if (fd < 0) {
    ThrowErrno(env, "openat2", err);
    return env.Undefined();
  }
  return Fd(env, fd);
}

// lookupAt(dirfd, name) -> O_PATH | O_NOFOLLOW fd, or -errno: a lookup's miss (ENOENT) is
// routine (one precedes every create), so it is an answer here, not an exception.
Napi::Value LookupAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  std::string name;
  if (!ArgFd(info, 0, &dirfd) || !ArgName(info, 1, &name)) return env.Undefined();
  struct open_how how = {};
  how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  int fd = static_cast<int>(syscall(SYS_openat2, dirfd, name.c_str(), &how, sizeof how));
  return Napi::Number::New(env, fd < 0 ? -errno : fd);
}

// openParent(dirfd) -> O_PATH fd of dirfd's "..". RESOLVE_BENEATH refuses ".." by design, so
// this one is a plain openat; the caller checks the result lies inside the shared directory.
Napi::Value OpenParent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  if (!ArgFd(info, 0, &dirfd)) return env.Undefined();
  int fd = openat(dirfd, "..", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, "openat(..)", errno);
    return env.Undefined();
  }
  return Fd(env, fd);
}

// reopen(fd, flags) -> a new descriptor of the same inode with real access modes (or O_PATH).
// Opening a symlink this way fails with ELOOP (may_open), so nothing is ever followed.
Napi::Value Reopen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t flags;
  if (!ArgFd(info, 0, &fd) || !ArgSigned(info, 1, 0, 0x7fffffff, &flags, "flags must be open(2) flags"))
    return env.Undefined();
  int f = static_cast<int>(flags) & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | __O_TMPFILE);
  int pfd = ProcSelfFd();
  if (pfd < 0) {
    ThrowErrno(env, "open(/proc/self/fd)", errno);
    return env.Undefined();
  }
  int nfd = openat(pfd, std::to_string(fd).c_str(), f | O_CLOEXEC);
  if (nfd < 0) {
    ThrowErrno(env, "reopen", errno);
    return env.Undefined();
  }
  return Fd(env, nfd);
}

// The kernel's new_encode_dev, which FUSE's u32 rdev uses.
uint32_t EncodeDev(dev_t d) {
  uint32_t ma = major(d), mi = minor(d);
  return (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
}
dev_t DecodeDev(uint32_t d) {
  return makedev((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00));
}

// fstatat(fd, name | null, out: Float64Array(18)): name null stats fd itself (AT_EMPTY_PATH);
// symlinks are never followed. out = [ino_hi, ino_lo, dev_hi, dev_lo, mode, nlink, uid, gid,
// rdev (FUSE encoding), size, blocks, blksize, atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns].
Napi::Value Fstatat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  std::string name;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  bool self = info.Length() > 1 && info[1].IsNull();
  if (!self && !ArgName(info, 1, &name)) return env.Undefined();
  // One napi_get_typedarray_info (it fails for anything but a typed array): the C++ wrapper's
  // checks ask V8 for the array's type and buffer once per accessor, a third of this call's cost.
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (info.Length() < 3 || napi_get_typedarray_info(env, info[2], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_float64_array || length < 18) {
    ThrowType(env, "out must be a Float64Array of 18");
    return env.Undefined();
  }
  struct stat st;
  int r = self ? fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) : fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW);
  if (r != 0) {
    ThrowErrno(env, "fstatat", errno);
    return env.Undefined();
  }
  double* o = static_cast<double*>(data);
  uint64_t ino = st.st_ino, dev = st.st_dev;
  o[0] = static_cast<double>(ino >> 32);
  o[1] = static_cast<double>(ino & 0xffffffffu);
  o[2] = static_cast<double>(dev >> 32);
  o[3] = static_cast<double>(dev & 0xffffffffu);
  o[4] = st.st_mode;
  o[5] = static_cast<double>(st.st_nlink);
  o[6] = st.st_uid;
  o[7] = st.st_gid;
  o[8] = EncodeDev(st.st_rdev);
  o[9] = static_cast<double>(st.st_size);
  o[10] = static_cast<double>(st.st_blocks);
  o[11] = static_cast<double>(st.st_blksize);
  o[12] = static_cast<double>(st.st_atim.tv_sec);
  o[13] = static_cast<double>(st.st_atim.tv_nsec);
  o[14] = static_cast<double>(st.st_mtim.tv_sec);
  o[15] = static_cast<double>(st.st_mtim.tv_nsec);
  o[16] = static_cast<double>(st.st_ctim.tv_sec);
  o[17] = static_cast<double>(st.st_ctim.tv_nsec);
  return env.Undefined();
}

Napi::Value Done(Napi::Env env, int r, int err, const char* syscall) {
  if (r < 0) ThrowErrno(env, syscall, err);
  return env.Undefined();
}

// mkdirat(dirfd, name, mode[, uid, gid, umask])
Napi::Value Mkdirat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  std::string name;
  int64_t mode, uid, gid, mask;
  if (!ArgFd(info, 0, &dirfd) || !ArgName(info, 1, &name) || !ArgSigned(info, 2, 0, 07777, &mode, "mode must be 0..07777") ||
      !ArgCred(info, 3, &uid, &gid, &mask))
    return env.Undefined();
  CredSwitch cred(uid, gid, mask);
  if (cred.failed()) return Done(env, -1, EPERM, "setfsuid");
  int r = mkdirat(dirfd, name.c_str(), static_cast<mode_t>(mode));
  return Done(env, r, errno, "mkdirat");
}

// mknodat(dirfd, name, mode (with S_IFMT), rdev (FUSE encoding)[, uid, gid, umask])
Napi::Value Mknodat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  std::string name;
  int64_t mode, rdev, uid, gid, mask;
  if (!ArgFd(info, 0, &dirfd) || !ArgName(info, 1, &name) || !ArgSigned(info, 2, 0, 0177777, &mode, "mode must be a file mode") ||
      !ArgSigned(info, 3, 0, 0xffffffffLL, &rdev, "rdev must be a u32") || !ArgCred(info, 4, &uid, &gid, &mask))
    return env.Undefined();
  CredSwitch cred(uid, gid, mask);
  if (cred.failed()) return Done(env, -1, EPERM, "setfsuid");
  int r = mknodat(dirfd, name.c_str(), static_cast<mode_t>(mode), DecodeDev(static_cast<uint32_t>(rdev)));
  return Done(env, r, errno, "mknodat");
}

// symlinkat(target, dirfd, name[, uid, gid]): the target is stored, never resolved here.
Napi::Value Symlinkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  std::string target, name;
  int64_t uid, gid, mask;
  if (!ArgBytes(info, 0, kPathMax - 1, &target, "target must be 1..4095 bytes without NUL") || !ArgFd(info, 1, &dirfd) ||
      !ArgName(info, 2, &name) || !ArgCred(info, 3, &uid, &gid, &mask))
    return env.Undefined();
  CredSwitch cred(uid, gid, mask);
  if (cred.failed()) return Done(env, -1, EPERM, "setfsuid");
  int r = symlinkat(target.c_str(), dirfd, name.c_str());
  return Done(env, r, errno, "symlinkat");
}

// linkat(fd, newdirfd, newname): a new name for fd's inode (AT_EMPTY_PATH: needs
// CAP_DAC_READ_SEARCH, which the server as root has; no path is resolved).
Napi::Value Linkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1, dirfd = -1;
  std::string name;
  if (!ArgFd(info, 0, &fd) || !ArgFd(info, 1, &dirfd) || !ArgName(info, 2, &name)) return env.Undefined();
  int r = linkat(fd, "", dirfd, name.c_str(), AT_EMPTY_PATH);
  return Done(env, r, errno, "linkat");
}

// renameat2(olddirfd, oldname, newdirfd, newname, flags): RENAME_NOREPLACE/EXCHANGE/WHITEOUT.
Napi::Value Renameat2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int ofd = -1, nfd = -1;
  std::string oname, nname;
  int64_t flags;
  if (!ArgFd(info, 0, &ofd) || !ArgName(info, 1, &oname) || !ArgFd(info, 2, &nfd) || !ArgName(info, 3, &nname) ||
      !ArgSigned(info, 4, 0, RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT, &flags, "unknown rename flags"))
    return env.Undefined();
  int r = renameat2(ofd, oname.c_str(), nfd, nname.c_str(), static_cast<unsigned>(flags));
  return Done(env, r, errno, "renameat2");
}

// unlinkat(dirfd, name, removeDir)
Napi::Value Unlinkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = -1;
  std::string name;
  if (!ArgFd(info, 0, &dirfd) || !ArgName(info, 1, &name)) return env.Undefined();
  if (info.Length() < 3 || !info[2].IsBoolean()) {
    ThrowType(env, "unlinkat(dirfd, name, removeDir: boolean)");
    return env.Undefined();
  }
  int r = unlinkat(dirfd, name.c_str(), info[2].As<Napi::Boolean>() ? AT_REMOVEDIR : 0);
  return Done(env, r, errno, "unlinkat");
}

// readlinkat(fd) -> Buffer: the target of the symlink fd itself names (O_PATH | O_NOFOLLOW).
Napi::Value Readlinkat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  std::vector<char> buf(kPathMax);
  ssize_t n = readlinkat(fd, "", buf.data(), buf.size());
  if (n < 0) {
    ThrowErrno(env, "readlinkat", errno);
    return env.Undefined();
  }
  return Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n));
}

// fchownat(fd, uid, gid): -1 leaves one unchanged; the inode itself, never a symlink's target.
Napi::Value Fchownat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t uid, gid;
  if (!ArgFd(info, 0, &fd) || !ArgId(info, 1, &uid, "uid must be -1 or a uid") || !ArgId(info, 2, &gid, "gid must be -1 or a gid"))
    return env.Undefined();
  int r = fchownat(fd, "", static_cast<uid_t>(uid), static_cast<gid_t>(gid), AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  return Done(env, r, errno, "fchownat");
}

// chmod(fd, mode) through the descriptor's magic link (fchmod refuses O_PATH descriptors).
Napi::Value Chmod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t mode;
  if (!ArgFd(info, 0, &fd) || !ArgSigned(info, 1, 0, 07777, &mode, "mode must be 0..07777")) return env.Undefined();
  int r = chmod(ProcPath(fd).c_str(), static_cast<mode_t>(mode));
  return Done(env, r, errno, "chmod");
}

// truncate(fd, size) through the magic link: no open file needed.
Napi::Value Truncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t size;
  if (!ArgFd(info, 0, &fd) || !ArgInt64(info, 1, &size, "size must be a non-negative integer")) return env.Undefined();
  int r = truncate(ProcPath(fd).c_str(), size);
  return Done(env, r, errno, "truncate");
}

// utimensat(fd, atime_s, atime_ns, mtime_s, mtime_ns): ns may be UTIME_NOW or UTIME_OMIT.
Napi::Value Utimensat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t as, ans, ms, mns;
  const int64_t big = 1LL << 53;
  if (!ArgFd(info, 0, &fd) || !ArgSigned(info, 1, -big, big, &as, "atime seconds") ||
      !ArgSigned(info, 2, 0, UTIME_NOW, &ans, "atime nanoseconds") || !ArgSigned(info, 3, -big, big, &ms, "mtime seconds") ||
      !ArgSigned(info, 4, 0, UTIME_NOW, &mns, "mtime nanoseconds"))
    return env.Undefined();
  if ((ans > 999999999 && ans != UTIME_NOW && ans != UTIME_OMIT) || (mns > 999999999 && mns != UTIME_NOW && mns != UTIME_OMIT)) {
    ThrowType(env, "nanoseconds must be < 1e9, UTIME_NOW or UTIME_OMIT");
    return env.Undefined();
  }
  struct timespec ts[2] = {{static_cast<time_t>(as), static_cast<long>(ans)}, {static_cast<time_t>(ms), static_cast<long>(mns)}};
  int r = utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  return Done(env, r, errno, "utimensat");
}

// getxattr(fd, name[, missIsNull]) -> Buffer (the value may change size between the two calls:
// retry). With missIsNull, ENODATA answers null: the kernel asks for security.capability
// before writes, and the usual answer is "none".
Napi::Value Getxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  std::string name;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, kNameMax, &name, "xattr name must be 1..255 bytes without NUL"))
    return env.Undefined();
  bool missIsNull = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>();
  std::string path = ProcPath(fd);
  for (int attempt = 0; attempt < 8; attempt++) {
    ssize_t size = getxattr(path.c_str(), name.c_str(), nullptr, 0);
    if (size < 0 && errno == ENODATA && missIsNull) return env.Null();
    if (size < 0) return Done(env, -1, errno, "getxattr");
    std::vector<char> buf(static_cast<size_t>(size) + 1);
    ssize_t n = getxattr(path.c_str(), name.c_str(), buf.data(), buf.size());
    if (n >= 0) return Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n));
    if (errno == ENODATA && missIsNull) return env.Null();
    if (errno != ERANGE) return Done(env, -1, errno, "getxattr");
  }
  return Done(env, -1, ERANGE, "getxattr");
}

// listxattr(fd) -> Buffer of NUL-terminated names.
Napi::Value Listxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  std::string path = ProcPath(fd);
  for (int attempt = 0; attempt < 8; attempt++) {
    ssize_t size = listxattr(path.c_str(), nullptr, 0);
    if (size < 0) return Done(env, -1, errno, "listxattr");
    std::vector<char> buf(static_cast<size_t>(size) + 1);
    ssize_t n = listxattr(path.c_str(), buf.data(), buf.size());
    if (n >= 0) return Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n));
    if (errno != ERANGE) return Done(env, -1, errno, "listxattr");
  }
  return Done(env, -1, ERANGE, "listxattr");
}

// setxattr(fd, name, value, flags): flags XATTR_CREATE | XATTR_REPLACE.
Napi::Value Setxattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  std::string name;
  int64_t flags;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, kNameMax, &name, "xattr name must be 1..255 bytes without NUL"))
    return env.Undefined();
  if (info.Length() < 3 || !info[2].IsBuffer() || info[2].As<Napi::Buffer<char>>().Length() > kXattrSizeMax) {
    ThrowType(env, "value must be a Buffer of at most 64 KiB");
    return env.Undefined();
  }
  if (!ArgSigned(info, 3, 0, XATTR_CREATE | XATTR_REPLACE, &flags, "flags must be XATTR_CREATE/XATTR_REPLACE"))
    return env.Undefined();
  auto v = info[2].As<Napi::Buffer<char>>();
  int r = setxattr(ProcPath(fd).c_str(), name.c_str(), v.Data(), v.Length(), static_cast<int>(flags));
  return Done(env, r, errno, "setxattr");
}

// removexattr(fd, name)
Napi::Value Removexattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  std::string name;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, kNameMax, &name, "xattr name must be 1..255 bytes without NUL"))
    return env.Undefined();
  int r = removexattr(ProcPath(fd).c_str(), name.c_str());
  return Done(env, r, errno, "removexattr");
}

// fstatfs(fd) -> {blocks, bfree, bavail, files, ffree, bsize, namelen, frsize}
Napi::Value Fstatfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  struct statfs s;
  if (fstatfs(fd, &s) != 0) return Done(env, -1, errno, "fstatfs");
  Napi::Object o = Napi::Object::New(env);
  o.Set("blocks", static_cast<double>(s.f_blocks));
  o.Set("bfree", static_cast<double>(s.f_bfree));
  o.Set("bavail", static_cast<double>(s.f_bavail));
  o.Set("files", static_cast<double>(s.f_files));
  o.Set("ffree", static_cast<double>(s.f_ffree));
  o.Set("bsize", static_cast<double>(s.f_bsize));
  o.Set("namelen", static_cast<double>(s.f_namelen));
  o.Set("frsize", static_cast<double>(s.f_frsize));
  return o;
}

// readdir(dirfd, cookie: bigint | null, buffer) -> bytes: one getdents64 into `buffer` (its
// linux_dirent64 records, parsed by the caller: an object per entry built here cost ~2 µs, most
// of a listing's time) from the position `cookie` (0 = start; otherwise a d_off seen before, which
// the host filesystem accepts back through lseek, as telldir/seekdir do), or with null from where
// the descriptor stands, without the lseek.
Napi::Value Readdir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  bool seek = !(info.Length() >= 2 && info[1].IsNull());
  int64_t cookie = 0;
  if (seek) {
    if (info.Length() < 2 || !info[1].IsBigInt()) {
      ThrowType(env, "cookie must be a bigint or null");
      return env.Undefined();
    }
    bool lossless = false;
    cookie = info[1].As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless || cookie < 0) {
      ThrowType(env, "cookie must be a non-negative 63-bit bigint");
      return env.Undefined();
    }
  }
  if (info.Length() < 3 || !info[2].IsBuffer()) {
    ThrowType(env, "buffer must be a Buffer");
    return env.Undefined();
  }
  auto buf = info[2].As<Napi::Buffer<char>>();
  if (buf.Length() < 1024 || buf.Length() > (1u << 20)) {
    ThrowType(env, "buffer must be 1 KiB..1 MiB");
    return env.Undefined();
  }
  if (seek && lseek(fd, cookie, SEEK_SET) < 0) return Done(env, -1, errno, "lseek(dir)");
  ssize_t n = getdents64(fd, buf.Data(), buf.Length());
  if (n < 0) return Done(env, -1, errno, "getdents64");
  return Napi::Number::New(env, static_cast<double>(n));
}

// lseek(fd, offset, whence) -> offset (SEEK_DATA/SEEK_HOLE answers ENXIO past the end).
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t off, whence;
  if (!ArgFd(info, 0, &fd) || !ArgInt64(info, 1, &off, "offset must be a non-negative integer") ||
      !ArgSigned(info, 2, 0, 4, &whence, "whence must be 0..4"))
    return env.Undefined();
  off_t r = lseek(fd, off, static_cast<int>(whence));
  if (r < 0) return Done(env, -1, errno, "lseek");
  return Napi::Number::New(env, static_cast<double>(r));
}

// copyFileRange(fdIn, offIn, fdOut, offOut, len) -> bytes copied (may be short).
Napi::Value CopyFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fin = -1, fout = -1;
  int64_t oin, oout, len;
  if (!ArgFd(info, 0, &fin) || !ArgInt64(info, 1, &oin, "offIn must be a non-negative integer") || !ArgFd(info, 2, &fout) ||
      !ArgInt64(info, 3, &oout, "offOut must be a non-negative integer") || !ArgInt64(info, 4, &len, "len must be a non-negative integer"))
    return env.Undefined();
  loff_t a = oin, b = oout;
  ssize_t n = copy_file_range(fin, &a, fout, &b, static_cast<size_t>(len), 0);
  if (n < 0) return Done(env, -1, errno, "copy_file_range");
  return Napi::Number::New(env, static_cast<double>(n));
}

// syncfs(fd): fd must be a real (not O_PATH) descriptor.
Napi::Value Syncfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  return Done(env, syncfs(fd), errno, "syncfs");
}

// access(fd, mask, uid, gid): faccessat2 with the caller's fsuid/fsgid (AT_EACCESS uses them).
Napi::Value Access(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  int64_t mask, uid, gid;
  if (!ArgFd(info, 0, &fd) || !ArgSigned(info, 1, 0, 7, &mask, "mask must be 0..7") ||
      !ArgId(info, 2, &uid, "uid must be a uid") || !ArgId(info, 3, &gid, "gid must be a gid"))
    return env.Undefined();
  CredSwitch cred(uid, gid, -1);
  if (cred.failed()) return Done(env, -1, EPERM, "setfsuid");
  int r = static_cast<int>(syscall(SYS_faccessat2, fd, "", static_cast<int>(mask), AT_EMPTY_PATH | AT_EACCESS | AT_SYMLINK_NOFOLLOW));
  return Done(env, r, errno, "faccessat2");
}

// raiseFdLimit() -> the new RLIMIT_NOFILE: one O_PATH descriptor per node the client holds.
Napi::Value RaiseFdLimit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return Done(env, -1, errno, "getrlimit");
  rlim_t want = rl.rlim_max;
  if (geteuid() == 0) {
    FILE* f = fopen("/proc/sys/fs/nr_open", "r");
    unsigned long nr = 0;
    if (f) {
      if (fscanf(f, "%lu", &nr) == 1 && nr > want) want = nr;
      fclose(f);
    }
  }
  struct rlimit nrl = {want, want};
  if (setrlimit(RLIMIT_NOFILE, &nrl) != 0) {
    nrl = {rl.rlim_max, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &nrl) != 0) return Napi::Number::New(env, static_cast<double>(rl.rlim_cur));
  }
  return Napi::Number::New(env, static_cast<double>(nrl.rlim_cur));
}

// closeInBackground(fds) -> Promise: close(2) each descriptor on a libuv worker thread, in one
// job; the promise settles when all are closed. A node's last O_PATH descriptor to an unlinked
// inode is where the host filesystem evicts it (ext4 frees its blocks and inode in that close:
// 13-80 µs each on this machine), and a guest's rm sends the FORGETs for those right behind its
// UNLINKs: closed on the event loop, they held up the next request. The caller hands the
// descriptors over: it must not use or close them again.
class CloseWorker : public Napi::AsyncWorker {
 public:
  CloseWorker(Napi::Env env, std::vector<int> fds)
      : Napi::AsyncWorker(env, "kfs.closeInBackground"), fds_(std::move(fds)), done_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() const { return done_.Promise(); }
  void Execute() override {
    for (int fd : fds_) close(fd);  // EINTR or EBADF: the descriptor is gone either way (close(2))
  }
  void OnOK() override { done_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { done_.Reject(e.Value()); }

 private:
  std::vector<int> fds_;
  Napi::Promise::Deferred done_;
};

Napi::Value CloseInBackground(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    ThrowType(env, "fds must be an Int32Array");
    return env.Undefined();
  }
  auto a = info[0].As<Napi::Int32Array>();
  std::vector<int> fds;
  fds.reserve(a.ElementLength());
  for (size_t i = 0; i < a.ElementLength(); i++) {
    if (a[i] < 0) {
      ThrowType(env, "fds must be descriptors (>= 0)");
      return env.Undefined();
    }
    fds.push_back(a[i]);
  }
  auto* worker = new CloseWorker(env, std::move(fds));  // deletes itself after OnOK / OnError
  Napi::Promise done = worker->Promise();
  worker->Queue();
  return done;
}

}  // namespace

void InitPassthrough(Napi::Env env, Napi::Object exports) {
  Napi::Object p = Napi::Object::New(env);
  p.Set("openat2", Napi::Function::New(env, Openat2));
  p.Set("lookupAt", Napi::Function::New(env, LookupAt));
  p.Set("openParent", Napi::Function::New(env, OpenParent));
  p.Set("reopen", Napi::Function::New(env, Reopen));
  p.Set("fstatat", Napi::Function::New(env, Fstatat));
  p.Set("mkdirat", Napi::Function::New(env, Mkdirat));
  p.Set("mknodat", Napi::Function::New(env, Mknodat));
  p.Set("symlinkat", Napi::Function::New(env, Symlinkat));
  p.Set("linkat", Napi::Function::New(env, Linkat));
  p.Set("renameat2", Napi::Function::New(env, Renameat2));
  p.Set("unlinkat", Napi::Function::New(env, Unlinkat));
  p.Set("readlinkat", Napi::Function::New(env, Readlinkat));
  p.Set("fchownat", Napi::Function::New(env, Fchownat));
  p.Set("chmod", Napi::Function::New(env, Chmod));
  p.Set("truncate", Napi::Function::New(env, Truncate));
  p.Set("utimensat", Napi::Function::New(env, Utimensat));
  p.Set("getxattr", Napi::Function::New(env, Getxattr));
  p.Set("listxattr", Napi::Function::New(env, Listxattr));
  p.Set("setxattr", Napi::Function::New(env, Setxattr));
  p.Set("removexattr", Napi::Function::New(env, Removexattr));
  p.Set("fstatfs", Napi::Function::New(env, Fstatfs));
  p.Set("readdir", Napi::Function::New(env, Readdir));
  p.Set("lseek", Napi::Function::New(env, Lseek));
  p.Set("copyFileRange", Napi::Function::New(env, CopyFileRange));
  p.Set("syncfs", Napi::Function::New(env, Syncfs));
  p.Set("access", Napi::Function::New(env, Access));
  p.Set("raiseFdLimit", Napi::Function::New(env, RaiseFdLimit));
  p.Set("closeInBackground", Napi::Function::New(env, CloseInBackground));
  Napi::Object c = Napi::Object::New(env);
  c.Set("O_PATH", O_PATH);
  c.Set("O_TMPFILE", O_TMPFILE);
  c.Set("O_NOFOLLOW", O_NOFOLLOW);
  c.Set("O_DIRECTORY", O_DIRECTORY);
  c.Set("O_CLOEXEC", O_CLOEXEC);
  c.Set("UTIME_NOW", static_cast<double>(UTIME_NOW));
  c.Set("UTIME_OMIT", static_cast<double>(UTIME_OMIT));
  p.Set("constants", c);
  exports.Set("passthrough", p);
}

}  // namespace kfs
