/**
 * Directory operations over a directory's blocks: lookup, add, remove and listing, for linear
 * directories and hashed (htree) ones alike. A linear directory that outgrows its first block
 * is converted to an htree, as ext4's make_indexed_dir does when dir_index is on.
 */
import { CorruptionError, FsError } from '../util/errors';
import { isDotName } from '../util/dot-names';
import { dxHash } from './dx-hash';
import { DxNode, looksLikeDxNode } from './htree';
import {
  Dirent, parseDirBlock, entriesEnd, insertDirent, removeDirent, packDirBlock, packedSize, direntSize,
  sealDirBlock, verifyDirBlock, hasDirTail, FT, findDirent,
} from './dirent';

/** What the directory code needs from the filesystem: the directory's blocks. */
export interface DirIO {
  ino: number;
  blockSize: number;
  /** Inode checksum seed, or null without metadata_csum. */
  csumSeed: number | null;
  blockCount(): number;
  read(lblk: number): Promise<Buffer>;
  /** Like read, running `verify` only when the block first comes from disk. */
  readVerified(lblk: number, verify: (buf: Buffer) => void): Promise<Buffer>;
  /**
   * The block without I/O, or null: when it is cached (and, if `verified`, readVerified has
   * checked it or kfs wrote it) and the directory's extent map needs no block read either.
   */
  peek(lblk: number, verified: boolean): Buffer | null;
  /** The block was modified in place; persist it (checksums are already set). */
  dirty(lblk: number, buf: Buffer): void;
  /** Add a zeroed block at the end of the directory. */
  append(): Promise<{ lblk: number; buf: Buffer }>;
  /** Is the directory indexed (EXT4_INDEX_FL)? */
  indexed: boolean;
  setIndexed(v: boolean): void;
  /** dir_index enabled on the volume. */
  dirIndex: boolean;
  /** Default hash version (s_def_hash_version) and whether the unsigned variants apply (+3). */
  defHashVersion: number;
  unsignedDelta: number;
  hashSeed: Buffer;
  /** large_dir: 3 index levels instead of 2. */
  largeDir: boolean;
}

/** A block a directory search needs next (Directory.searchSteps): an htree index node or a leaf. */
interface BlockNeed {
  lblk: number;
  node: boolean;
}

/** The index nodes from the root to a leaf, each with the entry chosen in it, and the leaf. */
interface DxPath {
  nodes: { lblk: number; node: DxNode; at: number }[];
  leaf: number;
}

/** Decoded htree nodes by the cache buffer they came from (dropped with the buffer). */
const decodedNodes = new WeakMap<Buffer, DxNode>();


/** Names a Directory keeps in memory (Directory.names); past this it keeps none. */
export const DIR_NAMES_MAX = 1 << 16;

export interface DirEntryInfo {
  name: Buffer;
  inode: number;
  fileType: number;
}

export interface FoundEntry extends DirEntryInfo {
  lblk: number;
}

export class Directory {
  /**
   * Bumped by every change to the entries (add, remove, replace, ".."): a listing taken at
   * `changes` = n still maps each name to the same inode while it stays n.
   */
  changes = 0;

  /**
   * Names this directory is known to hold → their inodes: what lookups found and what add and
   * replace put there. `namesComplete`: every name is in it (a directory made empty here, or
   * listed in full), so a name not in it is a miss without reading a block; that is what the
   * LOOKUP before every create asks. null past DIR_NAMES_MAX names; while a change is under way
   * it is taken away (change()), so a change that fails part-way leaves none.
   */
  private names: Map<string, number> | null = null;
  private namesComplete = false;

  constructor(private io: DirIO) {}

  /**
   * What memory says about `name` (not "." or ".."), without I/O: its inode, null when the
   * directory is known not to hold it, undefined when only a lookup can tell.
   */
  known(name: Buffer): number | null | undefined {
    const names = this.names;
    if (!names || isDotName(name)) return undefined;
    const ino = names.get(name.toString('latin1'));
    return ino ?? (this.namesComplete ? null : undefined);
  }

