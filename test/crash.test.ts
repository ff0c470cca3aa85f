/**
 * Crash testing of the journal: a seeded workload runs through Ext4Fs with the BlockDevice
 * write log on; crash images are the starting image plus a prefix of the log, cut at every
 * barrier and at random points with the last write torn (a prefix of its 512-byte sectors).
 * For each crash image:
 *   - kfs opens it (replaying the journal) and must read exactly the tree of the last durable
 *     commit (every file fsync'd before the cut included: an fsync returns after its commit);
 *   - after kfs closes it, e2fsck -fn must be clean;
 *   - on a sample, e2fsck -fy replays the same crash image on its own (the independent
 *     oracle for our journal format), e2fsck -fn is then clean and kfs reads the same tree.
 * With log-only ("soft") commits after random operations (what commit_before_reply does), two
 * kinds of crash are modelled:
 *   - the server process dies (same boot): the page cache holds every write issued, in order, so
 *     a prefix cut replayed with this boot's id must show the state of its last commit, soft
 *     ones included;
 *   - a power loss (the next boot): a soft commit has no barrier, so the disk may hold its log
 *     blocks without the file data ordered before it. Prefix cuts and reordered cuts
 *     (everything up to the last barrier, then a random subset of the later writes in random
 *     order, some torn) are replayed with another boot's id: soft records of a foreign boot end
 *     the log, so kfs, like e2fsck (which stops at them), must show exactly the state of a
 *     durable commit: no stale bytes, nothing partial.
 * KFS_CRASH_CUTS (random cuts per seed, default 150), KFS_CRASH_SEEDS (default 1),
 * KFS_CRASH_OPS (operations per workload, default 260), KFS_CRASH_FSCK_EVERY (e2fsck -fy replay
 * on every n-th image, default 6), KFS_CRASH_SEED (first seed) tune it; `npm run crash:sweep`
 * runs thousands.
 */
import test, { ExecutionContext } from 'ava';
import fs from 'node:fs';
import { join } from 'node:path';
import { makeImage, tempDir, fsck } from './helpers/image';
import { CrashImageBuilder, CutPoint, sectorsOf, sparseCopy, epochStart } from './helpers/write-log';
import { rng } from './helpers/rng';
import { runWorkload, openAndRead, diffTrees, WorkloadRecord, ModelState } from './helpers/crash-workload';

const CUTS = Number(process.env.KFS_CRASH_CUTS ?? 150);
const SEEDS = Number(process.env.KFS_CRASH_SEEDS ?? 1);
const OPS = Number(process.env.KFS_CRASH_OPS ?? 260);
const FSCK_EVERY = Number(process.env.KFS_CRASH_FSCK_EVERY ?? 6);
const FIRST_SEED = Number(process.env.KFS_CRASH_SEED ?? 1);

/**
 * Crash images live in memory (/dev/shm when present): hundreds of image copies would otherwise
 * write gigabytes to the shared disk. The write log, not the medium, is what is being tested.
 */
