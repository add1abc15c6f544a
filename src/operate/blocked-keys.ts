import type { BlockedKeys } from '../db/ordering.js';

/** Blocked keys of an ordered consumer with `onDeadLetter: 'block'` (docs/ordering.md). */
export interface BlockedKeysStatus {
  /** Keys whose head is a dead letter: their later notifications wait. */
  count: number;
  /** The oldest blocked head (lowest notification id), or null when no key is blocked. */
  oldest: {
    key: string;
    notificationId: string;
    /** ISO time it failed for good. */
    failedAt: string;
    lastError: string | null;
  } | null;
}

/** The report's form of one consumer's {@link BlockedKeys}. */
export function blockedKeysStatus(found: BlockedKeys | undefined): BlockedKeysStatus {
  const oldest = found?.oldest;
  return {
    count: found?.blockedKeys ?? 0,
    oldest: oldest
      ? {
          key: oldest.key,
          notificationId: oldest.notificationId,
          failedAt: oldest.failedAt.toISOString(),
          lastError: oldest.lastError,
        }
      : null,
  };
}

/**
 * The lines `pgq-bridge status` prints for blocked keys: one per consumer with any, naming the
 * oldest and the two ways to release it.
 */
export function formatBlockedKeys(
  consumers: readonly { id: string; blockedKeys?: BlockedKeysStatus | null }[],
): string[] {
  const lines: string[] = [];
  for (const c of consumers) {
    const b = c.blockedKeys;
    if (!b || b.count === 0 || !b.oldest) continue;
    const error = b.oldest.lastError ? `: ${b.oldest.lastError.split('\n')[0].slice(0, 120)}` : '';
    lines.push(
      `blocked keys of ${c.id}: ${b.count}; oldest ${JSON.stringify(b.oldest.key)} at notification ${b.oldest.notificationId} (failed ${b.oldest.failedAt}${error})`,
      `  release: pgq-bridge reconcile --failed --consumers ${c.id}  (retry)  or  pgq-bridge consumers skip ${c.id} ${b.oldest.notificationId}  (give it up)`,
    );
  }
  return lines;
}
