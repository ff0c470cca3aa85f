/**
 * vhost-user wire format, front-end side (QEMU docs/interop/vhost-user.rst).
 *
 * Every message: a 12-byte header {u32 request, u32 flags, u32 size} then `size` payload bytes;
 * file descriptors travel as SCM_RIGHTS ancillary data of the same sendmsg. flags bits 0-1 are
 * the version (1), bit 2 marks a reply, bit 3 asks for a REPLY_ACK (need_reply).
 *
 * Written from the spec apart from src/vhost/ on purpose: the front-end is the back-end's
 * oracle, and a mistake shared by both would go unseen.
 */
import { ByteCursor } from '../../../src/util/cursor';

export const VHOST_USER_HDR_SIZE = 12;
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_FLAG_REPLY = 1 << 2;
export const VHOST_USER_FLAG_NEED_REPLY = 1 << 3;
/** VHOST_MEMORY_BASELINE_NREGIONS: the most regions one SET_MEM_TABLE carries. */
export const VHOST_MEMORY_MAX_REGIONS = 8;
/** VHOST_USER_VRING_NOFD_MASK in the u64 of SET_VRING_KICK/CALL/ERR: no fd follows. */
export const VRING_NOFD = 1 << 8;

/** Front-end → back-end request codes. */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  /** VIRTIO shared-memory regions series (protocol feature SHMEM): the regions the device wants. */
  GET_SHMEM_CONFIG: 44,
} as const;

/** Back-end → front-end requests on the backend channel (SET_BACKEND_REQ_FD). */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  /** Map [fd_offset, +len) of the passed fd at shm_offset of shared-memory region shmid. */
  SHMEM_MAP: 9,
  SHMEM_UNMAP: 10,
} as const;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  /** VIRTIO shared-memory regions (GET_SHMEM_CONFIG, BACKEND_SHMEM_MAP/UNMAP); not in a QEMU release yet. */
  SHMEM: 20,
} as const;

