/**
 * The control protocol between kfsctl and a serving kfs process (kfs mount, kfsd), over a
 * unix stream socket: one JSON object per line (UTF-8, '\n'-terminated), at most
 * MAX_REQUEST_BYTES per request line.
 *
 *   request   {version, id, command, args}
 *   replies   {version, id, type: "progress", phase, done, total}     zero or more, then one of
 *             {version, id, type: "result", result}
 *             {version, id, type: "error", error: {code, message}}  (id null when unreadable)
 *
 * Both sides validate with these schemas: the server every request (a bad one gets an error
 * reply, the connection stays usable), the client every reply and each command's result.
 * `version` changes when a message's meaning changes; a server answers a version it does not
 * speak with an error naming the one it does.
 */
import { z } from 'zod';
import { BLOCK_CLASSES } from '../ext4/block-map';

export const PROTOCOL_VERSION = 1;
export const MAX_REQUEST_BYTES = 64 * 1024;

export const COMMANDS = ['hello', 'status', 'defrag-check', 'defrag', 'map', 'snapshot-create', 'snapshot-list', 'snapshot-delete', 'snapshot-restore'] as const;
export type CommandName = (typeof COMMANDS)[number];

/** The envelope, checked before the command's own arguments. */
export const RequestEnvelopeSchema = z.object({
  version: z.number().int(),
  id: z.number().int().nonnegative().max(2 ** 31),
  command: z.string().max(64),
  args: z.record(z.string(), z.unknown()).default({}),
}).strict();

export const ArgsSchemas = {
  hello: z.object({}).strict(),
  status: z.object({}).strict(),
  'defrag-check': z.object({
    path: z.string().min(1).max(4096).default('/'),
    top: z.number().int().min(1).max(10000).default(10),
  }).strict(),
  defrag: z.object({
    path: z.string().min(1).max(4096).default('/'),
    top: z.number().int().min(1).max(10000).default(10),
  }).strict(),
  map: z.object({
    maxCells: z.number().int().min(1).max(65536).default(4096),
  }).strict(),
  // Snapshot names: 1..64 bytes of UTF-8 (src/snapshot/format.ts checks the rest).
  'snapshot-create': z.object({ name: z.string().min(1).max(64) }).strict(),
  'snapshot-list': z.object({}).strict(),
  'snapshot-delete': z.object({ name: z.string().min(1).max(64) }).strict(),
  /** Without path: the whole filesystem (offline only: a server refuses it). */
  'snapshot-restore': z.object({ name: z.string().min(1).max(64), path: z.string().min(1).max(4096).optional() }).strict(),
} as const;
export type ArgsOf<C extends CommandName> = z.input<(typeof ArgsSchemas)[C]>;

// ---- results ----

export const HelloSchema = z.object({
  server: z.literal('kfs'),
  protocol: z.number().int(),
  pid: z.number().int(),
  kind: z.enum(['mount', 'kfsd']),
  image: z.string().nullable(),
  mountpoint: z.string().nullable(),
  vhostSocket: z.string().nullable(),
});
export type Hello = z.infer<typeof HelloSchema>;

const LatencySchema = z.object({
  opcode: z.string(),
  count: z.number().int(),
  errors: z.number().int(),
  p50Us: z.number().nullable(),
  p99Us: z.number().nullable(),
  maxUs: z.number().nullable(),
});
export type OpcodeStats = z.infer<typeof LatencySchema>;

/**
 * A host mount's /dev/fuse transport (src/transport/fusedev.ts), since this server started:
 * requests read from /dev/fuse, those read while busy-polling after a reply (no wake-up needed),
 * and the commit rounds that held replies back (commit_before_reply, src/transport/reply-gate.ts).
 * `requests` need not match the per-opcode counts: a restarted server answers a resent change
 * that already took effect with extra session calls (resend-guard.ts).
 */
const TransportSchema = z.object({
  requests: z.number().int(),
  readWhilePolling: z.number().int(),
  busyPollUs: z.number(),
  replyCommits: z.object({
    /** Rounds: one log-only commit (of whatever changed, possibly nothing) and the replies it releases. */
    commits: z.number().int(),
    /** Replies released after a round. */
    released: z.number().int(),
    /** Wall time of a round, waiting for the filesystem's lock included, on average (null before the first). */
    avgUs: z.number().nullable(),
  }).nullable(),
});
export type TransportStatus = z.infer<typeof TransportSchema>;

