/**
 * A host FUSE mount of PassthroughFs: the /dev/fuse transport and the dispatcher kfsd uses,
 * serving a shared directory at a mount point on this machine. Tests run it as a child process
 * (the mount must be served by another process than the one using it synchronously):
 *
 *   node dist/src/passthrough/host-mount.js SHARED_DIR MOUNTPOINT [--timeout S] [--writeback]
 *
 * prints "ready" once the mount is live, serves until it is unmounted (umount, SIGTERM,
 * SIGINT), then prints "closed" and exits 0.
 */
import path from 'node:path';
import { log, setLogLevel } from '../util/log';
import { FuseSession } from '../fuse/dispatcher';
import { FuseDevice } from '../transport/fusedev';
import { PassthroughFs } from './passthrough-fs';

export interface PassthroughMountOptions {
  /** Seconds the kernel caches names and attributes (the host may change the directory: small). */
  timeout?: number;
  writebackCache?: boolean;
  readOnly?: boolean;
}

export interface PassthroughMount {
  readonly fs: PassthroughFs;
  readonly device: FuseDevice;
  /** Resolves once the kernel ended the session and the filesystem was released. */
  readonly closed: Promise<void>;
  unmount(): void;
}

export async function mountPassthrough(shared: string, mountpoint: string, opts: PassthroughMountOptions = {}): Promise<PassthroughMount> {
  const pfs = await PassthroughFs.open(shared, { readOnly: opts.readOnly, writebackCache: opts.writebackCache });
  const timeout = opts.timeout ?? 1;
  const session = new FuseSession(pfs, {
    entryTimeout: timeout, attrTimeout: timeout, negativeTimeout: 0, writebackCache: opts.writebackCache, readOnly: opts.readOnly,
  });
  const device = FuseDevice.mount(path.resolve(mountpoint), session, {
    readOnly: opts.readOnly, source: path.resolve(shared), subtype: 'kfs-passthrough',
  });
  device.start();
  const closed = (async () => {
    await device.done;
    for (let i = 0; i < 200 && device.pending > 0; i++) await new Promise((r) => setTimeout(r, 10));
    device.close();
    await pfs.destroy();
  })();
  return { fs: pfs, device, closed, unmount: () => device.unmount() };
}

async function main(argv: string[]): Promise<number> {
  const args = argv.slice(2);
  const positional: string[] = [];
  const opts: PassthroughMountOptions = {};
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--timeout') opts.timeout = Number(args[++i]);
    else if (args[i] === '--writeback') opts.writebackCache = true;
    else if (args[i] === '--ro') opts.readOnly = true;
    else if (args[i] === '--log-level') setLogLevel(args[++i]);
    else positional.push(args[i]);
  }
  if (positional.length !== 2 || !(opts.timeout === undefined || opts.timeout >= 0)) {
    process.stderr.write('usage: host-mount.js SHARED_DIR MOUNTPOINT [--timeout S] [--writeback] [--ro] [--log-level L]\n');
    return 2;
  }
  const m = await mountPassthrough(positional[0], positional[1], opts);
  const stop = () => {
    try {
      m.unmount();
    } catch (e) {
      log.error(`unmount failed: ${(e as Error).message}`);
    }
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.stdout.write('ready\n');
  await m.closed;
  process.stdout.write('closed\n');
  return 0;
}

if (require.main === module) {
  main(process.argv).then((code) => process.exit(code), (e) => {
    process.stderr.write(`host-mount: ${(e as Error).message}\n`);
    process.exit(1);
  });
}
