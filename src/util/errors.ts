/**
 * Filesystem errors carry an errno so that every layer (library, FUSE dispatcher, CLI) maps
 * them to a reply or a message in one place.
 */
import { constants } from 'node:os';

export type ErrnoName = keyof typeof constants.errno;

export class FsError extends Error {
  readonly errno: number;
  readonly code: ErrnoName;
  constructor(code: ErrnoName, message: string) {
    // Expected outcomes (ENOENT from a lookup...) are frequent: skip the stack capture, which
    // costs more than the operation that failed.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`${code}: ${message}`);
    Error.stackTraceLimit = limit;
    this.name = 'FsError';
    this.code = code;
    this.errno = constants.errno[code];
  }
}

const ERRNO_NAMES = new Map<number, ErrnoName>();
for (const [name, errno] of Object.entries(constants.errno) as [ErrnoName, number][]) if (!ERRNO_NAMES.has(errno)) ERRNO_NAMES.set(errno, name);

/** A name for an errno number (aliases such as EAGAIN/EWOULDBLOCK carry the same number); EIO for an unknown one. */
export function errnoName(errno: number): ErrnoName {
  return ERRNO_NAMES.get(errno) ?? 'EIO';
}

export function fsError(code: ErrnoName, message: string): FsError {
  return new FsError(code, message);
}

/** Metadata that fails a checksum or a sanity check: EIO naming what is damaged. */
export class CorruptionError extends FsError {
  constructor(message: string) {
    super('EIO', `corrupt filesystem: ${message}`);
    this.name = 'CorruptionError';
  }
}

/** errno of any thrown value: FsError, a Node system error, or EIO for the unknown. */
export function errnoOf(e: unknown): number {
  if (e instanceof FsError) return e.errno;
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'string' && code in constants.errno) return constants.errno[code as ErrnoName];
  return constants.errno.EIO;
}
