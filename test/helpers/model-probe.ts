/**
 * Runs a list of Ext4Fs operations on an image in a child process and prints one JSON line
 * describing every outcome, so that a test can tell a clean FsError from a crash (any other
 * exception, or the process dying) and from a hang (the parent's timeout).
 *
 *   node dist/test/helpers/model-probe.js '<json ProbeRequest>'
 */
import { createHash } from 'node:crypto';
import { Ext4Fs } from '../../src/ext4/fs';
import { FsError } from '../../src/util/errors';

export type ProbeStep =
  | { op: 'lookup' | 'getattr' | 'readdir' | 'read' | 'readlink' | 'listxattr' | 'unlink' | 'rmdir'; path: string }
  | { op: 'getxattr'; path: string; name: string }
  | { op: 'setxattr'; path: string; name: string; size: number }
  | { op: 'write'; path: string; offset: number; size: number }
  | { op: 'create' | 'mkdir'; path: string }
  | { op: 'statfs' | 'sync' | 'walk' };

export interface ProbeRequest {
  image: string;
  readOnly?: boolean;
  steps: ProbeStep[];
}

export interface ProbeOutcome {
  ok: boolean;
  /** For successes: a short summary (sizes, names, hashes). */
  value?: unknown;
  /** For failures: 'FsError' (or a subclass) or 'crash' for anything else. */
  kind?: 'FsError' | 'crash';
  name?: string;
  code?: string;
  message?: string;
  stack?: string;
}

export interface ProbeResult {
  open: ProbeOutcome;
  steps: ProbeOutcome[];
  close?: ProbeOutcome;
}

function describe(e: unknown): ProbeOutcome {
  if (e instanceof FsError) return { ok: false, kind: 'FsError', name: e.name, code: e.code, message: e.message };
  const err = e as Error;
  return { ok: false, kind: 'crash', name: err?.name, message: String(err?.message ?? e), stack: err?.stack };
}

async function resolve(fsys: Ext4Fs, p: string): Promise<number> {
  let ino = 2;
  for (const c of p.split('/').filter(Boolean)) ino = (await fsys.lookup(ino, Buffer.from(c))).ino;
  return ino;
}

function split(p: string): { dir: string; name: Buffer } {
  const i = p.lastIndexOf('/');
  return { dir: p.slice(0, i), name: Buffer.from(p.slice(i + 1)) };
}

async function step(fsys: Ext4Fs, s: ProbeStep): Promise<unknown> {
  switch (s.op) {
    case 'lookup':
    case 'getattr': {
      const a = await fsys.getattr(await resolve(fsys, s.path));
      return { ino: a.ino, size: a.size, mode: a.mode, nlink: a.nlink };
    }
    case 'readdir': {
      const ino = await resolve(fsys, s.path);
      const h = await fsys.opendir(ino);
      try {
        const names = (await fsys.readdir(ino, 0, h)).map((e) => e.name.toString());
        return { count: names.length, names: names.slice(0, 8) };
      } finally {
        await fsys.releasedir(ino, h);
      }
    }
    case 'read': {
      const ino = await resolve(fsys, s.path);
      const a = await fsys.getattr(ino);
      const d = await fsys.read(ino, 0, a.size);
      return { size: d.length, head: d.subarray(0, 16).toString('latin1') };
    }
    case 'readlink':
      return (await fsys.readlink(await resolve(fsys, s.path))).toString();
    case 'listxattr':
      return await fsys.listxattr(await resolve(fsys, s.path));
    case 'getxattr':
      return (await fsys.getxattr(await resolve(fsys, s.path), s.name)).length;
    case 'setxattr':
      await fsys.setxattr(await resolve(fsys, s.path), s.name, Buffer.alloc(s.size, 0x61));
      return null;
    case 'write': {
      const ino = await resolve(fsys, s.path);
      return await fsys.write(ino, s.offset, Buffer.alloc(s.size, 0x5a));
    }
    case 'create': {
      const { dir, name } = split(s.path);
      return (await fsys.create(await resolve(fsys, dir), name, 0o644, 0, 0)).ino;
    }
    case 'mkdir': {
      const { dir, name } = split(s.path);
      return (await fsys.mkdir(await resolve(fsys, dir), name, 0o755, 0, 0)).ino;
    }
    case 'unlink': {
      const { dir, name } = split(s.path);
      await fsys.unlink(await resolve(fsys, dir), name);
      return null;
    }
    case 'rmdir': {
      const { dir, name } = split(s.path);
      await fsys.rmdir(await resolve(fsys, dir), name);
      return null;
    }
    case 'statfs':
      return await fsys.statfs();
    case 'walk':
      return await walk(fsys);
    case 'sync':
      await fsys.sync();
      return null;
  }
}

