/**
 * FuseDevice.pollAfterReplyUs (`kfs mount -o busy_poll_us=N`): after the last reply the server
 * keeps reading /dev/fuse for a while instead of sleeping, so a client's next request finds it
 * awake. Served in this process through the real kernel FUSE driver; a separate client process
 * stats a file in a loop (attribute and entry timeouts 0: every stat is a LOOKUP and a GETATTR).
 * Needs root and /dev/fuse.
 */
import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { Ext4FuseFs } from '../src/ext4/fuse-adapter';
import { FuseSession } from '../src/fuse/dispatcher';
import { FuseDevice } from '../src/transport/fusedev';
import { makeImage, tempDir, requireRoot } from './helpers/image';
import { parseMountOptions } from '../src/cli/mount-command';

const STATS = 400;

async function serveAndStat(t: ExecutionContext, pollUs: number): Promise<{ requests: number; polled: number }> {
  requireRoot(t);
  const dir = tempDir(t, 'busy-poll');
  const ext4 = await Ext4Fs.open(makeImage(t, { dir, size: '32M' }), { commitIntervalMs: 0 });
  const session = new FuseSession(new Ext4FuseFs(ext4), { entryTimeout: 0, attrTimeout: 0, negativeTimeout: 0 });
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const dev = FuseDevice.mount(mnt, session);
  dev.pollAfterReplyUs = pollUs;
  dev.start();
  let mounted = true;
  const stop = async (): Promise<void> => {
    if (!mounted) return;
    mounted = false;
    dev.unmount();
    await dev.done;
    dev.close();
    await ext4.close();
  };
  t.teardown(stop);
  // The client must not be this process: its event loop serves the mount.
  const script = `const fs = require('fs'); fs.writeFileSync(process.argv[1], 'x');
    for (let i = 0; i < ${STATS}; i++) if (fs.statSync(process.argv[1]).size !== 1) process.exit(3);`;
  const child = spawn(process.execPath, ['-e', script, path.join(mnt, 'f')], { stdio: 'inherit' });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  t.is(code, 0, 'the client stat loop ran');
  const stats = { ...dev.stats };
  await stop();
  t.true(stats.requests >= STATS, `${stats.requests} requests for ${STATS} stats`);
  return stats;
}

test.serial('with polling, a client loop\'s requests are read while the server polls', async (t) => {
  const s = await serveAndStat(t, 2000);
  // How many depends on scheduling (1049-1173 of 1211 on an idle machine), so the assertion is
  // only that polling happened; with it broken (or off, below) none are.
  t.log(`${s.polled} of ${s.requests} requests read while polling`);
  t.true(s.polled > 0, `none of ${s.requests} requests were read while polling`);
});

test.serial('without polling (busy_poll_us=0) every request waits for a wakeup', async (t) => {
  const s = await serveAndStat(t, 0);
  t.is(s.polled, 0);
});

test('busy_poll_us: 50 µs by default, 0 turns it off, nonsense is a usage error', (t) => {
  t.is(parseMountOptions([]).busy_poll_us, 50);
  t.is(parseMountOptions(['busy_poll_us=0']).busy_poll_us, 0);
  t.throws(() => parseMountOptions(['busy_poll_us=20000']), { message: /busy_poll_us/ });
  t.throws(() => parseMountOptions(['busy_poll_us=fast']), { message: /busy_poll_us needs a number/ });
});