  /** A directory just made with only "." and "..": every name it holds is known (none). */
  madeEmpty(): void {
    this.names = new Map();
    this.namesComplete = true;
  }

  private noteName(name: Buffer, inode: number): void {
    if (!this.names) {
      this.names = new Map();
      this.namesComplete = false;
    }
    if (this.names.size >= DIR_NAMES_MAX) this.names = null;
    else this.names.set(name.toString('latin1'), inode);
  }

  /**
   * Run a change to the entries: the change count moves first; the names are taken away while
   * it runs and put back, updated by `update`, only once it succeeded.
   */
  private async change<T>(run: () => Promise<T>, update: (names: Map<string, number>) => void): Promise<T> {
    this.changes++;
    const names = this.names;
    this.names = null;
    const r = await run();
    if (names) update(names);
    this.names = names && names.size <= DIR_NAMES_MAX ? names : null;
    if (!this.names) this.namesComplete = false;
    return r;
  }

  private get csum(): boolean {
    return this.io.csumSeed !== null;
  }
  private get end(): number {
    return entriesEnd(this.io.blockSize, this.csum);
  }
  private where(lblk: number): string {
    return `directory inode ${this.io.ino} block ${lblk}`;
  }

  /**
   * The hash version names are hashed with: the htree root's, or s_def_hash_version for a
   * directory not indexed yet. Legacy, half-MD4 and TEA (0-2) are what the kernel's dx_probe
   * accepts here (SipHash needs casefold + encryption, which kfs refuses); anything else is
   * damage, reported as such rather than as dxHash's RangeError.
   */
  private hashVersion(root?: DxNode): number {
    const v = root?.info ? root.info.hashVersion : this.io.defHashVersion;
    if (v > 2) throw new CorruptionError(`${this.where(0)}: unknown htree hash version ${v}${root?.info ? '' : ' (superblock default)'}`);
    return v + this.io.unsignedDelta;
  }

  hash(name: Buffer, root?: DxNode): { major: number; minor: number } {
    return dxHash(name, this.hashVersion(root), this.io.hashSeed);
  }

  /** Search one leaf block (its bytes `buf`) for a live entry. */
  private findIn(buf: Buffer, lblk: number, name: Buffer): FoundEntry | null {
    const off = findDirent(buf, this.end, this.where(lblk), name);
    if (off < 0) return null;
    return { name, inode: buf.readUInt32LE(off), fileType: buf[off + 7], lblk };
  }

  /** A leaf block's bytes, checksum verified when first read from disk. */
  private leafBuf(lblk: number): Promise<Buffer> {
    if (!this.csum) return this.io.read(lblk);
    return this.io.readVerified(lblk, (b) => verifyDirBlock(b, this.io.csumSeed!, this.where(lblk)));
  }

  /** A leaf block, checksum verified. */
  private async leaf(lblk: number): Promise<{ buf: Buffer; entries: Dirent[] }> {
    const buf = await this.leafBuf(lblk);
    return { buf, entries: parseDirBlock(buf, this.end, this.where(lblk)) };
  }

  /**
   * An index node; its checksum is checked when the block first comes from disk. Decoded
   * nodes are kept per cached block buffer (every change to a node goes through writeNode or
   * DxNode.write here, which refresh it), so a lookup does not re-decode the root.
   */
  private async dxNode(lblk: number): Promise<DxNode> {
    const isRoot = lblk === 0;
    return this.decoded(lblk, await this.io.readVerified(lblk, (b) => DxNode.parse(b, isRoot, this.io.csumSeed, this.where(lblk))));
  }

  /** dxNode without I/O: null unless the block is cached and was checked. */
  private dxNodeCached(lblk: number): DxNode | null {
    const buf = this.io.peek(lblk, true);
    return buf && this.decoded(lblk, buf);
  }

