/**
 * The running jbd2 journal: one transaction per sync point, in ordered mode.
 *
 * kfs changes metadata only inside the block cache, and a sync point (Volume.sync) always falls
 * between operations, so the dirty set at a sync is a consistent filesystem state: that set is
 * the transaction. A commit (jbd2_journal_commit_transaction, simplified) is:
 *   1. descriptor blocks + copies of the dirty blocks + revoke blocks written at the log head;
 *   2. barrier (fdatasync): the file data written directly to the image since the last commit
 *      (ordered mode: data before the metadata that points at it), the log blocks, and the
 *      previous transactions' home writes all become durable;
 *   3. commit block; barrier: the transaction is durable;
 *   4. the blocks are written home (no barrier: the next commit's step 2 makes them durable).
 *
 * Log-only ("soft") commits, for commit-before-reply under the supervisor: with the
 * supervisor's shared memory (shared-log.ts) they are copies of the dirty blocks there, which a
 * durable commit takes over; without it they are soft transactions in the log: a process death
 * keeps the host's page cache, so writing the transaction is enough there; only power loss
 * needs the barriers. A soft commit writes step 1 plus a soft commit record (blocks.ts) in one
 * write, no barrier, no home writes: the blocks stay pinned in the cache. The next durable
 * commit (fsync, syncfs, the periodic commit, close, or a full log) makes them durable at its
 * first barrier, rewrites their records as real commit blocks next to its own, and writes
 * everything home. Replay: the kernel and e2fsck end the log at a soft record (unknown block
 * type), so they never apply a transaction a power loss may have torn (their replay applies
 * a committed transaction with a bad block checksum in part: fs/jbd2/recovery.c skips just that
 * block); kfs applies one only if the crc of all its log blocks matches, and stops at the
 * first that does not. Blocks freed stay busy until a durable commit (Volume), since a soft
 * freeing may be lost. File data is not ordered before a soft commit (no barrier): after a
 * power loss, a replayed soft transaction may show stale bytes in a file written just before
 * it, as data=writeback would; fsync'd data is never affected.
 * The journal superblock's tail (s_start/s_sequence) is advanced lazily, as jbd2 does: only
 * when the log needs the space (then every committed transaction is already home after one
 * barrier, so the tail jumps to the head) and at close (s_start 0: empty). Replaying
 * transactions that are already home is harmless, except for this hazard:
 *
 * Freed-then-reused blocks: a metadata block B logged in transaction T, freed later, then
 * reused for file data written straight to the image; replaying T would overwrite the data.
 * We write revoke records (as ext4_free_blocks → jbd2_journal_revoke does) rather than force
 * a checkpoint before reuse: a revoke costs a few bytes in the next transaction, while a
 * checkpoint costs barriers and a journal superblock write each time a block is recycled (a
 * common event: directory blocks, extent leaves, xattr blocks). The revoke for B goes into the
 * transaction that frees B, and B cannot be handed out as file data before that transaction
 * commits (Volume keeps freed blocks busy until then), so B's new data can never be overwritten
 * by a replay. A block freed and logged again in the same transaction gets no revoke (a revoke
 * record also hides the copy of its own transaction).
 */
import { BlockDevice } from '../../block/device';
import { log } from '../../util/log';
import { SuperblockFields, INCOMPAT, RO_COMPAT } from '../superblock';
import {
  JournalSuperblock, JBD2_FEATURE_INCOMPAT_REVOKE, JBD2_FEATURE_INCOMPAT_64BIT, JBD2_FEATURE_INCOMPAT_CSUM_V2,
  JBD2_FEATURE_INCOMPAT_CSUM_V3, JBD2_FEATURE_COMPAT_CHECKSUM, JBD2_CRC32C_CHKSUM, JBD2_SUPERBLOCK_V2,
} from './superblock';
import {
  LogFormat, tagsPerDescriptor, revokesPerBlock, encodeDescriptor, encodeRevoke, encodeCommit, encodeSoftCommit, txnCrc, softCrcCoversTagsOnly, logCopy, BlockTag,
} from './blocks';
import { JournalFile, locateJournal, readJournalSuperblock, writeJournalSuperblock, logFormatOf, scanAndReplay } from './recovery';
import { SharedSoftLog, SharedLogContents } from './shared-log';

export interface CommitStats {
  commits: number;
  loggedBlocks: number;
  revokes: number;
  checkpoints: number;
  /** Transactions too large for the log, written in place without atomicity. */
  oversized: number;
  /** Log-only commits (see commit). */
  softCommits: number;
  /** Times the shared log was full and compacted instead of emptied by a durable commit (shared-log.ts). */
  sharedCompactions: number;
}

