/**
 * `kfs mkfs` formatter: writes a new ext4 filesystem (as Debian 12's mkfs.ext4 makes it) into an
 * image file or block device. The geometry comes from layout.ts, the bytes from encode.ts; this
 * file does the I/O:
 *
 *  1. open (creating a missing image file sparse, with ftruncate), lock like kfs's BlockDevice
 *     (exclusive flock), refuse a mounted device / loop-mounted image, and refuse to overwrite an
 *     existing ext2/3/4 filesystem without `force`.
 *  2. zero: like mke2fs's default discard, the whole range is punched out of an existing regular
 *     file (FALLOC_FL_PUNCH_HOLE, so the image stays sparse and nothing is written). Where that
 *     fails (most block devices) only what must read as zero is zeroed: the inode tables (their
 *     groups are flagged ITABLE_ZEROED), the journal, the boot sector and the device's tail.
 *  3. write block/inode bitmaps (skipping the BLOCK_UNINIT/INODE_UNINIT ones, as mke2fs does),
 *     the inode-table blocks holding inodes 1..11, directory blocks, the journal superblock,
 *     descriptor + superblock backups, and the primary superblock last, then fsync.
 *
 * A fresh 8 GiB image therefore costs a few hundred KiB of writes.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { FsError, ErrnoName } from '../src/util/errors';
import { native } from '../src/native';
import { SUPERBLOCK_OFFSET, EXT4_MAGIC } from '../src/ext4/superblock';
import { computeLayout, Layout } from './layout';
import {
  MkfsOptions, validateMkfsOptions, resolveFeatures, uuidBytes, randomUuidBytes, formatUuid, FEATURE_NAMES,
} from './options';
import {
  FsIdentity, buildFiles, inodeTableBlocks, blockBitmap, inodeBitmap, bitmapChecksums, BitmapChecksums,
  buildGroupDescriptors, buildSuperblock, encodeSuperblock,
} from './encode';

export interface MkfsResult {
  path: string;
  uuid: string;
  label: string;
  /** Feature names in dumpe2fs order. */
  features: string[];
  blockSize: number;
  blocksCount: number;
  inodesCount: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  groupCount: number;
  reservedBlocks: number;
  freeBlocks: number;
  freeInodes: number;
  /** 0 without a journal. */
  journalBlocks: number;
  /** Block numbers of the backup superblocks. */
  superblockBackups: number[];
  /** How old contents were cleared: punched out, zeroes written, or nothing (new file). */
  zeroing: 'punch' | 'write' | 'none';
  bytesWritten: number;
  /** Things mke2fs would warn about (the CLI prints them unless quiet). */
  warnings: string[];
  elapsedMs: number;
}

interface Target {
  fh: fsp.FileHandle;
  created: boolean;
  isBlockDevice: boolean;
  /** Bytes the filesystem may use. */
  fsBytes: number;
  sizeExplicit: boolean;
}

const errnoName = (e: unknown): ErrnoName => ((e as NodeJS.ErrnoException).code ?? 'EIO') as ErrnoName;

