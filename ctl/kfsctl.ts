#!/usr/bin/env node
/**
 * `kfsctl`: control of a running or offline kfs filesystem (snapshots, restore, defrag,
 * status). Commands arrive with the kfsctl issue; until then it says so and exits 1.
 */
import { Command } from 'commander';

const program = new Command('kfsctl')
  .description('manage a kfs filesystem: snapshots, restore, defragmentation, status')
  .option('-t, --target <target>', 'mount point, control socket or image file')
  .action(() => {
    process.stderr.write('kfsctl: no control commands are available in this version yet\n');
    process.exitCode = 1;
  });

program.parseAsync(process.argv).catch((e: Error) => {
  process.stderr.write(`kfsctl: ${e.message}\n`);
  process.exitCode = 2;
});