  /** The node a checked block holds, decoded once per cached buffer. */
  private decoded(lblk: number, buf: Buffer): DxNode {
    const isRoot = lblk === 0;
    const known = decodedNodes.get(buf);
    if (known && known.isRoot === isRoot) return known;
    const node = DxNode.parse(buf, isRoot, this.io.csumSeed, this.where(lblk), false);
    decodedNodes.set(buf, node);
    return node;
  }

  private root(): Promise<DxNode> {
    return this.dxNode(0);
  }

  /** Path from the root to the leaf for `hash`: index nodes with the chosen entry. */
  private async dxPath(hash: number, root?: DxNode): Promise<DxPath> {
    root ??= await this.root();
    return this.drive(this.pathSteps(hash, root));
  }

  /** dxPath as steps (see searchSteps): yields each index node below the root it needs. */
  private *pathSteps(hash: number, root: DxNode): Generator<BlockNeed, DxPath, DxNode | Buffer> {
    const nodes = [{ lblk: 0, node: root, at: root.find(hash) }];
    let cur = nodes[0];
    for (let level = 0; level < root.info!.levels; level++) {
      const lblk = cur.node.entries[cur.at].block;
      if (lblk === 0 || lblk >= this.io.blockCount()) throw new CorruptionError(`${this.where(0)}: htree points at block ${lblk} outside the directory`);
      const node = (yield { lblk, node: true }) as DxNode;
      cur = { lblk, node, at: node.find(hash) };
      nodes.push(cur);
    }
    const leaf = cur.node.entries[cur.at].block;
    if (leaf === 0 || leaf >= this.io.blockCount()) throw new CorruptionError(`${this.where(0)}: htree points at block ${leaf} outside the directory`);
    return { nodes, leaf };
  }

  async lookup(name: Buffer): Promise<FoundEntry | null> {
    if (isDotName(name)) {
      // "." and ".." are the first two entries of block 0, in linear and htree directories.
      const buf = await this.io.read(0);
      const off = name.length === 1 ? 0 : 12;
      return { name, inode: buf.readUInt32LE(off), fileType: FT.DIR, lblk: 0 };
    }
    if (this.known(name) === null) return null;
    const found = await this.search(name);
    if (found) this.noteName(name, found.inode);
    return found;
  }

  /**
   * The inode `name` names, or null: from the names in memory when they tell (no block
   * searched; a READDIRPLUS of a directory that changed since its listing asks this for every
   * entry), else as lookup().
   */
  async inodeOf(name: Buffer): Promise<number | null> {
    const known = this.known(name);
    if (known !== undefined) return known;
    return (await this.lookup(name))?.inode ?? null;
  }

  private search(name: Buffer): Promise<FoundEntry | null> {
    return this.drive(this.searchSteps(name));
  }

  /**
   * Run steps (searchSteps, pathSteps), reading each block they need. A block already cached
   * (and verified) is handed over without an await: the reads' promise chains were a good part
   * of a cached lookup's cost and allocation.
   */
  private async drive<T>(steps: Generator<BlockNeed, T, DxNode | Buffer>): Promise<T> {
    for (let r = steps.next(); ; ) {
      if (r.done) return r.value;
      const need = r.value;
      const cached = need.node ? this.dxNodeCached(need.lblk) : this.io.peek(need.lblk, this.csum);
      r = steps.next(cached ?? (need.node ? await this.dxNode(need.lblk) : await this.leafBuf(need.lblk)));
    }
  }

