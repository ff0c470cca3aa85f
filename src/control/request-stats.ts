/**
 * Per-opcode FUSE request counts and latencies for `kfsctl status`, measured around
 * FuseSession.handle from outside the dispatcher: track(session) wraps the instance's handle
 * so both transports (/dev/fuse and virtqueues) are measured without changing them.
 *
 * Latencies go into log-scale histograms (about 9% wide buckets from 1 µs to ~100 s), so
 * percentiles cost constant memory; a reported p50/p99 is the upper edge of its bucket.
 * The opcode is read from fuse_in_header (u32 len, u32 opcode, ...), the same bytes the
 * dispatcher decodes; a request too short to have one is counted as "malformed".
 */
import { opcodeName } from '../fuse/abi';
import type { FuseSession, Reply } from '../fuse/dispatcher';
import type { OpcodeStats } from './protocol';

const BUCKETS = 220;
const GROWTH = 1.09;
const LOG_GROWTH = Math.log(GROWTH);
/** FUSE_OUT_HEADER: {u32 len, s32 error, u64 unique}; a negative error marks a failed request. */
const OUT_ERROR_OFFSET = 4;

class Histogram {
  readonly buckets = new Uint32Array(BUCKETS);
  /** Requests seen; `timed` of them have a latency in the buckets. */
  count = 0;
  timed = 0;
  errors = 0;
  maxUs = 0;

  /** A request of `us` microseconds; negative: not timed (counted only). */
  add(us: number): void {
    this.count++;
    if (us < 0) return;
    const i = us <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(us) / LOG_GROWTH));
    this.buckets[i]++;
    this.timed++;
    if (us > this.maxUs) this.maxUs = us;
  }

  percentile(p: number): number | null {
    if (!this.timed) return null;
    const want = Math.ceil((p / 100) * this.timed);
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.buckets[i];
      if (seen >= want) return Math.min(this.maxUs, Math.round(GROWTH ** i * 10) / 10);
    }
    return this.maxUs;
  }
}

export class RequestStats {
  private byOpcode = new Map<string, Histogram>();
  total = 0;

  /** One request; `us` negative when it was not timed (FuseSession.handleSync samples). */
  record(opcode: string, us: number, failed: boolean): void {
    let h = this.byOpcode.get(opcode);
    if (!h) this.byOpcode.set(opcode, (h = new Histogram()));
    h.add(us);
    if (failed) h.errors++;
    this.total++;
  }

  snapshot(): OpcodeStats[] {
    return [...this.byOpcode].map(([opcode, h]) => ({
      opcode, count: h.count, errors: h.errors, p50Us: h.percentile(50), p99Us: h.percentile(99), maxUs: Math.round(h.maxUs * 10) / 10,
    })).sort((a, b) => b.count - a.count || a.opcode.localeCompare(b.opcode));
  }

  /** Measure every request `session` handles from now on. Returns the session. */
  track(session: FuseSession): FuseSession {
    const marked = session as FuseSession & { kfsRequestStats?: RequestStats };
    if (marked.kfsRequestStats) return session;
    marked.kfsRequestStats = this;
    const handle = session.handle.bind(session);
    session.handle = (buf: Buffer, dest?: readonly Buffer[]): Promise<Reply> => {
      const t0 = performance.now();
      const name = buf.length >= 8 ? lowerOpcodeName(buf.readUInt32LE(4)) : 'malformed';
      const p = handle(buf, dest);
      // Observe the promise without adding a step to the one the transport awaits.
      p.then((reply) => this.record(name, (performance.now() - t0) * 1000, failedReply(reply)), () => this.record(name, (performance.now() - t0) * 1000, true));
      return p;
    };
    // Requests the session answers synchronously (handleSync) do not go through handle().
    session.observeSync = (opcode, us, failed) => this.record(lowerOpcodeName(opcode), us, failed);
    return session;
  }
}

/** Opcode names as status shows them, computed once per opcode (this runs for every request). */
const lowerNames = new Map<number, string>();
function lowerOpcodeName(opcode: number): string {
  let n = lowerNames.get(opcode);
  if (n === undefined) {
    n = opcodeName(opcode).toLowerCase();
    if (lowerNames.size < 256) lowerNames.set(opcode, n);
  }
  return n;
}

function failedReply(reply: Reply): boolean {
  const head = Array.isArray(reply) ? reply[0] : reply;
  return !!head && head.length >= 8 && head.readInt32LE(OUT_ERROR_OFFSET) < 0;
}
