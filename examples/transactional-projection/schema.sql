-- The projection the example consumer keeps: orders per customer and their total, exactly in
-- step with the orders channel (every notification counted once, across crashes and retries).
CREATE TABLE IF NOT EXISTS customer_order_totals (
  customer_id text PRIMARY KEY,
  orders integer NOT NULL DEFAULT 0,
  total_cents bigint NOT NULL DEFAULT 0,
  last_order_id text
);
