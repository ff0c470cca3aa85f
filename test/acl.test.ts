/**
 * POSIX ACL conversion against real oracles: the Linux kernel's ext4 (setfacl/getfattr on a
 * loop mount, and reading back an ACL we wrote into an inode), libext2fs' own VFS->disk
 * conversion in debugfs ea_set, and e2fsck.
 */
import test, { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ACL_TAG, aclFromDisk, aclToDisk } from '../src/ext4/acl';
import { encodeInodeXattrs, parseBlockXattrs, parseInodeXattrs, XattrEntry } from '../src/ext4/xattr';
import { CorruptionError, FsError } from '../src/util/errors';
import { ext4Crc } from '../src/ext4/crc';
import { INCOMPAT, RO_COMPAT, SuperblockLayout } from '../src/ext4/superblock';
import { inodeChecksum, InodeLayout } from '../src/ext4/inode';

const tmp = mkdtempSync(join(tmpdir(), 'kfs-acl-'));
let seq = 0;
const fresh = (what: string): string => join(tmp, `${what}-${++seq}`);

test.before(() => {
  // setfacl/getfattr are the userspace halves of the oracle; Debian ships them in acl and attr.
  if (spawnSync('sh', ['-c', 'command -v setfacl && command -v getfattr']).status !== 0) {
    throw new Error('setfacl/getfattr missing: the set-up (npm run setup) installs the acl and attr packages');
  }
});
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

// ---------- VFS-format builders ----------

const U = 0xffffffff;
type E = [tag: number, perm: number, id?: number];
function vfs(entries: E[], version = 2): Buffer {
  const b = Buffer.alloc(4 + entries.length * 8);
  b.writeUInt32LE(version, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + i * 8);
    b.writeUInt16LE(perm, 6 + i * 8);
    b.writeUInt32LE(id ?? U, 8 + i * 8);
  });
  return b;
}
const { USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER } = ACL_TAG;
const MINIMAL: E[] = [[USER_OBJ, 6], [GROUP_OBJ, 4], [OTHER, 4]];
const FULL: E[] = [[USER_OBJ, 7], [USER, 7, 1000], [USER, 5, 1001], [GROUP_OBJ, 5], [GROUP, 6, 100], [MASK, 7], [OTHER, 0]];

// ---------- pure conversion ----------

test('minimal and full ACLs round trip, with the documented disk layout', (t) => {
  const min = aclToDisk(vfs(MINIMAL));
  t.is(min.toString('hex'), '01000000' + '01000600' + '04000400' + '20000400');
  t.deepEqual(aclFromDisk(min), vfs(MINIMAL));
  const full = aclToDisk(vfs(FULL));
  t.is(full.length, 4 + 4 * 4 + 3 * 8);
  t.is(full.toString('hex'), '01000000' + '01000700' + '02000700e8030000' + '02000500e9030000' + '04000500' +
    '0800060064000000' + '10000700' + '20000000');
  t.deepEqual(aclFromDisk(full), vfs(FULL));
  // Ids on entries that carry none are dropped on disk and come back as ACL_UNDEFINED_ID.
  t.deepEqual(aclFromDisk(aclToDisk(vfs([[USER_OBJ, 6, 0], [GROUP_OBJ, 4, 5], [OTHER, 4, 7]]))), vfs(MINIMAL));
  // An empty ACL (header only) stays empty; the kernel reads that as "no ACL".
  t.deepEqual(aclToDisk(vfs([])), Buffer.from('01000000', 'hex'));
  t.deepEqual(aclFromDisk(Buffer.from('01000000', 'hex')), vfs([]));
});

test('invalid VFS ACLs are EINVAL', (t) => {
  const bad: [string, Buffer][] = [
    ['too short', Buffer.from([2, 0])],
    ['version 1', vfs(MINIMAL, 1)],
    ['ragged size', Buffer.concat([vfs(MINIMAL), Buffer.alloc(3)])],
    ['no OTHER', vfs([[USER_OBJ, 6], [GROUP_OBJ, 4]])],
    ['named user without mask', vfs([[USER_OBJ, 6], [USER, 6, 5], [GROUP_OBJ, 4], [OTHER, 4]])],
    ['GROUP_OBJ before USER_OBJ', vfs([[GROUP_OBJ, 4], [USER_OBJ, 6], [OTHER, 4]])],
    ['two USER_OBJ', vfs([[USER_OBJ, 6], [USER_OBJ, 6], [GROUP_OBJ, 4], [OTHER, 4]])],
    ['mask after other', vfs([[USER_OBJ, 6], [GROUP_OBJ, 4], [OTHER, 4], [MASK, 4]])],
    ['permission bit 8', vfs([[USER_OBJ, 8], [GROUP_OBJ, 4], [OTHER, 4]])],
    ['unknown tag', vfs([[USER_OBJ, 6], [0x40, 4], [GROUP_OBJ, 4], [OTHER, 4]])],
    ['undefined uid', vfs([[USER_OBJ, 6], [USER, 6, U], [GROUP_OBJ, 4], [MASK, 6], [OTHER, 4]])],
    ['entries after OTHER', vfs([...MINIMAL, [OTHER, 4]])],
  ];
  for (const [why, buf] of bad) {
    const e = t.throws(() => aclToDisk(buf), { instanceOf: FsError }, why);
    t.is(e?.code, 'EINVAL', why);
    t.false(e instanceof CorruptionError, why);
  }
});

