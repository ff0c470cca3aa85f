/**
 * Reading a snapshot store at open (format: ./format.ts): the table named by the header, then
 * the map log followed from its start until a block does not continue the chain. The batches of
 * the last copy-on-write step are checked against their slots' crcs: that step may have been
 * cut before its fdatasync returned, and then its in-place writes never happened, so it is
 * dropped (the next step overwrites its batches).
 */
import { CorruptionError } from '../util/errors';
import { StoreHeader, TableEntry, Batch, decodeTable, decodeBatch, dataCrc } from './format';

export interface LoadedStore {
  table: TableEntry[];
  /** Records in log order: later ones win. */
  batches: Batch[];
  /** Store blocks of the batches. */
  logBlocks: number[];
  /** Where the next batch goes, and the nonce it must carry. */
  logNext: number;
  logNextNonce: number;
  nextBatchSeq: number;
  /** Batches of a cut copy-on-write step that were dropped. */
  dropped: number;
}

export function loadStore(h: StoreHeader, raw: (s: number) => Buffer, fileBlocks: number, where: string): LoadedStore {
  const tblocks: Buffer[] = [];
  for (let i = 0; i < h.tableBlocks; i++) tblocks.push(raw(h.tableStart + i));
  const table = h.snapCount ? decodeTable(tblocks, h.snapCount) : [];
  if (typeof table === 'string') throw new CorruptionError(`snapshot store of ${where}: ${table}`);
  const chain: { at: number; b: Batch }[] = [];
  let at = h.logStart;
  let nonce = h.logNonce;
  while (at >= 2 && at < fileBlocks && chain.length <= fileBlocks) {
    const b = decodeBatch(raw(at), nonce);
    if (!b) break;
    chain.push({ at, b });
    at = b.next;
    nonce = b.nextNonce;
  }
  let dropped = 0;
  const last = chain[chain.length - 1];
  if (last && last.b.flushSeq !== 0) {
    let first = chain.length - 1;
    while (first > 0 && chain[first - 1].b.flushSeq === last.b.flushSeq) first--;
    const ok = chain.slice(first).every(({ b }) => b.records.every((r) => dataCrc(raw(r.slot)) === r.dataCrc));
    if (!ok) {
      dropped = chain.length - first;
      at = chain[first].at;
      nonce = chain[first].b.nonce;
      chain.length = first;
    }
  }
  let nextBatchSeq = 1;
  for (const { b } of chain) nextBatchSeq = Math.max(nextBatchSeq, b.seq + 1);
  return { table, batches: chain.map((c) => c.b), logBlocks: chain.map((c) => c.at), logNext: at, logNextNonce: nonce, nextBatchSeq, dropped };
}
