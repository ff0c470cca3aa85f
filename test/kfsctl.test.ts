/**
 * kfsctl against real kfs mounts and images, checked with e2fsprogs and the kernel:
 * status online (statfs through the mount) and offline (dumpe2fs), defrag --check naming a
 * file written into checkerboard free space with the extent count debugfs reports, the block
 * map SVG parsed by a real XML parser with its cells adding up to the block counts, and CLI
 * mistakes answered with one line and a non-zero exit.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { assertFsckClean, extentInfo, makeImage, mustRun, requireRoot, superblockInfo, tempDir } from './helpers/image';
import { mountKfs } from './helpers/mount';
import { checkerboardFreeSpace } from './helpers/free-space';
import { Ext4Fs } from '../src/ext4/fs';
import { kfsctl, kfsctlJson } from './helpers/kfsctl';


interface StatusJson {
  kind: string;
  pid: number | null;
  image: string;
  mountpoint: string | null;
  fs: { blockSize: number; blocks: number; freeBlocks: number; inodes: number; freeInodes: number; features: string[]; availableBlocks: number };
  journal: {
    present: boolean; blocks: number; needsRecovery: boolean; active: boolean; sequence: number;
    activity: { commits: number; softCommits: number; sharedCompactions: number; loggedBlocks: number; checkpoints: number } | null;
  };
  snapshots: { supported: boolean; note: string };
  cache: { hitRate: number | null; hits: number; misses: number } | null;
  requests: { total: number; opcodes: { opcode: string; count: number; p50Us: number; p99Us: number }[] } | null;
  clients: { mountpoint: string | null; controlConnections: number } | null;
  transport?: { requests: number; readWhilePolling: number; busyPollUs: number; replyCommits: { commits: number; released: number; avgUs: number | null } | null } | null;
}

interface DefragJson {
  path: string;
  files: number;
  fragmentedFiles: number;
  extents: number;
  score: number;
  worst: { path: string; extents: number; fragments: number; ideal: number; score: number; blocks: number }[];
}

interface MapJson {
  svg: string;
  blocks: number;
  blocksPerCell: number;
  cells: number;
  totals: Record<string, number>;
  inconsistent: number;
}

/** Cells of the SVG parsed by Python's XML parser: per-class sums of data-* and the legend totals. */
function parseSvg(file: string): { cells: number; sums: Record<string, number>; legend: Record<string, number>; root: Record<string, string> } {
  const py = String.raw`
import json, sys, xml.etree.ElementTree as ET
ns = '{http://www.w3.org/2000/svg}'
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == ns + 'svg', root.tag
sums, legend, cells = {}, {}, 0
for r in root.iter(ns + 'rect'):
    if 'cell' not in r.get('class', '').split():
        continue
    cells += 1
    for k, v in r.attrib.items():
        if k.startswith('data-'):
            sums[k[5:]] = sums.get(k[5:], 0) + int(v)
for t in root.iter(ns + 'text'):
    if t.get('class') == 'legend':
        legend[t.get('data-class')] = int(t.get('data-total'))
print(json.dumps({'cells': cells, 'sums': sums, 'legend': legend, 'root': {k: v for k, v in root.attrib.items()}}))
`;
  return JSON.parse(mustRun('python3', ['-c', py, file]));
}

function checkMap(t: import('ava').ExecutionContext, m: MapJson, svgFile: string): void {
  const svg = parseSvg(svgFile);
  t.is(svg.cells, m.cells);
  t.is(Number(svg.root['data-blocks']), m.blocks);
  t.is(Number(svg.root['data-blocks-per-cell']), m.blocksPerCell);
  let sum = 0;
  for (const [cls, n] of Object.entries(m.totals)) {
    t.is(svg.sums[cls] ?? 0, n, `cells of class ${cls} add up to its total`);
    t.is(svg.legend[cls], n, `legend total of ${cls}`);
    sum += n;
  }
  t.is(sum, m.blocks, 'every block is in exactly one class');
  t.is(m.inconsistent, 0);
  t.is(m.totals.unowned, 0, 'every used block has an owner');
}