/** Transactions up to this size are built in a buffer the journal keeps (Journal.txnBuffer). */
const TXN_BUFFER_KEEP = 1 << 20;

export class Journal {
  private fmt: LogFormat;
  private readonly first: number;
  private readonly last: number;
  /** Next log block to write. */
  private head: number;
  private nextSeq: number;
  /** Log blocks from the on-disk tail (jsb s_start) to head, 0 when s_start = 0. */
  private used = 0;
  /** Filesystem blocks that have a copy in the log the on-disk tail still covers. */
  private logged = new Set<number>();
  private pendingRevokes = new Set<number>();
  private lastCommitSec = 0;
  /** Soft transactions since the last durable commit: where their records are, to rewrite them. */
  private soft: { seq: number; at: number; sec: number; nsec: number }[] = [];
  /** Log blocks the soft transactions take. */
  private softBlocks = 0;
  readonly stats: CommitStats = { commits: 0, loggedBlocks: 0, revokes: 0, checkpoints: 0, oversized: 0, softCommits: 0, sharedCompactions: 0 };

  /**
   * Where log-only commits go when the supervisor provides shared memory for them
   * (shared-log.ts); null: they are soft jbd2 transactions in the log.
   */
  private shared: SharedSoftLog | null = null;

  /** Where commit blocks written on their own are encoded (commits are never concurrent; writeAt keeps no reference). */
  private readonly commitBlock: Buffer;

  private constructor(private dev: BlockDevice, private file: JournalFile, private jsb: JournalSuperblock) {
    this.fmt = logFormatOf(jsb);
    this.commitBlock = Buffer.alloc(this.fmt.blockSize);
    this.first = jsb.s_first;
    this.last = jsb.s_maxlen;
    this.head = jsb.s_first;
    this.nextSeq = jsb.s_sequence;
  }

  /**
   * Take over an empty journal (recovered already) for writing. The features are those the
   * kernel sets for this filesystem (ext4 set_journal_csum_feature_set, 64bit, revoke); the
   * superblock is rewritten here and made durable by the caller's next barrier.
   */
  static async start(dev: BlockDevice, sb: SuperblockFields): Promise<Journal> {
    const file = await locateJournal(dev, sb);
    const { jsb } = await readJournalSuperblock(dev, file);
    if (jsb.s_start !== 0) {
      // needs_recovery is clear but the log has transactions: they are home already (the flag
      // is cleared only after a final barrier). Wipe the log, as ext4_load_journal does.
      log.info('journal: log not empty but needs_recovery clear; wiping it');
      const end = (await scanAndReplay(dev, file, jsb)).nextSequence;
      jsb.s_start = 0;
      jsb.s_sequence = (end + 1) >>> 0;
    }
    if (jsb.s_maxlen - jsb.s_first < 32) throw new Error(`journal of ${jsb.s_maxlen} blocks is too small`);
    // Sequences past any the log can still hold: a replay that ended early (at a soft
    // transaction a power loss tore) leaves intact ones with later sequences behind it, and a
    // new transaction must never be mistaken for one of them (jbd2's +1 assumes a log that ends
    // at its first gap). A transaction takes at least two log blocks.
    jsb.s_sequence = (jsb.s_sequence + (jsb.s_maxlen - jsb.s_first)) >>> 0;
    let incompat = (jsb.s_feature_incompat & ~(JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3)) | JBD2_FEATURE_INCOMPAT_REVOKE;
    if (sb.s_feature_incompat & INCOMPAT['64bit']) incompat |= JBD2_FEATURE_INCOMPAT_64BIT;
    if (sb.s_feature_ro_compat & RO_COMPAT.metadata_csum) incompat |= JBD2_FEATURE_INCOMPAT_CSUM_V3;
    jsb.h_blocktype = JBD2_SUPERBLOCK_V2;
    jsb.s_feature_incompat = incompat;
    jsb.s_feature_compat &= ~JBD2_FEATURE_COMPAT_CHECKSUM;
    jsb.s_checksum_type = incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3 ? JBD2_CRC32C_CHKSUM : 0;
    jsb.s_errno = 0;
    await writeJournalSuperblock(dev, file, jsb);
    return new Journal(dev, file, jsb);
  }

  private get logLen(): number {
    return this.last - this.first;
  }

