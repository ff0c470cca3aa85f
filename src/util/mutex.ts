/** A FIFO async mutex: operations that touch shared filesystem state run one at a time. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    return prev.then(async () => {
      try {
        return await fn();
      } finally {
        release();
      }
    });
  }
}