test.serial('status offline agrees with dumpe2fs', (t) => {
  const img = makeImage(t, { size: '64M' });
  const s = kfsctlJson<StatusJson>(['-t', img, 'status']);
  const d = superblockInfo(img);
  t.is(s.kind, 'offline');
  t.is(s.image, fs.realpathSync(img));
  t.is(s.fs.blockSize, Number(d.get('Block size')));
  t.is(s.fs.blocks, Number(d.get('Block count')));
  t.is(s.fs.freeBlocks, Number(d.get('Free blocks')));
  t.is(s.fs.inodes, Number(d.get('Inode count')));
  t.is(s.fs.freeInodes, Number(d.get('Free inodes')));
  t.deepEqual(s.fs.features, d.get('Filesystem features')!.split(/\s+/));
  t.true(s.journal.present);
  t.is(s.journal.blocks, Number(d.get('Total journal blocks')));
  t.is(s.journal.sequence, Number(d.get('Journal sequence')));
  t.false(s.journal.needsRecovery);
  t.false(s.journal.active);
  t.is(s.journal.activity, null, 'offline: no server, no transactions to count');
  t.true(s.snapshots.supported);
  t.is(s.snapshots.note, 'none');
  t.is(s.requests, null);
  t.is(s.transport, null, 'an image nobody serves has no transport');
  const text = kfsctl(['-t', img, 'status']);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^image +\S+fs\.img \(not served/m);
  t.regex(text.stdout, /^snapshots +none$/m);
});

test.serial('status online: statfs of the mount, request latencies, the mount point; the image of a mount resolves to its server', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const m = await mountKfs(t, img, path.join(tempDir(t, 'ctl'), 'mnt'), { options: ['busy_poll_us=37'] });
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(m.dir, `f${i}`), Buffer.alloc(10000, i));
  mustRun('sync', ['-f', m.dir]);
  // No -t: the kfs filesystem holding the current directory.
  fs.mkdirSync(path.join(m.dir, 'sub'));
  const s = kfsctlJson<StatusJson>(['status'], { cwd: path.join(m.dir, 'sub') });
  const sf = fs.statfsSync(m.dir);
  t.is(s.kind, 'mount');
  t.is(s.pid, m.pid);
  t.is(s.mountpoint, path.resolve(m.dir));
  t.is(s.image, path.resolve(img));
  t.is(s.fs.blockSize, sf.bsize);
  t.is(s.fs.freeBlocks, sf.bfree);
  t.is(s.fs.availableBlocks, sf.bavail);
  t.is(s.fs.inodes, sf.files);
  t.is(s.fs.freeInodes, sf.ffree);
  t.true(s.journal.present);
  t.true(s.journal.active, 'the serving process runs the journal');
  // commit_before_reply (the default) commits each create and write before its reply (into the
  // supervisor's shared memory); the open's durable commit at least went to the journal's log.
  const a = s.journal.activity!;
  t.truthy(a, 'a running journal reports its transactions');
  t.true(a.softCommits >= 20, JSON.stringify(a));
  t.true(a.commits >= 1 && a.loggedBlocks >= a.commits, JSON.stringify(a));
  t.is(a.sharedCompactions, 0, '20 small files fit the shared log without compaction');
  t.true(s.requests!.total > 0);
  const create = s.requests!.opcodes.find((o) => o.opcode === 'create');
  t.truthy(create, JSON.stringify(s.requests));
  t.true(create!.count >= 20);
  t.true(create!.p50Us > 0 && create!.p50Us <= create!.p99Us);
  t.true(s.cache!.hits + s.cache!.misses > 0);
  t.true(s.cache!.hitRate! >= 0 && s.cache!.hitRate! <= 1);
  t.is(s.clients!.mountpoint, path.resolve(m.dir));
  // The transport's counters: every request the server read (without a restart, at least what
  // the per-opcode stats saw), and (commit_before_reply) a commit round before the reply of each
  // of the 20 creates, 20 writes and the mkdir: the writer is serial, so no two share a round.
  const tr = s.transport!;
  t.truthy(tr, 'a host mount reports its transport');
  t.true(tr.requests >= s.requests!.total, JSON.stringify(tr));
  t.true(tr.readWhilePolling >= 0 && tr.readWhilePolling <= tr.requests, JSON.stringify(tr));
  t.is(tr.busyPollUs, 37, 'the mount option reaches the transport');
  t.true(tr.replyCommits!.commits >= 41 && tr.replyCommits!.commits <= tr.replyCommits!.released, JSON.stringify(tr));
  t.not(tr.replyCommits!.avgUs, null, JSON.stringify(tr));
  // -t IMAGE of a served image goes to its server; so does -t MOUNTPOINT.
  t.is(kfsctlJson<StatusJson>(['-t', img, 'status']).pid, m.pid);
  t.is(kfsctlJson<StatusJson>(['-t', m.dir, 'status']).pid, m.pid);
  const text = kfsctl(['-t', m.dir, 'status']);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^mount point +\S+mnt$/m);
  t.regex(text.stdout, /^ +create +\d+ +0 /m);
  t.regex(text.stdout, /^ +\d+ transactions logged since start, \d+ log-only commits \(shared log compacted \d+ times\), \d+ blocks logged, \d+ checkpoints$/m);
  t.regex(text.stdout, /^transport +\d+ requests read from \/dev\/fuse since start, \d+ of them while polling after a reply \(busy_poll_us 37\); commit before reply: \d+ rounds for \d+ replies, [\d.]+ (µs|ms|s) each on average$/m);
  await m.unmount();
  t.is(kfsctlJson<StatusJson>(['-t', img, 'status']).kind, 'offline');
});