  /** Largest dirty set one transaction should carry: a quarter of the log, like jbd2's j_max_transaction_buffers. */
  get maxTransactionBlocks(): number {
    const perDesc = tagsPerDescriptor(this.fmt);
    return Math.max(16, Math.floor(((this.logLen / 4) * perDesc) / (perDesc + 1)) - 8);
  }

  /** Blocks are being freed: revoke those with a copy in the log. */
  revokeRange(start: number, len: number): void {
    if (this.logged.size === 0) return;
    if (len <= this.logged.size) {
      for (let b = start; b < start + len; b++) if (this.logged.has(b)) this.pendingRevokes.add(b);
    } else {
      for (const b of this.logged) if (b >= start && b < start + len) this.pendingRevokes.add(b);
    }
  }

  private wrap(n: number): number {
    return n >= this.last ? n - this.logLen : n;
  }

  /** Write `data` (whole blocks, in log order) at log block `start`, wrapping at the end of the log. */
  private async writeLog(start: number, data: Buffer): Promise<void> {
    const bs = this.dev.blockSize;
    const count = data.length / bs;
    let i = 0;
    while (i < count) {
      const pos = this.wrap(start + i);
      const n = Math.min(count - i, this.last - pos);
      for (const r of this.file.runs(pos, n)) {
        const from = (i + (r.log - pos)) * bs;
        await this.dev.writeAt(data.subarray(from, from + r.len * bs), r.pblk * bs);
      }
      i += n;
    }
  }

  /**
   * Commit the device's dirty blocks as one transaction. A durable commit (soft false) writes
   * them home afterwards; with nothing dirty, its barrier still makes file data durable (fsync).
   * A log-only commit (soft) writes the transaction and a soft commit record with no barrier
   * and leaves the blocks pinned in the cache: a process death loses nothing (the host's page
   * cache has it all), a power loss may lose it but never applies part of it. It becomes a
   * durable commit when the log is filling. Returns whether the commit was durable.
   */
  async commit(soft = false): Promise<boolean> {
    if (soft && this.shared) {
      if (this.commitShared()) return false;
      soft = false; // the shared log or the cache is full: a durable commit takes it all
    }
    // With commits in the shared log, the blocks they pinned are not in the jbd2 log yet.
    const dirty = this.shared?.pending ? this.dev.pendingEntries() : this.dev.dirtyEntries();
    const inTxn = new Set(dirty.map((d) => d.block));
    const revokes = [...this.pendingRevokes].filter((b) => !inTxn.has(b)).sort((a, b) => a - b);
    const empty = dirty.length === 0 && revokes.length === 0;
    if (empty && soft) return false;
    if (empty && !this.soft.length) {
      await this.dev.barrier();
      // Nothing pinned or dirty: whatever the shared log holds is home (or was freed since).
      this.shared?.reset();
      return true;
    }
    const perDesc = tagsPerDescriptor(this.fmt);
    const perRevoke = revokesPerBlock(this.fmt);
    const size = empty ? 0 : Math.ceil(dirty.length / perDesc) + dirty.length + Math.ceil(revokes.length / perRevoke) + 1;
    if (size > this.logLen - 1) {
      await this.writeOversized(size);
      return true;
    }
    if (soft && !this.roomForSoft(size)) {
      if (!this.soft.length) await this.checkpointAll();
      if (!this.roomForSoft(size)) soft = false;
    }
    if (this.logLen - 1 - this.used < size) await this.makeRoom();
    const seq = this.nextSeq;
    const start = this.head;
    const bs = this.dev.blockSize;
    // The transaction in log order (revokes, then each descriptor followed by its copies) and,
    // for a soft commit, its record: one buffer, so the log takes one write and no block is
    // copied twice. size counts the commit block.
    const txn = this.txnBuffer(size * bs);
    const blockAt = (i: number): Buffer => txn.subarray(i * bs, (i + 1) * bs);
    let nblocks = 0;
    /** Descriptor and revoke blocks (what a soft commit's crc covers with csum v3). */
    const meta: Buffer[] = [];
    for (let i = 0; i < revokes.length; i += perRevoke) {
      meta.push(encodeRevoke(this.fmt, seq, revokes.slice(i, i + perRevoke), blockAt(nblocks++)));
    }
    for (let i = 0; i < dirty.length; i += perDesc) {
      const chunk = dirty.slice(i, i + perDesc);
      const descAt = blockAt(nblocks++);
      const tags: BlockTag[] = [];
      for (const d of chunk) tags.push(logCopy(this.fmt, seq, d.block, d.buf, blockAt(nblocks++)).tag);
      meta.push(encodeDescriptor(this.fmt, seq, tags, descAt));
    }
    const blocks = txn.subarray(0, nblocks * bs);
    if (size && this.used === 0) {
      // The log was empty: the tail must name this transaction before its commit is durable.
      this.jsb.s_start = start;
      this.jsb.s_sequence = seq;
      await writeJournalSuperblock(this.dev, this.file, this.jsb);
    }
    const sec = Math.max(this.lastCommitSec, Math.floor(Date.now() / 1000));
    const nsec = (Date.now() % 1000) * 1e6;
    this.lastCommitSec = sec;
    if (soft) {
      let crc = 0;
      if (softCrcCoversTagsOnly(this.fmt)) for (const b of meta) crc = txnCrc(this.fmt, crc, b);
      else for (let i = 0; i < nblocks; i++) crc = txnCrc(this.fmt, crc, blockAt(i));
      const at = this.wrap(start + nblocks);
      // One write with its record: nothing orders them anyway (the crc does the checking).
      encodeSoftCommit(this.fmt, seq, sec, nsec, crc, undefined, blockAt(nblocks));
      await this.writeLog(start, txn);
      this.dev.mark(`soft ${seq}`);
      this.soft.push({ seq, at, sec, nsec });
      this.softBlocks += size;
      this.dev.pinDirty();
      this.stats.softCommits++;
    } else {
      if (size) await this.writeLog(start, blocks);
      // Ordered mode: file data, these log blocks and those of the soft transactions before
      // them are durable before any commit block that makes them count.
      await this.dev.barrier();
      for (const t of this.soft) await this.writeLog(t.at, encodeCommit(this.fmt, t.seq, t.sec, t.nsec, this.commitBlock));
      // From the commit block on, this transaction holds everything the shared log does: a
      // restarted server must then not apply the shared log over it (shared-log.ts).
      if (size) this.shared?.markCommitting(seq, this.file.runs(this.wrap(start + nblocks), 1)[0].pblk);
      if (size) {
        await this.writeLog(start + nblocks, encodeCommit(this.fmt, seq, sec, nsec, this.commitBlock));
        this.dev.mark(`commit ${seq}`);
      } else this.dev.mark('commit (soft transactions made durable)');
      await this.dev.barrier();
      this.soft = [];
      this.softBlocks = 0;
      this.shared?.reset();
    }
    if (size) {
      this.head = this.wrap(start + size);
      this.used += size;
      this.nextSeq = (seq + 1) >>> 0;
      for (const d of dirty) this.logged.add(d.block);
      this.pendingRevokes.clear();
      this.stats.commits++;
      this.stats.loggedBlocks += dirty.length;
      this.stats.revokes += revokes.length;
    }
    if (!soft) await this.dev.flush();
    return !soft;
  }

