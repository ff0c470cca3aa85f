/**
 * Guest memory as the front-end shares it: regions of guest-physical address space, each an
 * fd (memfd, hugetlbfs) mapped here. Descriptors carry guest-physical addresses; ring
 * addresses (SET_VRING_ADDR) are the front-end's own virtual addresses. Every address and
 * length from the guest is checked here, where the bytes are reached: nothing outside a
 * region is ever touched.
 *
 * A region can be larger than one Buffer, so a mapping is a list of 1 GiB chunk Buffers
 * (native MappedRegion) and a guest range becomes one or more Buffer views.
 */
import fs from 'node:fs';
import { native, MappedRegion } from '../native';
import { FsError } from '../util/errors';

export interface RegionDesc {
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
  mmapOffset: number;
}

interface Region extends RegionDesc {
  map: MappedRegion;
  /** map.chunks and map.chunkSize, read once: properties of the addon's object load slowly. */
  chunks: Buffer[];
  chunkSize: number;
  /** guestPhysAddr + memorySize. */
  gpaEnd: number;
}

/** Above this, JS numbers stop being exact; no region may reach past it. */
const ADDR_LIMIT = Number.MAX_SAFE_INTEGER;

/** Views kept by guest address (see slices); the cache starts over when it reaches this. */
const VIEW_CACHE_MAX = 4096;

export class GuestMemory {
  private regions: Region[] = [];
  /**
   * Single-view translations already made, by guest address: a guest reuses the same buffers
   * for its requests, and a Buffer view costs more to make than to look up. Dropped whenever
   * the memory table changes.
   */
  private views = new Map<number, Buffer>();

  get size(): number {
    return this.regions.length;
  }

  /** Map a region the front-end described. The fd is always consumed (closed). */
  add(desc: RegionDesc, fd: number): void {
    try {
      const { guestPhysAddr: gpa, memorySize: size, userspaceAddr: uva, mmapOffset: off } = desc;
      if (size <= 0) throw new FsError('EINVAL', 'memory region of size 0');
      if (gpa + size > ADDR_LIMIT || uva + size > ADDR_LIMIT || off + size > ADDR_LIMIT) {
        throw new FsError('EINVAL', `memory region at ${gpa.toString(16)} of ${size} bytes overflows the address space`);
      }
      for (const r of this.regions) {
        const gOverlap = gpa < r.guestPhysAddr + r.memorySize && r.guestPhysAddr < gpa + size;
        const uOverlap = uva < r.userspaceAddr + r.memorySize && r.userspaceAddr < uva + size;
        if (gOverlap || uOverlap) throw new FsError('EINVAL', `memory region at ${gpa.toString(16)} overlaps another`);
      }
      // Map from file offset 0 and skip mmapOffset ourselves: the offset need not be page aligned.
      const map = native.mmap(fd, 0, off + size, true);
      this.views.clear();
      this.regions.push({
        guestPhysAddr: gpa, memorySize: size, userspaceAddr: uva, mmapOffset: off, map,
        chunks: map.chunks, chunkSize: map.chunkSize, gpaEnd: gpa + size,
      });
      this.regions.sort((a, b) => a.guestPhysAddr - b.guestPhysAddr);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Remove the region matching desc (REM_MEM_REG): same guest address and size. */
  remove(desc: RegionDesc): boolean {
    const i = this.regions.findIndex((r) => r.guestPhysAddr === desc.guestPhysAddr && r.memorySize === desc.memorySize);
    if (i < 0) return false;
    this.views.clear();
    this.regions[i].map.unmap();
    this.regions.splice(i, 1);
    return true;
  }

  /** Take over other's regions (a complete new SET_MEM_TABLE), dropping ours. */
  replaceWith(other: GuestMemory): void {
    this.clear();
    other.views.clear();
    this.regions = other.regions;
    other.regions = [];
  }

  clear(): void {
    this.views.clear();
    for (const r of this.regions) r.map.unmap();
    this.regions = [];
  }

  /**
   * Views of guest-physical [addr, addr+len), appended to `out`. A range may cross chunk
   * boundaries and adjacent regions; any byte outside every region is an error (EFAULT).
   */
  slices(addr: number, len: number, out: Buffer[]): void {
    const known = this.views.get(addr);
    if (known !== undefined && known.length === len) {
      out.push(known);
      return;
    }
    const first = out.length;
    const start = addr;
    while (len > 0) {
      const r = this.findGpa(addr);
      if (!r) throw new FsError('EFAULT', `guest address ${addr.toString(16)} (+${len}) is outside guest memory`);
      const inRegion = Math.min(len, r.gpaEnd - addr);
      this.pushViews(r, r.mmapOffset + (addr - r.guestPhysAddr), inRegion, out);
      addr += inRegion;
      len -= inRegion;
    }
    if (out.length === first + 1) {
      if (this.views.size >= VIEW_CACHE_MAX) this.views.clear();
      this.views.set(start, out[first]);
    }
  }

  /** A single contiguous view of the front-end's virtual range (rings); EFAULT if not mapped or split. */
  uvaView(uva: number, len: number): Buffer {
    for (const r of this.regions) {
      if (uva >= r.userspaceAddr && uva + len <= r.userspaceAddr + r.memorySize) {
        const out: Buffer[] = [];
        this.pushViews(r, r.mmapOffset + (uva - r.userspaceAddr), len, out);
        if (out.length !== 1) throw new FsError('EFAULT', `ring at ${uva.toString(16)} crosses a 1 GiB mapping boundary`);
        return out[0];
      }
    }
    throw new FsError('EFAULT', `ring address ${uva.toString(16)} (+${len}) is outside guest memory`);
  }

  private findGpa(addr: number): Region | undefined {
    const regions = this.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (addr >= r.guestPhysAddr && addr < r.gpaEnd) return r;
    }
    return undefined;
  }

  private pushViews(r: Region, off: number, len: number, out: Buffer[]): void {
    const cs = r.chunkSize;
    while (len > 0) {
      const chunk = r.chunks[Math.floor(off / cs)];
      const within = off % cs;
      const n = Math.min(len, chunk.length - within);
      out.push(chunk.subarray(within, within + n));
      off += n;
      len -= n;
    }
  }
}