  /**
   * lookup without I/O (the FUSE fast path's LOOKUP): the name's inode from memory (known) or
   * from the cached blocks, null when the directory does not hold it, undefined when a block
   * would have to be read (or is damaged: lookup then reports it). Not for "." and "..".
   */
  lookupCached(name: Buffer): number | null | undefined {
    if (isDotName(name)) return undefined;
    const known = this.known(name);
    if (known !== undefined) return known;
    try {
      const steps = this.searchSteps(name);
      for (let r = steps.next(); ; ) {
        if (r.done) {
          if (!r.value) return null;
          this.noteName(name, r.value.inode);
          return r.value.inode;
        }
        const need = r.value;
        const block = need.node ? this.dxNodeCached(need.lblk) : this.io.peek(need.lblk, this.csum);
        if (!block) return undefined;
        r = steps.next(block);
      }
    } catch {
      return undefined;
    }
  }

  /**
   * The search for `name`, written once for both ways of getting blocks (search awaits them,
   * lookupCached takes them from the cache): it yields each block it needs, an index node or a
   * leaf, and is handed back the decoded node or the leaf's bytes.
   */
  private *searchSteps(name: Buffer): Generator<BlockNeed, FoundEntry | null, DxNode | Buffer> {
    if (this.io.indexed && this.io.dirIndex) {
      const root = (yield { lblk: 0, node: true }) as DxNode;
      const { major } = this.hash(name, root);
      const path = yield* this.pathSteps(major, root);
      // Follow continuation leaves: equal hashes may spill into the next leaf (hash | 1).
      const { node, at } = path.nodes[path.nodes.length - 1];
      for (let idx = at; ; idx++) {
        const lblk = node.entries[idx].block;
        const found = this.findIn((yield { lblk, node: false }) as Buffer, lblk, name);
        if (found) return found;
        const next = node.entries[idx + 1];
        if (!next || ((next.hash & ~1) >>> 0) !== major || !(next.hash & 1)) return null;
      }
    }
    const n = this.io.blockCount();
    for (let lblk = 0; lblk < n; lblk++) {
      const found = this.findIn((yield { lblk, node: false }) as Buffer, lblk, name);
      if (found) return found;
    }
    return null;
  }

  /** Every live entry including "." and ".." (and from then on every name is known, up to DIR_NAMES_MAX). */
  async list(): Promise<DirEntryInfo[]> {
    const out = await this.listBlocks();
    if (out.length - 2 <= DIR_NAMES_MAX) {
      const names = new Map<string, number>();
      for (const e of out) if (!isDotName(e.name)) names.set(e.name.toString('latin1'), e.inode);
      this.names = names;
      this.namesComplete = true;
    }
    return out;
  }

  private async listBlocks(): Promise<DirEntryInfo[]> {
    const out: DirEntryInfo[] = [];
    const n = this.io.blockCount();
    const indexed = this.io.indexed && this.io.dirIndex;
    for (let lblk = 0; lblk < n; lblk++) {
      const buf = await this.io.read(lblk);
      let entries: Dirent[];
      if (indexed && (lblk === 0 || looksLikeDxNode(buf))) {
        if (lblk !== 0) continue;
        // dx root: "." at 0 and ".." at 12.
        out.push({ name: Buffer.from('.'), inode: buf.readUInt32LE(0), fileType: FT.DIR });
        out.push({ name: Buffer.from('..'), inode: buf.readUInt32LE(12), fileType: FT.DIR });
        continue;
      }
      if (this.csum) verifyDirBlock(buf, this.io.csumSeed!, this.where(lblk));
      entries = parseDirBlock(buf, this.end, this.where(lblk));
      for (const d of entries) if (d.inode) out.push({ name: Buffer.from(d.name), inode: d.inode, fileType: d.fileType });
    }
    return out;
  }

  /** Add an entry (the caller checked that the name is absent). */
  add(name: Buffer, inode: number, fileType: number): Promise<void> {
    return this.change(() => this.addEntry(name, inode, fileType), (names) => names.set(name.toString('latin1'), inode));
  }