test.serial('an image held by a process that has no control socket is reported with its pid', async (t) => {
  const img = makeImage(t, { size: '32M' });
  const held = await Ext4Fs.open(img, { commitIntervalMs: 0 });
  t.teardown(() => held.close());
  // kfsctl runs synchronously here: this process only holds the lock, it serves nothing.
  const r = kfsctl(['-t', img, 'status']);
  t.is(r.code, 1);
  t.is(r.stderr, `kfsctl: image ${fs.realpathSync(img)} is served by pid ${process.pid}; use its mount point or control socket (-t)\n`);
});

test.serial('defrag --check names a file written into checkerboard free space, with the extent count debugfs reports', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const m = await mountKfs(t, img, path.join(tempDir(t, 'ctl'), 'mnt'));
  checkerboardFreeSpace(t, m.dir, 400, 4096);
  const big = Buffer.alloc(150 * 4096);
  for (let i = 0; i < big.length; i += 4096) big.fill(i / 4096, i, i + 4096);
  fs.writeFileSync(path.join(m.dir, 'big'), big);
  mustRun('sync', ['-f', m.dir]);

  const online = kfsctlJson<DefragJson>(['-t', m.dir, 'defrag', '--check']);
  t.is(online.worst[0]?.path, '/big', JSON.stringify(online.worst.slice(0, 3)));
  const bigOnline = online.worst[0];
  t.true(bigOnline.extents > 50, `big has ${bigOnline.extents} extents`);
  t.is(bigOnline.ideal, 1);
  t.true(bigOnline.score > 90);
  t.true(online.files >= 200);
  const text = kfsctl(['defrag', '--check', '--top', '3'], { cwd: m.dir });
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, new RegExp(`^1\\. ${path.resolve(m.dir, 'big').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} +${bigOnline.extents}/1 `, 'm'));
  t.regex(text.stdout, /Fragmentation score +\d+/);
  // A PATH narrows the walk: the directory of small files has nothing fragmented.
  const small = kfsctlJson<DefragJson>(['-t', m.dir, 'defrag', path.join(m.dir, 'small'), '--check']);
  t.is(small.path, '/small');
  t.is(small.files, 200);
  t.is(small.worst.length, 0);
  const one = kfsctlJson<DefragJson>(['defrag', 'big', '--check'], { cwd: m.dir });
  t.is(one.files, 1);
  t.is(one.worst[0].extents, bigOnline.extents);

  await m.unmount();
  assertFsckClean(t, img);
  const ex = extentInfo(img, '/big');
  t.is(bigOnline.extents, ex.extents, 'online count = debugfs leaf extents');
  const offline = kfsctlJson<DefragJson>(['-t', img, 'defrag', '/big', '--check']);
  t.is(offline.worst[0].path, '/big');
  t.is(offline.worst[0].extents, ex.extents, 'offline count = debugfs leaf extents');
  t.is(offline.worst[0].blocks, 150);
});

