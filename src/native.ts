/** Typed access to the C++ addon (native/). Its functions throw errors carrying errno/code. */
import path from 'node:path';

export interface KfsNative {
  flock(fd: number, exclusive: boolean, nonblock: boolean): void;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  blockDeviceSize(fd: number): number;
  /** One read(2) filling at most buf.length bytes: the byte count, or -errno (no exception). */
  readInto(fd: number, buf: Buffer): number;
  FALLOC_FL: { KEEP_SIZE: number; PUNCH_HOLE: number; ZERO_RANGE: number };
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount2(target: string, flags: number): void;
  MS: { MS_RDONLY: number; MS_NOSUID: number; MS_NODEV: number; MS_NOATIME: number; MNT_DETACH: number; MNT_FORCE: number };
  /** Calls back on the event loop when fd is ready (events: 1 readable, 2 writable; status < 0 on error). */
  FdPoller: new (fd: number, callback: (events: number, status: number) => void) => FdPollerHandle;
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
