// Scheduling policy of this process's own threads (sched(7)).
#include "sched.h"
#include "errors.h"

#include <sched.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

namespace kfs {

// idleThread(tid): SCHED_IDLE for one thread of this process, so that it runs only on a CPU no
// other thread wants and any other thread waking up preempts it at once. Not the main thread
// (EINVAL) and not a thread of another process (ESRCH), whatever the caller's privileges.
// Lowering a thread to SCHED_IDLE needs no privilege (sched_setscheduler(2)).
static Napi::Value IdleThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid = 0;
  if (!ArgInt64(info, 0, &tid, "tid must be a positive integer")) return env.Undefined();
  if (tid <= 0 || tid > 0x7fffffff) {
    ThrowType(env, "tid must be a positive integer");
    return env.Undefined();
  }
  if (tid == getpid()) {
    ThrowErrno(env, "sched_setscheduler", EINVAL);
    return env.Undefined();
  }
  struct stat st;
  std::string task = "/proc/self/task/" + std::to_string(tid);
  if (stat(task.c_str(), &st) != 0) {
    ThrowErrno(env, "sched_setscheduler", ESRCH);
    return env.Undefined();
  }
  struct sched_param param = {};
  param.sched_priority = 0;
  if (sched_setscheduler(static_cast<pid_t>(tid), SCHED_IDLE, &param) != 0) ThrowErrno(env, "sched_setscheduler", errno);
  return env.Undefined();
}

void InitSched(Napi::Env env, Napi::Object exports) {
  exports.Set("idleThread", Napi::Function::New(env, IdleThread));
}

}  // namespace kfs
