import type { NotificationRow, SubscriptionRow } from '../db/rows.js';

/** A parsed pg_snapshot (`xmin:xmax:xip,...`). */
interface Snapshot {
  xmin: bigint;
  xmax: bigint;
  xip: Set<bigint>;
}

/** Parsed snapshots by text: a batch meets the same few boundaries on every row. */
const parsed = new Map<string, Snapshot>();

function parseSnapshot(text: string): Snapshot {
  let snapshot = parsed.get(text);
  if (!snapshot) {
    const [xmin, xmax, xip] = text.split(':');
    snapshot = {
      xmin: BigInt(xmin),
      xmax: BigInt(xmax),
      xip: new Set(xip ? xip.split(',').map((x) => BigInt(x)) : []),
    };
    // Subscriptions are few and their boundaries never change; the bound only guards a leak.
    if (parsed.size > 10_000) parsed.clear();
    parsed.set(text, snapshot);
  }
  return snapshot;
}

/** Postgres' pg_visible_in_snapshot(xid, snapshot): did the transaction commit before it? */
export function visibleInSnapshot(xid: string, snapshot: string): boolean {
  const s = parseSnapshot(snapshot);
  const x = BigInt(xid);
  if (x < s.xmin) return true;
  if (x >= s.xmax) return false;
  return !s.xip.has(x);
}

/**
 * Whether `sub` is owed `row`, in commit order (migration 0007): every row above its after_id, and
 * a row at or below it whose transaction its boundary snapshot did not see ('late': it committed
 * after the boundary though its id is lower). Same rule as the SQL function `is_owed`.
 */
export function isOwed(row: NotificationRow, sub: SubscriptionRow): boolean | 'late' {
  if (BigInt(row.id) > BigInt(sub.after_id)) return true;
  if (!sub.boundary || row.xid === undefined) return false;
  return visibleInSnapshot(row.xid, sub.boundary) ? false : 'late';
}
