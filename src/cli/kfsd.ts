#!/usr/bin/env node
/**
 * `kfsd`: the vhost-user virtio-fs backend. The option surface is fixed here so scripts can be
 * written against it; serving arrives with the kfsd issue, and until then every invocation
 * says so and exits 1 (never pretends to serve).
 */
import { Command } from 'commander';

const program = new Command('kfsd')
  .description('vhost-user virtio-fs backend serving a kfs image (or a host directory) to a QEMU guest')
  .option('--image <path>', 'ext4 image to serve')
  .option('--shared-dir <dir>', 'serve a host directory instead, confined to it')
  .option('--socket-path <path>', 'vhost-user unix socket to listen on')
  .option('--tag <tag>', 'virtio-fs tag the guest mounts')
  .action(() => {
    process.stderr.write('kfsd: the virtio-fs backend is not available in this version yet; use kfs mkfs/info/fsck for now\n');
    process.exitCode = 1;
  });

program.parseAsync(process.argv).catch((e: Error) => {
  process.stderr.write(`kfsd: ${e.message}\n`);
  process.exitCode = 2;
});
