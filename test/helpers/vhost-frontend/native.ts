/**
 * The addon primitives the test front-end needs (unix sockets with SCM_RIGHTS, memfd, mmap,
 * eventfd, fences), typed here once so the front-end compiles against the addon's documented
 * shape whether or not src/native.ts has grown the declarations yet.
 */
import { native } from '../../../src/native';
import type { FdPollerHandle } from '../../../src/native';

/** A mapping of a file range: Buffers of at most chunkSize bytes each (one ArrayBuffer cannot hold more). */
export interface MappedRegion {
  length: number;
  chunkSize: number;
  chunks: Buffer[];
  unmap(): void;
}

export interface VhostNative {
  unixConnect(path: string): number;
  /** socket + bind + chmod + listen (the backend channel's socket pair is made with these: the addon has no socketpair). */
  unixListen(path: string, backlog: number, mode: number): number;
  /** accept4; -1 when no connection is pending. */
  accept(listenFd: number): number;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  FALLOC_FL: { KEEP_SIZE: number; PUNCH_HOLE: number; ZERO_RANGE: number };
  /** One recvmsg(2): null when it would block; bytes 0 at end of stream. */
  recvMsg(fd: number, buf: Buffer, off: number, len: number): { bytes: number; fds: number[] } | null;
  sendMsg(fd: number, buf: Buffer, fds: number[]): number;
  mmap(fd: number, offset: number, length: number, writable: boolean): MappedRegion;
  memfdCreate(name: string, size: number): number;
  /** A full memory barrier (the virtio ring's mb()). */
  fence(): void;
  eventfd(init: number, nonblock: boolean): number;
  /** The counter, reset to 0; 0 when nothing was signalled (EAGAIN). */
  eventfdRead(fd: number): number;
  eventfdWrite(fd: number, v: number): void;
  FdPoller: new (fd: number, callback: (events: number, status: number) => void) => FdPollerHandle;
}

export const vn = native as unknown as VhostNative;