export async function formatImage(
  path: string, opts: MkfsOptions, onProgress?: (done: number, total: number) => void,
): Promise<MkfsResult> {
  const started = Date.now();
  const o = validateMkfsOptions(opts);
  const target = await openTarget(path, o);
  let ok = false;
  try {
    const layout = computeLayout({
      sizeBytes: target.fsBytes, sizeExplicit: target.sizeExplicit, blockSize: o.blockSize, inodes: o.inodes,
      bytesPerInode: o.bytesPerInode, reservedPercent: o.reservedPercent, journalSizeMiB: o.journalSizeMiB,
      features: resolveFeatures(o.features),
    });
    const id = identity(o);
    const zeroing = await clearOldContents(target, layout);
    const bytesWritten = await writeFilesystem(target.fh, layout, id, onProgress);
    await target.fh.datasync();
    ok = true;
    return {
      path, uuid: formatUuid(id.uuid), label: id.label,
      features: FEATURE_NAMES.filter((f) => layout.features.has(f)),
      blockSize: layout.blockSize, blocksCount: layout.blocksCount, inodesCount: layout.inodesCount,
      blocksPerGroup: layout.blocksPerGroup, inodesPerGroup: layout.inodesPerGroup, groupCount: layout.groupCount,
      reservedBlocks: layout.reservedBlocks, freeBlocks: layout.freeBlocks, freeInodes: layout.freeInodes,
      journalBlocks: layout.journal?.dataBlocks ?? 0,
      superblockBackups: layout.superGroups.filter((g) => g > 0).map((g) => layout.groups[g].firstBlock),
      zeroing, bytesWritten, warnings: layout.warnings, elapsedMs: Date.now() - started,
    };
  } finally {
    await target.fh.close();
    // A half-written new image is worthless: don't leave it behind.
    if (!ok && target.created) await fsp.unlink(path).catch(() => undefined);
  }
}

function identity(o: MkfsOptions): FsIdentity {
  const ms = Date.now();
  return {
    uuid: uuidBytes(o.uuid),
    hashSeed: o.hashSeed ? uuidBytes(o.hashSeed) : randomUuidBytes(),
    label: o.label ?? '',
    now: o.timestamp !== undefined ? { sec: o.timestamp, nsec: 0 } : { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 },
  };
}

async function openTarget(path: string, o: MkfsOptions): Promise<Target> {
  let st: fs.Stats | null = null;
  try {
    st = await fsp.stat(path);
  } catch (e) {
    if (errnoName(e) !== 'ENOENT') throw new FsError(errnoName(e), `cannot examine ${path}: ${(e as Error).message}; check the path and its permissions`);
  }
  if (!st) {
    if (o.size === undefined) throw new FsError('ENOENT', `${path} does not exist; pass --size to create a new image of that size`);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, 'wx+', 0o644);
    } catch (e) {
      throw new FsError(errnoName(e), `cannot create ${path}: ${(e as Error).message}; check the directory exists and is writable`);
    }
    try {
      lock(fh, path);
      await fh.truncate(o.size); // sparse: nothing is allocated until written
    } catch (e) {
      await fh.close();
      throw e;
    }
    return { fh, created: true, isBlockDevice: false, fsBytes: o.size, sizeExplicit: true };
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new FsError('EINVAL', `${path} is neither a regular file nor a block device; give an image file or a disk`);
  await refuseIfMounted(path, st);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'r+');
  } catch (e) {
    throw new FsError(errnoName(e), `cannot open ${path} for writing: ${(e as Error).message}; check its permissions`);
  }
  try {
    lock(fh, path);
    if (!o.force && (await holdsExtFilesystem(fh))) {
      throw new FsError('EEXIST', `${path} already contains an ext2/ext3/ext4 filesystem; pass -F to overwrite it`);
    }
    const devBytes = st.isBlockDevice() ? native.blockDeviceSize(fh.fd) : st.size;
    let fsBytes = devBytes;
    if (o.size !== undefined) {
      if (o.size > devBytes) {
        if (st.isBlockDevice()) throw new FsError('EINVAL', `--size ${o.size} is larger than the ${devBytes}-byte device ${path}; pass a smaller --size or none`);
        await fh.truncate(o.size); // grow the image, sparsely
      }
      fsBytes = o.size;
    }
    if (fsBytes === 0) throw new FsError('EINVAL', `${path} is empty; pass --size to give the filesystem a size`);
    return { fh, created: false, isBlockDevice: st.isBlockDevice(), fsBytes, sizeExplicit: o.size !== undefined };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** The same exclusive, non-blocking flock kfs's BlockDevice takes: a served image is refused. */
function lock(fh: fsp.FileHandle, path: string): void {
  try {
    native.flock(fh.fd, true, true);
  } catch (e) {
    const code = errnoName(e);
    if (code === 'EWOULDBLOCK' || code === 'EAGAIN') {
      throw new FsError('EBUSY', `${path} is in use by a kfs process (it holds the image lock); stop it before formatting`);
    }
    throw e;
  }
}

async function holdsExtFilesystem(fh: fsp.FileHandle): Promise<boolean> {
  const b = Buffer.alloc(2);
  const { bytesRead } = await fh.read(b, 0, 2, SUPERBLOCK_OFFSET + 56);
  return bytesRead === 2 && b.readUInt16LE(0) === EXT4_MAGIC;
}

/** Refuse a mounted block device, or an image file behind a mounted loop device. */
async function refuseIfMounted(path: string, st: fs.Stats): Promise<void> {
  let mounts: string[][];
  try {
    mounts = (await fsp.readFile('/proc/self/mounts', 'utf8')).split('\n').map((l) => l.split(' '));
  } catch {
    return; // not Linux, or no /proc: nothing to check against
  }
  const mountOf = (dev: string): string | undefined => mounts.find((m) => m[0] === dev)?.[1];
  const real = await fsp.realpath(path);
  const devices: string[] = [];
  if (st.isBlockDevice()) devices.push(real);
  else {
    for (const name of await fsp.readdir('/sys/block').catch(() => [] as string[])) {
      if (!name.startsWith('loop')) continue;
      const backing = await fsp.readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '');
      if (backing.trim() === real) devices.push(`/dev/${name}`);
    }
  }
  for (const dev of devices) {
    const at = mountOf(dev);
    if (at) {
      const via = dev === real ? '' : ` (through ${dev})`;
      throw new FsError('EBUSY', `${path} is mounted on ${at.replace(/\\040/g, ' ')}${via}; unmount it before formatting`);
    }
  }
}

