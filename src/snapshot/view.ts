/**
 * A snapshot's view: a read-only BlockDevice whose reads (cache misses and readAt byte ranges,
 * which may span blocks) are served block by block from the snapshot's store slots or, where
 * the snapshot holds no copy, from the live image. A normal read-only Ext4Fs opens it: the
 * snapshot was taken at a clean point, so there is no journal to replay.
 */
import { BlockDevice } from '../block/device';
import { Ext4Fs } from '../ext4/fs';
import { FsError } from '../util/errors';
import { SnapshotStore } from './store';

export interface SnapshotFs {
  fs: Ext4Fs;
  close(): Promise<void>;
}

function noSnapshot(image: string, name: string, store: SnapshotStore | null): FsError {
  const names = store?.list().map((s) => s.name) ?? [];
  return new FsError('ENOENT', `image ${image} has no snapshot ${name}${names.length ? ` (it has: ${names.join(', ')})` : ' (it has none)'}`);
}

/**
 * Open snapshot `name` of `image` read-only. `live`: the store of a process that holds the
 * image already (its own device, this one reads without the lock); otherwise the image is
 * opened with the shared lock, so no writer can hold it meanwhile.
 */
export async function openSnapshotFs(image: string, name: string, opts: { live?: SnapshotStore | null; cacheBytes?: number } = {}): Promise<SnapshotFs> {
  const dev = BlockDevice.open(image, { readOnly: true, noLock: opts.live !== undefined, cacheBytes: opts.cacheBytes ?? 16 << 20 });
  const store = opts.live !== undefined ? opts.live : dev.snapshots;
  const snap = store?.find(name);
  if (!store || !snap) {
    await dev.closeNoSync();
    throw noSnapshot(image, name, store ?? null);
  }
  dev.reader = (buf, pos, off, len) => store.readView(snap.id, buf, pos, off, len);
  // Ext4Fs.open closes the device if it fails.
  const fs = await Ext4Fs.open(image, { readOnly: true, device: dev, commitIntervalMs: 0 });
  return { fs, close: () => fs.close() };
}
