// Scheduling policy of the process's own threads (sched(7)). kfsd puts the runtime's helper
// threads (V8's compiler and GC workers) under SCHED_IDLE, so that on a host with no spare CPU
// they run only where nothing else wants to: a guest's vCPU or QEMU's main loop woken onto a CPU
// where one of them runs preempts it at once (a SCHED_IDLE task is always preempted on wake-up,
// kernel/sched/fair.c, and counts as an idle CPU when a woken task's CPU is chosen).
#include "thread.h"
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include "argcheck.h"
#include "errors.h"

namespace kfs {
namespace {

// setThreadIdle(tid): sched_setscheduler(tid, SCHED_IDLE). Only a thread of this process: tid is
// checked with tgkill(getpid(), tid, 0), which fails ESRCH for any other task.
Napi::Value SetThreadIdle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid;
  if (!argcheck::Int(info, 0, "setThreadIdle", "tid", 1, INT32_MAX, &tid)) return env.Undefined();
  if (syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), 0) != 0) {
    ThrowErrno(env, "tgkill", errno);
    return env.Undefined();
  }
  struct sched_param p = {};
  p.sched_priority = 0;  // the only priority SCHED_IDLE takes
  if (sched_setscheduler(static_cast<pid_t>(tid), SCHED_IDLE, &p) != 0) ThrowErrno(env, "sched_setscheduler", errno);
  return env.Undefined();
}

}  // namespace

void InitThread(Napi::Env env, Napi::Object exports) {
  exports.Set("setThreadIdle", Napi::Function::New(env, SetThreadIdle));
}

}  // namespace kfs
