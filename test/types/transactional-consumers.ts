/**
 * Type test (compiled by `npm run typecheck`, never run): a transactional consumer's `ctx.db` is a
 * `pg` client; a plain consumer's `ctx` has no `db`. Every `@ts-expect-error` line must fail to
 * compile; if one compiled, tsc would report the unused directive and the typecheck would fail.
 */
import type pg from 'pg';
import {
  defineChannel,
  defineConsumer,
  type ConsumerDefinition,
  type HandlerContext,
  type TransactionalHandlerContext,
} from '../../src/index.js';

interface Order {
  id: number;
  customer: string;
}
const orders = defineChannel<Order>('orders');

export const projection = defineConsumer({
  id: 'projection',
  channels: [orders],
  transactional: true,
  async handle(n, _job, ctx) {
    const client: pg.PoolClient = ctx.db;
    const signal: AbortSignal = ctx.signal;
    void signal;
    const customer: string = n.payload.customer;
    await client.query('UPDATE counters SET n = n + 1 WHERE customer = $1', [customer]);
    // @ts-expect-error ctx.db is a typed pg client, not any
    ctx.db.notAPgMethod();
    // @ts-expect-error the payload is typed by the channel
    void (n.payload.total as string);
  },
});

export const batchProjection = defineConsumer<Order>({
  id: 'batch-projection',
  channels: ['orders'],
  transactional: true,
  batch: { size: 10, maxWaitMs: 50 },
  async handleBatch(ns, _job, { db }) {
    for (const n of ns) await db.query('SELECT $1::int', [n.payload.id]);
  },
});

export const plain = defineConsumer({
  id: 'plain',
  channels: [orders],
  handle(n, _job, ctx) {
    void n;
    // @ts-expect-error a plain consumer runs in no transaction of ours: no ctx.db
    return ctx.db.query('SELECT 1');
  },
});

export const plainFalse = defineConsumer({
  id: 'plain-false',
  channels: ['orders'],
  transactional: false,
  handle(_n, _job, ctx) {
    // @ts-expect-error transactional: false, no ctx.db either
    void ctx.db;
    return ctx.signal.aborted;
  },
});

export const plainBatch = defineConsumer({
  id: 'plain-batch',
  channels: ['orders'],
  batch: { size: 5, maxWaitMs: 10 },
  handleBatch(_ns, _job, ctx) {
    // @ts-expect-error a plain batch consumer has no ctx.db
    void ctx.db;
  },
});

// Handlers that ignore ctx (the two-argument form) still type-check.
export const twoArgs: ConsumerDefinition = defineConsumer({
  id: 'two-args',
  channels: ['orders'],
  handle(n, job) {
    void job;
    return n.id;
  },
});

export const contexts: [HandlerContext, TransactionalHandlerContext] | undefined = undefined;
