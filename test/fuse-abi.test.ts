/**
 * The ABI tables in src/fuse/abi.ts against the installed kernel header itself: struct sizes and
 * flag values come from a C program compiled against <linux/fuse.h> (sizeof/offsetof, so the
 * compiler's layout is the oracle), opcodes from the header's enum fuse_opcode. Names the 7.38
 * header does not have (7.39+ additions) are checked by the other tests only.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FATTR, FOPEN, FuseNotifyCode, FuseOpcode, InitFlag, SIZE, FUSE_KERNEL_MINOR_VERSION, initOutSize, opcodeName,
} from '../src/fuse/abi';

const HEADER = '/usr/include/linux/fuse.h';

/** SIZE keys and the C expression that defines each in fuse.h. */
const SIZE_EXPR: Partial<Record<keyof typeof SIZE, string>> = {
  IN_HEADER: 'sizeof(struct fuse_in_header)', OUT_HEADER: 'sizeof(struct fuse_out_header)',
  ATTR: 'sizeof(struct fuse_attr)', KSTATFS: 'sizeof(struct fuse_kstatfs)', FILE_LOCK: 'sizeof(struct fuse_file_lock)',
  ENTRY_OUT: 'sizeof(struct fuse_entry_out)', COMPAT_ENTRY_OUT: 'FUSE_COMPAT_ENTRY_OUT_SIZE',
  FORGET_IN: 'sizeof(struct fuse_forget_in)', FORGET_ONE: 'sizeof(struct fuse_forget_one)',
  BATCH_FORGET_IN: 'sizeof(struct fuse_batch_forget_in)', GETATTR_IN: 'sizeof(struct fuse_getattr_in)',
  ATTR_OUT: 'sizeof(struct fuse_attr_out)', COMPAT_ATTR_OUT: 'FUSE_COMPAT_ATTR_OUT_SIZE',
  MKNOD_IN: 'sizeof(struct fuse_mknod_in)', COMPAT_MKNOD_IN: 'FUSE_COMPAT_MKNOD_IN_SIZE', MKDIR_IN: 'sizeof(struct fuse_mkdir_in)',
  RENAME_IN: 'sizeof(struct fuse_rename_in)', RENAME2_IN: 'sizeof(struct fuse_rename2_in)', LINK_IN: 'sizeof(struct fuse_link_in)',
  SETATTR_IN: 'sizeof(struct fuse_setattr_in)', OPEN_IN: 'sizeof(struct fuse_open_in)', CREATE_IN: 'sizeof(struct fuse_create_in)',
  OPEN_OUT: 'sizeof(struct fuse_open_out)', RELEASE_IN: 'sizeof(struct fuse_release_in)', FLUSH_IN: 'sizeof(struct fuse_flush_in)',
  READ_IN: 'sizeof(struct fuse_read_in)', WRITE_IN: 'sizeof(struct fuse_write_in)', COMPAT_WRITE_IN: 'FUSE_COMPAT_WRITE_IN_SIZE',
  WRITE_OUT: 'sizeof(struct fuse_write_out)', STATFS_OUT: 'sizeof(struct fuse_statfs_out)', COMPAT_STATFS_OUT: 'FUSE_COMPAT_STATFS_SIZE',
  FSYNC_IN: 'sizeof(struct fuse_fsync_in)', SETXATTR_IN: 'sizeof(struct fuse_setxattr_in)',
  COMPAT_SETXATTR_IN: 'FUSE_COMPAT_SETXATTR_IN_SIZE', GETXATTR_IN: 'sizeof(struct fuse_getxattr_in)',
  GETXATTR_OUT: 'sizeof(struct fuse_getxattr_out)', LK_IN: 'sizeof(struct fuse_lk_in)', LK_OUT: 'sizeof(struct fuse_lk_out)',
  ACCESS_IN: 'sizeof(struct fuse_access_in)', INIT_IN: 'sizeof(struct fuse_init_in)', INIT_OUT: 'sizeof(struct fuse_init_out)',
  COMPAT_INIT_OUT: 'FUSE_COMPAT_INIT_OUT_SIZE', COMPAT_22_INIT_OUT: 'FUSE_COMPAT_22_INIT_OUT_SIZE',
  INTERRUPT_IN: 'sizeof(struct fuse_interrupt_in)', BMAP_IN: 'sizeof(struct fuse_bmap_in)', BMAP_OUT: 'sizeof(struct fuse_bmap_out)',
  IOCTL_IN: 'sizeof(struct fuse_ioctl_in)', IOCTL_OUT: 'sizeof(struct fuse_ioctl_out)', POLL_IN: 'sizeof(struct fuse_poll_in)',
  POLL_OUT: 'sizeof(struct fuse_poll_out)', FALLOCATE_IN: 'sizeof(struct fuse_fallocate_in)',
  DIRENT: 'FUSE_NAME_OFFSET', DIRENTPLUS: 'FUSE_NAME_OFFSET_DIRENTPLUS',
  NOTIFY_INVAL_INODE_OUT: 'sizeof(struct fuse_notify_inval_inode_out)', NOTIFY_INVAL_ENTRY_OUT: 'sizeof(struct fuse_notify_inval_entry_out)',
  NOTIFY_DELETE_OUT: 'sizeof(struct fuse_notify_delete_out)', NOTIFY_STORE_OUT: 'sizeof(struct fuse_notify_store_out)',
  NOTIFY_RETRIEVE_OUT: 'sizeof(struct fuse_notify_retrieve_out)', NOTIFY_RETRIEVE_IN: 'sizeof(struct fuse_notify_retrieve_in)',
  LSEEK_IN: 'sizeof(struct fuse_lseek_in)', LSEEK_OUT: 'sizeof(struct fuse_lseek_out)',
  COPY_FILE_RANGE_IN: 'sizeof(struct fuse_copy_file_range_in)', SETUPMAPPING_IN: 'sizeof(struct fuse_setupmapping_in)',
  REMOVEMAPPING_IN: 'sizeof(struct fuse_removemapping_in)', REMOVEMAPPING_ONE: 'sizeof(struct fuse_removemapping_one)',
  SYNCFS_IN: 'sizeof(struct fuse_syncfs_in)', EXT_HEADER: 'sizeof(struct fuse_ext_header)',
};