/**
 * Make everything the new filesystem expects to read as zero read as zero. Returns how.
 * Regular files: one PUNCH_HOLE over the whole range (mke2fs's discard). Otherwise zero the
 * inode tables, the journal, the boot sector and the device tail (where old RAID metadata lives).
 */
async function clearOldContents(t: Target, l: Layout): Promise<MkfsResult['zeroing']> {
  if (t.created) return 'none';
  const fsEnd = l.blocksCount * l.blockSize;
  if (tryPunch(t.fh.fd, 0, fsEnd)) return 'punch';
  const bs = l.blockSize;
  const ranges: [number, number][] = [[0, Math.min(1024, fsEnd)]];
  for (const g of l.groups) ranges.push([g.inodeTable * bs, l.inodeTableBlocks * bs]);
  for (const e of l.journal?.extents ?? []) ranges.push([e.physical * bs, e.length * bs]);
  const rsv = 65536 / bs; // mke2fs zaps the last 64-128 KiB, aligned to 64 KiB
  let start = l.blocksCount & ~(rsv - 1);
  if (start > rsv) start -= rsv;
  if (start > 0) ranges.push([start * bs, (l.blocksCount - start) * bs]);
  ranges.sort((a, b) => a[0] - b[0]);
  let cur: [number, number] | null = null;
  for (const r of ranges) {
    if (cur && r[0] <= cur[0] + cur[1]) cur[1] = Math.max(cur[1], r[0] + r[1] - cur[0]);
    else {
      if (cur) await zeroRange(t.fh, cur[0], cur[1]);
      cur = [r[0], r[1]];
    }
  }
  if (cur) await zeroRange(t.fh, cur[0], cur[1]);
  return 'write';
}

function tryPunch(fd: number, off: number, len: number): boolean {
  try {
    native.fallocate(fd, native.FALLOC_FL.PUNCH_HOLE | native.FALLOC_FL.KEEP_SIZE, off, len);
    return true;
  } catch {
    return false;
  }
}