  /**
   * Where a transaction is built: one buffer kept for transactions of up to TXN_BUFFER_KEEP
   * bytes (a log-only commit per request would otherwise allocate one outside V8's pool each
   * time), a fresh one beyond. Commits run one at a time and are done with it when they return.
   */
  private txnBuffer(bytes: number): Buffer {
    if (bytes > TXN_BUFFER_KEEP) return Buffer.allocUnsafe(bytes);
    if (this.txnScratch.length < bytes) this.txnScratch = Buffer.allocUnsafe(Math.min(TXN_BUFFER_KEEP, Math.max(bytes, 2 * this.txnScratch.length)));
    return this.txnScratch.subarray(0, bytes);
  }
  private txnScratch = Buffer.alloc(0);

  /** Soft transactions (in the log or the shared log) waiting for a durable commit. */
  get softPending(): boolean {
    return this.soft.length > 0 || !!this.shared?.pending;
  }

  /**
   * Make log-only commits into `shared` from now on. `kept`: it holds blocks a dead server
   * committed, which the opening has put back into the cache as dirty blocks; they stay there
   * until a durable commit has them (the next one), and the committing mark (which was found
   * not to hold) goes. Otherwise it starts empty.
   */
  useSharedLog(shared: SharedSoftLog, kept: SharedLogContents | null): void {
    if (this.soft.length) throw new Error('journal: shared log attached with soft transactions in the log');
    if (kept) shared.keep(kept);
    else shared.reset();
    this.shared = shared;
  }