/** Offsets the reply and request codecs rely on most. */
const OFFSETS: Record<string, [string, number]> = {
  'fuse_attr.atimensec': ['offsetof(struct fuse_attr, atimensec)', 48],
  'fuse_attr.blksize': ['offsetof(struct fuse_attr, blksize)', 80],
  'fuse_entry_out.attr': ['offsetof(struct fuse_entry_out, attr)', 40],
  'fuse_attr_out.attr': ['offsetof(struct fuse_attr_out, attr)', 16],
  'fuse_setattr_in.atime': ['offsetof(struct fuse_setattr_in, atime)', 32],
  'fuse_setattr_in.uid': ['offsetof(struct fuse_setattr_in, uid)', 76],
  'fuse_init_out.max_pages': ['offsetof(struct fuse_init_out, max_pages)', 28],
  'fuse_init_out.flags2': ['offsetof(struct fuse_init_out, flags2)', 32],
  'fuse_init_in.flags2': ['offsetof(struct fuse_init_in, flags2)', 16],
  'fuse_in_header.total_extlen': ['offsetof(struct fuse_in_header, total_extlen)', 36],
  'fuse_lk_in.lk_flags': ['offsetof(struct fuse_lk_in, lk_flags)', 40],
  'fuse_read_in.lock_owner': ['offsetof(struct fuse_read_in, lock_owner)', 24],
  'fuse_direntplus.dirent': ['offsetof(struct fuse_direntplus, dirent)', 128],
};

