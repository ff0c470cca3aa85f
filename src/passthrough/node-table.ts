/**
 * The node table of PassthroughFs, as in virtiofsd: one entry per host inode the client holds,
 * keyed by (st_dev, st_ino), with an O_PATH descriptor and the FUSE lookup count. FORGET and
 * BATCH_FORGET lower the count; at zero the entry goes and its descriptor is closed on a
 * libuv worker (closeInBackground).
 *
 * Node ids: the root is 1 (FUSE_ROOT_ID). Other inodes on the shared directory's own device
 * use their host inode number (below 2^52), so `stat` through the mount shows the host's
 * numbers and hard links share one; the held O_PATH descriptor pins the inode, so the host
 * cannot reuse its number while the id is live. Inodes on other devices (mounts inside the
 * share), host inode 1 and numbers >= 2^52 get ids counted up from 2^52 (still exact in a
 * double, which the FUSE decoder uses for node ids).
 */
import fs from 'node:fs';
import { native } from '../native';

export const ROOT_ID = 1;
const SYNTHETIC_BASE = 2 ** 52;
const SYNTHETIC_BASE_N = BigInt(SYNTHETIC_BASE);

export interface HostNode {
  readonly id: number;
  /** O_PATH | O_NOFOLLOW descriptor of the inode (of the symlink itself for symlinks). */
  readonly fd: number;
  /** `devHi:devLo:inoHi:inoLo`, exact for 64-bit values. */
  readonly key: string;
  /** Its byLocalIno key (the inode number on the share's own device), or -1. */
  readonly local: number;
  /** S_IFMT bits: an inode's type never changes. */
  readonly type: number;
  /** FUSE lookup count (not kept for the root, which is never forgotten). */
  refs: number;
  /** Directory position cookies handed to the client (directories only, made on first use). */
  cookies?: CookieMap;
}

/**
 * Directory offsets for the client. Host d_off values are opaque 64-bit cookies (ext4 htree:
 * 63-bit hashes) but FUSE offsets travel through JavaScript numbers here: small cookies pass
 * unchanged, larger ones get a stand-in from 2^52 up. The map lives with the directory's node,
 * not with one open handle, because the kernel's readdir cache (FOPEN_CACHE_DIR) may resume an
 * uncached read at an offset that an earlier handle returned.
 */
export class CookieMap {
  private toOffset = new Map<bigint, number>();
  private cookies: bigint[] = [];

  offsetOf(cookie: bigint): number {
    if (cookie < SYNTHETIC_BASE_N) return Number(cookie);
    let off = this.toOffset.get(cookie);
    if (off === undefined) {
      off = SYNTHETIC_BASE + this.cookies.length;
      this.cookies.push(cookie);
      this.toOffset.set(cookie, off);
    }
    return off;
  }

  /** The host cookie for a client offset, or undefined for an offset never handed out. */
  cookieOf(offset: number): bigint | undefined {
    if (offset < SYNTHETIC_BASE) return BigInt(offset);
    return this.cookies[offset - SYNTHETIC_BASE];
  }
}

/** Host inode numbers below this (inoHi < 2^20) on the share's own device are keyed by number. */
const LOCAL_INO_HI_LIMIT = 2 ** 20;

export class NodeTable {
  private byId = new Map<number, HostNode>();
  private byKey = new Map<string, HostNode>();
  /**
   * The same nodes as byKey for inodes of the share's own device (nearly all), by inode number:
   * a LOOKUP of a known inode finds it without building and hashing the key string.
   */
  private byLocalIno = new Map<number, HostNode>();
  private nextSynthetic = SYNTHETIC_BASE;
  /**
   * Descriptors of forgotten nodes, closed together on a libuv worker once the current batch of
   * FORGETs is done (a microtask). The last close of an unlinked inode is where the host
   * filesystem frees it (13-80 µs each here), and a guest's rm sends those FORGETs between its
   * UNLINKs: closed on the event loop they held up the next request, as virtiofsd's separate
   * hiprio thread does not.
   */
  private closing: number[] = [];
  private closeScheduled = false;
  /**
   * The close job on the worker. One at a time: freeing large files can take a worker for a
   * while, and the pool's other threads serve READs and fsyncs; what is forgotten meanwhile
   * waits in `closing` for the next job.
   */
  private closer: Promise<void> | null = null;
  private readonly rootDevHi: number;
  private readonly rootDevLo: number;
  readonly root: HostNode;

  constructor(rootFd: number, rootKey: string, private readonly rootDev: string) {
    [this.rootDevHi, this.rootDevLo] = rootDev.split(':').map(Number);
    const [, , inoHi, inoLo] = rootKey.split(':').map(Number);
    const local = this.localIno(this.rootDevHi, this.rootDevLo, inoHi, inoLo);
    this.root = { id: ROOT_ID, fd: rootFd, key: rootKey, local, type: 0o040000, refs: 1 };
    this.byId.set(ROOT_ID, this.root);
    this.byKey.set(rootKey, this.root);
    if (local >= 0) this.byLocalIno.set(local, this.root);
  }

