/**
 * The soak's final checks, on the settled state (after `reconcile --verify`, quiet, and a graceful
 * stop of every bridge process so that every ledger write is flushed):
 *
 * 1. No loss: every stored notification was handled by every consumer it is owed (the database's
 *    own rule: `<schema>.is_owed(id, xid, after_id, boundary)` of a subscription on its channel,
 *    commit visibility, not id order), and every commit a writer saw acknowledged is stored.
 * 2. Nothing completed runs again: no handling of a (consumer, notification) started after the
 *    ledger had recorded that pair completed (`ledger_log` keeps every ledger write; the time is
 *    when it committed, from track_commit_timestamp).
 * 3. The ledger agrees with the handlers: every pair handled is completed in the ledger, every
 *    pair completed in the ledger was handled, and none is left failed.
 * 4. Duplicates (a pair handled more than once) are counted and attributed to a cause.
 * 5. Transactional consumers (their handling row is written in the attempt's transaction) have
 *    no duplicate at all: exactly one committed effect per owed notification.
 * 6. No overlap: two runs of one (consumer, notification) never overlap in time (a run ends when
 *    its handler recorded its end, or at the latest when its process was killed or exited), also
 *    for runs that outlived their consumer's `timeout`.
 * 7. Ordered consumers, per key: the key's versions are 1..N in id order and as the writers'
 *    table says (commit order, nothing missing from the store), every one was handled, the
 *    first run of each starts only after the previous one was completed in the ledger, and no two
 *    runs of the key overlap.
 * 8. Rolling deploys (deploy.ts): the old code never ran a job of a channel it does not list.
 */
import type { Fault } from './chaos.js';
import { FIRST_VERSION, ORDERED, ROLLOUT, TIMED, TRANSACTIONAL } from './consumers.js';
import type { Stack } from './stack.js';
import type { WriterTotals } from './writers.js';

/** One handler run. */
interface Run {
  consumer: string;
  id: string;
  start: number;
  /** Its end: recorded by the handler, or its process's kill; undefined: unknown. */
  end: number | undefined;
  pid: number;
  attempt: number;
  isReplay: boolean;
  slow: boolean;
  outcome: string | null;
  key: string | null;
  version: number | null;
  /** Runs of one handleBatch call share it; `pos` is the place in the batch. */
  batchRun: string | null;
  pos: number | null;
}

/** Per-key checks of the ordered consumers. */
export interface OrderedVerdict {
  keys: number;
  notifications: number;
  /** Notifications whose versions are not 1..N in id order, or disagree with the writers' table. */
  sequenceBroken: number;
  /** Owed keyed notifications never handled. */
  missing: number;
  /** A later notification of a key started before the earlier one was completed. */
  outOfOrder: number;
  /** Two runs of one key overlapped in time. */
  overlaps: number;
  /** Runs whose end is unknown (neither recorded nor killed): not checked for overlap. */
  unknownEnds: number;
  examples: string[];
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
  /** Two runs of one (consumer, notification) that overlapped in time (must be 0). */
  pairOverlaps: number;
  overlapExamples: string[];
  /** Runs that meant to outlive their timeout (slow), and runs whose end is unknown. */
  slowRuns: number;
  unknownEnds: number;
  ordered: OrderedVerdict;
  /** Runs of the rollout consumer by a code version that does not list their channel. */
  foreignRuns: number;
  /** The rollout consumer's subscriptions and removed subscriptions at the end. */
  rolloutAtEnd: string;
  /** Failures that make the soak exit non-zero. */
  failures: string[];
}

