/**
 * Which filesystem a kfsctl command works on, and how to reach it:
 *   -t SOCKET      a control socket (any unix socket file)
 *   -t DIR         a kfs mount point (or any directory on a kfs mount): its serving process
 *   -t IMAGE       an image file: its serving process if one serves it, else the file itself
 *   (none)         the kfs filesystem holding the current directory
 * A serving process is found in the control registry (src/control/registry.ts); a host
 * mount's image comes from /proc/self/mountinfo (fstype fuse.kfs, source = the image).
 * Offline use opens the image read-only (taking a shared image lock), or read-write with the
 * exclusive lock for commands that change it (defrag): an image some process holds but that is
 * not in the registry is reported with that process's pid.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Ext4Fs } from '../src/ext4/fs';
import { FsError } from '../src/util/errors';
import { ControlClient } from '../src/control/client';
import { CommandName, ResultOf, ResultSchemas, ArgsOf, ControlError } from '../src/control/protocol';
import { canonical, findByImage, findByMountpoint, findBySocket, lockHolders, mountOf, RegistryEntry } from '../src/control/registry';
import { runCommand, ServedFs } from '../src/control/service';

export class TargetError extends Error {}

export type Resolved =
  | { kind: 'socket'; socket: string; mountpoint: string | null; image: string | null; pid: number | null }
  | { kind: 'image'; image: string };

const FUSE_KFS = 'fuse.kfs';

function fromEntry(e: RegistryEntry): Resolved {
  return { kind: 'socket', socket: e.socket, mountpoint: e.mountpoint, image: e.image, pid: e.pid };
}

function fromMount(dir: string, what: string): Resolved {
  const m = mountOf(dir);
  if (!m || m.fstype !== FUSE_KFS) {
    throw new TargetError(`${what} is not on a kfs filesystem${m ? ` (it is on ${m.fstype} at ${m.mountpoint})` : ''}; give -t MOUNTPOINT, -t SOCKET or -t IMAGE`);
  }
  const e = findByMountpoint(m.mountpoint) ?? findByImage(m.source);
  if (!e) throw new TargetError(`no control socket is registered for the kfs mount at ${m.mountpoint}; its server may predate kfsctl support or run as another user; give -t SOCKET`);
  return fromEntry({ ...e, mountpoint: e.mountpoint ?? m.mountpoint });
}

export function resolveTarget(target: string | undefined): Resolved {
  if (target === undefined) return fromMount(process.cwd(), `the current directory ${process.cwd()}`);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(target, { throwIfNoEntry: false });
  } catch (e) {
    throw new TargetError(`cannot reach target ${target}: ${(e as NodeJS.ErrnoException).code === 'EACCES' ? 'permission denied (control sockets are for root and the serving user)' : (e as Error).message}`);
  }
  if (!st) throw new TargetError(`target ${target} does not exist; give a kfs mount point, a control socket or an image file`);
  if (st.isSocket()) {
    const e = findBySocket(target);
    return e ? fromEntry(e) : { kind: 'socket', socket: path.resolve(target), mountpoint: null, image: null, pid: null };
  }
  if (st.isDirectory()) {
    const e = findByMountpoint(target);
    return e ? fromEntry(e) : fromMount(target, target);
  }
  if (st.isFile() || st.isBlockDevice()) {
    const e = findByImage(target);
    return e ? fromEntry(e) : { kind: 'image', image: canonical(target) };
  }
  throw new TargetError(`target ${target} is not a directory, a socket or an image file`);
}

/** One filesystem to run commands on: over its control socket, or opened here. */
export interface Backend {
  readonly describe: string;
  readonly mountpoint: string | null;
  run<C extends CommandName>(command: C, args: ArgsOf<C>, progress?: (phase: string, done: number, total: number) => void): Promise<ResultOf<C>>;
  close(): Promise<void>;
}

/** `writable`: commands that change the image (defrag) open it read-write, taking the exclusive lock. */
export async function openBackend(r: Resolved, opts: { writable?: boolean } = {}): Promise<Backend> {
  if (r.kind === 'socket') {
    const client = await ControlClient.connect(r.socket);
    return {
      describe: r.mountpoint ?? r.image ?? r.socket,
      mountpoint: r.mountpoint,
      run: (command, args, progress) => client.request(command, args, progress),
      close: async () => client.close(),
    };
  }
  let fsys: Ext4Fs;
  try {
    fsys = await Ext4Fs.open(r.image, { readOnly: !opts.writable, commitIntervalMs: 0 });
  } catch (e) {
    if (e instanceof FsError && e.code === 'EBUSY' && !/mounted by the kernel/.test(e.message)) {
      const pid = lockHolders(r.image)[0]?.pid;
      throw new TargetError(`image ${r.image} is served by ${pid ? `pid ${pid}` : 'another process'}; use its mount point or control socket (-t)`);
    }
    throw e;
  }
  const served: ServedFs = {
    kind: 'offline', image: r.image, fs: fsys, mountpoint: null, vhostSocket: null, startedAt: null, stats: null,
    frontEndConnected: null, controlConnections: () => 0,
  };
  return {
    describe: r.image,
    mountpoint: null,
    run: async <C extends CommandName>(command: C, args: ArgsOf<C>, progress?: (phase: string, done: number, total: number) => void) => {
      const result = await runCommand(served, command, args, progress ?? (() => undefined));
      // The same check a reply from a server gets.
      const parsed = ResultSchemas[command].safeParse(result);
      if (!parsed.success) throw new ControlError('EPROTO', `invalid ${command} result: ${parsed.error.issues[0]?.message}`);
      return parsed.data as ResultOf<C>;
    },
    close: () => fsys.close(),
  };
}
