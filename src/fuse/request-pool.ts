/**
 * Buffers for the copies of large requests (WRITE payloads), reused once their request is
 * answered: the dispatcher and the filesystems keep nothing of a request past its reply. Both
 * transports copy every request out of the memory it arrived in (/dev/fuse's read buffer, guest
 * memory); a fresh 1 MiB Buffer per WRITE costs more in page faults than the copy itself, and
 * external memory allocated that fast makes V8 run full garbage collections, which mark every
 * Buffer of a full block cache: a 512 MiB sequential write after an untar took 3.6 s of CPU and
 * ran at 132 MB/s (301 MB/s on a fresh mount) before kfs mount pooled them too.
 */
export const LARGE_REQUEST = 64 << 10;

export class LargeRequestPool {
  private free: Buffer[] = [];

  /** `size`: the session's request buffer size (every buffer is that large); `keep`: at most this many kept. */
  constructor(private readonly size: number, private readonly keep = 8) {}

  /** A buffer to copy a request of `len` bytes into, or null when it is small (or too large) to pool. */
  take(len: number): Buffer | null {
    if (len < LARGE_REQUEST || len > this.size) return null;
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  /** Its request was answered: the buffer may be reused. (Not after a handler failed: it may still hold it.) */
  give(buf: Buffer): void {
    if (buf.length === this.size && this.free.length < this.keep) this.free.push(buf);
  }
}
