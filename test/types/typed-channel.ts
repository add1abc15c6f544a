/**
 * Type test (compiled by `npm run typecheck`, never run): typed channels carry their payload type
 * to `notify()` and to consumers. Every `@ts-expect-error` line must fail to compile; if one
 * compiled, tsc would report the unused directive and the typecheck would fail.
 */
import type pg from 'pg';
import {
  defineChannel,
  defineConsumer,
  type Channel,
  type ConsumerDefinition,
  type StandardSchemaV1,
} from '../../src/index.js';

interface Order {
  id: number;
  total: number;
}

declare const pool: pg.Pool;

const orders = defineChannel<Order>('orders');
const accepted: Channel<Order> = orders;
void accepted;

export async function notifyTyped(): Promise<string[]> {
  return [
    await orders.notify(pool, { id: 1, total: 9.5 }),
    // @ts-expect-error total must be a number
    await orders.notify(pool, { id: 1, total: '9.50' }),
    // @ts-expect-error id is missing
    await orders.notify(pool, { total: 1 }),
  ];
}

export const billing = defineConsumer({
  id: 'billing',
  channels: [orders],
  handle(n) {
    const total: number = n.payload.total;
    // @ts-expect-error the payload has no such field
    const missing = n.payload.customer;
    // @ts-expect-error total is a number, not a string
    const wrong: string = n.payload.total;
    return { total, missing, wrong };
  },
});

// A plain channel name gives no payload type: the handler must narrow it.
export const raw = defineConsumer({
  id: 'raw',
  channels: ['orders', orders],
  handle(n) {
    // @ts-expect-error payload is unknown when any channel is a plain name
    return n.payload.total;
  },
});

// Several typed channels: the payload is the union of theirs.
const refunds = defineChannel<{ refundId: string; amount: number }>('refunds');
export const ledger = defineConsumer({
  id: 'ledger',
  channels: [orders, refunds],
  handle(n) {
    const p = n.payload;
    if ('refundId' in p) return p.amount;
    return p.total;
  },
});

// The explicit form still works with plain names.
export const explicit = defineConsumer<Order>({
  id: 'explicit',
  channels: ['orders'],
  handle(n) {
    return n.payload.total;
  },
});

// Typed consumers still go wherever consumer definitions go (config files, createWorker).
export const all: ConsumerDefinition[] = [billing, raw, ledger, explicit];

// Validators give the payload type without a type argument.
const fromFunction = defineChannel('checked', {
  validate: (value: unknown): Order => value as Order,
});
const isOrder = (value: unknown): value is Order =>
  typeof value === 'object' && value !== null && 'id' in value;
const fromGuard = defineChannel('guarded', { validate: isOrder });
const fromParse = defineChannel('parsed', {
  validate: { parse: (value: unknown) => value as Order },
});
declare const standard: StandardSchemaV1<unknown, Order>;
const fromStandard = defineChannel('standard', { validate: standard });

export async function inferred(): Promise<void> {
  for (const channel of [fromFunction, fromGuard, fromParse, fromStandard]) {
    await channel.notify(pool, { id: 2, total: 3 });
    // @ts-expect-error the inferred payload is Order
    await channel.notify(pool, { id: 'two' });
  }
}

// A validator that produces another type than the one declared is refused.
// @ts-expect-error validate must produce an Order
defineChannel<Order>('mismatch', { validate: (value: unknown) => String(value) });
