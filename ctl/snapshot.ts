/**
 * `kfsctl snapshot create|list|delete|restore` (src/snapshot/). Online through the serving
 * process's control socket, or offline on an image nobody holds (opened read-write with the
 * exclusive lock). A whole restore is offline only: a server refuses it ("unmount first").
 */
import { Command } from 'commander';
import { action, UsageError } from '../src/cli/common';
import { restoreWholeImage } from '../src/snapshot/restore';
import { Backend, resolveTarget } from './target';

export interface SnapshotCommandDeps {
  withBackend<T>(program: Command, fn: (b: Backend) => Promise<T>, writable?: boolean): Promise<T>;
  progressBar(enabled: boolean): { update: (phase: string, done: number, total: number) => void; stop: () => void };
  printJson(v: unknown): void;
  fsPathOf(arg: string | undefined, mountpoint: string | null): string;
}

const mib = (b: number): string => `${(b / 1048576).toFixed(1)} MiB`;

export function registerSnapshot(program: Command, d: SnapshotCommandDeps): Command {
  const snap = program.command('snapshot').description('copy-on-write snapshots: create, list, delete, restore');
  snap.command('create')
    .description('take a snapshot now (at a journal transaction boundary; costs no space until blocks change)')
    .argument('<name>', 'snapshot name (1 to 64 bytes)')
    .option('--json', 'machine-readable output')
    .action(action('kfsctl', async (name: string, o: { json?: boolean }) => d.withBackend(program, async (b) => {
      const r = await b.run('snapshot-create', { name });
      if (o.json) d.printJson(r);
      else process.stdout.write(`created snapshot ${r.name} of ${b.describe}\n`);
      return 0;
    }, true)));
  snap.command('list')
    .description('the snapshots, oldest first, with their time and the space each holds')
    .option('--json', 'machine-readable output')
    .action(action('kfsctl', async (o: { json?: boolean }) => d.withBackend(program, async (b) => {
      const r = await b.run('snapshot-list', {});
      if (o.json) d.printJson(r);
      else {
        if (!r.snapshots.length) process.stdout.write('no snapshots\n');
        else {
          const w = Math.max(4, ...r.snapshots.map((s) => s.name.length));
          process.stdout.write(`${'NAME'.padEnd(w)}  ${'CREATED'.padEnd(24)}  SPACE\n`);
          for (const s of r.snapshots) process.stdout.write(`${s.name.padEnd(w)}  ${new Date(s.createdMs).toISOString().padEnd(24)}  ${mib(s.bytes)}\n`);
          process.stdout.write(`store: ${mib(r.storeBytes)} in the image file past the filesystem (${r.freeSlots} free slots)\n`);
        }
      }
      return 0;
    })));
  snap.command('delete')
    .description('delete a snapshot; its space goes back (blocks older snapshots still need stay with them)')
    .argument('<name>', 'snapshot name')
    .option('--json', 'machine-readable output')
    .action(action('kfsctl', async (name: string, o: { json?: boolean }) => d.withBackend(program, async (b) => {
      const r = await b.run('snapshot-delete', { name });
      if (o.json) d.printJson(r);
      else process.stdout.write(`deleted snapshot ${r.name} (${mib(r.freedBytes)} freed)\n`);
      return 0;
    }, true)));
  snap.command('restore')
    .description('restore one path (--path, also online) or the whole filesystem (offline only) from a snapshot')
    .argument('<name>', 'snapshot name')
    .option('--path <path>', 'restore only this file or tree (a path in the filesystem or under its mount point)')
    .option('--yes', 'confirm: the current contents are replaced')
    .option('--json', 'machine-readable output')
    .action(action('kfsctl', async (name: string, o: { path?: string; yes?: boolean; json?: boolean }) => {
      const what = o.path === undefined ? 'the whole filesystem' : o.path;
      if (!o.yes) throw new UsageError(`restoring ${what} from snapshot ${name} replaces its current contents; add --yes to confirm`);
      const target = resolveTarget(program.opts<{ target?: string }>().target);
      const bar = d.progressBar(!o.json);
      try {
        if (o.path === undefined && target.kind === 'image') {
          const r = await restoreWholeImage(target.image, name, bar.update);
          bar.stop();
          const out = { name, path: null, entries: 0, bytes: 0, blocks: r.blocks };
          if (o.json) d.printJson(out);
          else process.stdout.write(`restored ${target.image} from snapshot ${name} (${r.blocks} blocks written back)\n`);
          return 0;
        }
        return await d.withBackend(program, async (b) => {
          const args = o.path === undefined ? { name } : { name, path: d.fsPathOf(o.path, b.mountpoint) };
          const r = await b.run('snapshot-restore', args, bar.update);
          bar.stop();
          if (o.json) d.printJson(r);
          else process.stdout.write(`restored ${r.path} from snapshot ${name} (${r.entries} entries, ${mib(r.bytes)})\n`);
          return 0;
        }, true);
      } finally {
        bar.stop();
      }
    }));
  return snap;
}