/** Explains why `later` ran again after `earlier`, from the faults and the killed workers. */
function causeOf(
  earlier: Run,
  later: Run,
  faults: Fault[],
  killedWorkers: Map<number, number>,
): string {
  const killedAt = killedWorkers.get(earlier.pid);
  const prefix = later.isReplay ? 'reconcile replay after ' : '';
  if (killedAt !== undefined && killedAt >= earlier.start && killedAt <= later.start) {
    return `${prefix}kill-worker (killed mid-job or before its outcome was recorded)`;
  }
  // A retry (not a replay) after a run that failed or outlived its timeout on purpose.
  if (!later.isReplay && earlier.outcome === 'thrown')
    return 'the earlier attempt failed on purpose (retry)';
  if (!later.isReplay && earlier.slow) return 'the earlier run outlived its timeout (retry)';
  // The fault in progress around the earlier run (its write or its completion was cut off).
  const around = faults.find(
    (f) => f.startedAt - 1000 <= earlier.start && earlier.start <= f.endedAt + 5000,
  );
  if (around) return `${prefix}${around.kind} during the earlier run`;
  const between = faults.find((f) => f.startedAt >= earlier.start && f.startedAt <= later.start);
  if (between) return `${prefix}${between.kind} between the runs`;
  if (earlier.outcome === 'thrown') return `${prefix}the earlier attempt failed on purpose`;
  if (earlier.slow) return `${prefix}the earlier run outlived its timeout`;
  if (earlier.outcome === 'failed') return `${prefix}the earlier attempt failed`;
  const timeout = TIMED[earlier.consumer];
  if (
    !later.isReplay &&
    timeout !== undefined &&
    earlier.end !== undefined &&
    earlier.end - earlier.start > timeout / 2
  ) {
    // Its attempt's timer started before the handler's first write: the run took about that long.
    return `the earlier run took ${earlier.end - earlier.start >= timeout ? 'longer than' : 'close to'} its ${timeout} ms timeout (not on purpose: a loaded machine), retry`;
  }
  // No fault near: a stalled job (its lock not renewed in time on a loaded machine) or a
  // duplicate job; said apart by the attempt numbers and the earlier run's outcome.
  const how =
    later.attempt > earlier.attempt ? 'a later attempt' : `attempt ${later.attempt} again`;
  return `${prefix}unexplained: ${earlier.consumer}: ${how} after a run that ended ${earlier.outcome ?? 'unknown'}${
    later.pid === earlier.pid ? ', same process' : ''
  }`;
}

/**
 * When a logged ledger write (`ledger_log l`) committed: workers see it only then. From
 * track_commit_timestamp (stack.ts); the statement's own time if that is unknown.
 */
const COMMITTED = 'coalesce(pg_xact_commit_timestamp(l.xmin), l.logged_at)';

function bump(counts: Record<string, number>, key: string, by = 1): void {
  counts[key] = (counts[key] ?? 0) + by;
}

function describe(run: Run | undefined): string {
  if (!run) return '?';
  const batch = run.batchRun === null ? '' : `, handleBatch call ${run.batchRun} #${run.pos}`;
  return `pid ${run.pid}, attempt ${run.attempt}${run.isReplay ? ', replay' : ''}${batch}`;
}

function iso(ms: number | undefined): string {
  return ms === undefined ? '?' : new Date(ms).toISOString().slice(11, 23);
}

