/** `kfs info disk.img [-g] [--json]`: what dumpe2fs -h (and with -g, per group) would tell. */
import { Command } from 'commander';
import { describeImage, ImageInfo } from '../ext4/info';
import { action } from './common';

function printInfo(i: ImageInfo): void {
  const rows: [string, string | number][] = [
    ['Image', i.image + (i.inUse ? ' (in use by another kfs process; unsynced changes not shown)' : '')],
    ['Volume name', i.label || '<none>'],
    ['UUID', i.uuid],
    ['Features', i.features.join(' ')],
    ['State', i.state],
    ['Block size', i.blockSize],
    ['Block count', i.blocks],
    ['Free blocks', i.freeBlocks],
    ['Reserved blocks', i.reservedBlocks],
    ['Inode count', i.inodes],
    ['Free inodes', i.freeInodes],
    ['Inode size', i.inodeSize],
    ['Blocks per group', i.blocksPerGroup],
    ['Inodes per group', i.inodesPerGroup],
    ['Block groups', i.groups],
    ['Descriptor size', i.descSize],
    ['Default dir hash', i.defaultHash],
    ['Hash seed', i.hashSeed],
    ['Metadata checksum', i.checksum],
    ['Mount count', i.mountCount],
    ['Created', i.created ?? 'n/a'],
    ['Last mount', i.lastMount ?? 'n/a'],
    ['Last write', i.lastWrite ?? 'n/a'],
    ['Journal', i.journal ? `inode ${i.journal.inode}, ${i.journal.blocks} blocks, sequence ${i.journal.sequence}, ${i.journal.start ? 'needs recovery' : 'empty'}` : 'none'],
  ];
  const w = Math.max(...rows.map((r) => r[0].length)) + 2;
  for (const [k, v] of rows) process.stdout.write(`${(k + ':').padEnd(w)}${v}\n`);
  for (const g of i.groupDetail ?? []) {
    process.stdout.write(
      `\nGroup ${g.group}: blocks ${g.firstBlock}-${g.firstBlock + g.blocks - 1} [${g.flags.join(', ')}]\n` +
      `  Block bitmap at ${g.blockBitmap}, Inode bitmap at ${g.inodeBitmap}, Inode table at ${g.inodeTable}\n` +
      `  ${g.freeBlocks} free blocks, ${g.freeInodes} free inodes, ${g.usedDirs} directories, ${g.itableUnused} unused inodes\n`,
    );
  }
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('summarize an image: features, geometry, free space, journal (like dumpe2fs -h)')
    .argument('<image>', 'image file')
    .option('-g, --groups', 'also list every block group')
    .option('--json', 'print JSON')
    .action(action('kfs info', async (image: string, opts: { groups?: boolean; json?: boolean }) => {
      const info = await describeImage(image, { perGroup: !!opts.groups });
      if (opts.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      else printInfo(info);
    }));
}
