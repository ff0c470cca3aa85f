/**
 * Commit before reply: nothing the kernel has been told may be lost when the server process
 * dies. It is enough that every change behind a reply is in memory that outlives the process
 * (no fsync: a process death is not a power loss) before the reply is written to /dev/fuse:
 * a log-only commit (Ext4Fs.commitToLog, Journal.commit soft) copies the changed blocks into
 * the supervisor's shared memory (ext4/journal/shared-log.ts), or without it writes a soft
 * jbd2 transaction to the image's log (the host's page cache). What a dead server leaves is
 * a consistent image plus what the next server applies in full; the durable commits (fsync,
 * syncfs, every 5 s) are unchanged.
 *
 * Group commit: replies of changing requests completed in one event-loop turn wait for one
 * commit (with nothing else in flight, it starts at once). Replies of other requests go out at
 * once, unless a change is in flight or waiting for its commit: then they wait too, so that no
 * reply can show the kernel a state (a name, a size) that a death could still take back.
 */
import { constants } from 'node:fs';
import { log } from '../util/log';
import { FuseOpcode as Op } from '../fuse/abi';
import { Reply } from '../fuse/dispatcher';

const MUTATING = new Set<number>([
  Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.LINK,
  Op.WRITE, Op.SETXATTR, Op.REMOVEXATTR, Op.CREATE, Op.FALLOCATE, Op.RENAME2, Op.COPY_FILE_RANGE,
  Op.COPY_FILE_RANGE_64, Op.TMPFILE,
]);

/** fuse_in_header is 40 bytes; fuse_open_in starts with {u32 flags, u32 open_flags}. */
const OPEN_FLAGS_AT = 40;

/**
 * Can this request (a whole message from /dev/fuse) change what is on the image? OPEN does
 * only with O_TRUNC; one too short to say is treated as changing (the session answers it with
 * an error anyway).
 */
export function isMutating(req: Buffer): boolean {
  if (req.length < 8) return false;
  const opcode = req.readUInt32LE(4);
  if (opcode === Op.OPEN) return req.length < OPEN_FLAGS_AT + 4 || (req.readUInt32LE(OPEN_FLAGS_AT) & constants.O_TRUNC) !== 0;
  return MUTATING.has(opcode);
}

export interface ReplyGateStats {
  commits: number;
  /** Replies released after a commit. */
  released: number;
  commitMs: number;
}

export class ReplyGate {
  /** Changing requests read and not yet answered by the session. */
  private mutations = 0;
  private held: Reply[] = [];
  private scheduled = false;
  private committing = false;
  readonly stats: ReplyGateStats = { commits: 0, released: 0, commitMs: 0 };

  /** `inFlight`: requests read and not yet answered, held replies included (FuseDevice.pending). */
  constructor(private readonly commit: () => Promise<void>, private readonly release: (r: Reply) => void, private readonly inFlight: () => number) {}

  started(): void {
    this.mutations++;
  }

  /** No change in flight or waiting for its commit: a reply of a request that changes nothing may go out now. */
  get quiet(): boolean {
    return this.mutations === 0 && !this.committing && !this.scheduled && this.held.length === 0;
  }

  /** A reply of a request that changes nothing: true if it must wait (it is then the gate's). */
  hold(reply: Reply): boolean {
    if (this.quiet) return false;
    this.held.push(reply);
    return true;
  }

  readonly onMutationReply = (reply: Reply): void => {
    this.mutations--;
    this.held.push(reply);
    // Every request in flight waits here: nothing can join a group commit in this turn, so the
    // commit need not wait for the next one (a process waiting on each reply: the common case).
    if (!this.scheduled && !this.committing && this.inFlight() === this.held.length) void this.run();
    else this.schedule();
  };

  readonly onMutationCrash = (e: unknown): void => {
    this.mutations--;
    log.error(`fuse: handler crashed: ${(e as Error).stack}`);
    this.held.push(null);
    this.schedule();
  };

  private schedule(): void {
    if (this.scheduled || this.committing) return;
    this.scheduled = true;
    // setImmediate: replies completed in this turn (and the I/O callbacks already due) join.
    setImmediate(this.run);
  }

  private readonly run = async (): Promise<void> => {
    this.scheduled = false;
    this.committing = true;
    const out = this.held;
    this.held = [];
    const t0 = performance.now();
    try {
      await this.commit();
    } catch (e) {
      // The filesystem has turned read-only (damage) or the image failed: the changes are lost
      // whatever we do; the replies still go, as they would have without the gate.
      log.error(`fuse: commit before reply failed: ${(e as Error).message}`);
    }
    this.stats.commits++;
    this.stats.commitMs += performance.now() - t0;
    this.committing = false;
    this.stats.released += out.length;
    for (const r of out) this.release(r);
    if (this.held.length) this.schedule();
  };
}