/** Runs every check; `writers` holds the writers' acknowledged commits. */
export async function verify(
  stack: Stack,
  writers: WriterTotals,
  faults: Fault[],
  killedWorkers: Map<number, number>,
  workerEnds: Map<number, number>,
): Promise<Verdict> {
  const { pool, schema, soakSchema } = stack;
  const failures: string[] = [];
  const scalar = async (sql: string, params: unknown[] = []): Promise<number> =>
    (await pool.query<{ n: number }>(sql, params)).rows[0].n;

  const stored = await scalar(`SELECT count(*)::int AS n FROM ${schema}.notifications`);
  const owedSql = `
    SELECT s.consumer_id, n.id FROM ${schema}.notifications n
      JOIN ${schema}.subscriptions s ON s.channel = n.channel
       AND ${schema}.is_owed(n.id, n.xid, s.after_id, s.boundary)`;
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
  const acknowledgedMissing = writers.acknowledgedIds.filter((id) => !storedIds.has(id)).length;
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
    `SELECT h.consumer, h.notification_id::text, h.handled_at, min(${COMMITTED}) AS completed_at
       FROM ${soakSchema}.handled h
       JOIN ${soakSchema}.ledger_log l
         ON l.consumer_id = h.consumer AND l.notification_id = h.notification_id
        AND l.status = 'completed' AND ${COMMITTED} < h.handled_at
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

  // Every run, grouped by (consumer, notification), in start order.
  const { rows: runRows } = await pool.query<{
    consumer: string;
    id: string;
    start: Date;
    ended_at: Date | null;
    pid: number;
    attempt: number;
    is_replay: boolean;
    slow: boolean;
    outcome: string | null;
    key: string | null;
    version: number | null;
    batch_run: string | null;
    pos: number | null;
  }>(
    `SELECT consumer, notification_id::text AS id, handled_at AS start, ended_at, pid, attempt,
            is_replay, slow, outcome, key, version, batch_run::text, pos
       FROM ${soakSchema}.handled ORDER BY handled_at, seq`,
  );
  const runsByPair = new Map<string, Run[]>();
  let unknownEnds = 0;
  let slowRuns = 0;
  for (const r of runRows) {
    const start = r.start.getTime();
    // Not recorded: the run ended at the latest when its process was killed or exited.
    const goneAt = workerEnds.get(r.pid);
    const end =
      r.ended_at?.getTime() ?? (goneAt !== undefined && goneAt >= start ? goneAt : undefined);
    if (end === undefined) unknownEnds++;
    if (r.slow) slowRuns++;
    const run: Run = {
      consumer: r.consumer,
      id: r.id,
      start,
      end,
      pid: r.pid,
      attempt: r.attempt,
      isReplay: r.is_replay,
      slow: r.slow,
      outcome: r.outcome,
      key: r.key,
      version: r.version,
      batchRun: r.batch_run,
      pos: r.pos,
    };
    const pair = `${r.consumer}:${r.id}`;
    const list = runsByPair.get(pair);
    if (list) list.push(run);
    else runsByPair.set(pair, [run]);
  }

  // 4. Duplicates and their causes; 6. no overlap of one pair's runs.
  const duplicatesByCause: Record<string, number> = {};
  let duplicates = 0;
  let pairOverlaps = 0;
  const overlapExamples: string[] = [];
  for (const [pair, runs] of runsByPair) {
    let lastEnd = -Infinity;
    let lastRun: Run | undefined;
    for (let i = 0; i < runs.length; i++) {
      const run = runs[i];
      if (i > 0) {
        duplicates++;
        bump(duplicatesByCause, causeOf(runs[i - 1], run, faults, killedWorkers));
        if (run.start < lastEnd) {
          pairOverlaps++;
          if (overlapExamples.length < 10) {
            overlapExamples.push(
              `${pair}: run from ${iso(lastRun?.start)} to ${iso(lastRun?.end)} (${describe(lastRun)}) ` +
                `overlaps the run from ${iso(run.start)} (${describe(run)})`,
            );
          }
        }
      }
      if (run.end !== undefined && run.end > lastEnd) {
        lastEnd = run.end;
        lastRun = run;
      }
    }
  }
  if (pairOverlaps > 0) {
    failures.push(`${pairOverlaps} runs overlapped an earlier run of the same delivery`);
  }

  // 5. Transactional consumers: their handling row commits with the ledger row, exactly once.
  let transactionalDuplicates = 0;
  for (const [pair, runs] of runsByPair) {
    if (TRANSACTIONAL.includes(pair.slice(0, pair.indexOf(':')))) {
      transactionalDuplicates += runs.length - 1;
    }
  }
  if (transactionalDuplicates > 0) {
    failures.push(
      `${transactionalDuplicates} effects of transactional consumers committed more than once`,
    );
  }

  // 8. Rolling deploys: v1 (which does not list the added channel) never ran one of its jobs.
  const foreignRuns = await scalar(
    `SELECT count(*)::int AS n FROM ${soakSchema}.handled
      WHERE consumer = $1 AND code = $2 AND channel <> ALL($3::text[])`,
    [ROLLOUT, FIRST_VERSION.code, FIRST_VERSION.rolloutChannels],
  );
  if (foreignRuns > 0) {
    failures.push(`${foreignRuns} runs of ${ROLLOUT} by code that does not list their channel`);
  }
  const { rows: subs } = await pool.query<{ what: string }>(
    `SELECT 'subscribed ' || channel || ' after id ' || after_id ||
            CASE WHEN boundary IS NULL THEN '' ELSE ' (boundary ' || boundary::text || ')' END AS what
       FROM ${schema}.subscriptions WHERE consumer_id = $1
     UNION ALL
     SELECT 'removed ' || channel || ' at ' || to_char(removed_at, 'HH24:MI:SS')
       FROM ${schema}.removed_subscriptions WHERE consumer_id = $1`,
    [ROLLOUT],
  );
  const rolloutAtEnd = subs.map((r) => r.what).join('; ');

  // 7. Ordered consumers, per key.
  const ordered = await verifyOrdered(stack, writers, runsByPair);
  failures.push(...orderedFailures(ordered));

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
    pairOverlaps,
    overlapExamples,
    slowRuns,
    unknownEnds,
    ordered,
    foreignRuns,
    rolloutAtEnd,
    failures,
  };
}

function orderedFailures(o: OrderedVerdict): string[] {
  const out: string[] = [];
  if (o.keys === 0) out.push('ordered consumers: no keyed notification was checked');
  if (o.sequenceBroken > 0) {
    out.push(`ordered: ${o.sequenceBroken} keyed notifications break their key's commit sequence`);
  }
  if (o.missing > 0) out.push(`ordered: ${o.missing} keyed notifications were never handled`);
  if (o.outOfOrder > 0) {
    out.push(`ordered: ${o.outOfOrder} runs started before the key's previous one completed`);
  }
  if (o.overlaps > 0) out.push(`ordered: ${o.overlaps} runs overlapped another run of their key`);
  return out;
}

