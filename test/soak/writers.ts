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
  channels: readonly string[];
  writers: number;
  /** Commits per second, all writers together. */
  ratePerSecond: number;
}

/** What the writers did. */
export interface WriterTotals {
  acknowledged: number;
  /** Commits whose outcome is unknown (connection lost in flight). */
  uncertain: number;
  /** Statements that failed (Postgres down): nothing stored. */
  failed: number;
  /** Every acknowledged notification id. */
  acknowledgedIds: string[];
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

/** Starts `writers` writers that commit at `ratePerSecond` in total until stopped. */
export function startWriters(options: WritersOptions): Writers {
  const totals: WriterTotals = { acknowledged: 0, uncertain: 0, failed: 0, acknowledgedIds: [] };
  let stopping = false;
  const intervalMs = (1000 * options.writers) / options.ratePerSecond;

  const writer = async (index: number): Promise<void> => {
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
            application_name: `soak writer ${index}`,
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
      const channel = options.channels[Math.floor(Math.random() * options.channels.length)];
      try {
        const { rows } = await client.query<{ id: string }>(
          `SELECT "${options.schema}".notify($1, $2::jsonb)::text AS id`,
          [channel, JSON.stringify({ writer: index, seq, at: Date.now() })],
        );
        totals.acknowledged++;
        totals.acknowledgedIds.push(rows[0].id);
      } catch (error) {
        if (surelyNotCommitted(error)) totals.failed++;
        else totals.uncertain++;
        await client.end().catch(() => undefined);
        client = undefined;
      }
    }
    await client?.end().catch(() => undefined);
  };

  const running = Array.from({ length: options.writers }, (_, i) => writer(i + 1));
  return {
    totals,
    async stop() {
      stopping = true;
      await Promise.all(running);
    },
  };
}