test('invalid disk ACLs are CorruptionError (including random garbage)', (t) => {
  const good = aclToDisk(vfs(FULL));
  const cases: Buffer[] = [
    Buffer.alloc(2),
    Buffer.from('02000000' + '01000600' + '04000400' + '20000400', 'hex'),
    Buffer.concat([good, Buffer.alloc(2)]),
    good.subarray(0, good.length - 4),
    Buffer.from('01000000' + '01000600' + '40000400' + '20000400', 'hex'),
    // Size says "4 short + 1 full" but only 3 short entries come before the full ones.
    Buffer.from('01000000' + '01000700' + '02000700e8030000' + '02000700e9030000', 'hex'),
  ];
  for (const c of cases) t.throws(() => aclFromDisk(c), { instanceOf: CorruptionError }, c.toString('hex'));
  let s = 7;
  for (let i = 0; i < 5000; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const buf = Buffer.from(good.subarray(0, (s >>> 8) % (good.length + 1)));
    for (let k = 0; k < 3 && buf.length; k++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      buf[(s >>> 4) % buf.length] = s >>> 24;
    }
    try {
      aclFromDisk(buf);
    } catch (e) {
      if (!(e instanceof CorruptionError)) return t.fail(`unexpected ${String(e)} for ${buf.toString('hex')}`);
    }
  }
  t.pass();
});

// ---------- image helpers ----------