  private async addEntry(name: Buffer, inode: number, fileType: number): Promise<void> {
    if (this.io.indexed && this.io.dirIndex) return this.dxAdd(name, inode, fileType);
    const n = this.io.blockCount();
    for (let lblk = 0; lblk < n; lblk++) {
      const buf = await this.leafBuf(lblk);
      if (insertDirent(buf, this.end, this.where(lblk), inode, name, fileType)) {
        sealDirBlock(buf, this.io.csumSeed);
        this.io.dirty(lblk, buf);
        return;
      }
    }
    if (n === 1 && this.io.dirIndex) {
      await this.makeIndexed();
      return this.dxAdd(name, inode, fileType);
    }
    const { lblk, buf } = await this.io.append();
    packDirBlock(buf, this.end, [{ inode, name, fileType }]);
    sealDirBlock(buf, this.io.csumSeed);
    this.io.dirty(lblk, buf);
  }

  remove(name: Buffer): Promise<FoundEntry | null> {
    return this.change(() => this.removeEntry(name), (names) => names.delete(name.toString('latin1')));
  }

  private async removeEntry(name: Buffer): Promise<FoundEntry | null> {
    const found = await this.search(name);
    if (!found) return null;
    const lblk = found.lblk;
    const buf = await this.leafBuf(lblk);
    const d = removeDirent(buf, this.end, this.where(lblk), name);
    if (!d) return null;
    sealDirBlock(buf, this.io.csumSeed);
    this.io.dirty(lblk, buf);
    return { name: d.name, inode: d.inode, fileType: d.fileType, lblk };
  }

  /** Point an existing entry at another inode (rename over an existing name). */
  replace(name: Buffer, inode: number, fileType: number): Promise<number> {
    return this.change(() => this.replaceEntry(name, inode, fileType), (names) => names.set(name.toString('latin1'), inode));
  }

  private async replaceEntry(name: Buffer, inode: number, fileType: number): Promise<number> {
    const found = await this.search(name);
    if (!found) throw new FsError('ENOENT', `no entry ${name.toString()} to replace`);
    const { buf, entries } = await this.leaf(found.lblk);
    const d = entries.find((e) => e.inode && e.name.equals(name))!;
    buf.writeUInt32LE(inode, d.offset);
    buf[d.offset + 7] = fileType;
    sealDirBlock(buf, this.io.csumSeed);
    this.io.dirty(found.lblk, buf);
    return found.inode;
  }

  /** Change the ".." entry (rename of a directory to a new parent). */
  async setDotDot(parent: number): Promise<void> {
    this.changes++;
    const buf = await this.io.read(0);
    if (this.io.indexed && this.io.dirIndex) {
      const root = DxNode.parse(buf, true, this.io.csumSeed, this.where(0));
      root.write(buf, this.io.csumSeed, buf.readUInt32LE(0), parent);
      decodedNodes.set(buf, root);
    } else {
      if (this.csum) verifyDirBlock(buf, this.io.csumSeed!, this.where(0));
      const entries = parseDirBlock(buf, this.end, this.where(0));
      const dd = entries[1];
      if (!dd || !dd.name.equals(Buffer.from('..'))) throw new CorruptionError(`${this.where(0)}: no ".." entry`);
      buf.writeUInt32LE(parent, dd.offset);
      sealDirBlock(buf, this.io.csumSeed);
    }
    this.io.dirty(0, buf);
  }

  async isEmpty(): Promise<boolean> {
    for (const e of await this.list()) {
      const s = e.name.toString('latin1');
      if (s !== '.' && s !== '..') return false;
    }
    return true;
  }

  // ---- htree maintenance ----

