/**
 * `kfs mount -o writeback_cache`: the kernel keeps dirty pages and times and writes them back
 * later, also for inodes whose last name is gone (an evicted inode's times go out as SETATTR
 * after the unlink). The server keeps an unlinked inode the kernel still refers to until its
 * FORGET (Ext4FuseFs's lookup counts), so none of that writeback meets ESTALE, and space
 * still comes back once the kernel lets go. Needs root and /dev/fuse.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { makeImage, tempDir, assertFsckClean, requireRoot } from './helpers/image';
import { mountKfs } from './helpers/mount';

function sh(script: string, cwd: string): { code: number; out: string } {
  const r = spawnSync('sh', ['-ec', script], { cwd, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

test('writeback_cache: unlinked files (closed, open, written after the unlink) and a removed cwd give no ESTALE; space comes back', async (t) => {
  requireRoot(t);
  const dir = tempDir(t, 'wbc');
  const image = makeImage(t, { dir, size: '256M' });
  const mnt = path.join(dir, 'mnt');
  const m = await mountKfs(t, image, mnt, { options: ['writeback_cache'] });
  const freeKiB = () => Number(sh(`df -k --output=avail . | tail -1`, mnt).out.trim());
  const empty = freeKiB();
  const r = sh(`
    for i in 1 2 3; do printf hello > f$i; done
    rm f1; printf x >> f2; rm f2; sync -f .
    dd if=/dev/zero of=g bs=4k count=10 2>/dev/null; rm g; sync -f .
    exec 3>h; echo abc >&3; rm h; echo more >&3; exec 3>&-; sync -f .
    mkdir d; (cd d && rmdir ../d && ls -a . >/dev/null); sync -f .
    dd if=/dev/zero of=big bs=1M count=32 2>/dev/null; rm big; sync -f .
    echo ok`, mnt);
  t.is(r.code, 0, r.out);
  t.is(r.out.trim(), 'ok', r.out);
  // f3 remains (one 4 KiB block); the 32 MiB file and the others have given their space back.
  t.true(empty - freeKiB() < 1024, `free space ${freeKiB()} KiB after the removals, ${empty} KiB when empty`);
  t.deepEqual(m.logProblems(), []);
  await m.unmount();
  assertFsckClean(t, image);
});
