/**
 * The soak's application: writers that commit one notification per transaction through the SQL
 * `notify()`, straight to Postgres (the app's own path, not the bridge's proxied one).
 *
 * A writer knows three outcomes: acknowledged (the commit answered with an id), refused (the
 * statement failed before commit: nothing stored) and uncertain (the connection died while the
 * commit was in flight: it may or may not be stored). The table is the truth of what was
 * committed; the writers' own record is used to check it: every acknowledged id must be stored.
 */
import pg from 'pg';

/** Options of {@link startWriters}. */
export interface WritersOptions {
  databaseUrl: string;
  schema: string;
  /** The soak's own schema (the keyed writers' tables). */
  soakSchema: string;
  channels: readonly string[];
  writers: number;
  /** Commits per second, all writers together. */
  ratePerSecond: number;
  /** Keyed writers: half through `notify(channel, payload, key)`, half through the trigger. */
  keyedWriters: number;
  /** Keyed commits per second, all keyed writers together. */
  keyedRatePerSecond: number;
  /** Distinct keys per keyed channel. */
  keys: number;
  keyedChannels: { notify: string; trigger: string };
}

/** What the writers did. */
export interface WriterTotals {
  acknowledged: number;
  /** Commits whose outcome is unknown (connection lost in flight). */
  uncertain: number;
  /** Statements that failed (Postgres down): nothing stored. */
  failed: number;
  /** Every acknowledged notification id (plain and `notify`-keyed writers). */
  acknowledgedIds: string[];
  /** Keyed commits acknowledged (part of `acknowledged`). */
  keyedAcknowledged: number;
  /** Per key (as the notification carries it): the highest version a commit acknowledged. */
  ackedVersions: Map<string, number>;
}

/** Running writers. */
export interface Writers {
  readonly totals: WriterTotals;
  /** Stops after the commit in flight; resolves when every writer has stopped. */
  stop(): Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether a pg error means "the statement surely did not commit". */
function surelyNotCommitted(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  // An SQLSTATE from the server (e.g. 57P01 admin_shutdown before the statement ran, 57P03
  // cannot_connect_now) means the server answered: the autocommit statement failed. Socket
  // errors (no code, or ECONN*) leave the outcome unknown.
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && !code.startsWith('08');
}

/** One commit of a writer; resolves when it was acknowledged. */
type Step = (client: pg.Client, seq: number) => Promise<void>;

/**
 * Starts the writers until stopped: `writers` plain ones at `ratePerSecond` in total (one
 * `notify()` per transaction) and `keyedWriters` keyed ones at `keyedRatePerSecond`. A keyed commit
 * bumps its key's version under the key's row lock (so one key's commits are serialized and its
 * versions follow commit order) and stores a notification carrying the version: through
 * `notify(channel, payload, key)` (keys `acct-<n>`), or by the `triggers add` trigger on the rows
 * table (keys `<soak schema>.rows:<id>`).
 */
export function startWriters(options: WritersOptions): Writers {
  const totals: WriterTotals = {
    acknowledged: 0,
    uncertain: 0,
    failed: 0,
    acknowledgedIds: [],
    keyedAcknowledged: 0,
    ackedVersions: new Map(),
  };
  let stopping = false;

  const loop = async (name: string, intervalMs: number, step: Step): Promise<void> => {
    let client: pg.Client | undefined;
    let seq = 0;
    let next = performance.now() + Math.random() * intervalMs;
    while (!stopping) {
      const wait = next - performance.now();
      if (wait > 0) await sleep(wait);
      next = Math.max(next + intervalMs, performance.now() - intervalMs);
      try {
        if (!client) {
          const fresh = new pg.Client({
            connectionString: options.databaseUrl,
            connectionTimeoutMillis: 3000,
            application_name: `soak ${name}`,
          });
          fresh.on('error', () => undefined);
          try {
            await fresh.connect();
          } catch (error) {
            await fresh.end().catch(() => undefined);
            throw error;
          }
          client = fresh;
        }
      } catch {
        totals.failed++;
        await sleep(200);
        continue;
      }
      seq++;
      try {
        await step(client, seq);
        totals.acknowledged++;
      } catch (error) {
        if (surelyNotCommitted(error)) totals.failed++;
        else totals.uncertain++;
        await client.end().catch(() => undefined);
        client = undefined;
      }
    }
    await client?.end().catch(() => undefined);
  };

  const plain =
    (index: number): Step =>
    async (client, seq) => {
      const channel = options.channels[Math.floor(Math.random() * options.channels.length)];
      const { rows } = await client.query<{ id: string }>(
        `SELECT "${options.schema}".notify($1, $2::jsonb)::text AS id`,
        [channel, JSON.stringify({ writer: index, seq, at: Date.now() })],
      );
      totals.acknowledgedIds.push(rows[0].id);
    };

  const acked = (key: string, version: number): void => {
    totals.keyedAcknowledged++;
    if ((totals.ackedVersions.get(key) ?? 0) < version) totals.ackedVersions.set(key, version);
  };

  /** One keyed commit; a failure rolls back (an open transaction is not reused: the client ends). */
  const keyed =
    (viaTrigger: boolean): Step =>
    async (client) => {
      const k = 1 + Math.floor(Math.random() * options.keys);
      await client.query('BEGIN');
      if (viaTrigger) {
        const { rows } = await client.query<{ version: number }>(
          `INSERT INTO "${options.soakSchema}".${options.keyedChannels.trigger} AS r (id, version)
           VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET version = r.version + 1
           RETURNING version`,
          [k],
        );
        await client.query('COMMIT');
        acked(`${options.soakSchema}.${options.keyedChannels.trigger}:${k}`, rows[0].version);
      } else {
        const key = `acct-${k}`;
        const { rows } = await client.query<{ version: number }>(
          `INSERT INTO "${options.soakSchema}".accounts AS a (key, version) VALUES ($1, 1)
           ON CONFLICT (key) DO UPDATE SET version = a.version + 1 RETURNING version`,
          [key],
        );
        const version = rows[0].version;
        const { rows: ids } = await client.query<{ id: string }>(
          `SELECT "${options.schema}".notify($1, $2::jsonb, $3)::text AS id`,
          [options.keyedChannels.notify, JSON.stringify({ key, version }), key],
        );
        await client.query('COMMIT');
        totals.acknowledgedIds.push(ids[0].id);
        acked(key, version);
      }
    };

  const running = [
    ...Array.from({ length: options.writers }, (_, i) =>
      loop(`writer ${i + 1}`, (1000 * options.writers) / options.ratePerSecond, plain(i + 1)),
    ),
    ...Array.from({ length: options.keyedWriters }, (_, i) =>
      loop(
        `keyed writer ${i + 1}`,
        (1000 * options.keyedWriters) / options.keyedRatePerSecond,
        keyed(i % 2 === 1),
      ),
    ),
  ];
  return {
    totals,
    async stop() {
      stopping = true;
      await Promise.all(running);
    },
  };
}
