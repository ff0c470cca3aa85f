/**
 * What the control commands do, over one open filesystem: the server runs them on the Ext4Fs
 * it serves, kfsctl runs them itself on an image nobody serves (opened read-only, or read-write
 * for the commands that change it: defrag). Results follow the schemas in protocol.ts.
 */
import type { Ext4Fs } from '../ext4/fs';
import { ByteCursor } from '../util/cursor';
import { uuidString } from '../ext4/info';
import { COMPAT, INCOMPAT, RO_COMPAT, SUPERBLOCK_OFFSET, SuperblockLayout, featureNames } from '../ext4/superblock';
import { JOURNAL_INO } from '../ext4/inode';
import { readFileExtents, readInodeView, checkFragmentation } from '../ext4/fragmentation';
import { buildBlockMap } from '../ext4/block-map';
import { defragment } from '../ext4/defrag';
import { createSnapshot, deleteSnapshot, listSnapshots, restorePath } from '../snapshot';
import type { RequestStats } from './request-stats';
import { ArgsSchemas, BlockMap, CommandName, DefragReport, Hello, PROTOCOL_VERSION, Status, ControlError, TransportStatus, VhostStatus } from './protocol';

/** jbd2 superblock header (big-endian, linux/include/linux/jbd2.h journal_superblock_t). */
const JBD2_MAGIC = 0xc03b3998;

export interface ServedFs {
  kind: 'mount' | 'kfsd' | 'offline';
  image: string | null;
  /** null when the server serves no ext4 image (kfsd --shared-dir). */
  fs: Ext4Fs | null;
  mountpoint: string | null;
  vhostSocket: string | null;
  startedAt: number | null;
  stats: RequestStats | null;
  /** kfsd: is a vhost-user front-end connected? */
  frontEndConnected: (() => boolean) | null;
  controlConnections: () => number;
  /**
   * Tell the kernel a name changed behind its back (a host mount: FUSE_NOTIFY_INVAL_ENTRY for
   * name in the directory with inode number parentIno). kfsd has no such channel: the guest
   * sees the change when its cache times out (--cache).
   */
  invalidateEntry?: ((parentIno: number, name: Buffer) => Promise<void>) | null;
  /** A host mount's /dev/fuse transport counters (null elsewhere). */
  transport?: (() => TransportStatus) | null;
  /** kfsd: the current front-end connection's counters (null without one). */
  vhost?: (() => VhostStatus | null) | null;
}

export type Progress = (phase: string, done: number, total: number) => void;

export async function runCommand(served: ServedFs, command: CommandName, rawArgs: unknown, progress: Progress): Promise<unknown> {
  switch (command) {
    case 'hello':
      ArgsSchemas.hello.parse(rawArgs);
      return hello(served);
    case 'status':
      ArgsSchemas.status.parse(rawArgs);
      return status(served);
    case 'defrag-check': {
      const a = ArgsSchemas['defrag-check'].parse(rawArgs);
      return defragCheck(needFs(served), a.path, a.top, progress);
    }
    case 'defrag': {
      const a = ArgsSchemas.defrag.parse(rawArgs);
      return defragment(needFs(served), { path: a.path, top: a.top, progress });
    }
    case 'map': {
      const a = ArgsSchemas.map.parse(rawArgs);
      return blockMap(needFs(served), a.maxCells, progress);
    }
    case 'snapshot-create': {
      const a = ArgsSchemas['snapshot-create'].parse(rawArgs);
      return createSnapshot(needFs(served), a.name);
    }
    case 'snapshot-list':
      ArgsSchemas['snapshot-list'].parse(rawArgs);
      return listSnapshots(needFs(served));
    case 'snapshot-delete': {
      const a = ArgsSchemas['snapshot-delete'].parse(rawArgs);
      return deleteSnapshot(needFs(served), a.name);
    }
    case 'snapshot-restore': {
      const a = ArgsSchemas['snapshot-restore'].parse(rawArgs);
      return snapshotRestore(served, a.name, a.path, progress);
    }
  }
}

function needFs(served: ServedFs): Ext4Fs {
  if (!served.fs) throw new ControlError('EOPNOTSUPP', 'this server shares a host directory, not a kfs image; the command needs an image');
  return served.fs;
}

/**
 * Restore of one path (a whole restore needs the image closed: the kernel's and the guest's
 * caches would keep showing the old tree, and this process's cache the old blocks).
 */
async function snapshotRestore(served: ServedFs, name: string, path: string | undefined, progress: Progress): Promise<unknown> {
  const fs = needFs(served);
  if (path === undefined) throw new ControlError('EBUSY', 'a whole-filesystem restore works offline only: unmount first');
  if (!served.image) throw new ControlError('EINVAL', 'this server has no image');
  const r = await restorePath(fs, served.image, name, path, progress);
  if (served.invalidateEntry) {
    await served.invalidateEntry(r.parentIno, Buffer.from(r.name));
    await served.invalidateEntry(r.parentIno, Buffer.from(r.tempName));
  }
  return { name, path: r.path, entries: r.entries, bytes: r.bytes, blocks: 0 };
}

function snapshotStatus(fs: Ext4Fs | null): Status['snapshots'] {
  if (!fs) return { supported: false, note: 'no image served', count: 0, storeBytes: 0, list: [] };
  const l = listSnapshots(fs);
  const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
  const note = l.snapshots.length
    ? `${l.snapshots.length} (store ${mib(l.storeBytes)}): ${l.snapshots.map((s) => `${s.name} ${mib(s.bytes)}`).join(', ')}`
    : 'none';
  return { supported: true, note, count: l.snapshots.length, storeBytes: l.storeBytes, list: l.snapshots };
}

