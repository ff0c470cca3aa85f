/**
 * vhost-user-fs back-ends as processes, for tests and benchmarks: kfsd (--image or
 * --shared-dir) and the C virtiofsd that ships with QEMU, the peer. Each is started on a
 * fresh socket and stopped (SIGTERM, then SIGKILL) when the test ends.
 */
import { spawn, ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const KFSD = path.join(__dirname, '..', '..', 'src', 'cli', 'kfsd.js');

export interface Backend {
  name: string;
  socketPath: string;
  proc: ChildProcess;
  /** Everything the process wrote to stdout/stderr. */
  output(): string;
  /** Resolves with the exit code once the process ends. */
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

function start(name: string, cmd: string, args: string[], socketPath: string): Backend {
  fs.rmSync(socketPath, { force: true });
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code, sig) => resolve(code ?? (sig ? -1 : null))));
  return {
    name, socketPath, proc, exited,
    output: () => out,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        const code = await exited;
        clearTimeout(t);
        return code;
      }
      return exited;
    },
  };
}

/** Wait until something accepts connections on the socket (the back-end is listening). */
export async function waitForSocket(b: Backend, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (b.proc.exitCode !== null) throw new Error(`${b.name} exited with ${b.proc.exitCode} before listening:\n${b.output()}`);
    // Probing with connect would take the back-end's only connection; the socket file appearing
    // is enough, since both back-ends create it by bind just before listen.
    if (fs.existsSync(b.socketPath)) {
      await new Promise((r) => setTimeout(r, 100));
      return;
    }
    if (Date.now() > deadline) throw new Error(`${b.name} did not create ${b.socketPath} within ${timeoutMs} ms:\n${b.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startKfsd(socketPath: string, args: string[]): Promise<Backend> {
  const b = start(`kfsd ${args.join(' ')}`, process.execPath, [KFSD, '--socket-path', socketPath, '--log-level', 'info', ...args], socketPath);
  await waitForSocket(b);
  return b;
}

export async function startVirtiofsd(socketPath: string, sharedDir: string, cache: 'auto' | 'always' | 'none' = 'auto'): Promise<Backend> {
  const b = start('virtiofsd', VIRTIOFSD, [`--socket-path=${socketPath}`, '-o', `source=${sharedDir}`, '-o', `cache=${cache}`, '-o', 'xattr'], socketPath);
  await waitForSocket(b);
  return b;
}
