/**
 * `kfs mkfs` options: the typed MkfsOptions the formatter takes, their validation (zod), the
 * mke2fs-style command-line syntax that produces them (sizes with K/M/G/T suffixes, -O feature
 * edit lists, -J size=, -U random|time|<uuid>), and the feature set kfs can create.
 *
 * Defaults mirror Debian 12's mkfs.ext4 (e2fsprogs 1.47.0 with Debian's /etc/mke2fs.conf):
 * features has_journal ext_attr dir_index filetype extent 64bit flex_bg sparse_super large_file
 * huge_file dir_nlink extra_isize metadata_csum. resize_inode, also in Debian's defaults, is never
 * created (kfs does no online resize); "-O ^resize_inode" is accepted so mkfs.ext4 command lines
 * carry over.
 *
 * Every problem is reported as an MkfsUsageError (an FsError, EINVAL) whose message is one
 * sentence: what is wrong; what to do.
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { FsError } from '../src/util/errors';
import { COMPAT, INCOMPAT, RO_COMPAT } from '../src/ext4/superblock';

/** A bad option or option combination (the CLI exits 2 for these, 1 for other failures). */
export class MkfsUsageError extends FsError {
  constructor(message: string) {
    super('EINVAL', message);
    this.name = 'MkfsUsageError';
  }
}

export type BlockSize = 1024 | 2048 | 4096;
export const BLOCK_SIZES: readonly BlockSize[] = [1024, 2048, 4096];

/** Features kfs mkfs can put in a filesystem, in dumpe2fs's order. */
export const FEATURE_NAMES = [
  'has_journal', 'ext_attr', 'dir_index', 'filetype', 'extent', '64bit', 'flex_bg', 'sparse_super',
  'large_file', 'huge_file', 'dir_nlink', 'extra_isize', 'metadata_csum',
] as const;
export type FeatureName = (typeof FEATURE_NAMES)[number];
export type FeatureSet = ReadonlySet<FeatureName>;

/** Debian 12 mkfs.ext4's defaults (minus resize_inode): all of the above. */
export const DEFAULT_FEATURES: FeatureSet = new Set<FeatureName>(FEATURE_NAMES);

/** Defaults that may be turned off with "^name"; the rest are required by kfs. */
export const REMOVABLE_FEATURES: FeatureSet = new Set<FeatureName>([
  'has_journal', 'metadata_csum', '64bit', 'huge_file', 'dir_nlink', 'extra_isize', 'flex_bg', 'dir_index',
]);

/** Alternative spellings e2fsprogs accepts. */
const FEATURE_ALIASES: Record<string, string> = { extents: 'extent', uninit_bg: 'gdt_csum' };

export interface MkfsOptions {
  /**
   * Filesystem size in bytes (rounded down to whole blocks). Default: the size of the existing
   * image file or block device (rounded down to 4 KiB, as mke2fs does). A missing image file is
   * created (sparse) with this size; a smaller existing file is extended to it.
   */
  size?: number;
  /** Default as mke2fs.conf: 1024 below 512 MiB ("floppy"/"small" types), else 4096. */
  blockSize?: BlockSize;
  /** -N: minimum number of inodes (rounded up to fill whole inode-table blocks in every group). */
  inodes?: number;
  /** -i: bytes of filesystem per inode. Default from the size type: 8192/4096/16384/32768/65536. */
  bytesPerInode?: number;
  /** -L: volume label, at most 16 bytes of UTF-8. */
  label?: string;
  /** -U: "random" (default), "time" (made random: kfs has no MAC-based UUIDs), or a UUID. */
  uuid?: string;
  /** -O: comma list of feature edits applied to DEFAULT_FEATURES; "^name" removes a feature. */
  features?: string;
  /** -m: percentage of blocks reserved for root, 0..50 (default 5). */
  reservedPercent?: number;
  /** -J size=: journal size in MiB (default by filesystem size, as ext2fs_default_journal_size). */
  journalSizeMiB?: number;
  /** -F: overwrite an image that already holds an ext2/3/4 filesystem. */
  force?: boolean;
  /** Directory hash seed as a UUID string (default random); for reproducible images. */
  hashSeed?: string;
  /** Creation time, seconds since the epoch (default now); for reproducible images. */
  timestamp?: number;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_U32 = 0xffffffff;

const mkfsOptionsSchema = z.object({
  size: z.number().int('size must be a whole number of bytes; pass --size like 64M').positive('size must be positive; pass --size like 64M').optional(),
  blockSize: z.number()
    .refine((b) => (BLOCK_SIZES as readonly number[]).includes(b), { error: (iss) => `block size ${String(iss.input)} is not supported; use -b 1024, 2048 or 4096` })
    .transform((b) => b as BlockSize).optional(),
  inodes: z.number().int('inode count must be a whole number; pass -N with a positive integer')
    .min(1, 'inode count must be at least 1; pass -N with a positive integer')
    .max(MAX_U32, 'inode count must be below 2^32; pass a smaller -N').optional(),
  bytesPerInode: z.number().int('bytes per inode must be a whole number; pass -i like 16384')
    .min(1024, 'bytes per inode must be at least 1024; pass -i between 1024 and 67108864')
    .max(65536 * 1024, 'bytes per inode must be at most 67108864 (64 MiB); pass -i between 1024 and 67108864').optional(),
  label: z.string().refine((l) => Buffer.byteLength(l, 'utf8') <= 16 && !l.includes('\0'),
    { error: (iss) => `label '${String(iss.input)}' is ${Buffer.byteLength(String(iss.input), 'utf8')} bytes, ext4 labels hold at most 16; pass a shorter -L` }).optional(),
  uuid: z.string().refine((u) => u === 'random' || u === 'time' || UUID_RE.test(u),
    { error: (iss) => `invalid UUID '${String(iss.input)}'; pass -U random, -U time or -U xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` }).optional(),
  features: z.string().optional(),
  reservedPercent: z.number().min(0, 'reserved blocks percentage must be between 0 and 50; pass -m 0..50')
    .max(50, 'reserved blocks percentage must be between 0 and 50; pass -m 0..50').optional(),
  journalSizeMiB: z.number().int('journal size must be a whole number of MiB; pass -J size=<MiB>')
    .positive('journal size must be positive; pass -J size=<MiB>').optional(),
  force: z.boolean().optional(),
  hashSeed: z.string().regex(UUID_RE, 'hash seed must be a UUID; pass one like 01234567-89ab-cdef-0123-456789abcdef').optional(),
  timestamp: z.number().int('timestamp must be whole seconds since 1970').min(0, 'timestamp must not be before 1970')
    .max(2 ** 34 - 1, 'timestamp is past 2446, the last second ext4 can store').optional(),
}).strict();

function firstIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  if (issue.code === 'unrecognized_keys') return `unknown option ${issue.keys.join(', ')}; see MkfsOptions for the supported ones`;
  return issue.message;
}

