/**
 * The soak's final checks, on the settled state (after `reconcile --verify`, quiet, and a graceful
 * stop of every bridge process so that every ledger write is flushed):
 *
 * 1. No loss: every stored notification was handled by every consumer it is owed (a
 *    subscription on its channel with `after_id` below it), and every commit a writer saw
 *    acknowledged is stored.
 * 2. Nothing completed runs again: no handling of a (consumer, notification) started after the
 *    ledger had recorded that pair completed (`ledger_log` keeps every ledger write with its time).
 * 3. The ledger agrees with the handlers: every pair handled is completed in the ledger, every
 *    pair completed in the ledger was handled, and none is left failed.
 * 4. Duplicates (a pair handled more than once) are counted and attributed to a cause.
 * 5. Transactional consumers (their handling row is written in the attempt's transaction) have
 *    no duplicate at all: exactly one committed effect per owed notification.
 */
import type { Fault } from './chaos.js';
import { TRANSACTIONAL } from './consumers.js';
import type { Stack } from './stack.js';

/** One handler run. */
interface Handling {
  at: number;
  pid: number;
  attempt: number;
  isReplay: boolean;
}

/** The outcome of the checks. */
export interface Verdict {
  stored: number;
  owedPairs: number;
  handledRuns: number;
  handledPairs: number;
  /** Pairs owed but never handled. */
  lost: number;
  lostExamples: string[];
  /** Acknowledged commits missing from the table. */
  acknowledgedMissing: number;
  /** Handlings that started after the ledger recorded the pair completed. */
  rerunAfterCompleted: number;
  rerunExamples: string[];
  /** Pairs handled but not completed in the ledger, by explanation. */
  ledgerMissing: Record<string, number>;
  /** Pairs completed in the ledger that no handler recorded. */
  ledgerWithoutHandling: number;
  /** Pairs left failed in the ledger. */
  ledgerFailed: number;
  duplicates: number;
  duplicatesByCause: Record<string, number>;
  /** Effects of transactional consumers committed more than once (must be 0). */
  transactionalDuplicates: number;
  /** Failures that make the soak exit non-zero. */
  failures: string[];
}

/** Explains why `later` ran again after `earlier`, from the faults and the killed workers. */
function causeOf(
  earlier: Handling,
  later: Handling,
  faults: Fault[],
  killedWorkers: Map<number, number>,
): string {
  const killedAt = killedWorkers.get(earlier.pid);
  const prefix = later.isReplay ? 'final reconcile replay after ' : '';
  if (killedAt !== undefined && killedAt >= earlier.at && killedAt <= later.at) {
    return `${prefix}kill-worker (killed mid-job or before its outcome was recorded)`;
  }
  // The fault in progress around the earlier run (its write or its completion was cut off).
  const around = faults.find(
    (f) => f.startedAt - 1000 <= earlier.at && earlier.at <= f.endedAt + 5000,
  );
  if (around) return `${prefix}${around.kind} during the earlier run`;
  const between = faults.find((f) => f.startedAt >= earlier.at && f.startedAt <= later.at);
  if (between) return `${prefix}${between.kind} between the runs`;
  return `${prefix}unexplained`;
}

function bump(counts: Record<string, number>, key: string, by = 1): void {
  counts[key] = (counts[key] ?? 0) + by;
}

