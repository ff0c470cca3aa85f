/**
 * Back-ends the front-end talks to, as child processes: kfsd (dist/src/cli/kfsd.js) and the C
 * virtiofsd QEMU 7.2 ships (/usr/lib/qemu/virtiofsd), the reference peer. Their output is kept
 * for assertions and failure messages; stop() always waits for the process to be gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';

export const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Backend {
  private out = '';
  readonly exited: Promise<ExitStatus>;
  exitStatus: ExitStatus | null = null;

  constructor(readonly name: string, readonly socketPath: string, readonly proc: ChildProcess) {
    proc.stdout?.on('data', (d: Buffer) => (this.out += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (this.out += d.toString()));
    this.exited = new Promise((res) => {
      proc.on('exit', (code, signal) => {
        this.exitStatus = { code, signal };
        res(this.exitStatus);
      });
      proc.on('error', (e) => {
        this.out += `spawn error: ${e.message}\n`;
        this.exitStatus = { code: -1, signal: null };
        res(this.exitStatus);
      });
    });
  }

  /** Everything the process printed so far. */
  get output(): string {
    return this.out;
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  /** SIGTERM (then SIGKILL if it lingers for 20 s) and wait for the exit. */
  async stop(): Promise<ExitStatus> {
    if (this.running) {
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 20_000);
      await this.exited;
      clearTimeout(t);
    }
    if (existsSync(this.socketPath)) rmSync(this.socketPath, { force: true });
    return (await this.exited);
  }
}

/** The C virtiofsd sharing `dir` (it serves one connection, then exits). */
export function spawnVirtiofsd(dir: string, socketPath: string, extra: string[] = []): Backend {
  const args = [`--socket-path=${socketPath}`, '-o', `source=${dir}`, '-o', 'cache=auto', '-o', 'sandbox=chroot', '-o', 'log_level=warn', ...extra];
  return new Backend('virtiofsd', socketPath, spawn(VIRTIOFSD, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
}

/** dist/src/cli/kfsd.js (this file runs from dist/test/helpers/vhost-frontend/). */
export function kfsdPath(): string {
  return resolve(__dirname, '..', '..', '..', 'src', 'cli', 'kfsd.js');
}

/** kfsd with the given source arguments (['--image', img] or ['--shared-dir', dir]). */
export function spawnKfsd(source: string[], socketPath: string, extra: string[] = []): Backend {
  const args = [...(process.env.KFS_NODE_ARGS ? process.env.KFS_NODE_ARGS.split(" ") : []), kfsdPath(), ...source, "--socket-path", socketPath, ...extra];
  return new Backend('kfsd', socketPath, spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KFS_LOG_LEVEL: process.env.KFS_LOG_LEVEL ?? 'info' } }));
}