function shmDir(t: ExecutionContext): string {
  if (!fs.existsSync('/dev/shm')) return tempDir(t, 'crash');
  const dir = fs.mkdtempSync('/dev/shm/kfs-crash-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Cut extends CutPoint {
  why: string;
}

function chooseCuts(rec: WorkloadRecord, seed: number, randomCuts: number): Cut[] {
  const cuts: Cut[] = [];
  // Every barrier: everything up to and including it reached the disk.
  for (const b of rec.log.barriers()) cuts.push({ upTo: b + 1, why: `after barrier ${b}` });
  const writes = rec.log.writes();
  const r = rng(seed * 7919);
  for (let i = 0; i < randomCuts; i++) {
    const w = writes[Math.floor(r() * writes.length)];
    const sectors = sectorsOf(rec.log.events[w]);
    if (sectors > 1 && r() < 0.7) {
      const torn = 1 + Math.floor(r() * (sectors - 1));
      cuts.push({ upTo: w, tornSectors: torn, why: `write ${w} torn after ${torn}/${sectors} sectors` });
    } else {
      cuts.push({ upTo: w, why: `before write ${w}` });
    }
  }
  cuts.sort((a, b) => a.upTo - b.upTo || (a.tornSectors ?? 0) - (b.tornSectors ?? 0));
  return cuts;
}

/** State indices a crash at `cut` may legitimately show to kfs's replay of a prefix cut. */
function acceptable(rec: WorkloadRecord, cut: Cut): number[] {
  const s = [rec.committedBefore[cut.upTo]];
  const next = rec.log.events[cut.upTo + 1];
  if (cut.tornSectors && next?.kind === 'mark' && rec.commitState.has(cut.upTo + 1)) s.push(rec.commitState.get(cut.upTo + 1)!);
  return s;
}

/**
 * The states a replay after a power loss may show (soft commits of the lost boot dropped): the
 * last durable commit known on disk (a barrier followed it before the cut's epoch), or any
 * commit a durable commit has vouched for since. A durable commit makes the soft transactions
 * before it count by rewriting their records as real commit blocks, after the barrier that
 * makes their data durable: once that barrier is in the cut, any prefix of them may count.
 */
function acceptableAfterPowerLoss(rec: WorkloadRecord, cut: Cut): number[] {
  const lim = cut.reorder !== undefined ? epochStart(rec.log, cut.upTo) : cut.upTo;
  const lastBarrier = epochStart(rec.log, lim) - 1;
  let low = 0;
  for (const m of rec.marks) if (m.durable && m.index < lastBarrier) low = m.state;
  const out = new Set([low]);
  let prevDurable = -1;
  for (const m of rec.marks) {
    if (!m.durable) continue;
    const barrierBefore = epochStart(rec.log, m.index) - 1;
    if (barrierBefore >= 0 && barrierBefore < cut.upTo) {
      for (const s of rec.marks) if (s.index > prevDurable && s.index <= m.index && s.state >= low) out.add(s.state);
    }
    prevDurable = m.index;
  }
  return [...out];
}

/** A boot id no kernel had: replay as after a reboot. */
const OTHER_BOOT = Buffer.alloc(16, 0xb0);

async function crashSweep(t: ExecutionContext, opts: { size: string; blockSize: 1024 | 4096; seed: number; cuts: number; ops: number; softCommits?: number }): Promise<void> {
  const dir = shmDir(t);
  const base = makeImage(t, { size: opts.size, blockSize: opts.blockSize, mkfs: 'kfs', dir, name: 'base.img' });
  const start = join(dir, 'start.img');
  sparseCopy(base, start);
  const rec = await runWorkload(base, opts.seed, opts.ops, { softCommits: opts.softCommits });
  const soft = !!opts.softCommits;
  if (soft) t.true(rec.journal.softCommits > 20, `the workload made ${rec.journal.softCommits} soft commits`);
  const commits = rec.commitState.size;
  t.true(commits > 20, `the workload committed ${commits} transactions`);
  t.true(rec.journal.revokes > 0, 'revoke records were written');
  if (opts.blockSize === 1024) t.true(rec.journal.checkpoints > 0, 'the 1 MiB log wrapped around');
  const builder = new CrashImageBuilder(rec.log, start, join(dir, 'work.img'));
  const img = join(dir, 'crash.img');
  const img2 = join(dir, 'crash-e2fsck.img');
  const cuts = chooseCuts(rec, opts.seed, opts.cuts);
  const failures: string[] = [];
  let checked = 0;
  let e2fsckReplays = 0;
  let reordered = 0;
  let powerLossReplays = 0;
  // Reordered cuts build on their own working copy (they start from an earlier barrier).
  const reorderBuilder = soft ? new CrashImageBuilder(rec.log, start, join(dir, 'work2.img')) : null;
  const reorderCuts: Cut[] = [];
  if (soft) {
    const r = rng(opts.seed * 31 + 5);
    const writes = rec.log.writes();
    for (let i = 0; i < opts.cuts; i++) {
      const w = writes[Math.floor(r() * writes.length)];
      reorderCuts.push({ upTo: w, reorder: opts.seed * 100000 + i, why: `writes since the last barrier before ${w} reordered (seed ${opts.seed * 100000 + i})` });
    }
    reorderCuts.sort((a, b) => epochStart(rec.log, a.upTo) - epochStart(rec.log, b.upTo));
  }
  const imgPowerLoss = join(dir, 'crash-power-loss.img');
  const check = async (image: string, want: number[], label: string, replayBoot?: Buffer): Promise<boolean> => {
    let tree;
    try {
      tree = await openAndRead(image, replayBoot);
    } catch (e) {
      failures.push(`${label}: kfs cannot open the crash image: ${(e as Error).message}`);
      return false;
    }
    const diffs = want.map((s) => diffTrees(tree, rec.states[s]));
    if (!diffs.some((d) => d.length === 0)) failures.push(`${label}: ${diffs[0].join('; ')}`);
    const ck = fsck(image);
    if (ck.code !== 0) failures.push(`${label}: e2fsck -fn after kfs replay exited ${ck.code}:\n${ck.output}`);
    return true;
  };
  try {
    for (const cut of [...cuts, ...reorderCuts]) {
      const isReordered = cut.reorder !== undefined;
      (isReordered ? reorderBuilder! : builder).build(cut, img);
      if (isReordered) reordered++;
      const afterPowerLoss = soft ? acceptableAfterPowerLoss(rec, cut) : acceptable(rec, cut);
      const label = `seed ${opts.seed} bs ${opts.blockSize} cut ${cut.upTo} (${cut.why})`;
      const sampleE2fsck = checked % FSCK_EVERY === 0;
      if (sampleE2fsck) sparseCopy(img, img2);
      if (soft) {
        // A power loss: this image read in the next boot (reordered cuts only make sense so).
        if (!isReordered) sparseCopy(img, imgPowerLoss);
        if (!(await check(isReordered ? img : imgPowerLoss, afterPowerLoss, `${label}, after a power loss, expecting state ${afterPowerLoss.join(' or ')}`, OTHER_BOOT))) continue;
        powerLossReplays++;
      }
      if (!isReordered) {
        // The server process died (or, without soft commits, any crash): replayed in this boot.
        const want = acceptable(rec, cut);
        if (!(await check(img, want, `${label}, in the same boot, expecting state ${want.join(' or ')}`))) continue;
      }
      if (sampleE2fsck) {
        e2fsckReplays++;
        const y = fsck(img2, ['-fy']);
        const n = fsck(img2);
        if (y.code > 1 || n.code !== 0) failures.push(`${label}: e2fsck's own replay: -fy exited ${y.code}, then -fn ${n.code}:\n${y.output}\n${n.output}`);
        else {
          const tree2 = await openAndRead(img2);
          const d2 = afterPowerLoss.map((s) => diffTrees(tree2, rec.states[s]));
          if (!d2.some((d) => d.length === 0)) failures.push(`${label}: after e2fsck's replay, expecting state ${afterPowerLoss.join(' or ')}: ${d2[0].join('; ')}`);
        }
      }
      checked++;
      if (failures.length >= 5) break;
    }
  } finally {
    builder.close();
    reorderBuilder?.close();
  }
  t.log(`seed ${opts.seed}, ${opts.blockSize}-byte blocks: ${rec.ops.length} operations, ${rec.log.length} log events, ${commits} commits, journal ${JSON.stringify(rec.journal)}, ` +
    `${checked} crash images checked (${reordered} reordered, ${powerLossReplays} replayed as after a power loss; ${e2fsckReplays} also replayed by e2fsck)`);
  t.deepEqual(failures, []);
}

for (let s = FIRST_SEED; s < FIRST_SEED + SEEDS; s++) {
  test.serial(`crash images at barriers and random torn writes, 1 KiB blocks, 1 MiB journal (wraps), seed ${s}`, async (t) => {
    // Enough operations for the 1 MiB log to wrap around at least once.
    await crashSweep(t, { size: '16M', blockSize: 1024, seed: s, cuts: CUTS, ops: Math.round(OPS * 1.6) });
  });
  // Two block groups: a backup superblock lets e2fsck open an image whose primary superblock
  // was torn (with one group e2fsck cannot; kfs still can, from the torn copy's geometry).
  test.serial(`crash images at barriers and random torn writes, 4 KiB blocks, 16 MiB journal, seed ${s}`, async (t) => {
    await crashSweep(t, { size: '160M', blockSize: 4096, seed: s + 1000, cuts: Math.ceil(CUTS / 2), ops: OPS });
  });
  // Log-only commits after ~60% of the operations, as commit_before_reply makes them.
  test.serial(`soft commits: crash images at barriers, random torn writes and reordered writes, 1 KiB blocks, 1 MiB journal, seed ${s}`, async (t) => {
    await crashSweep(t, { size: '16M', blockSize: 1024, seed: s + 2000, cuts: CUTS, ops: Math.round(OPS * 1.6), softCommits: 0.6 });
  });
  test.serial(`soft commits: crash images at barriers, random torn writes and reordered writes, 4 KiB blocks, 16 MiB journal, seed ${s}`, async (t) => {
    await crashSweep(t, { size: '160M', blockSize: 4096, seed: s + 3000, cuts: Math.ceil(CUTS / 2), ops: OPS, softCommits: 0.6 });
  });
}