export function hello(served: ServedFs): Hello {
  return {
    server: 'kfs', protocol: PROTOCOL_VERSION, pid: process.pid, kind: served.kind === 'offline' ? 'mount' : served.kind,
    image: served.image, mountpoint: served.mountpoint, vhostSocket: served.vhostSocket,
  };
}

export async function defragCheck(fs: Ext4Fs, path: string, top: number, progress: Progress): Promise<DefragReport> {
  return checkFragmentation(fs, { path, top, progress: (d, t) => progress('scanning files', d, t) });
}

export async function blockMap(fs: Ext4Fs, maxCells: number, progress: Progress): Promise<BlockMap> {
  return buildBlockMap(fs.store, { maxCells, progress: (d, t) => progress('scanning inodes', d, t) });
}

export async function status(served: ServedFs): Promise<Status> {
  const fs = served.fs;
  const online = served.kind !== 'offline';
  const s: Status = {
    kind: served.kind,
    pid: online ? process.pid : null,
    image: served.image,
    mountpoint: served.mountpoint ?? served.vhostSocket,
    readOnly: fs ? fs.readOnly : false,
    uptimeSec: served.startedAt ? Math.round((Date.now() - served.startedAt) / 100) / 10 : null,
    fs: null,
    journal: null,
    snapshots: snapshotStatus(fs),
    cache: null,
    requests: served.stats ? { total: served.stats.total, opcodes: served.stats.snapshot() } : null,
    clients: online ? {
      mountpoint: served.mountpoint,
      frontEndConnected: served.frontEndConnected ? served.frontEndConnected() : null,
      controlConnections: served.controlConnections(),
    } : null,
    transport: served.transport ? served.transport() : null,
    vhost: served.vhost ? served.vhost() : null,
  };
  if (!fs) return s;
  const vol = fs.vol;
  const sb = vol.sb;
  const sf = await fs.statfs();
  s.fs = {
    label: sb.s_volume_name.toString('utf8').replace(/\0.*$/s, ''),
    uuid: uuidString(sb.s_uuid),
    features: [
      ...featureNames(COMPAT, sb.s_feature_compat),
      ...featureNames(INCOMPAT, sb.s_feature_incompat & ~INCOMPAT.recover),
      ...featureNames(RO_COMPAT, sb.s_feature_ro_compat),
    ],
    state: `${sb.s_state & 1 ? 'clean' : 'not clean'}${sb.s_state & 2 ? ' with errors' : ''}`,
    blockSize: vol.blockSize,
    blocks: vol.blocksCount,
    freeBlocks: sf.bfree,
    reservedBlocks: vol.reservedBlocks,
    availableBlocks: sf.bavail,
    inodes: sf.files,
    freeInodes: sf.ffree,
    groups: vol.groupCount,
  };
  s.journal = await journalState(fs);
  if (online) {
    const st = vol.dev.stats;
    const lookups = st.hits + st.misses;
    s.cache = {
      hits: st.hits, misses: st.misses, hitRate: lookups ? Math.round((st.hits / lookups) * 10000) / 10000 : null,
      dirtyBlocks: vol.dev.dirtyBlocks,
    };
  }
  return s;
}

/** The journal as the on-disk superblocks describe it (read from the image, not the cache). */
async function journalState(fs: Ext4Fs): Promise<Status['journal']> {
  const vol = fs.vol;
  const raw = Buffer.alloc(SuperblockLayout.size);
  await vol.dev.readAt(raw, SUPERBLOCK_OFFSET);
  const onDisk = SuperblockLayout.decode(raw);
  const needsRecovery = (onDisk.s_feature_incompat & INCOMPAT.recover) !== 0;
  const present = (vol.sb.s_feature_compat & COMPAT.has_journal) !== 0;
  const j: NonNullable<Status['journal']> = {
    present, inode: null, blocks: null, bytes: null, needsRecovery, active: vol.journal !== null, sequence: null, start: null,
    activity: null,
  };
  if (vol.journal) {
    const { commits, softCommits, sharedCompactions, loggedBlocks, checkpoints } = vol.journal.stats;
    j.activity = { commits, softCommits, sharedCompactions, loggedBlocks, checkpoints };
  }
  if (!present || vol.sb.s_journal_inum !== JOURNAL_INO) return j;
  j.inode = JOURNAL_INO;
  const inode = await readInodeView(fs.store, JOURNAL_INO);
  const ext = await readFileExtents(fs.store, JOURNAL_INO, inode);
  const first = ext?.extents.find((e) => e.lblk === 0);
  if (!first) return j;
  const buf = Buffer.alloc(vol.blockSize);
  await vol.dev.readAt(buf, first.pblk * vol.blockSize);
  const c = new ByteCursor(buf);
  if (c.u32be() !== JBD2_MAGIC) return j;
  c.seek(16); // h_magic, h_blocktype, h_sequence, s_blocksize
  j.blocks = c.u32be(); // s_maxlen
  c.skip(4); // s_first
  j.sequence = c.u32be(); // s_sequence
  j.start = c.u32be(); // s_start: 0 = the log is empty
  j.bytes = j.blocks * vol.blockSize;
  return j;
}
