#!/usr/bin/env node
/**
 * `kfs`: the command-line entry point. Each subcommand lives in its own module exporting
 * `registerX(program)`; this file wires them up and owns the shared conventions:
 *   - exit codes: 0 ok, 1 error, 2 usage error (bad option, unknown command, missing argument);
 *   - every error is one line on stderr, "kfs <command>: <what is wrong>; <what to do>".
 * Subcommand actions report their own failures (setting process.exitCode); commander's parse
 * errors are reformatted here.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Command, CommanderError } from 'commander';
import { registerMkfs } from './mkfs-command';
import { registerInfo } from './info-command';
import { registerFsck } from './fsck-command';
import { registerMount } from './mount-command';
import { applyCliConventions } from './common';

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

/** package.json's version, found upward from this file (src/cli or dist/src/cli). */
function packageVersion(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (!fs.existsSync(file)) continue;
    const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
    if (pkg.name === 'kfs' && pkg.version) return pkg.version;
  }
  return '0.0.0';
}

export function buildProgram(): Command {
  const program = new Command('kfs')
    .description('kfs: an ext4-compatible filesystem in one image file')
    .version(packageVersion(), '-V, --version', 'print the kfs version')
    .showSuggestionAfterError(true);

  // Subcommands: add new ones here (registerFsck(program), registerServe(program), ...).
  registerMkfs(program);
  registerInfo(program);
  registerFsck(program);
  registerMount(program);

  applyCliConventions(program, 'kfs', 'kfs');
  for (const cmd of program.commands) applyCliConventions(cmd, `kfs ${cmd.name()}`, `kfs ${cmd.name()}`);
  return program;
}

export async function main(argv: string[] = process.argv): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version "errors" exit 0; the rest are usage errors (already printed).
      return e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    process.stderr.write(`kfs: unexpected failure: ${e instanceof Error ? e.message : String(e)}; please report it\n`);
    return EXIT_ERROR;
  }
  return typeof process.exitCode === 'number' ? process.exitCode : EXIT_OK;
}

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
