/** Human-readable output of kfsctl: status and the fragmentation report (e4defrag -c's layout). */
import type { DefragReport, DefragResult, Status } from '../src/control/protocol';

const pct = (a: number, b: number) => (b ? `${((a / b) * 100).toFixed(1)}%` : '-');

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u ? v.toFixed(1) : v} ${units[u]}`;
}

function us(v: number | null): string {
  if (v === null) return '-';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)} s`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} ms`;
  return `${v.toFixed(0)} µs`;
}

export function renderStatus(s: Status): string {
  const out: string[] = [];
  const row = (k: string, v: string) => out.push(`${k.padEnd(13)}${v}`);
  const who = s.kind === 'offline' ? 'not served (read offline)' : `served by ${s.kind === 'mount' ? 'kfs mount' : 'kfsd'}, pid ${s.pid}, up ${s.uptimeSec ?? 0} s`;
  row('image', `${s.image ?? '(host directory)'} (${who}${s.readOnly ? ', read-only' : ''})`);
  if (s.mountpoint) row(s.kind === 'kfsd' ? 'vhost socket' : 'mount point', s.mountpoint);
  if (s.fs) {
    const f = s.fs;
    const used = f.blocks - f.freeBlocks;
    row('label/uuid', `${f.label || '(none)'} ${f.uuid}; state ${f.state}`);
    row('features', f.features.join(' '));
    row('blocks', `${used} of ${f.blocks} used (${pct(used, f.blocks)}), ${f.freeBlocks} free, ${f.availableBlocks} available, ${f.reservedBlocks} reserved; ${f.blockSize}-byte blocks (${bytes(f.blocks * f.blockSize)})`);
    row('inodes', `${f.inodes - f.freeInodes} of ${f.inodes} used (${pct(f.inodes - f.freeInodes, f.inodes)}), ${f.freeInodes} free; ${f.groups} block groups`);
  }
  if (s.journal) {
    const j = s.journal;
    if (!j.present) row('journal', 'none');
    else {
      const parts = [j.blocks !== null ? `${j.blocks} blocks (${bytes(j.bytes ?? 0)}), inode ${j.inode}` : 'present, superblock unreadable'];
      if (j.sequence !== null) parts.push(`sequence ${j.sequence}`);
      parts.push(j.start ? `log in use from block ${j.start}` : 'log empty');
      parts.push(j.active ? 'in use by this server' : j.needsRecovery ? 'NEEDS RECOVERY (kfs fsck -y replays it)' : 'clean');
      row('journal', parts.join('; '));
      const a = j.activity;
      if (a) row('', `${a.commits} transactions logged since start, ${a.softCommits} log-only commits (shared log compacted ${a.sharedCompactions} times), ${a.loggedBlocks} blocks logged, ${a.checkpoints} checkpoints`);
    }
  }
  row('snapshots', s.snapshots.note);
  if (s.cache) {
    const c = s.cache;
    row('cache', `hit rate ${c.hitRate === null ? '-' : `${(c.hitRate * 100).toFixed(1)}%`} (${c.hits} hits, ${c.misses} misses); ${c.dirtyBlocks} dirty blocks`);
  }
  if (s.requests) {
    row('requests', `${s.requests.total} since start`);
    if (s.requests.opcodes.length) {
      out.push(`  ${'opcode'.padEnd(16)}${'count'.padStart(10)}${'errors'.padStart(8)}${'p50'.padStart(10)}${'p99'.padStart(10)}${'max'.padStart(10)}`);
      for (const o of s.requests.opcodes) {
        out.push(`  ${o.opcode.padEnd(16)}${String(o.count).padStart(10)}${String(o.errors).padStart(8)}${us(o.p50Us).padStart(10)}${us(o.p99Us).padStart(10)}${us(o.maxUs).padStart(10)}`);
      }
    }
  }
  if (s.transport) {
    const t = s.transport;
    const parts = [`${t.requests} requests read from /dev/fuse since start, ${t.readWhilePolling} of them while polling after a reply (busy_poll_us ${t.busyPollUs})`];
    const c = t.replyCommits;
    // A round commits what changed (possibly nothing) and releases the replies held for it.
    if (c) parts.push(`commit before reply: ${c.commits} rounds for ${c.released} replies, ${us(c.avgUs)} each on average`);
    row('transport', parts.join('; '));
  }
  if (s.vhost) {
    const v = s.vhost;
    row('vhost', `${v.requests} requests from the front-end on this connection, ${v.badChains} bad chains; polling (--poll-us ${v.pollUs}): ${v.idleSerial} idle moments after at most two requests at once (watched while the window is open), ${v.idleBusy} after more (not watched), ${v.watchesFound} watches found the next request`);
  }
  if (s.clients) {
    const c = s.clients;
    const parts: string[] = [];
    if (s.kind === 'mount') parts.push(`host mount at ${c.mountpoint}`);
    if (c.frontEndConnected !== null) parts.push(c.frontEndConnected ? 'vhost-user front-end connected' : 'no vhost-user front-end connected');
    parts.push(`${c.controlConnections} control connection(s)`);
    row('clients', parts.join('; '));
  }
  return out.join('\n') + '\n';
}

/** e4defrag -c's report; paths shown under `prefix` (the mount point) when there is one. */
export function renderDefrag(r: DefragReport, prefix: string | null): string {
  const show = (p: string | null) => (p === null ? '?' : prefix ? (p === '/' ? prefix : `${prefix.replace(/\/$/, '')}${p}`) : p);
  const out: string[] = [];
  const where = show(r.path);
  if (r.files === 0) {
    out.push(` In ${where}, no file with data blocks was found.`);
    return out.join('\n') + '\n';
  }
  out.push(`${'<Fragmented files>'.padEnd(40)}${'now'.padStart(10)}/${'best'.padEnd(10)}${'size/ext'.padStart(9)}`);
  if (!r.worst.length) out.push(' (none)');
  r.worst.forEach((f, i) => {
    const name = `${i + 1}. ${show(f.path)}`;
    const nums = `${String(f.extents).padStart(10)}/${String(f.ideal).padEnd(10)}${String(f.kibPerExtent).padStart(6)} KB`;
    out.push(name.length > 40 ? `${name}\n${' '.repeat(40)}${nums}` : `${name.padEnd(40)}${nums}`);
  });
  out.push('');
  out.push(` ${'Total/best extents'.padEnd(44)}${r.extents}/${r.idealExtents}`);
  out.push(` ${'Average size per extent'.padEnd(44)}${r.kibPerExtent} KB`);
  out.push(` ${'Fragmentation score'.padEnd(44)}${Math.round(r.score)}`);
  out.push(` ${'Files (fragmented/all)'.padEnd(44)}${r.fragmentedFiles}/${r.files}`);
  out.push(' [0-30 no problem: 31-55 a little bit fragmented: 56- needs defrag]');
  out.push(` ${where} ${r.verdict === 'needs defragmentation' ? 'needs defragmentation' : r.verdict === 'no problem' ? 'does not need defragmentation' : 'is a little fragmented'}.`);
  for (const e of r.errors) out.push(` could not read ${show(e.path)}: ${e.error}`);
  return out.join('\n') + '\n';
}

/** What `kfsctl defrag` moved: per file extents before → after against the ideal, then totals. */
export function renderDefragResult(r: DefragResult, prefix: string | null): string {
  const show = (p: string | null) => (p === null ? '?' : prefix ? (p === '/' ? prefix : `${prefix.replace(/\/$/, '')}${p}`) : p);
  const out: string[] = [];
  const where = show(r.path);
  if (r.files === 0) return ` In ${where}, no file with data blocks was found.\n`;
  if (r.worst.length) {
    out.push(`${'<Defragmented files>'.padEnd(40)}${'extents before -> after'.padStart(24)}${'best'.padStart(6)}`);
    r.worst.forEach((f, i) => {
      const name = `${i + 1}. ${show(f.path)}`;
      const nums = `${String(f.extentsBefore).padStart(14)} -> ${String(f.extentsAfter).padEnd(6)}${String(f.ideal).padStart(6)}${f.note ? `  (${f.note})` : ''}`;
      out.push(name.length > 40 ? `${name}\n${' '.repeat(40)}${nums}` : `${name.padEnd(40)}${nums}`);
    });
    out.push('');
  }
  out.push(` ${'Total extents before -> after (best)'.padEnd(44)}${r.extentsBefore} -> ${r.extentsAfter} (${r.idealExtents})`);
  out.push(` ${'Fragmentation score before -> after'.padEnd(44)}${Math.round(r.scoreBefore)} -> ${Math.round(r.scoreAfter)}`);
  out.push(` ${'Fragmented files before -> after (all)'.padEnd(44)}${r.fragmentedBefore} -> ${r.fragmentedAfter} (${r.files})`);
  out.push(` ${'Blocks moved'.padEnd(44)}${r.movedBlocks}`);
  for (const e of r.errors) out.push(` could not defragment ${show(e.path)}: ${e.error}`);
  return out.join('\n') + '\n';
}