/** Runs every check; `acknowledgedIds` are the writers' acknowledged commits. */
export async function verify(
  stack: Stack,
  acknowledgedIds: string[],
  faults: Fault[],
  killedWorkers: Map<number, number>,
): Promise<Verdict> {
  const { pool, schema, soakSchema } = stack;
  const failures: string[] = [];
  const scalar = async (sql: string, params: unknown[] = []): Promise<number> =>
    (await pool.query<{ n: number }>(sql, params)).rows[0].n;

  const stored = await scalar(`SELECT count(*)::int AS n FROM ${schema}.notifications`);
  const owedSql = `
    SELECT s.consumer_id, n.id FROM ${schema}.notifications n
      JOIN ${schema}.subscriptions s ON s.channel = n.channel AND n.id > s.after_id`;
  const owedPairs = await scalar(`SELECT count(*)::int AS n FROM (${owedSql}) o`);
  const handledRuns = await scalar(`SELECT count(*)::int AS n FROM ${soakSchema}.handled`);
  const handledPairs = await scalar(
    `SELECT count(*)::int AS n FROM (SELECT DISTINCT consumer, notification_id FROM ${soakSchema}.handled) h`,
  );

  // 1. Loss.
  const lostRows = await pool.query<{ consumer_id: string; id: string }>(
    `SELECT o.consumer_id, o.id::text AS id FROM (${owedSql}) o
      WHERE NOT EXISTS (SELECT 1 FROM ${soakSchema}.handled h
                         WHERE h.consumer = o.consumer_id AND h.notification_id = o.id)
      ORDER BY o.id`,
  );
  const lost = lostRows.rowCount ?? 0;
  if (lost > 0) failures.push(`${lost} (consumer, notification) pairs were never handled`);
  const storedIds = new Set(
    (
      await pool.query<{ id: string }>(`SELECT id::text AS id FROM ${schema}.notifications`)
    ).rows.map((r) => r.id),
  );
  const acknowledgedMissing = acknowledgedIds.filter((id) => !storedIds.has(id)).length;
  if (acknowledgedMissing > 0) {
    failures.push(`${acknowledgedMissing} acknowledged commits are missing from the table`);
  }

  // 2. A handling that started after the ledger said "completed".
  const reruns = await pool.query<{
    consumer: string;
    notification_id: string;
    handled_at: Date;
    completed_at: Date;
  }>(
    `SELECT h.consumer, h.notification_id::text, h.handled_at, min(l.logged_at) AS completed_at
       FROM ${soakSchema}.handled h
       JOIN ${soakSchema}.ledger_log l
         ON l.consumer_id = h.consumer AND l.notification_id = h.notification_id
        AND l.status = 'completed' AND l.logged_at < h.handled_at
        -- A transactional consumer writes its ledger row first, in the handling's transaction.
        AND l.xact <> h.xact
      GROUP BY h.seq, h.consumer, h.notification_id, h.handled_at
      ORDER BY h.handled_at`,
  );
  const rerunAfterCompleted = reruns.rowCount ?? 0;
  if (rerunAfterCompleted > 0) {
    failures.push(
      `${rerunAfterCompleted} handlings started after the ledger recorded the pair completed`,
    );
  }

  // 3. Ledger agreement.
  const missing = await pool.query<{
    consumer: string;
    notification_id: string;
    pids: number[];
    last_at: Date;
  }>(
    `SELECT h.consumer, h.notification_id::text, array_agg(h.pid ORDER BY h.handled_at) AS pids,
            max(h.handled_at) AS last_at
       FROM ${soakSchema}.handled h
       LEFT JOIN ${schema}.deliveries d
         ON d.consumer_id = h.consumer AND d.notification_id = h.notification_id
      WHERE d.status IS DISTINCT FROM 'completed'
      GROUP BY h.consumer, h.notification_id`,
  );
  const ledgerMissing: Record<string, number> = {};
  for (const row of missing.rows) {
    const lastPid = row.pids[row.pids.length - 1];
    const killedAt = killedWorkers.get(lastPid);
    if (killedAt !== undefined && killedAt >= row.last_at.getTime()) {
      // The worker was killed after the handler ran and before its batched ledger write.
      bump(ledgerMissing, 'worker killed before its ledger write (BullMQ keeps the completed job)');
    } else {
      bump(ledgerMissing, 'unexplained');
    }
  }
  if (ledgerMissing.unexplained) {
    failures.push(`${ledgerMissing.unexplained} handled pairs have no completed ledger entry`);
  }
  const ledgerWithoutHandling = await scalar(
    `SELECT count(*)::int AS n FROM ${schema}.deliveries d
      WHERE d.status = 'completed' AND NOT EXISTS (
        SELECT 1 FROM ${soakSchema}.handled h
         WHERE h.consumer = d.consumer_id AND h.notification_id = d.notification_id)`,
  );
  if (ledgerWithoutHandling > 0) {
    failures.push(`${ledgerWithoutHandling} ledger completions have no recorded handling`);
  }
  const ledgerFailed = await scalar(
    `SELECT count(*)::int AS n FROM ${schema}.deliveries WHERE status = 'failed'`,
  );
  if (ledgerFailed > 0) failures.push(`${ledgerFailed} deliveries are left failed in the ledger`);

  // 4. Duplicates and their causes.
  const dups = await pool.query<{
    runs: Array<{ at: string; pid: number; attempt: number; is_replay: boolean }>;
  }>(
    `SELECT json_agg(json_build_object('at', handled_at, 'pid', pid, 'attempt', attempt,
                                       'is_replay', is_replay) ORDER BY handled_at) AS runs
       FROM ${soakSchema}.handled GROUP BY consumer, notification_id HAVING count(*) > 1`,
  );
  // 5. Transactional consumers: their handling row commits with the ledger row, exactly once.
  const transactionalDuplicates = await scalar(
    `SELECT coalesce(sum(n - 1), 0)::int AS n FROM (
       SELECT count(*) AS n FROM ${soakSchema}.handled WHERE consumer = ANY($1::text[])
        GROUP BY consumer, notification_id HAVING count(*) > 1) d`,
    [TRANSACTIONAL],
  );
  if (transactionalDuplicates > 0) {
    failures.push(
      `${transactionalDuplicates} effects of transactional consumers committed more than once`,
    );
  }

  const duplicatesByCause: Record<string, number> = {};
  let duplicates = 0;
  for (const { runs } of dups.rows) {
    const handlings: Handling[] = runs.map((r) => ({
      at: new Date(r.at).getTime(),
      pid: r.pid,
      attempt: r.attempt,
      isReplay: r.is_replay,
    }));
    for (let i = 1; i < handlings.length; i++) {
      duplicates++;
      bump(duplicatesByCause, causeOf(handlings[i - 1], handlings[i], faults, killedWorkers));
    }
  }

  return {
    stored,
    owedPairs,
    handledRuns,
    handledPairs,
    lost,
    lostExamples: lostRows.rows.slice(0, 10).map((r) => `${r.consumer_id}:${r.id}`),
    acknowledgedMissing,
    rerunAfterCompleted,
    rerunExamples: reruns.rows
      .slice(0, 10)
      .map(
        (r) =>
          `${r.consumer}:${r.notification_id} completed ${r.completed_at.toISOString()}, ran again ${r.handled_at.toISOString()}`,
      ),
    ledgerMissing,
    ledgerWithoutHandling,
    ledgerFailed,
    duplicates,
    duplicatesByCause,
    transactionalDuplicates,
    failures,
  };
}
