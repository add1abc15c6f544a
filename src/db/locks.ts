import { PgqError } from '../errors.js';
import { errorMessage } from '../util.js';
import type { Queryable } from './rows.js';

/** SQLSTATE of a statement cancelled by `lock_timeout`. */
const LOCK_NOT_AVAILABLE = '55P03';

/** Whether `error` is Postgres cancelling a lock wait (`lock_timeout`). */
export function isLockTimeout(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === LOCK_NOT_AVAILABLE;
}

/**
 * The sessions holding the advisory lock `key` (as `pg_advisory_lock(hashtextextended(key, 0))`
 * takes it), described for a log line: `pid 4242 (psql, user app, idle in transaction for 12 s)`.
 * An int8 advisory lock shows in pg_locks as classid = high 32 bits, objid = low, objsubid = 1.
 */
export async function advisoryLockHolders(db: Queryable, key: string): Promise<string[]> {
  const res = await db.query<{
    pid: number;
    app: string;
    usename: string;
    state: string;
    s: number;
  }>(
    `SELECT a.pid, coalesce(nullif(a.application_name, ''), '?') AS app,
            coalesce(a.usename::text, '?') AS usename, coalesce(a.state, '?') AS state,
            round(extract(epoch FROM now() - coalesce(a.state_change, now())))::int AS s
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
        AND ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended($1, 0)
      ORDER BY a.pid`,
    [key],
  );
  return res.rows.map((r) => `pid ${r.pid} (${r.app}, user ${r.usename}, ${r.state} for ${r.s} s)`);
}

/**
 * Turns a `lock_timeout` on an advisory lock into an error that says what was waited for and
 * who holds it (`key`; null for a table lock), so the retry's log line points at the culprit. Call it after the failed
 * transaction was rolled back (the lookup runs on `db`). Other errors come back unchanged.
 */
export async function explainLockWait(
  db: Queryable,
  error: unknown,
  what: string,
  key: string | null,
): Promise<unknown> {
  if (!isLockTimeout(error)) return error;
  if (key === null) {
    return new PgqError(
      'PGQ_LOCK_TIMEOUT',
      `gave up waiting for ${what} (${errorMessage(error)})`,
      {
        cause: error,
      },
    );
  }
  const holders = await advisoryLockHolders(db, key).catch(() => [] as string[]);
  return new PgqError(
    'PGQ_LOCK_TIMEOUT',
    `gave up waiting for ${what} (${errorMessage(error)}); held by ${
      holders.join(', ') || 'a session that has let it go since'
    }`,
    { cause: error },
  );
}