/**
 * kfsd's connection to a vhost-user front-end (src/vhost/virtio-fs.ts VirtioFsDevice.stats):
 * requests taken from its queues (hiprio's FORGETs included, malformed chains not), malformed
 * descriptor chains, and its polling of an idle request queue (--poll-us): the idle moments
 * after at most two requests at once (watched while the adaptive window is open; a moment put
 * off to the next event-loop turn counts again there), those after more (never watched), and
 * the watches that found the next request (its kick was not needed).
 */
const VhostSchema = z.object({
  requests: z.number().int(),
  badChains: z.number().int(),
  pollUs: z.number(),
  idleSerial: z.number().int(),
  idleBusy: z.number().int(),
  watchesFound: z.number().int(),
});
export type VhostStatus = z.infer<typeof VhostSchema>;

export const StatusSchema = z.object({
  kind: z.enum(['mount', 'kfsd', 'offline']),
  pid: z.number().int().nullable(),
  image: z.string().nullable(),
  mountpoint: z.string().nullable(),
  readOnly: z.boolean(),
  uptimeSec: z.number().nullable(),
  fs: z.object({
    label: z.string(),
    uuid: z.string(),
    features: z.array(z.string()),
    state: z.string(),
    blockSize: z.number().int(),
    blocks: z.number().int(),
    freeBlocks: z.number().int(),
    reservedBlocks: z.number().int(),
    availableBlocks: z.number().int(),
    inodes: z.number().int(),
    freeInodes: z.number().int(),
    groups: z.number().int(),
  }).nullable(),
  journal: z.object({
    present: z.boolean(),
    inode: z.number().int().nullable(),
    blocks: z.number().int().nullable(),
    bytes: z.number().int().nullable(),
    /** needs_recovery (INCOMPAT_RECOVER) as the superblock on disk has it. */
    needsRecovery: z.boolean(),
    /** A serving process keeps needs_recovery set while it runs (ext4 does the same). */
    active: z.boolean(),
    sequence: z.number().int().nullable(),
    start: z.number().int().nullable(),
    /**
     * This server's transactions since it started (Journal.stats); null offline or without a
     * running journal. `commits` counts the transactions written to the journal's log,
     * `softCommits` the log-only commits (commit_before_reply: into the supervisor's shared
     * memory, or soft transactions in the log, which `commits` then counts too),
     * `sharedCompactions` the times that shared memory was full and compacted (shared-log.ts),
     * `checkpoints` the times the log was written home and emptied.
     */
    activity: z.object({
      commits: z.number().int(),
      softCommits: z.number().int(),
      sharedCompactions: z.number().int(),
      loggedBlocks: z.number().int(),
      checkpoints: z.number().int(),
    }).nullable(),
  }).nullable(),
  snapshots: z.object({
    supported: z.boolean(),
    /** One line for people: count and space, or why there are none. */
    note: z.string(),
    count: z.number().int(),
    storeBytes: z.number().int(),
    list: z.array(z.lazy(() => SnapshotInfoSchema)),
  }),
  cache: z.object({
    hits: z.number().int(),
    misses: z.number().int(),
    hitRate: z.number().nullable(),
    dirtyBlocks: z.number().int(),
  }).nullable(),
  requests: z.object({
    total: z.number().int(),
    opcodes: z.array(LatencySchema),
  }).nullable(),
  clients: z.object({
    mountpoint: z.string().nullable(),
    frontEndConnected: z.boolean().nullable(),
    controlConnections: z.number().int(),
  }).nullable(),
  /** Host mounts only; absent from servers older than the field. */
  transport: TransportSchema.nullable().optional(),
  /** kfsd with a front-end connected (this connection's counts); absent from older servers. */
  vhost: VhostSchema.nullable().optional(),
});
export type Status = z.infer<typeof StatusSchema>;

const FileFragSchema = z.object({
  ino: z.number().int(),
  path: z.string().nullable(),
  size: z.number(),
  blocks: z.number().int(),
  extents: z.number().int(),
  fragments: z.number().int(),
  ideal: z.number().int(),
  kibPerExtent: z.number(),
  ratio: z.number(),
  score: z.number(),
});