  /**
   * A log-only commit into the shared log: the dirty blocks copied there and pinned. False
   * when it does not fit: the durable commit that follows logs every pinned block in one
   * transaction (so they must fit one), and pinned blocks cannot be evicted.
   */
  private commitShared(): boolean {
    const shared = this.shared!;
    const dirty = this.dev.dirtyEntries();
    if (dirty.length === 0) return true;
    const bs = this.dev.blockSize;
    const pinned = this.dev.pinnedBlocks + dirty.length;
    if (pinned + this.pendingRevokes.size > this.maxTransactionBlocks || pinned > this.dev.capacityBlocks / 2) return false;
    if (shared.room(dirty.length, bs)) {
      shared.append(dirty, bs);
      this.dev.mark(`shared soft commit (${dirty.length} blocks)`);
    } else {
      // The active region is full of older copies: the latest of each (the pinned blocks) and
      // this commit's go to the other region as one record (shared-log.ts, compaction).
      if (!shared.compact(this.dev.pendingEntries(), bs)) return false;
      this.dev.mark(`shared soft commit (${dirty.length} blocks), log compacted to ${pinned} blocks`);
      this.stats.sharedCompactions++;
    }
    this.dev.pinDirty();
    this.stats.softCommits++;
    return true;
  }

  /**
   * May a log-only commit of `size` blocks go ahead? It must leave room for the durable commit
   * that follows (the largest transaction), and the pinned blocks must stay a fraction of the
   * cache (they cannot be evicted).
   */
  private roomForSoft(size: number): boolean {
    const reserve = this.maxTransactionBlocks + Math.ceil(this.maxTransactionBlocks / tagsPerDescriptor(this.fmt)) + 2;
    return this.used + size + reserve <= this.logLen - 1 && this.softBlocks + size <= this.dev.capacityBlocks / 2;
  }

  /**
   * Free the whole log. Without soft transactions that is checkpointAll. With them (a durable
   * commit that does not fit after them: rare, roomForSoft keeps space for one), they are made
   * durable first, then the log is replayed home as recovery would (the cache may hold newer,
   * uncommitted versions of their blocks, so it cannot be the source), then the tail moves.
   */
  private async makeRoom(): Promise<void> {
    if (this.soft.length) {
      await this.dev.barrier();
      for (const t of this.soft) await this.writeLog(t.at, encodeCommit(this.fmt, t.seq, t.sec, t.nsec, this.commitBlock));
      this.dev.mark('commit (soft transactions made durable)');
      await this.dev.barrier();
      this.soft = [];
      this.softBlocks = 0;
      const r = await scanAndReplay(this.dev, this.file, this.jsb);
      for (const b of [...r.blocks.keys()].sort((x, y) => x - y)) await this.dev.writeAt(r.blocks.get(b)!, b * this.dev.blockSize);
      this.dev.unpinAll();
    }
    await this.checkpointAll();
  }

  /**
   * Every committed transaction is home once a barrier has passed after its home writes: then
   * the tail can jump to the head, freeing the whole log. The new tail must be durable before
   * the log blocks it no longer covers are overwritten (or a replay could read a half-new log
   * from the old tail and miss revoke records). Soft transactions are not home: makeRoom.
   */
  private async checkpointAll(): Promise<void> {
    if (this.used === 0) return;
    if (this.soft.length) throw new Error('journal: checkpoint with soft transactions pending');
    await this.dev.barrier();
    this.jsb.s_start = this.head;
    this.jsb.s_sequence = this.nextSeq;
    await writeJournalSuperblock(this.dev, this.file, this.jsb);
    await this.dev.barrier();
    this.used = 0;
    this.logged.clear();
    this.stats.checkpoints++;
  }

  /**
   * A dirty set larger than the whole log cannot be atomic. The operations that produce one are
   * bounded by Volume.maxDirtyBlocks, so this is a last resort: an empty journal, then the
   * blocks written home between barriers, as without a journal.
   */
  private async writeOversized(size: number): Promise<void> {
    log.warn(`journal: a transaction of ${size} blocks exceeds the ${this.logLen}-block log; writing it in place without atomicity`);
    await this.makeRoom();
    await this.dev.barrier();
    await this.dev.flush();
    await this.dev.barrier();
    this.shared?.reset();
    this.pendingRevokes.clear();
    this.stats.oversized++;
  }

  /** Clean close: everything home, the journal marked empty (s_start 0). */
  async close(): Promise<void> {
    await this.dev.barrier();
    this.jsb.s_start = 0;
    this.jsb.s_sequence = this.nextSeq;
    await writeJournalSuperblock(this.dev, this.file, this.jsb);
    await this.dev.barrier();
    this.used = 0;
    this.logged.clear();
  }
}