/**
 * Visit everything reachable from the root: readdir, getattr, content hash, symlink target,
 * xattrs. FsErrors are collected per object (the walk goes on); anything else is a crash and
 * propagates. Returns one canonical line per object, so that two walks can be compared.
 */
async function walk(fsys: Ext4Fs): Promise<{ lines: string[]; errors: string[] }> {
  const lines: string[] = [];
  const errors: string[] = [];
  const guard = async (where: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof FsError)) throw e;
      errors.push(`${where}: ${e.message}`);
    }
  };
  const seen = new Set<number>();
  const visit = async (p: string, ino: number): Promise<void> => {
    await guard(p, async () => {
      const a = await fsys.getattr(ino);
      let line = `${p} ino=${a.ino} mode=${a.mode.toString(8)} size=${a.size} nlink=${a.nlink}`;
      const type = a.mode & 0o170000;
      if (type === 0o100000) {
        const d = await fsys.read(ino, 0, Math.min(a.size, 1 << 20));
        line += ` sha1=${createHash('sha1').update(d).digest('hex')}`;
      } else if (type === 0o120000) {
        line += ` -> ${(await fsys.readlink(ino)).toString('latin1')}`;
      }
      for (const n of (await fsys.listxattr(ino)).sort()) {
        line += ` ${n}=${createHash('sha1').update(await fsys.getxattr(ino, n)).digest('hex').slice(0, 12)}`;
      }
      lines.push(line);
      if (type !== 0o040000 || seen.has(ino)) return;
      seen.add(ino);
      const h = await fsys.opendir(ino);
      try {
        for (const e of await fsys.readdir(ino, 0, h)) {
          const n = e.name.toString('latin1');
          if (n === '.' || n === '..') continue;
          await guard(`${p}/${n}`, async () => {
            const c = await fsys.lookup(ino, e.name);
            await visit(`${p}/${n}`, c.ino);
          });
        }
      } finally {
        await fsys.releasedir(ino, h);
      }
    });
  };
  await visit('', 2);
  return { lines, errors };
}

export async function probe(req: ProbeRequest): Promise<ProbeResult> {
  let fsys: Ext4Fs;
  try {
    fsys = await Ext4Fs.open(req.image, { commitIntervalMs: 0, readOnly: req.readOnly });
  } catch (e) {
    return { open: describe(e), steps: [] };
  }
  const steps: ProbeOutcome[] = [];
  for (const s of req.steps) {
    try {
      steps.push({ ok: true, value: await step(fsys, s) });
    } catch (e) {
      steps.push(describe(e));
    }
  }
  let close: ProbeOutcome;
  try {
    await fsys.close();
    close = { ok: true };
  } catch (e) {
    close = describe(e);
  }
  return { open: { ok: true }, steps, close };
}

if (require.main === module) {
  const fatal = (what: string) => (e: unknown): void => {
    process.stdout.write(JSON.stringify({ fatal: `${what}: ${(e as Error)?.stack ?? e}` }) + '\n');
    process.exit(3);
  };
  process.on('uncaughtException', fatal('uncaught exception'));
  process.on('unhandledRejection', fatal('unhandled rejection'));
  probe(JSON.parse(process.argv[2]) as ProbeRequest).then(
    (r) => process.stdout.write(JSON.stringify(r) + '\n'),
    fatal('probe failed'),
  );
}