  /** Turn a full one-block linear directory into an htree (make_indexed_dir). */
  private async makeIndexed(): Promise<void> {
    const { buf } = await this.leaf(0);
    const entries = parseDirBlock(buf, this.end, this.where(0));
    const dot = entries[0];
    const dotdot = entries[1];
    if (!dot || !dotdot || !dot.name.equals(Buffer.from('.')) || !dotdot.name.equals(Buffer.from('..'))) {
      throw new CorruptionError(`${this.where(0)}: first block lacks "." and ".."`);
    }
    const rest = entries.slice(2).filter((d) => d.inode).map((d) => ({ inode: d.inode, name: Buffer.from(d.name), fileType: d.fileType }));
    const hashVersion = this.io.defHashVersion;
    const rootInfo = { hashVersion, levels: 0 };
    const probe = new DxNode(true, [], 0, rootInfo);
    const sorted = rest.map((e) => ({ ...e, h: this.hash(e.name, probe) })).sort((a, b) => a.h.major - b.h.major || a.h.minor - b.h.minor);
    // Fill leaves to about three quarters so the next inserts do not split at once.
    const target = Math.floor((this.end * 3) / 4);
    const leaves: { hash: number; entries: typeof sorted }[] = [];
    let cur: typeof sorted = [];
    let size = 0;
    for (const e of sorted) {
      const s = direntSize(e.name.length);
      if (cur.length && size + s > target && e.h.major !== cur[cur.length - 1].h.major) {
        leaves.push({ hash: cur[0].h.major, entries: cur });
        cur = [];
        size = 0;
      }
      cur.push(e);
      size += s;
    }
    leaves.push({ hash: cur.length ? cur[0].h.major : 0, entries: cur });
    // Take every block first: if the disk fills up meanwhile, only empty blocks were added
    // and the directory is still a valid linear one.
    const blocks: { lblk: number; buf: Buffer }[] = [];
    for (let i = 0; i < leaves.length; i++) {
      const b = await this.io.append();
      packDirBlock(b.buf, this.end, []);
      sealDirBlock(b.buf, this.io.csumSeed);
      this.io.dirty(b.lblk, b.buf);
      blocks.push(b);
    }
    const index: { hash: number; block: number }[] = [];
    for (let i = 0; i < leaves.length; i++) {
      const { lblk, buf: lb } = blocks[i];
      packDirBlock(lb, this.end, leaves[i].entries);
      sealDirBlock(lb, this.io.csumSeed);
      this.io.dirty(lblk, lb);
      index.push({ hash: i === 0 ? 0 : leaves[i].hash, block: lblk });
    }
    const root = new DxNode(true, index, DxNode.limitFor(this.io.blockSize, true, this.csum), rootInfo);
    const rb = await this.io.read(0);
    root.write(rb, this.io.csumSeed, dot.inode, dotdot.inode);
    decodedNodes.set(rb, root);
    this.io.dirty(0, rb);
    this.io.setIndexed(true);
  }

  private async dxAdd(name: Buffer, inode: number, fileType: number): Promise<void> {
    const root = await this.root();
    const h = this.hash(name, root);
    for (let attempt = 0; attempt < 4; attempt++) {
      // A split (below) changes the index: after one, the root is read again.
      const path = await this.dxPath(h.major, attempt === 0 ? root : undefined);
      const last = path.nodes[path.nodes.length - 1];
      const leafLblk = path.leaf;
      // insertDirent validates what it walks: no entry objects for the ~200 names of a leaf.
      const buf = await this.leafBuf(leafLblk);
      if (insertDirent(buf, this.end, this.where(leafLblk), inode, name, fileType)) {
        sealDirBlock(buf, this.io.csumSeed);
        this.io.dirty(leafLblk, buf);
        return;
      }
      // Leaf full: make room in the index first if its node is full, then split the leaf.
      if (last.node.full) {
        await this.growIndex(path.nodes);
        continue;
      }
      await this.splitLeaf(last.lblk, last.node, last.at, leafLblk, buf, root);
    }
    throw new FsError('ENOSPC', `directory inode ${this.io.ino}: htree index is full`);
  }

