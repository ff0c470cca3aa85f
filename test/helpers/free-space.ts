/**
 * Checkerboard free space on a mounted filesystem: `count` one-block files, every other
 * remaining block filled, then every other small file deleted. What is left free is a row of
 * one-block holes, so a file written next gets as many extents as it has blocks (the setting
 * for fragmentation reports and defragmentation).
 */
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { mustRun } from './image';

export function checkerboardFreeSpace(t: ExecutionContext, mountDir: string, count: number, blockSize: number): void {
  const small = path.join(mountDir, 'small');
  fs.mkdirSync(small);
  for (let i = 0; i < count; i++) fs.writeFileSync(path.join(small, `f${i}`), Buffer.alloc(blockSize, i & 0xff));
  // Fill every remaining block, then free every other small file: only one-block holes are left.
  const fd = fs.openSync(path.join(mountDir, 'filler'), 'w');
  const chunk = Buffer.alloc(1 << 20, 0x55);
  try {
    for (;;) fs.writeSync(fd, chunk);
  } catch (e) {
    t.is((e as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    fs.closeSync(fd);
  }
  for (let i = 0; i < count; i += 2) fs.unlinkSync(path.join(small, `f${i}`));
  mustRun('sync', ['-f', mountDir]);
}