/** Check programmatic options (the CLI's parsed ones too); throws MkfsUsageError. */
export function validateMkfsOptions(opts: unknown): MkfsOptions {
  const r = mkfsOptionsSchema.safeParse(opts);
  if (!r.success) throw new MkfsUsageError(firstIssue(r.error));
  const o: MkfsOptions = r.data;
  if (o.inodes !== undefined && o.bytesPerInode !== undefined) {
    throw new MkfsUsageError('-N and -i both set the inode count; pass only one of them');
  }
  const features = resolveFeatures(o.features);
  if (o.journalSizeMiB !== undefined && !features.has('has_journal')) {
    throw new MkfsUsageError('-J size= sets a journal size but -O ^has_journal removes the journal; drop one of them');
  }
  return o;
}

/**
 * Apply an mke2fs -O edit list ("^has_journal,^64bit") to the defaults. Names mke2fs knows but
 * kfs cannot create, and names nobody knows, are errors naming the feature.
 */
export function resolveFeatures(spec: string | undefined, base: FeatureSet = DEFAULT_FEATURES): Set<FeatureName> {
  const out = new Set<FeatureName>(base);
  if (spec === undefined) return out;
  const known = new Set<string>([...Object.keys(COMPAT), ...Object.keys(INCOMPAT), ...Object.keys(RO_COMPAT), 'gdt_csum']);
  for (const raw of spec.split(/[,\s]+/)) {
    if (raw === '') continue;
    const remove = raw.startsWith('^') || raw.startsWith('-');
    const given = (remove || raw.startsWith('+') ? raw.slice(1) : raw).toLowerCase();
    const name = FEATURE_ALIASES[given] ?? given;
    if ((FEATURE_NAMES as readonly string[]).includes(name)) {
      const f = name as FeatureName;
      if (!remove) out.add(f);
      else if (REMOVABLE_FEATURES.has(f)) out.delete(f);
      else throw new MkfsUsageError(`kfs needs the ${f} feature and cannot create a filesystem without it; remove '^${given}' from -O`);
    } else if (name === 'resize_inode' && remove) {
      // kfs never creates resize_inode; accepting its removal keeps mkfs.ext4 command lines working.
    } else if (known.has(name)) {
      throw new MkfsUsageError(`feature '${given}' is not supported by kfs mkfs; remove it from -O (supported: ${FEATURE_NAMES.join(', ')})`);
    } else {
      throw new MkfsUsageError(`unknown filesystem feature '${given}'; use ext4 feature names such as ^has_journal or ^64bit in -O`);
    }
  }
  return out;
}

