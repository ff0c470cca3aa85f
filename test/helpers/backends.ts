/**
 * vhost-user-fs back-ends started for a guest (QEMU) run: the processes come from the test
 * front-end's helpers (vhost-frontend/backends.ts); this adds waiting until the socket exists,
 * since QEMU, unlike our front-end, does not retry its connect.
 */
import fs from 'node:fs';
import { Backend, spawnKfsd, spawnVirtiofsd } from './vhost-frontend/backends';

export { Backend };

/** Wait until the back-end has created its socket (both bind just before listen). */
async function waitForSocket(b: Backend, timeoutMs = 15_000): Promise<Backend> {
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(b.socketPath)) {
    if (!b.running) throw new Error(`${b.name} exited before listening:\n${b.output}`);
    if (Date.now() > deadline) throw new Error(`${b.name} did not create ${b.socketPath} within ${timeoutMs} ms:\n${b.output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 100));
  return b;
}

/** kfsd with these arguments (['--image', img] or ['--shared-dir', dir], then options). */
export function startKfsd(socketPath: string, args: string[]): Promise<Backend> {
  fs.rmSync(socketPath, { force: true });
  return waitForSocket(spawnKfsd(['--log-level', 'info', ...args], socketPath));
}

/** The C virtiofsd sharing dir, with xattrs (the guest workload sets some). */
export function startVirtiofsd(socketPath: string, sharedDir: string): Promise<Backend> {
  fs.rmSync(socketPath, { force: true });
  return waitForSocket(spawnVirtiofsd(sharedDir, socketPath, ['-o', 'xattr']));
}