/** Check 7, for every ordered consumer and key. */
async function verifyOrdered(
  stack: Stack,
  writers: WriterTotals,
  runsByPair: Map<string, Run[]>,
): Promise<OrderedVerdict> {
  const { pool, schema, soakSchema } = stack;
  const v: OrderedVerdict = {
    keys: 0,
    notifications: 0,
    sequenceBroken: 0,
    missing: 0,
    outOfOrder: 0,
    overlaps: 0,
    unknownEnds: 0,
    examples: [],
  };
  const example = (text: string): void => {
    if (v.examples.length < 10) v.examples.push(text);
  };
  // The writers' truth: each key's last committed version.
  const { rows: truthRows } = await pool.query<{ key: string; version: number }>(
    `SELECT key, version FROM ${soakSchema}.accounts
     UNION ALL SELECT '${soakSchema}.rows:' || id, version FROM ${soakSchema}.rows`,
  );
  const truth = new Map(truthRows.map((r) => [r.key, r.version]));
  for (const [key, version] of writers.ackedVersions) {
    if ((truth.get(key) ?? 0) < version) {
      v.sequenceBroken++;
      example(`${key}: version ${version} was acknowledged, the table has ${truth.get(key)}`);
    }
  }
  for (const consumer of ORDERED) {
    const { rows } = await pool.query<{
      id: string;
      key: string;
      version: number | null;
      completed_at: Date | null;
    }>(
      `SELECT n.id::text AS id, n.key,
              coalesce(n.payload->>'version', n.payload->'new'->>'version')::int AS version,
              (SELECT min(${COMMITTED}) FROM ${soakSchema}.ledger_log l
                WHERE l.consumer_id = s.consumer_id AND l.notification_id = n.id
                  AND l.status IN ('completed', 'skipped')) AS completed_at
         FROM ${schema}.notifications n
         JOIN ${schema}.subscriptions s ON s.channel = n.channel
          AND ${schema}.is_owed(n.id, n.xid, s.after_id, s.boundary)
        WHERE s.consumer_id = $1 AND n.key IS NOT NULL
        ORDER BY n.key, n.id`,
      [consumer],
    );
    const byKey = new Map<string, typeof rows>();
    for (const r of rows) {
      const list = byKey.get(r.key);
      if (list) list.push(r);
      else byKey.set(r.key, [r]);
    }
    v.keys += byKey.size;
    v.notifications += rows.length;
    for (const [key, list] of byKey) {
      // The sequence: versions 1..N in id order, N the table's version.
      list.forEach((r, i) => {
        if (r.version !== i + 1) {
          v.sequenceBroken++;
          example(
            `${consumer} ${key}: notification ${r.id} is #${i + 1} by id, version ${r.version}`,
          );
        }
      });
      if (list.length !== truth.get(key)) {
        v.sequenceBroken++;
        example(
          `${consumer} ${key}: ${list.length} notifications, the table's version is ${truth.get(key)}`,
        );
      }
      // Commit order: each notification's first run starts after the previous one completed.
      const keyRuns: Run[] = [];
      let previous: { id: string; completedAt: number | undefined; runs: Run[] } | undefined;
      for (const r of list) {
        const runs = runsByPair.get(`${consumer}:${r.id}`) ?? [];
        if (runs.length === 0) {
          v.missing++;
          example(`${consumer} ${key}: notification ${r.id} (version ${r.version}) never handled`);
        }
        keyRuns.push(...runs);
        const first = runs[0];
        // In one handleBatch call, the batch's order is the order: after the previous one.
        const inBatchAfter = (prev: Run[]): boolean =>
          first.batchRun !== null &&
          prev.some((p) => p.batchRun === first.batchRun && (p.pos ?? 0) < (first.pos ?? 0));
        if (first && previous && !inBatchAfter(previous.runs)) {
          if (previous.completedAt === undefined || first.start < previous.completedAt) {
            v.outOfOrder++;
            example(
              `${consumer} ${key}: ${r.id} started ${iso(first.start)}, before ${previous.id} completed (${iso(previous.completedAt)})`,
            );
          }
        }
        const lastRun = runs[runs.length - 1];
        previous = { id: r.id, completedAt: r.completed_at?.getTime() ?? lastRun?.end, runs };
      }
      // Never two runs of the key at once (the runs of one handleBatch call are one run).
      keyRuns.sort((a, b) => a.start - b.start);
      let lastEnd = -Infinity;
      let lastRun: Run | undefined;
      for (const run of keyRuns) {
        if (run.start < lastEnd && !(run.batchRun !== null && run.batchRun === lastRun?.batchRun)) {
          v.overlaps++;
          example(
            `${consumer} ${key}: ${run.id} started ${iso(run.start)} while ${lastRun?.id} ran (to ${iso(lastRun?.end)})`,
          );
        }
        if (run.end === undefined) v.unknownEnds++;
        else if (run.end > lastEnd) {
          lastEnd = run.end;
          lastRun = run;
        }
      }
    }
  }
  return v;
}
