import type pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import type { Queryable } from './rows.js';

/** What a worker registers for a consumer. */
export interface ConsumerRegistration {
  id: string;
  channels: string[];
  jobOptions: Record<string, unknown>;
  batch: { size: number; maxWaitMs: number } | null;
  startFrom: 'beginning' | 'now';
  worker: string;
  /** Hash of the definition (channels, job options, batch, settings): its identity in history. */
  fingerprint: string;
  /** What the definition says beyond job options (ordered, concurrency, timeout...), for display. */
  settings: Record<string, unknown>;
}

/**
 * Whose job options are in force after a registration:
 * - `new`: this definition was never registered before: the newest one wins;
 * - `current`: it already was the one in force;
 * - `kept-newer`: an older definition (an old replica mid-deploy): the newer options stay;
 * - `reinstated`: an older definition, and no worker ran the newer one for
 *   {@link STALE_DEFINITION_SECONDS}: a rollback, so its options are back in force.
 */
export type OptionsDecision = 'new' | 'current' | 'kept-newer' | 'reinstated';

/** What registering one consumer did. */
export interface RegistrationResult {
  consumerId: string;
  /** The consumer was retired (`consumers remove`) after this definition was registered. */
  retired: boolean;
  /** The consumer row was created (or brought back after retirement) by this call. */
  isNewConsumer: boolean;
  /** Subscriptions created by this call, with their start. */
  created: { channel: string; afterId: string }[];
  /** Subscribed channels this definition does not list (kept: another version may list them). */
  kept: string[];
  /** Listed channels an operator removed after this definition was registered (not re-added). */
  removedByOperator: string[];
  options: OptionsDecision;
}

/**
 * A superseded definition gets its options back only when the one in force has not been seen
 * (registered or heartbeated, every 30 s) for this long: no worker runs it any more.
 */
export const STALE_DEFINITION_SECONDS = 120;

/**
 * Registers one consumer definition; the caller holds the subscriptions lock (exclusive) inside
 * a transaction. Never removes a subscription. `maxId` is the newest stored notification id, the
 * start of subscriptions created now (unless a new consumer starts from the beginning).
 */
export async function registerOne(
  client: pg.PoolClient | pg.Client,
  schema: string,
  c: ConsumerRegistration,
  maxId: string,
  snapshot: string | null = null,
): Promise<RegistrationResult> {
  const s = quoteIdent(schema);
  const jobOptions = JSON.stringify(c.jobOptions);
  const batch = c.batch ? JSON.stringify(c.batch) : null;
  const upsert = await client.query<{
    inserted: boolean;
    definition: string | null;
    retired_at: Date | null;
  }>(
    `INSERT INTO ${s}.consumers AS c
            (id, job_options, batch, start_from, last_seen_at, last_seen_worker, definition)
     VALUES ($1, $2, $3, $4, now(), $5, $6)
     ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), last_seen_worker = EXCLUDED.last_seen_worker
     RETURNING (xmax = 0) AS inserted, c.definition, c.retired_at`,
    [c.id, jobOptions, batch, c.startFrom, c.worker, c.fingerprint],
  );
  let { inserted: isNewConsumer, definition: current } = upsert.rows[0];
  const retiredAt = upsert.rows[0].retired_at;
  const known = await client.query<{ first: Date }>(
    `SELECT first_registered_at AS first FROM ${s}.consumer_definitions
      WHERE consumer_id = $1 AND fingerprint = $2`,
    [c.id, c.fingerprint],
  );
  const firstRegistered = known.rows[0]?.first ?? null;
  const result: RegistrationResult = {
    consumerId: c.id,
    retired: false,
    isNewConsumer,
    created: [],
    kept: [],
    removedByOperator: [],
    options: 'current',
  };
  if (retiredAt !== null) {
    // Only a definition first registered after the retirement brings the consumer back.
    if (firstRegistered !== null && firstRegistered <= retiredAt) {
      return { ...result, retired: true };
    }
    isNewConsumer = true;
    current = null;
    await client.query(
      `UPDATE ${s}.consumers SET retired_at = NULL, registered_at = now(), start_from = $2
        WHERE id = $1`,
      [c.id, c.startFrom],
    );
  }
  await client.query(
    `INSERT INTO ${s}.consumer_definitions
            (consumer_id, fingerprint, channels, job_options, batch, settings, last_seen_worker)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (consumer_id, fingerprint) DO UPDATE
       SET last_seen_at = clock_timestamp(), last_seen_worker = EXCLUDED.last_seen_worker`,
    [c.id, c.fingerprint, c.channels, jobOptions, batch, JSON.stringify(c.settings), c.worker],
  );
  result.isNewConsumer = isNewConsumer;
  result.options = await decideOptions(client, s, c, current, firstRegistered !== null);
  if (result.options !== 'current' && result.options !== 'kept-newer') {
    await client.query(
      `UPDATE ${s}.consumers
          SET job_options = $2, batch = $3, definition = $4,
              updated_at = CASE WHEN (job_options, batch) IS DISTINCT FROM ($2::jsonb, $3::jsonb)
                                THEN now() ELSE updated_at END
        WHERE id = $1`,
      [c.id, jobOptions, batch, c.fingerprint],
    );
  }
  await subscribe(client, s, c, { maxId, snapshot }, result);
  return result;
}

