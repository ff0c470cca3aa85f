/**
 * vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message specification").
 *
 * Every message is a 12-byte header {u32 request, u32 flags, u32 size} and `size` bytes of
 * payload, little-endian; file descriptors ride along as SCM_RIGHTS on the same sendmsg.
 * flags: bits 0-1 the version (always 1), bit 2 "this is a reply", bit 3 "reply wanted"
 * (REPLY_ACK). The front-end (QEMU) sends requests on the main socket; the back-end (kfsd)
 * sends its own requests on the backend channel (SET_BACKEND_REQ_FD).
 */
import { Struct } from '../util/struct';

export const HEADER_SIZE = 12;
export const VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 1 << 2;
export const FLAG_NEED_REPLY = 1 << 3;
/** Largest payload kfsd accepts: the biggest message it handles is SET_MEM_TABLE (8 + 8 x 32). */
export const MAX_PAYLOAD = 4096;
/** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_TABLE_REGIONS = 8;
/** Slots offered with CONFIGURE_MEM_SLOTS (QEMU caps at 509). */
export const MAX_MEM_SLOTS = 32;

/** Front-end → back-end requests. */
export enum FrontendRequest {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
  GET_SHMEM_CONFIG = 44,
}

/** Back-end → front-end requests (backend channel). */
export enum BackendRequest {
  IOTLB_MSG = 1,
  CONFIG_CHANGE_MSG = 2,
  VRING_HOST_NOTIFIER_MSG = 3,
  /** Older virtio-fs QEMU branch (never merged): map/unmap up to 8 ranges of a file in the DAX window. */
  FS_MAP = 6,
  FS_UNMAP = 7,
  /** Upstream series: map/unmap one range of an fd into a shared-memory region. */
  SHMEM_MAP = 9,
  SHMEM_UNMAP = 10,
}

/** Virtio device feature bits (virtio 1.2 §6; linux/virtio_config.h, virtio_ring.h). */
export const VirtioFeature = {
  RING_INDIRECT_DESC: 1n << 28n,
  RING_EVENT_IDX: 1n << 29n,
  /** VHOST_USER_F_PROTOCOL_FEATURES: rings start disabled, SET_VRING_ENABLE turns them on. */
  PROTOCOL_FEATURES: 1n << 30n,
  VERSION_1: 1n << 32n,
} as const;

export const ProtocolFeature = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  REPLY_ACK: 1n << 3n,
  BACKEND_REQ: 1n << 5n,
  CONFIG: 1n << 9n,
  BACKEND_SEND_FD: 1n << 10n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
  STATUS: 1n << 16n,
  SHMEM: 1n << 20n,
} as const;

/** struct vhost_vring_state: SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE. */
export const VringState = new Struct('vhost_vring_state', { index: 'u32', num: 'u32' }, 8);

/** struct vhost_vring_addr: ring addresses are the front-end's own virtual addresses. */
export const VringAddr = new Struct('vhost_vring_addr', {
  index: 'u32',
  flags: 'u32',
  descUserAddr: 'u64',
  usedUserAddr: 'u64',
  availUserAddr: 'u64',
  logGuestAddr: 'u64',
}, 40);

/** VhostUserMemoryRegion. */
export const MemoryRegionDesc = new Struct('VhostUserMemoryRegion', {
  guestPhysAddr: 'u64',
  memorySize: 'u64',
  userspaceAddr: 'u64',
  mmapOffset: 'u64',
}, 32);

/** SET_MEM_TABLE payload head: {u32 nregions; u32 padding} then the regions. */
export const MemoryTableHead = new Struct('VhostUserMemory', { nregions: 'u32', padding: 'u32' }, 8);

/** SET_VRING_KICK/CALL/ERR u64: bits 0-7 queue index, bit 8 "no fd" (polling mode). */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

/** VhostUserShMemConfig (GET_SHMEM_CONFIG): {u32 nregions; u32 padding; u64 memory_sizes[256]}. */
export const MAX_SHMEM_REGIONS = 256;

/** VhostUserMMap for SHMEM_MAP/SHMEM_UNMAP. */
export const ShmemMap = new Struct('VhostUserMMap', {
  shmid: 'u8',
  padding: 7,
  fdOffset: 'u64',
  shmOffset: 'u64',
  len: 'u64',
  flags: 'u64',
}, 40);
export const SHMEM_MAP_FLAG_WRITABLE = 1;

export function requestName(code: number): string {
  return FrontendRequest[code] ?? `request ${code}`;
}