/** Values printed by the C program: "NAME value" per line. */
function cValues(): Map<string, bigint> {
  const dir = mkdtempSync(join(tmpdir(), 'kfs-fuse-abi-'));
  try {
    const lines: string[] = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/fuse.h>', 'int main(void) {'];
    const emit = (name: string, expr: string): void => {
      // Mask int-typed values: (1 << 31) is a negative int and would sign-extend.
      lines.push(`  printf("%s %llu\\n", "${name}", (unsigned long long)(${expr}) & (sizeof(${expr}) > 4 ? ~0ULL : 0xffffffffULL));`);
    };
    for (const [k, expr] of Object.entries(SIZE_EXPR)) emit(`SIZE.${k}`, expr);
    for (const [k, [expr]] of Object.entries(OFFSETS)) emit(`OFF.${k}`, expr);
    const guarded = (macro: string, name: string): void => {
      lines.push(`#ifdef ${macro}`);
      emit(name, macro);
      lines.push('#endif');
    };
    for (const k of Object.keys(InitFlag)) guarded(`FUSE_${k}`, `InitFlag.${k}`);
    for (const k of Object.keys(FOPEN)) guarded(`FOPEN_${k}`, `FOPEN.${k}`);
    for (const k of Object.keys(FATTR)) guarded(`FATTR_${k}`, `FATTR.${k}`);
    emit('MINOR', 'FUSE_KERNEL_MINOR_VERSION');
    lines.push('  return 0;', '}');
    writeFileSync(join(dir, 'abi.c'), lines.join('\n'));
    execFileSync('cc', ['-o', join(dir, 'abi'), join(dir, 'abi.c')], { stdio: 'pipe' });
    const out = execFileSync(join(dir, 'abi'), { encoding: 'utf8' });
    return new Map(out.trim().split('\n').map((l) => {
      const [k, v] = l.split(' ');
      return [k, BigInt(v)];
    }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// The set-up installs gcc and linux-libc-dev, so a missing compiler or header is a failure here.
const cTest = test;

cTest('struct sizes and offsets match sizeof/offsetof against <linux/fuse.h>', (t) => {
  const v = cValues();
  for (const k of Object.keys(SIZE_EXPR) as (keyof typeof SIZE)[]) {
    const want: number = SIZE[k];
    t.is(Number(v.get(`SIZE.${k}`)), want, `SIZE.${k}`);
  }
  for (const [k, [, want]] of Object.entries(OFFSETS)) t.is(Number(v.get(`OFF.${k}`)), want, k);
  t.is(Number(v.get('MINOR')), FUSE_KERNEL_MINOR_VERSION);
  t.is(initOutSize(Number(v.get('MINOR'))), Number(v.get('SIZE.INIT_OUT')));
});

cTest('INIT, FOPEN and FATTR flag values match the header where it defines them', (t) => {
  const v = cValues();
  let seen = 0;
  for (const [k, want] of Object.entries(InitFlag)) {
    const got = v.get(`InitFlag.${k}`);
    if (got === undefined) continue; // newer than the installed header
    t.is(want, got, `FUSE_${k}`);
    seen++;
  }
  t.true(seen >= 34, `${seen} INIT flags compared`);
  for (const [k, want] of Object.entries(FOPEN)) {
    const got = v.get(`FOPEN.${k}`);
    if (got !== undefined) t.is(BigInt(want), got, `FOPEN_${k}`);
  }
  for (const [k, want] of Object.entries(FATTR)) t.is(v.get(`FATTR.${k}`), BigInt(want) as bigint | undefined, `FATTR_${k}`);
});

const headerTest = test;

headerTest('every opcode and notify code in the header has the same value here', (t) => {
  const text = readFileSync(HEADER, 'utf8');
  const block = (name: string): string => {
    const m = new RegExp(`enum ${name} \\{([^}]*)\\}`).exec(text);
    if (!m) throw new Error(`enum ${name} not found`);
    return m[1];
  };
  const entries = (body: string, prefix: RegExp): [string, number][] =>
    [...body.matchAll(/(\w+)\s*=\s*(\d+)/g)].filter((m) => prefix.test(m[1])).map((m) => [m[1], Number(m[2])]);
  const ops = entries(block('fuse_opcode'), /^(FUSE_|CUSE_INIT$)/).filter(([k]) => !k.endsWith('_BSWAP_RESERVED'));
  t.true(ops.length >= 50);
  const table: Record<string, number> = FuseOpcode;
  for (const [k, v] of ops) t.is(table[k.replace(/^FUSE_/, '')], v, k);
  const notes = entries(block('fuse_notify_code'), /^FUSE_NOTIFY_/);
  const ntable: Record<string, number> = FuseNotifyCode;
  for (const [k, v] of notes) t.is(ntable[k.replace(/^FUSE_NOTIFY_/, '')], v, k);
  // The later ones the host kernel speaks, from the upstream header.
  t.is(FuseOpcode.STATX, 52);
  t.is(FuseNotifyCode.RESEND, 7);
  t.is(InitFlag.HAS_RESEND, 1n << 39n);
});

test('opcodeName', (t) => {
  t.is(opcodeName(1), 'LOOKUP');
  t.is(opcodeName(48), 'SETUPMAPPING');
  t.is(opcodeName(7), 'opcode 7');
});