test.serial('map --svg: a well-formed SVG whose cells add up to the block counts, online and offline', async (t) => {
  requireRoot(t);
  const img = makeImage(t, { size: '64M', blockSize: 4096 });
  const out = tempDir(t, 'svg');
  const m = await mountKfs(t, img, path.join(tempDir(t, 'ctl'), 'mnt'));
  fs.mkdirSync(path.join(m.dir, 'dir'));
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(m.dir, 'dir', `file-${i}`), Buffer.alloc(i * 100, 1));
  fs.writeFileSync(path.join(m.dir, 'large'), Buffer.alloc(8 << 20, 2));
  mustRun('setfattr', ['-n', 'user.big', '-v', 'x'.repeat(3000), path.join(m.dir, 'large')]);
  mustRun('sync', ['-f', m.dir]);
  const onlineSvg = path.join(out, 'online.svg');
  // 1000 cells: 17 blocks per cell, the last one short.
  const online = kfsctlJson<MapJson>(['-t', m.dir, 'map', '--svg', onlineSvg, '--cells', '1000']);
  t.is(online.blocksPerCell, Math.ceil(online.blocks / 1000));
  checkMap(t, online, onlineSvg);
  const sf = fs.statfsSync(m.dir);
  t.is(online.totals.free, sf.bfree);
  t.true(online.totals.file >= 2048 + 300);
  t.true(online.totals.directory >= 2);
  t.true(online.totals.xattr >= 1);
  t.true(online.totals['inode-table'] > 0 && online.totals.bitmap >= 2 && online.totals.superblock >= 1);
  await m.unmount();

  const offlineSvg = path.join(out, 'offline.svg');
  const offline = kfsctlJson<MapJson>(['-t', img, 'map', '--svg', offlineSvg]);
  checkMap(t, offline, offlineSvg);
  const d = superblockInfo(img);
  t.is(offline.totals.free, Number(d.get('Free blocks')));
  t.is(offline.totals.journal, Number(d.get('Total journal blocks')));
  t.deepEqual(offline.totals, online.totals);
  const text = kfsctl(['-t', img, 'map', '--svg', offlineSvg]);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^wrote \S+offline\.svg: \d+ cells/);
});

test('CLI mistakes get one line on stderr and a non-zero exit', (t) => {
  const img = makeImage(t, { size: '32M' });
  const plain = tempDir(t, 'plain');
  const cases: { args: string[]; code: number; msg: RegExp; cwd?: string }[] = [
    { args: ['bogus'], code: 2, msg: /unknown command 'bogus'/ },
    { args: ['status', '--bogus'], code: 2, msg: /unknown option '--bogus'/ },
    { args: ['-t', '/no/such/target', 'status'], code: 1, msg: /target \/no\/such\/target does not exist/ },
    { args: ['status'], code: 1, msg: /is not on a kfs filesystem/, cwd: plain },
    { args: ['-t', img, 'map'], code: 2, msg: /map needs --svg FILE/ },
    { args: ['-t', img, 'map', '--svg', path.join(plain, 'x.svg'), '--cells', '0'], code: 2, msg: /--cells needs a whole number/ },
    { args: ['-t', img, 'map', '--svg', '/no/such/dir/x.svg'], code: 2, msg: /does not exist/ },
    { args: ['-t', img, 'defrag', '/no/such/file', '--check'], code: 1, msg: /no\/such|not found|No such/i },
    { args: ['-t', img, 'defrag', '--check', '--top', 'many'], code: 2, msg: /--top needs a whole number/ },
    { args: ['-t', img, 'defrag', '/no/such/file'], code: 1, msg: /no\/such|not found|No such/i },
    { args: ['-t', img, 'snapshot', 'create', 'a/b'], code: 1, msg: /bad snapshot name/ },
    { args: ['-t', img, 'snapshot', 'restore', 's1'], code: 2, msg: /add --yes to confirm/ },
    { args: ['-t', img, 'snapshot', 'restore', 's1', '--yes'], code: 1, msg: /has no snapshot s1/ },
    { args: ['-t', img, 'snapshot', 'delete', 's1', '--json'], code: 1, msg: /snapshot s1 does not exist/ },
    { args: ['-t', plain, 'status'], code: 1, msg: /is not on a kfs filesystem/ },
  ];
  for (const c of cases) {
    const r = kfsctl(c.args, { cwd: c.cwd });
    const label = `kfsctl ${c.args.join(' ')}`;
    t.is(r.code, c.code, `${label}: ${r.stderr}`);
    const lines = r.stderr.split('\n').filter(Boolean);
    t.is(lines.length, 1, `${label}: ${r.stderr}`);
    t.regex(lines[0], /^kfsctl[ :]/, label);
    t.regex(lines[0], c.msg, label);
    t.is(r.stdout, '', label);
  }
  t.false(fs.existsSync(path.join(plain, 'x.svg')));
});
