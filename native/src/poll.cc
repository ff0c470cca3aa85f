// FdPoller: watch a non-blocking fd for readability on the libuv loop (uv_poll), so that
// /dev/fuse and eventfds are served from the event loop without a blocked thread.
#include "errors.h"
#include "poll.h"
#include <uv.h>

namespace kfs {

class FdPoller : public Napi::ObjectWrap<FdPoller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdPoller", {InstanceMethod("start", &FdPoller::Start), InstanceMethod("stop", &FdPoller::Stop),
                                         InstanceMethod("close", &FdPoller::Close)});
  }

  // new FdPoller(fd, callback(events: number, status: number))
  explicit FdPoller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdPoller>(info) {
    Napi::Env env = info.Env();
    if (!ArgFd(info, 0, &fd_)) return;
    if (info.Length() < 2 || !info[1].IsFunction()) {
      ThrowType(env, "FdPoller(fd, callback)");
      return;
    }
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      ThrowErrno(env, "napi_get_uv_event_loop", EINVAL);
      return;
    }
    handle_ = new uv_poll_t;
    int r = uv_poll_init(loop, handle_, fd_);
    if (r != 0) {
      delete handle_;
      handle_ = nullptr;
      ThrowErrno(env, "uv_poll_init", -r);
      return;
    }
    handle_->data = this;
  }

  ~FdPoller() override { CloseHandle(); }

 private:
  static void OnPoll(uv_poll_t* h, int status, int events) {
    FdPoller* self = static_cast<FdPoller*>(h->data);
    if (self == nullptr || self->callback_.IsEmpty()) return;
    Napi::Env env = self->callback_.Env();
    Napi::HandleScope scope(env);
    self->callback_.Call({Napi::Number::New(env, events), Napi::Number::New(env, status)});
  }

  // start(events): UV_READABLE = 1, UV_WRITABLE = 2
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t events;
    if (!ArgInt64(info, 0, &events, "events must be an integer")) return env.Undefined();
    if (handle_ == nullptr) {
      ThrowErrno(env, "uv_poll_start", EBADF);
      return env.Undefined();
    }
    int r = uv_poll_start(handle_, static_cast<int>(events & (UV_READABLE | UV_WRITABLE)), OnPoll);
    if (r != 0) ThrowErrno(env, "uv_poll_start", -r);
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) uv_poll_stop(handle_);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    callback_.Reset();
    return info.Env().Undefined();
  }

  void CloseHandle() {
    if (handle_ == nullptr) return;
    uv_poll_stop(handle_);
    handle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(handle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    handle_ = nullptr;
  }

  int fd_ = -1;
  uv_poll_t* handle_ = nullptr;
  Napi::FunctionReference callback_;
};

void InitPoll(Napi::Env env, Napi::Object exports) {
  exports.Set("FdPoller", FdPoller::Define(env));
}

}  // namespace kfs