  /** Split a full leaf in two by hash, and add the new leaf to its index node. */
  private async splitLeaf(nodeLblk: number, node: DxNode, at: number, leafLblk: number, leafBuf: Buffer, root: DxNode): Promise<void> {
    const live = parseDirBlock(leafBuf, this.end, this.where(leafLblk)).filter((d) => d.inode)
      .map((d) => ({ inode: d.inode, name: Buffer.from(d.name), fileType: d.fileType, h: this.hash(d.name, root) }))
      .sort((a, b) => a.h.major - b.h.major || a.h.minor - b.h.minor);
    // Split at half the bytes (do_split); equal hashes across the cut set the continuation bit.
    const total = packedSize(live);
    let acc = 0;
    let split = 0;
    while (split < live.length && acc + direntSize(live[split].name.length) <= total / 2) acc += direntSize(live[split++].name.length);
    split = Math.min(Math.max(split, 1), live.length - 1);
    const lower = live.slice(0, split);
    const upper = live.slice(split);
    const splitHash = upper[0].h.major;
    const contBit = lower[lower.length - 1].h.major === splitHash ? 1 : 0;

    packDirBlock(leafBuf, this.end, lower);
    sealDirBlock(leafBuf, this.io.csumSeed);
    this.io.dirty(leafLblk, leafBuf);
    const { lblk: newLblk, buf: nb } = await this.io.append();
    packDirBlock(nb, this.end, upper);
    sealDirBlock(nb, this.io.csumSeed);
    this.io.dirty(newLblk, nb);

    // >>> 0: hashes are unsigned 32-bit; a bare | would make the high ones negative.
    node.entries.splice(at + 1, 0, { hash: (splitHash | contBit) >>> 0, block: newLblk });
    await this.writeNode(nodeLblk, node);
  }

  private async writeNode(lblk: number, node: DxNode): Promise<void> {
    const buf = await this.io.read(lblk);
    if (node.isRoot) node.write(buf, this.io.csumSeed, buf.readUInt32LE(0), buf.readUInt32LE(12));
    else node.write(buf, this.io.csumSeed);
    decodedNodes.set(buf, node);
    this.io.dirty(lblk, buf);
  }

  /** The index node on the path is full: add a level (root full) or split the interior node. */
  private async growIndex(nodes: { lblk: number; node: DxNode; at: number }[]): Promise<void> {
    const root = nodes[0].node;
    const maxLevels = this.io.largeDir ? 3 : 2;
    const nodeLimit = DxNode.limitFor(this.io.blockSize, false, this.csum);
    // Find the deepest non-full ancestor.
    let k = nodes.length - 1;
    while (k >= 0 && nodes[k].node.full) k--;
    if (k < 0) {
      // Every node on the path is full, root included: push the root's entries down a level.
      if (root.info!.levels + 1 >= maxLevels) throw new FsError('ENOSPC', `directory inode ${this.io.ino} is too large for its htree (levels ${root.info!.levels})`);
      const { lblk, buf } = await this.io.append();
      const child = new DxNode(false, root.entries, nodeLimit, null);
      child.write(buf, this.io.csumSeed);
      decodedNodes.set(buf, child);
      this.io.dirty(lblk, buf);
      root.entries = [{ hash: 0, block: lblk }];
      root.info!.levels++;
      await this.writeNode(0, root);
      return;
    }
    // Split the full child of nodes[k] (nodes[k+1]) into two halves.
    const parent = nodes[k];
    const full = nodes[k + 1];
    const half = Math.floor(full.node.entries.length / 2);
    const moved = full.node.entries.splice(half);
    const { lblk, buf } = await this.io.append();
    const sibling = new DxNode(false, [{ hash: 0, block: moved[0].block }, ...moved.slice(1)], nodeLimit, null);
    sibling.write(buf, this.io.csumSeed);
    decodedNodes.set(buf, sibling);
    this.io.dirty(lblk, buf);
    await this.writeNode(full.lblk, full.node);
    parent.node.entries.splice(parent.at + 1, 0, { hash: moved[0].hash, block: lblk });
    await this.writeNode(parent.lblk, parent.node);
  }

}
