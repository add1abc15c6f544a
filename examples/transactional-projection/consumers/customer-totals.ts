/**
 * A transactional consumer (docs/transactional.md): a counter per customer, kept exactly in step
 * with the `orders` channel. `ctx.db` is a client inside the attempt's transaction; the
 * delivery's ledger row commits with the UPDATE, so a crash, a retry, a stalled restart or a
 * duplicate job never counts an order twice, and a failure counts it not at all (until the retry).
 *
 *   psql -f examples/transactional-projection/schema.sql
 *   pgq-bridge work --consumers-dir examples/transactional-projection/consumers
 *   pgq-bridge notify orders '{"orderId": "o-1", "customerId": "c-7", "totalCents": 1250}'
 */
import { defineChannel, defineConsumer, PermanentError } from 'pgq-bridge';

interface OrderPlaced {
  orderId: string;
  customerId: string;
  totalCents: number;
}

export const orders = defineChannel<OrderPlaced>('orders');

export default defineConsumer({
  id: 'customer-totals',
  channels: [orders],
  transactional: true,
  concurrency: 10, // the worker's transaction pool holds 10 + 2 connections for it
  timeout: 5000, // statement_timeout of the attempt's transaction; ctx.signal aborts then too
  removeOnComplete: true, // safe: the ledger, not BullMQ, remembers what ran
  async handle(n, _job, { db }) {
    const { customerId, totalCents, orderId } = n.payload;
    if (!Number.isInteger(totalCents)) throw new PermanentError(`bad total for ${orderId}`);
    await db.query(
      `INSERT INTO customer_order_totals AS t (customer_id, orders, total_cents, last_order_id)
       VALUES ($1, 1, $2, $3)
       ON CONFLICT (customer_id) DO UPDATE
         SET orders = t.orders + 1, total_cents = t.total_cents + $2, last_order_id = $3`,
      [customerId, totalCents, orderId],
    );
    // An HTTP call here would stay at-least-once: give it an idempotency key (n.id).
  },
});
