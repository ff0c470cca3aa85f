/**
 * DAX runs: which bytes of the image file back a range of a file, for mapping that range into
 * a guest's DAX window (src/vhost/dax-window.ts). A file extent is a contiguous range of the
 * image, so a 2 MiB guest range is usually one run.
 *
 * - Only the file's own blocks appear in runs. Holes and unwritten extents are runs without an
 *   image offset (the window shows zeros there) unless the mapping is writable, in which case
 *   they are first allocated and zeroed, so a store through the window lands in the file.
 * - The range is clipped to the end of the file's last block: bytes past EOF inside that block
 *   are the file's own (zero) bytes; nothing further is mapped.
 * - A page of the window must be one contiguous piece of the image: DAX needs 4 KiB blocks
 *   (as the kernel's ext4 DAX does).
 */
import { FsError } from '../util/errors';
import type { DaxRun } from '../vhost/dax-window';
import type { FileIO } from './file-io';
import type { InodeState, InodeStore } from './inode-store';

const PAGE = 4096;
/** Zeros written per step when a writable mapping fills holes. */
const ZERO_CHUNK = Buffer.alloc(1 << 20);

export async function daxRuns(store: InodeStore, files: FileIO, st: InodeState, foffset: number, len: number, writable: boolean): Promise<DaxRun[]> {
  const bs = store.vol.blockSize;
  if (bs !== PAGE) throw new FsError('EOPNOTSUPP', `DAX needs 4096-byte blocks; this image has ${bs}`);
  if (!st.inode.isReg()) throw new FsError('EINVAL', 'DAX maps regular files only');
  const size = st.inode.size;
  if (foffset >= size) throw new FsError('EINVAL', `DAX mapping at ${foffset} starts at or past the end of the file (${size} bytes)`);
  const end = Math.min(foffset + len, Math.ceil(size / bs) * bs);
  const first = Math.floor(foffset / bs);
  const count = Math.ceil(end / bs) - first;
  if (writable) {
    // Fill holes and unwritten extents inside the file with zeros (the write path allocates
    // and marks them written); never past EOF, which would change the size.
    for (const m of (await store.extents(st)).map(first, count)) {
      if (!m.hole && !m.unwritten) continue;
      let from = Math.max(foffset, m.lblk * bs);
      const to = Math.min(size, (m.lblk + m.len) * bs);
      while (from < to) {
        const n = Math.min(to - from, ZERO_CHUNK.length);
        const done = await files.write(st, from, ZERO_CHUNK.subarray(0, n));
        if (done <= 0) throw new FsError('ENOSPC', 'no space to back a writable DAX mapping');
        from += done;
      }
    }
  }
  const runs: DaxRun[] = [];
  for (const m of (await store.extents(st)).map(first, count)) {
    const from = Math.max(foffset, m.lblk * bs);
    const to = Math.min(end, (m.lblk + m.len) * bs);
    if (to <= from) continue;
    const imageOffset = m.hole || m.unwritten ? null : m.pblk * bs + (from - m.lblk * bs);
    const last = runs[runs.length - 1];
    const contiguous = last && last.fileOffset + last.len === from &&
      (last.imageOffset === null ? imageOffset === null : imageOffset === last.imageOffset + last.len);
    if (contiguous) last.len += to - from;
    else runs.push({ fileOffset: from, imageOffset, len: to - from });
  }
  // Stores through a writable mapping land in place with no write call to intercept: blocks a
  // snapshot still needs are copied now (src/snapshot/store.ts). New snapshots first drop every
  // mapping (Ext4Fs.beforeSnapshot), so a mapping never outlives the copy it relies on.
  if (writable) {
    for (const r of runs) if (r.imageOffset !== null) await store.vol.dev.prepareInPlaceWrite(Math.floor(r.imageOffset / bs), Math.ceil(r.len / bs));
  }
  return runs;
}
