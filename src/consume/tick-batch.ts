/** Runs `load` once for every item requested in the same tick of the event loop. */
export class TickBatch<I, O> {
  private pending: {
    item: I;
    resolve: (o: O | undefined) => void;
    reject: (e: unknown) => void;
  }[] = [];

  constructor(
    private readonly load: (items: I[]) => Promise<Map<string, O>>,
    private readonly idOf: (item: I) => string,
  ) {}

  /** The result for one item, loaded together with the others asked for in this tick. */
  get(item: I): Promise<O | undefined> {
    return new Promise((resolve, reject) => {
      if (this.pending.length === 0) setImmediate(() => void this.flush());
      this.pending.push({ item, resolve, reject });
    });
  }

  /** The results for several items (one load with the rest of this tick); missing ones absent. */
  async getAll(items: readonly I[]): Promise<Map<string, O>> {
    const found = await Promise.all(items.map((i) => this.get(i)));
    const out = new Map<string, O>();
    items.forEach((item, i) => {
      const o = found[i];
      if (o !== undefined) out.set(this.idOf(item), o);
    });
    return out;
  }

  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    try {
      const found = await this.load(batch.map((b) => b.item));
      for (const b of batch) b.resolve(found.get(this.idOf(b.item)));
    } catch (error) {
      for (const b of batch) b.reject(error);
    }
  }
}