/** 16 UUID bytes for -U: random for "random", "time" and undefined. */
export function uuidBytes(spec: string | undefined): Buffer {
  if (spec === undefined || spec === 'random' || spec === 'time') return randomUuidBytes();
  if (!UUID_RE.test(spec)) throw new MkfsUsageError(`invalid UUID '${spec}'; pass -U random or -U xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`);
  return Buffer.from(spec.replace(/-/g, ''), 'hex');
}

export function randomUuidBytes(): Buffer {
  return Buffer.from(randomUUID().replace(/-/g, ''), 'hex');
}

export function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/* ---------- command-line syntax ---------- */

const UNIT: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

/** "16M", "1.5G", "64MiB", "4096" (bytes) → bytes; undefined when malformed. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const v = Math.floor(Number(m[1]) * UNIT[m[2].toLowerCase()]);
  return Number.isSafeInteger(v) ? v : undefined;
}

/** A whole number in decimal (or 0x hex, as strtoul accepts); undefined when malformed. */
export function parseCount(text: string): number | undefined {
  const t = text.trim();
  if (/^\d+$/.test(t) || /^0x[0-9a-f]+$/i.test(t)) {
    const v = Number(t);
    return Number.isSafeInteger(v) ? v : undefined;
  }
  return undefined;
}

/** The raw values commander hands over for `kfs mkfs` (strings as typed). */
export interface MkfsCliValues {
  size?: string;
  blockSize?: string;
  inodes?: string;
  bytesPerInode?: string;
  label?: string;
  uuid?: string;
  /** -O may be repeated; the lists are joined with commas, as mke2fs does. */
  features?: string[];
  reservedPercent?: string;
  /** -J may be repeated. */
  journal?: string[];
  force?: boolean;
  quiet?: boolean;
}

function textTo<T>(parse: (s: string) => T | undefined, message: (s: string) => string) {
  return z.string().transform((s, ctx): T => {
    const v = parse(s);
    if (v === undefined) {
      ctx.addIssue({ code: 'custom', message: message(s) });
      return z.NEVER;
    }
    return v;
  });
}

const parseReal = (s: string): number | undefined => (/^\s*\d+(\.\d+)?\s*$/.test(s) ? Number(s) : undefined);

function parseJournalOptions(list: string[]): number | undefined {
  let size: number | undefined;
  for (const item of list.flatMap((s) => s.split(','))) {
    const m = /^size=(\d+)$/.exec(item.trim());
    if (!m) throw new MkfsUsageError(`unsupported journal option '${item}'; kfs mkfs only understands -J size=<MiB>`);
    size = Number(m[1]);
  }
  return size;
}

const cliSchema = z.object({
  size: textTo(parseSize, (s) => `invalid size '${s}'; pass --size as bytes or with a K, M, G or T suffix, like 64M`).optional(),
  blockSize: textTo((s) => {
    const m = /^\s*(\d+)\s*(k?)\s*$/i.exec(s);
    return m ? Number(m[1]) * (m[2] ? 1024 : 1) : undefined;
  }, (s) => `invalid block size '${s}'; use -b 1024, 2048 or 4096`).optional(),
  inodes: textTo(parseCount, (s) => `invalid inode count '${s}'; pass -N with a positive integer`).optional(),
  bytesPerInode: textTo((s) => {
    const v = parseSize(s);
    return v !== undefined && /^\s*\d+\s*[kmg]?\s*$/i.test(s) ? v : undefined;
  }, (s) => `invalid bytes-per-inode '${s}'; pass -i with a whole number of bytes like 16384`).optional(),
  label: z.string().optional(),
  uuid: z.string().transform((u) => u.toLowerCase()).optional(),
  features: z.array(z.string()).transform((l) => l.join(',')).optional(),
  reservedPercent: textTo(parseReal, (s) => `invalid reserved blocks percentage '${s}'; pass -m with a number from 0 to 50`).optional(),
  journal: z.array(z.string()).optional(),
  force: z.boolean().optional(),
  quiet: z.boolean().optional(),
});

/** Turn the command line's strings into validated MkfsOptions; throws MkfsUsageError. */
export function mkfsOptionsFromCli(values: MkfsCliValues): MkfsOptions {
  const r = cliSchema.safeParse(values);
  if (!r.success) throw new MkfsUsageError(firstIssue(r.error));
  const v = r.data;
  const opts: MkfsOptions = {
    size: v.size,
    blockSize: v.blockSize as BlockSize | undefined,
    inodes: v.inodes,
    bytesPerInode: v.bytesPerInode,
    label: v.label,
    uuid: v.uuid,
    features: v.features,
    reservedPercent: v.reservedPercent,
    journalSizeMiB: v.journal ? parseJournalOptions(v.journal) : undefined,
    force: v.force,
  };
  for (const k of Object.keys(opts) as (keyof MkfsOptions)[]) if (opts[k] === undefined) delete opts[k];
  return validateMkfsOptions(opts);
}
