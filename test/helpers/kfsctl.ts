/** Running the built kfsctl from tests. */
import path from 'node:path';
import { runCmd, RunResult } from './image';

export const KFSCTL = path.resolve(__dirname, '..', '..', 'ctl', 'kfsctl.js');

export function kfsctl(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): RunResult {
  return runCmd(process.execPath, [KFSCTL, ...args], opts);
}

/** kfsctl ARGS --json, which must succeed: its parsed output. */
export function kfsctlJson<T>(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): T {
  const r = kfsctl([...args, '--json'], opts);
  if (r.code !== 0) throw new Error(`kfsctl ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}
