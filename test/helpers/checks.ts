/**
 * Soft checks for long acceptance tests: AVA assertions throw at the first failure, which
 * hides everything a long scenario would have found after it. A Checks object collects
 * failures (and exceptions thrown by whole stages) and reports them all at the end.
 *
 *   const c = new Checks(t);
 *   c.fsckClean(img, 'after build');
 *   await c.stage('kernel view', async () => { ... c.snapshot(expected, actual, 'kernel'); });
 *   c.done();   // fails the test with every problem found, or passes
 */
import type { ExecutionContext } from 'ava';
import { fsck, FsckResult } from './image';
import { Snapshot, DiffOptions, diffSnapshots } from './tree';

export class Checks {
  readonly problems: string[] = [];
  private t0 = Date.now();

  constructor(private t: ExecutionContext) {}

  /** Log a progress line with the time since the checks started. */
  lap(what: string): void {
    this.t.log(`${((Date.now() - this.t0) / 1000).toFixed(1).padStart(6)} s  ${what}`);
  }

  fail(msg: string): void {
    this.problems.push(msg);
    this.t.log(`FAIL: ${msg.split('\n')[0]}`);
  }

  check(ok: boolean, msg: string): boolean {
    if (!ok) this.fail(msg);
    return ok;
  }

  equal<T>(actual: T, expected: T, msg: string): boolean {
    return this.check(Object.is(actual, expected), `${msg}: expected ${String(expected)}, got ${String(actual)}`);
  }

  /** e2fsck -fn must exit 0. */
  fsckClean(image: string, label: string): FsckResult {
    const r = fsck(image);
    this.check(r.code === 0, `${label}: e2fsck -fn exited ${r.code}:\n${r.output}`);
    return r;
  }

  /** The snapshots must agree (see diffSnapshots). */
  snapshot(expected: Snapshot, actual: Snapshot, label: string, opts: DiffOptions = {}): boolean {
    const d = diffSnapshots(expected, actual, opts);
    const limit = opts.limit ?? 40;
    if (d.length) this.fail(`${label}: ${d.length} difference(s)${d.length > limit ? `, first ${limit}` : ''}:\n  ${d.slice(0, limit).join('\n  ')}`);
    return d.length === 0;
  }

  /** Run a stage; an exception it throws is recorded (with its stack top) and the test goes on. */
  async stage<T>(name: string, fn: () => Promise<T> | T): Promise<T | undefined> {
    try {
      const r = await fn();
      this.lap(name);
      return r;
    } catch (e) {
      const err = e as Error;
      this.fail(`${name}: threw ${err.stack?.split('\n').slice(0, 6).join('\n    ') ?? String(e)}`);
      return undefined;
    }
  }

  /** Fail the test with every problem, or pass it. */
  done(): void {
    if (this.problems.length) this.t.fail(`${this.problems.length} problem(s):\n\n${this.problems.join('\n\n')}`);
    else this.t.pass();
  }
}
