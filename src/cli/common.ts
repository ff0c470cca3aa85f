/** Shared CLI plumbing: one-line errors with a non-zero exit, and size parsing. */
import type { Command } from 'commander';
import { FsError } from '../util/errors';

/** A user mistake: printed as one line, exit 2. */
export class UsageError extends Error {}

/** Run a command action; any failure becomes one line on stderr and a non-zero exit. */
export function action<A extends unknown[]>(prog: string, fn: (...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      const code = await fn(...args);
      process.exitCode = typeof code === 'number' ? code : 0;
    } catch (e) {
      process.exitCode = e instanceof UsageError ? 2 : 1;
      process.stderr.write(`${prog}: ${oneLine(e)}\n`);
    }
  };
}

export function oneLine(e: unknown): string {
  if (e instanceof FsError) return e.message.replace(/^E[A-Z]+: /, '');
  if (e instanceof Error) return e.message.split('\n')[0];
  return String(e);
}

/**
 * Commander's own errors (unknown option, missing argument) as one line prefixed with the
 * command's name and a pointer to the help, thrown (CommanderError) instead of exiting, so that
 * the caller picks the exit code.
 */
export function applyCliConventions(cmd: Command, name: string, helpCommand: string): void {
  cmd.exitOverride();
  cmd.configureOutput({
    outputError: (str, write) => {
      const text = str.replace(/^error:\s*/i, '').replace(/\s*\n\s*/g, ' ').trim().replace(/\.$/, '');
      write(`${name}: ${text}; run '${helpCommand} --help' for usage\n`);
    },
  });
}
