/**
 * Handler slots (src/consume/slots.ts): BullMQ holds more jobs than a consumer's `concurrency`
 * so that ledger lookups overlap running handlers; the slots keep the handlers at `concurrency`.
 */
import { describe, expect, it } from 'vitest';
import { Slots, fetchSlotsFor } from '../../src/consume/slots.js';

describe('Slots', () => {
  it('lets `size` holders in at once and the others in arrival order', async () => {
    const slots = new Slots(2);
    const order: number[] = [];
    const first = await slots.acquire();
    const second = await slots.acquire();
    expect(slots.busy).toBe(2);
    const waiting = [3, 4, 5].map((n) => slots.acquire().then((release) => ({ n, release })));
    let third: { n: number; release: () => void } | undefined;
    void waiting[0].then((w) => (third = w));
    await new Promise((r) => setTimeout(r, 10));
    expect(third).toBeUndefined(); // both slots taken
    first();
    const w3 = await waiting[0];
    order.push(w3.n);
    second();
    const w4 = await waiting[1];
    order.push(w4.n);
    expect(slots.busy).toBe(2);
    w3.release();
    const w5 = await waiting[2];
    order.push(w5.n);
    expect(order).toEqual([3, 4, 5]);
    w4.release();
    w5.release();
    expect(slots.busy).toBe(0);
  });

  it('ignores a second release of the same slot', async () => {
    const slots = new Slots(1);
    const release = await slots.acquire();
    release();
    release();
    expect(slots.busy).toBe(0);
    await slots.acquire();
    expect(slots.busy).toBe(1);
    let got = false;
    void slots.acquire().then(() => (got = true));
    await new Promise((r) => setTimeout(r, 10));
    expect(got).toBe(false); // the double release did not make a phantom slot
  });

  it('fetches twice the concurrency, and at least two jobs', () => {
    expect(fetchSlotsFor(1)).toBe(2);
    expect(fetchSlotsFor(50)).toBe(100);
  });
});
