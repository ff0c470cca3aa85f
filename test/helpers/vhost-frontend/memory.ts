/**
 * Guest memory as QEMU presents it to a vhost-user back-end: memfd-backed regions, each with a
 * guest physical address (what descriptors carry), a size, a userspace address (QEMU's own
 * mapping, what SET_VRING_ADDR carries) and an offset into its fd where the region starts.
 *
 * The default layout is chosen to catch translation bugs: two regions, neither at GPA 0, the
 * second above 4 GiB and starting 16 MiB into its memfd (mmap_offset), userspace addresses
 * unrelated to the GPAs. Buffers never straddle a region (GPAs are contiguous only inside one).
 */
import { closeSync } from 'node:fs';
import { vn, type MappedRegion } from './native';
import type { MemRegionDesc } from './protocol';

export interface RegionSpec {
  guestPhysAddr: number;
  size: number;
  userspaceAddr: number;
  /** Where the region starts inside its memfd (page aligned). */
  mmapOffset: number;
}

export const DEFAULT_REGIONS: RegionSpec[] = [
  { guestPhysAddr: 0x4000_0000, size: 64 << 20, userspaceAddr: 0x7f12_3400_0000, mmapOffset: 0 },
  { guestPhysAddr: 0x1_2000_0000, size: 64 << 20, userspaceAddr: 0x7f56_7800_0000, mmapOffset: 16 << 20 },
];

export interface GuestRegion extends RegionSpec {
  fd: number;
  map: MappedRegion;
  /** The region's bytes (a view into the mapping, [mmapOffset, mmapOffset + size)). */
  buf: Buffer;
  /** Free ranges as region-relative [offset, length], sorted by offset. */
  free: [number, number][];
}

export class GuestMemory {
  readonly regions: GuestRegion[] = [];
  private readonly allocated = new Map<number, { region: GuestRegion; off: number; len: number }>();
  private nextRegion = 0;

  constructor(specs: RegionSpec[] = DEFAULT_REGIONS) {
    try {
      for (const [i, s] of specs.entries()) {
        const fd = vn.memfdCreate(`kfs-guest-ram-${i}`, s.mmapOffset + s.size);
        const map = vn.mmap(fd, 0, s.mmapOffset + s.size, true);
        if (map.chunks.length !== 1) {
          map.unmap();
          closeSync(fd);
          throw new Error('test guest regions must fit one mapping chunk (1 GiB)');
        }
        const buf = map.chunks[0].subarray(s.mmapOffset, s.mmapOffset + s.size);
        this.regions.push({ ...s, fd, map, buf, free: [[0, s.size]] });
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** The memory table QEMU would send. */
  table(): MemRegionDesc[] {
    return this.regions.map((r) => ({ guestPhysAddr: r.guestPhysAddr, memorySize: r.size, userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset }));
  }

  fds(): number[] {
    return this.regions.map((r) => r.fd);
  }

  regionOf(gpa: number, len = 1): GuestRegion {
    for (const r of this.regions) {
      if (gpa >= r.guestPhysAddr && gpa + len <= r.guestPhysAddr + r.size) return r;
    }
    throw new RangeError(`guest range 0x${gpa.toString(16)}+${len} is not inside one region`);
  }

  /** A view (no copy) of guest memory at gpa. */
  view(gpa: number, len: number): Buffer {
    const r = this.regionOf(gpa, Math.max(len, 1));
    const off = gpa - r.guestPhysAddr;
    return r.buf.subarray(off, off + len);
  }

  /** QEMU's virtual address for a guest physical address (what SET_VRING_ADDR carries). */
  userspaceAddr(gpa: number): number {
    const r = this.regionOf(gpa);
    return r.userspaceAddr + (gpa - r.guestPhysAddr);
  }

  /**
   * Allocate len bytes (first fit, `align`-aligned); round-robin over regions unless one is named,
   * so that consecutive buffers of one chain land in different regions.
   */
  alloc(len: number, align = 64, region?: number): number {
    const n = this.regions.length;
    const order = region !== undefined ? [region] : Array.from({ length: n }, (_, i) => (this.nextRegion + i) % n);
    if (region === undefined) this.nextRegion = (this.nextRegion + 1) % n;
    const size = Math.max(len, 1);
    for (const ri of order) {
      const r = this.regions[ri];
      for (let i = 0; i < r.free.length; i++) {
        const [off, flen] = r.free[i];
        const start = Math.ceil((r.guestPhysAddr + off) / align) * align - r.guestPhysAddr;
        const pad = start - off;
        if (flen < pad + size) continue;
        const rest: [number, number][] = [];
        if (pad > 0) rest.push([off, pad]);
        if (flen > pad + size) rest.push([start + size, flen - pad - size]);
        r.free.splice(i, 1, ...rest);
        const gpa = r.guestPhysAddr + start;
        this.allocated.set(gpa, { region: r, off: start, len: size });
        return gpa;
      }
    }
    throw new Error(`guest memory exhausted allocating ${len} bytes`);
  }

  free(gpa: number): void {
    const a = this.allocated.get(gpa);
    if (!a) throw new Error(`free of unallocated guest address 0x${gpa.toString(16)}`);
    this.allocated.delete(gpa);
    const free = a.region.free;
    let i = 0;
    while (i < free.length && free[i][0] < a.off) i++;
    free.splice(i, 0, [a.off, a.len]);
    // Merge with the neighbours.
    if (i + 1 < free.length && free[i][0] + free[i][1] === free[i + 1][0]) {
      free[i][1] += free[i + 1][1];
      free.splice(i + 1, 1);
    }
    if (i > 0 && free[i - 1][0] + free[i - 1][1] === free[i][0]) {
      free[i - 1][1] += free[i][1];
      free.splice(i, 1);
    }
  }

  /** Copy bytes in (a buffer may be spread over several guest ranges). */
  write(gpa: number, data: Uint8Array): void {
    this.view(gpa, data.length).set(data);
  }

  close(): void {
    for (const r of this.regions) {
      try {
        r.map.unmap();
      } finally {
        closeSync(r.fd);
      }
    }
    this.regions.length = 0;
  }
}