async function zeroRange(fh: fsp.FileHandle, off: number, len: number): Promise<void> {
  if (tryPunch(fh.fd, off, len)) return;
  try {
    native.fallocate(fh.fd, native.FALLOC_FL.ZERO_RANGE | native.FALLOC_FL.KEEP_SIZE, off, len);
    return;
  } catch {
    // neither supported: write the zeroes
  }
  const zero = Buffer.alloc(Math.min(len, 4 << 20));
  for (let done = 0; done < len; done += zero.length) await writeFully(fh, zero.subarray(0, Math.min(zero.length, len - done)), off + done);
}

async function writeFully(fh: fsp.FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done);
    if (bytesWritten <= 0) throw new FsError('EIO', `short write at byte ${pos + done}; check the device`);
    done += bytesWritten;
  }
}

/** Queues positioned writes and issues them sorted, adjacent ones merged into one write. */
class Writer {
  private pending: { pos: number; buf: Buffer }[] = [];
  private pendingBytes = 0;
  bytes = 0;

  constructor(private readonly fh: fsp.FileHandle) {}

  async add(pos: number, buf: Buffer): Promise<void> {
    this.pending.push({ pos, buf });
    this.pendingBytes += buf.length;
    if (this.pendingBytes >= 8 << 20) await this.flush();
  }

  async flush(): Promise<void> {
    const list = this.pending.sort((a, b) => a.pos - b.pos);
    this.pending = [];
    this.pendingBytes = 0;
    let i = 0;
    while (i < list.length) {
      const run = [list[i].buf];
      const pos = list[i].pos;
      let end = pos + list[i].buf.length;
      while (++i < list.length && list[i].pos === end && end - pos < 4 << 20) {
        run.push(list[i].buf);
        end += list[i].buf.length;
      }
      await writeFully(this.fh, run.length === 1 ? run[0] : Buffer.concat(run), pos);
      this.bytes += end - pos;
    }
  }
}

async function writeFilesystem(
  fh: fsp.FileHandle, l: Layout, id: FsIdentity, onProgress?: (done: number, total: number) => void,
): Promise<number> {
  const bs = l.blockSize;
  const w = new Writer(fh);
  const total = l.groupCount;
  onProgress?.(0, total);

  // Bitmaps, group by group; uninitialized ones are neither written nor checksummed.
  const csums: BitmapChecksums[] = [];
  for (const g of l.groups) {
    const bb = g.blockUninit ? null : blockBitmap(l, g.index);
    const ib = g.inodeUninit ? null : inodeBitmap(l, g.index);
    if (bb) await w.add(g.blockBitmap * bs, bb);
    if (ib) await w.add(g.inodeBitmap * bs, ib);
    csums.push(bitmapChecksums(l, id.uuid, g.index, bb, ib));
    if ((g.index + 1) % 16 === 0 || g.index === total - 1) {
      await w.flush();
      onProgress?.(g.index + 1, total);
    }
  }

  const files = buildFiles(l, id);
  const itable = inodeTableBlocks(l, files.inodes);
  for (const [b, buf] of itable) await w.add(b * bs, buf);
  for (const [b, buf] of files.blocks) await w.add(b * bs, buf);

  const gdt = buildGroupDescriptors(l, id.uuid, csums);
  // Lifetime writes as mke2fs accounts them: everything this function writes, in KiB.
  const copies = l.superGroups.length * (1024 + gdt.length);
  const kbytes = Math.ceil((w.bytes + (itable.size + files.blocks.size) * bs + copies) / 1024);
  const sb = buildSuperblock(l, id, files.journalInode, kbytes);
  const csum = l.features.has('metadata_csum');
  for (const g of l.superGroups) {
    const first = l.groups[g].firstBlock;
    await w.add((first + 1) * bs, gdt);
    if (g > 0) await w.add(first * bs, encodeSuperblock(sb, g, csum));
  }
  await w.flush();
  // The primary superblock goes last, so an interrupted format never looks like a valid one.
  await w.add(SUPERBLOCK_OFFSET, encodeSuperblock(sb, 0, csum));
  await w.flush();
  onProgress?.(total, total);
  return w.bytes;
}