/** Applies the "newest definition wins" rule (see {@link OptionsDecision}). */
async function decideOptions(
  client: pg.PoolClient | pg.Client,
  s: string,
  c: ConsumerRegistration,
  current: string | null,
  known: boolean,
): Promise<OptionsDecision> {
  // Registered before migration 0008 (no fingerprint recorded), or a consumer created (or
  // brought back) just now: this definition is the only one known.
  if (current === null) return 'new';
  if (current === c.fingerprint) return 'current';
  if (!known) return 'new';
  const stale = await client.query<{ stale: boolean }>(
    `SELECT coalesce(bool_and(last_seen_at < clock_timestamp() - $3 * interval '1 second'), true)
              AS stale
       FROM ${s}.consumer_definitions WHERE consumer_id = $1 AND fingerprint = $2`,
    [c.id, current, STALE_DEFINITION_SECONDS],
  );
  return stale.rows[0].stale ? 'reinstated' : 'kept-newer';
}

/** Adds the listed channels (except those an operator removed since), never removes one. */
async function subscribe(
  client: pg.PoolClient | pg.Client,
  s: string,
  c: ConsumerRegistration,
  { maxId, snapshot }: { maxId: string; snapshot: string | null },
  result: RegistrationResult,
): Promise<void> {
  const removed = await client.query<{ channel: string }>(
    `SELECT r.channel FROM ${s}.removed_subscriptions r
       JOIN ${s}.consumer_definitions d ON d.consumer_id = r.consumer_id AND d.fingerprint = $3
      WHERE r.consumer_id = $1 AND r.channel = ANY($2::text[])
        AND r.removed_at >= d.first_registered_at
      ORDER BY r.channel`,
    [c.id, c.channels, c.fingerprint],
  );
  result.removedByOperator = removed.rows.map((r) => r.channel);
  const wanted = c.channels.filter((ch) => !result.removedByOperator.includes(ch));
  // A brand-new consumer with startFrom 'beginning' is owed everything; a channel added later
  // to an existing consumer starts from now.
  const afterId = result.isNewConsumer && c.startFrom === 'beginning' ? '0' : maxId;
  // Commit order (migration 0007): a row at or below maxId that this snapshot does not see
  // committed after the subscription started, so it is owed too.
  const boundary = afterId === '0' ? null : snapshot;
  const subs = await client.query<{ channel: string; after_id: string }>(
    // playback_through_id: rows up to the newest stored one may have been bridged before
    // this subscription existed; playback (src/recover/playback.ts) enqueues those for it.
    `INSERT INTO ${s}.subscriptions (consumer_id, channel, after_id, playback_through_id, boundary)
     SELECT $1, ch, $3, $4, $5::pg_snapshot FROM unnest($2::text[]) AS ch
     ON CONFLICT (consumer_id, channel) DO NOTHING
     RETURNING channel, after_id`,
    [c.id, wanted, afterId, maxId, boundary],
  );
  result.created = subs.rows.map((r) => ({ channel: r.channel, afterId: r.after_id }));
  await client.query(
    `DELETE FROM ${s}.removed_subscriptions WHERE consumer_id = $1 AND channel = ANY($2::text[])`,
    [c.id, wanted],
  );
  const kept = await client.query<{ channel: string }>(
    `SELECT channel FROM ${s}.subscriptions
      WHERE consumer_id = $1 AND NOT (channel = ANY($2::text[])) ORDER BY channel`,
    [c.id, c.channels],
  );
  result.kept = kept.rows.map((r) => r.channel);
}

/** Records that a worker still runs these definitions (heartbeat; shown by `consumers list`). */
export async function touchDefinitions(
  db: Queryable,
  schema: string,
  definitions: { id: string; fingerprint: string }[],
  worker: string,
): Promise<void> {
  const s = quoteIdent(schema);
  await db.query(
    `WITH seen AS (SELECT * FROM unnest($1::text[], $2::text[]) AS t(id, fingerprint)),
          c AS (UPDATE ${s}.consumers SET last_seen_at = now(), last_seen_worker = $3
                 WHERE id IN (SELECT id FROM seen) RETURNING 1)
     UPDATE ${s}.consumer_definitions d SET last_seen_at = clock_timestamp(), last_seen_worker = $3
       FROM seen WHERE d.consumer_id = seen.id AND d.fingerprint = seen.fingerprint`,
    [definitions.map((d) => d.id), definitions.map((d) => d.fingerprint), worker],
  );
}

/** Which of `channels` the consumer subscribes to now. */
export async function subscribedAmong(
  db: Queryable,
  schema: string,
  consumerId: string,
  channels: string[],
): Promise<Set<string>> {
  const res = await db.query<{ channel: string }>(
    `SELECT channel FROM ${quoteIdent(schema)}.subscriptions
      WHERE consumer_id = $1 AND channel = ANY($2::text[])`,
    [consumerId, channels],
  );
  return new Set(res.rows.map((r) => r.channel));
}