/** Virtio feature bits relevant to virtio-fs over vhost-user. */
export const VirtioFeature = {
  NOTIFY_ON_EMPTY: 24,
  LOG_ALL: 26,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** VHOST_USER_F_PROTOCOL_FEATURES. */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

export const bit = (n: number): bigint => 1n << BigInt(n);

/** Virtio device status bits (SET/GET_STATUS). */
export const VirtioStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

export interface VhostUserMessage {
  request: number;
  flags: number;
  size: number;
  payload: Buffer;
  fds: number[];
}

export function encodeHeader(request: number, flags: number, size: number): Buffer {
  const b = Buffer.alloc(VHOST_USER_HDR_SIZE);
  new ByteCursor(b).putU32(request).putU32(flags).putU32(size);
  return b;
}

export function encodeMessage(request: number, payload: Buffer, needReply: boolean): Buffer {
  const flags = VHOST_USER_VERSION | (needReply ? VHOST_USER_FLAG_NEED_REPLY : 0);
  return Buffer.concat([encodeHeader(request, flags, payload.length), payload]);
}

export function u64Payload(v: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  new ByteCursor(b).putU64(v);
  return b;
}

export function readU64Payload(m: VhostUserMessage): bigint {
  return new ByteCursor(m.payload).u64n();
}

/** struct vhost_vring_state {u32 index; u32 num} (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE reply). */
export function vringState(index: number, num: number): Buffer {
  const b = Buffer.alloc(8);
  new ByteCursor(b).putU32(index).putU32(num);
  return b;
}

export function readVringState(m: VhostUserMessage): { index: number; num: number } {
  const c = new ByteCursor(m.payload);
  return { index: c.u32(), num: c.u32() };
}

/**
 * struct vhost_vring_addr {u32 index; u32 flags; u64 desc, used, avail, log}: ring addresses in
 * the front-end's (QEMU's) virtual address space, not guest physical.
 */
export interface VringAddr {
  index: number;
  flags: number;
  desc: number;
  used: number;
  avail: number;
  log: number;
}
export function vringAddr(a: VringAddr): Buffer {
  const b = Buffer.alloc(40);
  new ByteCursor(b).putU32(a.index).putU32(a.flags).putU64(a.desc).putU64(a.used).putU64(a.avail).putU64(a.log);
  return b;
}

/** One region of a memory table: VhostUserMemoryRegion. */
export interface MemRegionDesc {
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
  mmapOffset: number;
}
function putRegion(c: ByteCursor, r: MemRegionDesc): void {
  c.putU64(r.guestPhysAddr).putU64(r.memorySize).putU64(r.userspaceAddr).putU64(r.mmapOffset);
}

/** VhostUserMemory {u32 nregions; u32 padding; regions[]}; `nregions` may lie for fuzzing. */
export function memTable(regions: MemRegionDesc[], nregions = regions.length): Buffer {
  const b = Buffer.alloc(8 + 32 * regions.length);
  const c = new ByteCursor(b).putU32(nregions).putU32(0);
  for (const r of regions) putRegion(c, r);
  return b;
}

/** VhostUserMemRegMsg {u64 padding; region} (ADD_MEM_REG / REM_MEM_REG). */
export function memRegMsg(r: MemRegionDesc): Buffer {
  const b = Buffer.alloc(40);
  const c = new ByteCursor(b).putU64(0);
  putRegion(c, r);
  return b;
}

/** Parse as many whole messages as `buf` holds; returns them and the bytes consumed. */
export function parseMessages(buf: Buffer): { messages: Omit<VhostUserMessage, 'fds'>[]; consumed: number } {
  const messages: Omit<VhostUserMessage, 'fds'>[] = [];
  let off = 0;
  while (buf.length - off >= VHOST_USER_HDR_SIZE) {
    const c = new ByteCursor(buf, off);
    const request = c.u32();
    const flags = c.u32();
    const size = c.u32();
    if (buf.length - off - VHOST_USER_HDR_SIZE < size) break;
    messages.push({ request, flags, size, payload: Buffer.from(buf.subarray(off + VHOST_USER_HDR_SIZE, off + VHOST_USER_HDR_SIZE + size)) });
    off += VHOST_USER_HDR_SIZE + size;
  }
  return { messages, consumed: off };
}

/** VhostUserShMemConfig: {u32 nregions; u32 padding; u64 memory_sizes[VIRTIO_MAX_SHMEM_REGIONS = 256]}. */
export const MAX_SHMEM_REGIONS = 256;
export function readShmemConfig(m: VhostUserMessage): number[] {
  const c = new ByteCursor(m.payload);
  const nregions = c.u32();
  c.skip(4);
  if (nregions > MAX_SHMEM_REGIONS) throw new Error(`GET_SHMEM_CONFIG answered ${nregions} regions (at most ${MAX_SHMEM_REGIONS})`);
  return Array.from({ length: nregions }, () => c.u64());
}

/** VhostUserMMap {u8 shmid; u8 padding[7]; u64 fd_offset; u64 shm_offset; u64 len; u64 flags} (SHMEM_MAP/UNMAP). */
export interface ShmemMapMsg {
  shmid: number;
  fdOffset: bigint;
  shmOffset: bigint;
  len: bigint;
  flags: bigint;
}
export const SHMEM_MAP_SIZE = 40;
/** VhostUserMMap.flags bit 0: map read-write (VHOST_USER_FLAG_MAP_RW). */
export const SHMEM_MAP_FLAG_RW = 1n;

export function readShmemMap(payload: Buffer): ShmemMapMsg {
  const c = new ByteCursor(payload);
  const shmid = c.u8();
  c.skip(7);
  return { shmid, fdOffset: c.u64n(), shmOffset: c.u64n(), len: c.u64n(), flags: c.u64n() };
}
