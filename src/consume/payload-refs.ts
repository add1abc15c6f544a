/**
 * Payloads by reference, worker side. The bridge leaves a payload over `--inline-payload-limit`
 * in its row and marks the job data `payloadRef` (bridge/plan.ts): one 1 MB notification for 16
 * consumers is then 16 small jobs instead of 16 MB in Redis. Before the handler runs, the worker
 * reads the payloads back, one query for every reference of a job (or of a merged batch group),
 * so the handler sees the same `Notification` either way. `cleanup` keeps a row until every
 * delivery of it is finished, so the row is there while a job can still run.
 */
import { UnrecoverableError } from 'bullmq';
import { PayloadQueries } from '../db/payloads.js';
import type { Queryable } from '../db/store.js';
import type { NotificationJobData } from './notification.js';

const queriesBySchema = new Map<string, PayloadQueries>();

function queriesOf(schema: string): PayloadQueries {
  let queries = queriesBySchema.get(schema);
  if (!queries) {
    queries = new PayloadQueries(schema);
    queriesBySchema.set(schema, queries);
  }
  return queries;
}

/**
 * `entries` with every payload by reference read from its row; entries that carry their payload
 * are returned as they are, and without references no query runs. The input is not changed, so
 * a job re-added later (a split batch) still carries the reference, not the payload. A row that
 * is gone (deleted with `cleanup --force`) fails the job for good: no retry can bring it back.
 */
export async function withPayloads(
  db: Queryable,
  schema: string,
  entries: readonly NotificationJobData[],
): Promise<NotificationJobData[]> {
  const ids = entries.filter((e) => e.payloadRef === true).map((e) => e.id);
  if (ids.length === 0) return [...entries];
  const payloads = await queriesOf(schema).payloadsByIds(db, [...new Set(ids)]);
  return entries.map((e) => {
    if (e.payloadRef !== true) return e;
    const payload = payloads.get(e.id);
    if (payload === undefined) {
      throw new UnrecoverableError(
        `notification ${e.id}: its payload travels by reference and its row is gone ` +
          '(deleted by cleanup --force?)',
      );
    }
    return { ...e, payload };
  });
}