export const DefragReportSchema = z.object({
  path: z.string(),
  files: z.number().int(),
  fragmentedFiles: z.number().int(),
  blocks: z.number().int(),
  extents: z.number().int(),
  idealExtents: z.number().int(),
  kibPerExtent: z.number(),
  score: z.number(),
  verdict: z.enum(['no problem', 'a little fragmented', 'needs defragmentation']),
  worst: z.array(FileFragSchema),
  errors: z.array(z.object({ path: z.string(), error: z.string() })),
});
export type DefragReport = z.infer<typeof DefragReportSchema>;

const DefragFileSchema = z.object({
  ino: z.number().int(),
  path: z.string().nullable(),
  blocks: z.number().int(),
  extentsBefore: z.number().int(),
  extentsAfter: z.number().int(),
  fragmentsBefore: z.number().int(),
  fragmentsAfter: z.number().int(),
  ideal: z.number().int(),
  movedBlocks: z.number().int(),
  pieces: z.number().int(),
  retries: z.number().int(),
  note: z.string().nullable(),
});

/** Result of `defrag` (moving data); see src/ext4/defrag.ts. */
export const DefragResultSchema = z.object({
  path: z.string(),
  files: z.number().int(),
  fragmentedBefore: z.number().int(),
  fragmentedAfter: z.number().int(),
  improved: z.number().int(),
  movedBlocks: z.number().int(),
  extentsBefore: z.number().int(),
  extentsAfter: z.number().int(),
  idealExtents: z.number().int(),
  scoreBefore: z.number(),
  scoreAfter: z.number(),
  worst: z.array(DefragFileSchema),
  errors: z.array(z.object({ path: z.string(), error: z.string() })),
});
export type DefragResult = z.infer<typeof DefragResultSchema>;

export const BlockMapSchema = z.object({
  blockSize: z.number().int(),
  blocks: z.number().int(),
  blocksPerCell: z.number().int().positive(),
  classes: z.array(z.enum(BLOCK_CLASSES)),
  counts: z.array(z.array(z.number().int().nonnegative())),
  fileScore: z.array(z.number()),
  totals: z.record(z.enum(BLOCK_CLASSES), z.number().int()),
  inconsistent: z.number().int(),
  inodesScanned: z.number().int(),
  damaged: z.array(z.object({ ino: z.number().int(), error: z.string() })),
});
export type BlockMap = z.infer<typeof BlockMapSchema>;

export const SnapshotInfoSchema = z.object({
  id: z.number().int(),
  name: z.string(),
  createdMs: z.number().int(),
  /** Store slots (blocks) held: the snapshot's space. */
  slots: z.number().int(),
  bytes: z.number().int(),
});
export type SnapshotInfoResult = z.infer<typeof SnapshotInfoSchema>;

export const SnapshotListSchema = z.object({
  snapshots: z.array(SnapshotInfoSchema),
  /** Bytes of the image file past the filesystem taken by the store (incl. free slots). */
  storeBytes: z.number().int(),
  freeSlots: z.number().int(),
  blockSize: z.number().int(),
});

export const SnapshotDeleteSchema = z.object({ name: z.string(), freedBytes: z.number().int() });

export const SnapshotRestoreSchema = z.object({
  name: z.string(),
  /** null: the whole filesystem. */
  path: z.string().nullable(),
  entries: z.number().int(),
  bytes: z.number().int(),
  blocks: z.number().int(),
});

export const ResultSchemas = {
  hello: HelloSchema,
  status: StatusSchema,
  'defrag-check': DefragReportSchema,
  defrag: DefragResultSchema,
  map: BlockMapSchema,
  'snapshot-create': SnapshotInfoSchema,
  'snapshot-list': SnapshotListSchema,
  'snapshot-delete': SnapshotDeleteSchema,
  'snapshot-restore': SnapshotRestoreSchema,
} as const;
export type ResultOf<C extends CommandName> = z.infer<(typeof ResultSchemas)[C]>;

// ---- replies ----

export const ReplySchema = z.discriminatedUnion('type', [
  z.object({ version: z.number().int(), id: z.number().int().nullable(), type: z.literal('progress'), phase: z.string(), done: z.number(), total: z.number() }),
  z.object({ version: z.number().int(), id: z.number().int().nullable(), type: z.literal('result'), result: z.unknown() }),
  z.object({ version: z.number().int(), id: z.number().int().nullable(), type: z.literal('error'), error: z.object({ code: z.string(), message: z.string() }) }),
]);
export type Reply = z.infer<typeof ReplySchema>;

/** Errors carried in replies: an errno name (ENOENT...) or a protocol code. */
export class ControlError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'ControlError';
  }
}