function mkfs(): string {
  const img = fresh('img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', img, '16M'], { stdio: 'pipe' });
  return img;
}
function debugfs(img: string, cmds: string[], write = false): string {
  const f = fresh('cmds');
  writeFileSync(f, cmds.join('\n') + '\n');
  return execFileSync('debugfs', [...(write ? ['-w'] : []), '-f', f, img], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}
function fsInfo(img: string): { blockSize: number; inodeSize: number; csumSeed: number } {
  const sb = SuperblockLayout.decode(readFileSync(img).subarray(1024, 2048));
  if (!(sb.s_feature_ro_compat & RO_COMPAT.metadata_csum)) throw new Error('expected metadata_csum');
  const csumSeed = sb.s_feature_incompat & INCOMPAT.csum_seed ? sb.s_checksum_seed : ext4Crc(0xffffffff, sb.s_uuid);
  return { blockSize: 1024 << sb.s_log_block_size, inodeSize: sb.s_inode_size, csumSeed };
}
function inodeAt(img: string, path: string): { ino: number; offset: number; raw: Buffer } {
  const out = debugfs(img, [`imap ${path}`]);
  const m = /Inode (\d+) is part of block group \d+\s+located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
  if (!m) throw new Error(`imap: ${out}`);
  const { blockSize, inodeSize } = fsInfo(img);
  const offset = Number(m[2]) * blockSize + parseInt(m[3], 16);
  return { ino: Number(m[1]), offset, raw: Buffer.from(readFileSync(img).subarray(offset, offset + inodeSize)) };
}
/** Every xattr of a file, read from the image bytes with our parser. */
function xattrsFromImage(img: string, path: string): Map<string, Buffer> {
  const { blockSize, csumSeed } = fsInfo(img);
  const { raw } = inodeAt(img, path);
  const entries: XattrEntry[] = parseInodeXattrs(raw.subarray(128 + raw.readUInt16LE(128)));
  const acl = InodeLayout.decode(raw).i_file_acl_lo;
  if (acl) {
    const block = readFileSync(img).subarray(acl * blockSize, (acl + 1) * blockSize);
    entries.push(...parseBlockXattrs(block, acl, csumSeed).entries);
  }
  return new Map(entries.map((e) => [e.name, e.value]));
}
function withMount<T>(t: ExecutionContext, img: string, fn: (mnt: string) => T): T {
  const mnt = fresh('mnt');
  mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  let mounted = true;
  const unmount = (): void => {
    if (mounted) {
      mounted = false;
      execFileSync('umount', [mnt]);
    }
  };
  t.teardown(() => {
    try {
      unmount();
    } catch {
      /* reported by the main path */
    }
  });
  try {
    return fn(mnt);
  } finally {
    unmount();
  }
}
/** The kernel's VFS-format value of one xattr (posix_acl_to_xattr output). */
function getfattrHex(file: string, name: string): Buffer {
  const out = execFileSync('getfattr', ['-n', name, '-e', 'hex', '--absolute-names', file]).toString();
  const m = new RegExp(`^${name.replace(/\./g, '\\.')}=0x([0-9a-f]+)$`, 'm').exec(out);
  if (!m) throw new Error(`getfattr: ${out}`);
  return Buffer.from(m[1], 'hex');
}

// ---------- kernel and libext2fs oracles ----------

test('ACLs set by the kernel (setfacl) convert to exactly what the kernel reports', (t) => {
  const img = mkfs();
  const kernel = withMount(t, img, (mnt) => {
    writeFileSync(join(mnt, 'file'), 'x');
    mkdirSync(join(mnt, 'dir'));
    execFileSync('setfacl', ['-m', 'u:1000:rwx,u:2000:r,g:100:rx,g:4000000000:w', join(mnt, 'file')]);
    execFileSync('setfacl', ['-m', 'u:1000:rx', join(mnt, 'dir')]);
    execFileSync('setfacl', ['-d', '-m', 'u:1000:rx,g:50:rwx', join(mnt, 'dir')]);
    return {
      fileAccess: getfattrHex(join(mnt, 'file'), 'system.posix_acl_access'),
      dirAccess: getfattrHex(join(mnt, 'dir'), 'system.posix_acl_access'),
      dirDefault: getfattrHex(join(mnt, 'dir'), 'system.posix_acl_default'),
    };
  });
  const file = xattrsFromImage(img, '/file');
  const dir = xattrsFromImage(img, '/dir');
  const pairs: [string, Buffer | undefined, Buffer][] = [
    ['file access', file.get('system.posix_acl_access'), kernel.fileAccess],
    ['dir access', dir.get('system.posix_acl_access'), kernel.dirAccess],
    ['dir default', dir.get('system.posix_acl_default'), kernel.dirDefault],
  ];
  for (const [what, disk, vfsValue] of pairs) {
    t.truthy(disk, `${what} is on disk`);
    t.deepEqual(aclFromDisk(disk!), vfsValue, `${what}: disk -> VFS`);
    t.deepEqual(aclToDisk(vfsValue), disk, `${what}: VFS -> disk is byte-identical to ext4_acl_to_disk`);
  }
  // The kernel's VFS output carries ACL_UNDEFINED_ID on the short entries, as we produce.
  t.is(kernel.fileAccess.readUInt32LE(8), U);
  t.is(kernel.fileAccess.length, 4 + 8 * 8);
});

test('an ACL we write into the inode is read by the kernel and passes e2fsck', (t) => {
  const img = mkfs();
  debugfs(img, ['write /dev/null file', 'sif /file mode 0100660'], true);
  const want = vfs([[USER_OBJ, 6], [USER, 6, 1234], [USER, 4, 70000], [GROUP_OBJ, 4], [GROUP, 2, 42], [MASK, 6], [OTHER, 0]]);
  const { csumSeed } = fsInfo(img);
  const { ino, offset, raw } = inodeAt(img, '/file');
  const extra = raw.readUInt16LE(128);
  const area = encodeInodeXattrs([{ name: 'system.posix_acl_access', value: aclToDisk(want) }], raw.length - 128 - extra);
  t.truthy(area);
  area!.copy(raw, 128 + extra);
  const crc = inodeChecksum(raw, ino, InodeLayout.decode(raw).i_generation, csumSeed, extra);
  raw.writeUInt16LE(crc & 0xffff, InodeLayout.offsetOf('i_checksum_lo'));
  raw.writeUInt16LE(crc >>> 16, InodeLayout.offsetOf('i_checksum_hi'));
  const fd = openSync(img, 'r+');
  try {
    writeSync(fd, raw, 0, raw.length, offset);
  } finally {
    closeSync(fd);
  }
  const r = spawnSync('e2fsck', ['-fn', img], { encoding: 'utf8' });
  t.is(r.status, 0, r.stdout + r.stderr);
  const seen = withMount(t, img, (mnt) => ({
    hex: getfattrHex(join(mnt, 'file'), 'system.posix_acl_access'),
    text: execFileSync('getfacl', ['-n', '--absolute-names', join(mnt, 'file')]).toString(),
  }));
  t.deepEqual(seen.hex, want);
  t.regex(seen.text, /^user:1234:rw-$/m);
  t.regex(seen.text, /^user:70000:r--$/m);
  t.regex(seen.text, /^group:42:-w-$/m);
  t.regex(seen.text, /^mask::rw-$/m);
});

test('aclToDisk matches libext2fs (debugfs ea_set converts VFS ACLs to the disk form too)', (t) => {
  const img = mkfs();
  const inputs = [vfs(MINIMAL), vfs(FULL), vfs([[USER_OBJ, 7], [GROUP_OBJ, 7], [GROUP, 1, 0], [MASK, 7], [OTHER, 5]])];
  const cmds = ['write /dev/null f0', 'write /dev/null f1', 'write /dev/null f2'];
  inputs.forEach((v, i) => {
    const f = fresh('acl');
    writeFileSync(f, v);
    cmds.push(`ea_set -f ${f} /f${i} system.posix_acl_access`);
  });
  debugfs(img, cmds, true);
  inputs.forEach((v, i) => {
    const disk = xattrsFromImage(img, `/f${i}`).get('system.posix_acl_access');
    t.deepEqual(disk, aclToDisk(v), `f${i}`);
  });
});
