#pragma once
#include <napi.h>
namespace kfs {
// unixListen, unixConnect, accept, peerCred, recvMsg, sendMsg (vhost-user socket).
void InitSocket(Napi::Env env, Napi::Object exports);
}