  /** The inode number as a byLocalIno key, or -1 for an inode keyed by string only. */
  private localIno(devHi: number, devLo: number, inoHi: number, inoLo: number): number {
    return devHi === this.rootDevHi && devLo === this.rootDevLo && inoHi < LOCAL_INO_HI_LIMIT ? inoHi * 2 ** 32 + inoLo : -1;
  }

  get size(): number {
    return this.byId.size;
  }

  get(id: number): HostNode | undefined {
    return this.byId.get(id);
  }

  /** The node id an inode has or would get (readdir's d_ino for entries not looked up). */
  idFor(devHi: number, devLo: number, inoHi: number, inoLo: number): number {
    // The share's own inodes (nearly every entry) by number, without building a key string.
    const local = this.localIno(devHi, devLo, inoHi, inoLo);
    if (local >= 0) return this.byLocalIno.get(local)?.id ?? (local === 1 ? 0 : local);
    return this.byKey.get(`${devHi}:${devLo}:${inoHi}:${inoLo}`)?.id ?? 0;
  }

  /**
   * Take one lookup reference to the inode `fd` names. An inode already in the table keeps its
   * descriptor and `fd` is closed; otherwise `fd` becomes the node's.
   */
  adopt(fd: number, devHi: number, devLo: number, inoHi: number, inoLo: number, type: number): HostNode {
    const local = this.localIno(devHi, devLo, inoHi, inoLo);
    const key = local >= 0 ? null : `${devHi}:${devLo}:${inoHi}:${inoLo}`;
    const known = key === null ? this.byLocalIno.get(local) : this.byKey.get(key);
    if (known) {
      fs.closeSync(fd);
      if (known !== this.root) known.refs++;
      return known;
    }
    let id = this.idFor(devHi, devLo, inoHi, inoLo);
    if (id === 0 || this.byId.has(id)) id = this.nextSynthetic++;
    const node: HostNode = { id, fd, key: key ?? `${devHi}:${devLo}:${inoHi}:${inoLo}`, local, type, refs: 1 };
    this.byId.set(id, node);
    this.byKey.set(node.key, node);
    if (local >= 0) this.byLocalIno.set(local, node);
    return node;
  }

  /** The node of an inode already in the table, if any. */
  find(devHi: number, devLo: number, inoHi: number, inoLo: number): HostNode | undefined {
    const local = this.localIno(devHi, devLo, inoHi, inoLo);
    return local >= 0 ? this.byLocalIno.get(local) : this.byKey.get(`${devHi}:${devLo}:${inoHi}:${inoLo}`);
  }

  /** One more lookup reference to a node already held. */
  ref(node: HostNode): void {
    if (node !== this.root) node.refs++;
  }

  /** FORGET: drop n references; the node goes at zero. Unknown ids are ignored (FORGET has no reply). */
  forget(id: number, n: number): void {
    const node = this.byId.get(id);
    if (!node || node === this.root) return;
    node.refs -= n;
    if (node.refs > 0) return;
    this.drop(node);
    this.closing.push(node.fd);
    if (!this.closeScheduled && !this.closer) {
      this.closeScheduled = true;
      queueMicrotask(() => {
        this.closeScheduled = false;
        this.closeForgotten();
      });
    }
  }

  private drop(node: HostNode): void {
    this.byId.delete(node.id);
    this.byKey.delete(node.key);
    if (node.local >= 0) this.byLocalIno.delete(node.local);
  }

  /** Hand what `closing` holds to the worker, unless a job is running (its end comes back here). */
  private closeForgotten(): void {
    if (this.closer || this.closing.length === 0) return;
    const fds = Int32Array.from(this.closing);
    this.closing = [];
    let job: Promise<void>;
    try {
      job = Promise.resolve(native.passthrough.closeInBackground(fds));
    } catch {
      // Not queued (this runs as a microtask, where a throw would end the process): close here.
      for (const fd of fds) closeQuietly(fd);
      return;
    }
    this.closer = job.catch(() => undefined).then(() => {
      this.closer = null;
      this.closeForgotten();
    });
  }

  /**
   * Resolves once every descriptor handed to the worker so far is closed (and those handed on
   * meanwhile). Not those still waiting in `closing` with no job running: after clear(), none.
   */
  async closed(): Promise<void> {
    while (this.closer) await this.closer;
  }

  /**
   * Drop every node but the root (DESTROY: the client holds nothing any more), closing their
   * descriptors and the forgotten ones not yet handed to the worker before it returns; closed()
   * then waits for the worker's.
   */
  clear(): void {
    for (const node of [...this.byId.values()]) {
      if (node === this.root) continue;
      this.drop(node);
      closeQuietly(node.fd);
    }
    // Forgotten ones not yet handed to the worker (the microtask then finds nothing).
    for (const fd of this.closing.splice(0)) closeQuietly(fd);
  }
}

/** close(2), where there is no error to report: the descriptor is gone either way. */
export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}
