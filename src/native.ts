/** Typed access to the C++ addon (native/). Its functions throw errors carrying errno/code. */
import path from 'node:path';

export interface KfsNative {
  flock(fd: number, exclusive: boolean, nonblock: boolean): void;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  blockDeviceSize(fd: number): number;
  /** One read(2) filling at most buf.length bytes: the byte count, or -errno (no exception). */
  readInto(fd: number, buf: Buffer): number;
  /** readInto, retried (with sched_yield between tries) for up to `micros` while the fd is empty; -EAGAIN if nothing came. */
  readPolling(fd: number, buf: Buffer, micros: number): number;
  /** One preadv2 into buffers (1..IOV_MAX) from position: bytes read (short at end of file, or with nowait when only
   *  part is in the page cache), or -errno. nowait (RWF_NOWAIT): -EAGAIN when nothing is cached (read on the thread pool
   *  instead); without it the call may wait for the disk. */
  preadv(fd: number, buffers: readonly Buffer[], position: number, nowait: boolean): number;
  /** preadv into buf[offset, offset + length) (checked against buf's size). */
  preadvAt(fd: number, buf: Buffer, offset: number, length: number, position: number, nowait: boolean): number;
  FALLOC_FL: { KEEP_SIZE: number; PUNCH_HOLE: number; ZERO_RANGE: number };
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount2(target: string, flags: number): void;
  MS: { MS_RDONLY: number; MS_NOSUID: number; MS_NODEV: number; MS_NOATIME: number; MNT_DETACH: number; MNT_FORCE: number };
  /** Calls back on the event loop when fd is ready (events: 1 readable, 2 writable; status < 0 on error). */
  FdPoller: new (fd: number, callback: (events: number, status: number) => void) => FdPollerHandle;

  // vhost-user (native/src/socket.cc, memory.cc). Bad arguments throw TypeError/RangeError with
  // errno EINVAL; every fd returned is O_CLOEXEC, socket fds also O_NONBLOCK.
  /** socket + bind + chmod(mode) + listen. The file never exists with wider permissions than mode;
   *  EADDRINUSE if path exists (unlink stale sockets first); ENAMETOOLONG past 107 bytes. */
  unixListen(path: string, backlog: number, mode: number): number;
  /** Blocking connect, then O_NONBLOCK. */
  unixConnect(path: string): number;
  /** accept4; -1 when no connection is pending. */
  accept(listenFd: number): number;
  /** SO_PEERCRED of a connected unix socket. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** A connected AF_UNIX stream socket pair, both ends close-on-exec. */
  socketPair(): [number, number];
  /** Set O_NONBLOCK on an fd. */
  setNonBlocking(fd: number): void;
  /** One recvmsg(MSG_CMSG_CLOEXEC) into buf[offset, offset+length) (length >= 1). null on EAGAIN; bytes 0 = peer closed.
   *  fds arrive from SCM_RIGHTS (at most 32); truncated control data closes them all and throws EPROTO. */
  recvMsg(fd: number, buf: Buffer, offset: number, length: number): { bytes: number; fds: number[] } | null;
  /** sendmsg(MSG_NOSIGNAL) of all of buf, fds (0..32, buf non-empty if any) as SCM_RIGHTS with the first byte.
   *  Blocks in poll(POLLOUT) while the peer is full; ETIMEDOUT after 5 s without progress (the stream is then
   *  mid-message: close it). */
  sendMsg(fd: number, buf: Buffer, fds: number[]): void;
  /** mmap(MAP_SHARED) of [offset, offset+length); offset page-aligned, 1 <= length <= 2^47; for a regular file
   *  offset+length must be within its size (EINVAL otherwise: touching past the end would SIGBUS).
   *  writable false maps PROT_READ: the chunks are still Buffers, and writing one kills the process (SIGSEGV). */
  mmap(fd: number, offset: number, length: number, writable: boolean): MappedRegion;
  /** memfd_create(MFD_CLOEXEC) + ftruncate(size); name at most 249 bytes. */
  memfdCreate(name: string, size: number): number;
  /** Full memory barrier (std::atomic_thread_fence(seq_cst)). */
  fence(): void;
  /** eventfd(initval <= 2^32-1, EFD_CLOEXEC [| EFD_NONBLOCK]). */
  eventfd(initval: number, nonblock: boolean): number;
  /** The counter value read (resetting it); 0 when a non-blocking eventfd is at 0. */
  eventfdRead(fd: number): number;
  /** Adds value (1 <= value < 2^53) to the counter. */
  eventfdWrite(fd: number, value: number): void;
  /** Host-directory system calls for PassthroughFs (native/src/passthrough.cc). */
  passthrough: import('./passthrough/host-calls').HostCalls;
}

export interface MappedRegion {
  /** Bytes mapped. */
  readonly length: number;
  /** 1 GiB (1 << 30). */
  readonly chunkSize: number;
  /** The mapping as consecutive Buffers of chunkSize bytes (the last may be shorter) sharing the mapped memory:
   *  byte X is chunks[Math.floor(X / chunkSize)][X % chunkSize]. */
  readonly chunks: Buffer[];
  /** Stop using the mapping. munmap happens once unmap() was called (or the region collected) AND every chunk
   *  Buffer has been collected, so a stale Buffer never points at unmapped memory. Idempotent. */
  unmap(): void;
}

export interface FdPollerHandle {
  start(events: number): void;
  stop(): void;
  close(): void;
}

function load(): KfsNative {
  // dist/src/native.js -> ../../native/build/Release
  const candidates = [
    path.join(__dirname, '..', '..', 'native', 'build', 'Release', 'kfs_native.node'),
    path.join(__dirname, '..', 'native', 'build', 'Release', 'kfs_native.node'),
  ];
  let lastErr: unknown;
  for (const c of candidates) {
    try {
      return require(c) as KfsNative;
    } catch (e) {
      lastErr = e;
    }
  }
  throw new Error(`kfs native addon not built (run: npm run setup): ${String(lastErr)}`);
}

export const native: KfsNative = load();
