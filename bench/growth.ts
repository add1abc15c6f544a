/**
 * Growth benchmark (issue 16): what the tables cost as they grow to 10 million notifications.
 *
 * The table is filled in bulk (generate_series INSERTs of bridged rows, each with a `completed`
 * ledger row for two no-op consumers, one of them with `removeOnComplete`: the state a table is
 * in after the bridge and the workers went through it), and at 0, 1, 5 and 10 million rows
 * (or at 0, 10%, 50% and 100% of `--rows`) the bench prints:
 *
 * - table and index sizes of notifications and deliveries;
 * - `notify()` cost: mean time of one `SELECT notify()` on one connection (`--sample` calls);
 * - bridging latency: a real listener (`createListener`, batches of 500) bridging `--sample`
 *   fresh rows to both consumers' queues; time per batch (claim + addBulk + commit);
 * - cleanup rate: `cleanup` deleting the oldest `--cleanup` rows (rows/s), and the tps of 4
 *   writers calling `notify()` meanwhile against their tps before it;
 * - `reconcile --verify` over the whole table (the built CLI in a child): rows/s and peak RSS;
 * - notify() cost and bridging latency again while a REPEATABLE READ transaction is held open
 *   (a pg_dump, a lagging replica slot): dead rows pile up behind its snapshot;
 * - what `listen --recover` adds to a listener's start (its bounded `reconcile --verify` of the
 *   last 24 hours, the same call the CLI makes), and the batch time of a `--channels` listener
 *   while another channel has a backlog of `--backlog` unbridged rows (issue 16, item 4: both
 *   must cost the work they do, not the size of the table).
 *
 * Run: `npm run bench:growth [-- --rows N] [-- --sample N] [-- --cleanup N] [-- --backlog N]`. The full 10M run
 * needs a quiet machine, about 10 GB of disk and an hour or more; `--rows 200000` checks it works.
 * Everything lives in a schema and a Redis prefix named `pgqbench_growth_*`, removed at the end.
 */
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import {
  cleanup,
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  reconcile,
} from 'pgq-bridge';
import {
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  clearPrefix,
  cliEnv,
  dropSchemas,
  isMain,
  printTable,
  round,
  sleep,
} from './lib/common.js';
import { runReconcileCli } from './reconcile.js';

/** Settings of the benchmark. */
export interface GrowthOptions {
  rows: number;
  /** notify() calls and rows bridged per measurement. */
  sample: number;
  /** Rows cleanup deletes at each checkpoint. */
  cleanup: number;
  /** Unbridged rows of another channel while the `--channels` listener is measured. */
  backlog: number;
}

/** The figures of one checkpoint. */
export interface GrowthFigure {
  rows: number;
  notificationsMb: number;
  notificationIndexesMb: number;
  deliveriesMb: number;
  notifyUs: number;
  bridgeBatchMs: number;
  cleanupRowsPerSecond: number | null;
  writerTpsRatio: number | null;
  verifyRowsPerSecond: number | null;
  verifyPeakRssMb: number | null;
  heldNotifyUs: number;
  heldBridgeBatchMs: number;
  /** ms of the bounded `reconcile --verify` that `listen --recover` runs before listening. */
  recoverMs: number;
  /** ms per batch of a `--channels growth-other` listener, another channel's backlog waiting. */
  channelsBridgeBatchMs: number;
}

/** The settings every call of the run uses. */
interface BenchSettings {
  databaseUrl: string;
  listenDatabaseUrl: string;
  redisUrl: string;
  schema: string;
  prefix: string;
}

const CHANNEL = 'growth';
/** The channel of the `--channels` listener, and the channel whose backlog it must not pay for. */
const OWN_CHANNEL = 'growth-other';
const BACKLOG_CHANNEL = 'growth-backlog';
/** `listen --recover` verifies the rows of the last 24 hours (src/cli/listen.ts). */
const RECOVER_WINDOW_MS = 24 * 3600 * 1000;
/** Bulk rows are stamped 1 ms apart from this long ago on, so cleanup can pick the oldest. */
const AGE_DAYS = 400;
const FILL_CHUNK = 250_000;
const BRIDGE_BATCH = 500;

function flag(argv: string[], name: string, fallback: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(argv[i + 1]);
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`--${name}: a positive integer`);
  return value;
}

/** The row counts figures are taken at: 0, 1M, 5M, 10M, or the same fractions of `rows`. */
export function checkpointsFor(rows: number): number[] {
  const at = rows >= 10_000_000 ? [0, 1_000_000, 5_000_000, 10_000_000] : [0, 0.1, 0.5, 1];
  return [...new Set(at.map((x) => (x > 1 ? x : Math.round(x * rows))))].filter((n) => n <= rows);
}

class Growth {
  private stored = 0;
  private deleted = 0;
  /** created_at of bulk row i is base + i ms: one fixed base, so cleanup can pick exactly. */
  private readonly base = new Date(Date.now() - AGE_DAYS * 86_400_000).toISOString();

  constructor(
    private readonly db: pg.Pool,
    private readonly schema: string,
    private readonly settings: BenchSettings,
    private readonly options: GrowthOptions,
  ) {}

  private get s(): string {
    return `"${this.schema}"`;
  }

  /** Bulk rows up to `target` stored (bulk ids), bridged, with completed ledger rows. */
  async fillTo(target: number): Promise<void> {
    while (this.stored < target) {
      const n = Math.min(FILL_CHUNK, target - this.stored);
      const from = this.stored;
      await this.db.query(
        `WITH rows AS (
           INSERT INTO ${this.s}.notifications (channel, payload, created_at, bridged_at)
           SELECT $1, jsonb_build_object('i', i, 'note', 'order placed'),
                  $4::timestamptz + i * interval '1 millisecond', now()
             FROM generate_series($2::bigint + 1, $2::bigint + $3) AS i
           RETURNING id)
         INSERT INTO ${this.s}.deliveries (consumer_id, notification_id, status, attempts)
         SELECT c, id, 'completed', 1 FROM rows, unnest(ARRAY['noop', 'noop-roc']) AS c`,
        [CHANNEL, from, n, this.base],
      );
      this.stored += n;
    }
    await this.db.query(`VACUUM ANALYZE ${this.s}.notifications`);
    await this.db.query(`VACUUM ANALYZE ${this.s}.deliveries`);
  }

  async sizes(): Promise<
    Pick<GrowthFigure, 'notificationsMb' | 'notificationIndexesMb' | 'deliveriesMb'>
  > {
    const { rows } = await this.db.query<{ t: string; i: string; d: string }>(
      `SELECT pg_table_size($1::regclass) AS t, pg_indexes_size($1::regclass) AS i,
              pg_total_relation_size($2::regclass) AS d`,
      [`${this.s}.notifications`, `${this.s}.deliveries`],
    );
    const mb = (v: string): number => round(Number(v) / 1024 / 1024, 1);
    return {
      notificationsMb: mb(rows[0].t),
      notificationIndexesMb: mb(rows[0].i),
      deliveriesMb: mb(rows[0].d),
    };
  }

  /** Mean µs of one notify() on one connection. */
  async notifyCost(): Promise<number> {
    const client = await this.db.connect();
    try {
      const sql = `SELECT ${this.s}.notify('${OWN_CHANNEL}', '{"i": 1}'::jsonb)`;
      for (let i = 0; i < 50; i++) await client.query(sql);
      const started = performance.now();
      for (let i = 0; i < this.options.sample; i++) await client.query(sql);
      return round(((performance.now() - started) * 1000) / this.options.sample, 1);
    } finally {
      client.release();
    }
  }

  /** ms per listener batch: `sample` fresh rows bridged to both consumers' queues. */
  async bridgeLatency(): Promise<number> {
    const listener = createListener({ settings: this.settings, batchSize: BRIDGE_BATCH });
    await listener.start();
    try {
      // Rows of notifyCost() on the other channel are bridged first, outside the timing.
      await this.waitBridged();
      const started = performance.now();
      await this.db.query(
        `SELECT ${this.s}.notify($1, jsonb_build_object('i', i)) FROM generate_series(1, $2) AS i`,
        [CHANNEL, this.options.sample],
      );
      await this.waitBridged();
      const batches = Math.ceil(this.options.sample / BRIDGE_BATCH);
      return round((performance.now() - started) / batches, 1);
    } finally {
      await listener.stop();
    }
  }

  private async waitBridged(channel?: string): Promise<void> {
    for (;;) {
      const { rowCount } = await this.db.query(
        `SELECT 1 FROM ${this.s}.notifications
          WHERE bridged_at IS NULL AND ($1::text IS NULL OR channel = $1) LIMIT 1`,
        [channel ?? null],
      );
      if (rowCount === 0) return;
      await sleep(5);
    }
  }

  /**
   * ms of what `listen --recover` runs first: `reconcile --verify` of the last 24 hours, with
   * exactly `sample` bridged and completed rows in that window (the earlier checkpoints' rows are
   * aged out of it first), so every checkpoint asks it for the same work.
   */
  async recoverCost(): Promise<number> {
    await this.db.query(
      `UPDATE ${this.s}.notifications SET created_at = created_at - interval '${AGE_DAYS} days'
        WHERE created_at > now() - interval '2 days'`,
    );
    await this.db.query(
      `WITH rows AS (
         INSERT INTO ${this.s}.notifications (channel, payload, bridged_at)
         SELECT $1, jsonb_build_object('i', i), now() FROM generate_series(1, $2) AS i
         RETURNING id)
       INSERT INTO ${this.s}.deliveries (consumer_id, notification_id, status, attempts)
       SELECT c, id, 'completed', 1 FROM rows, unnest(ARRAY['noop', 'noop-roc']) AS c`,
      [CHANNEL, this.options.sample],
    );
    const started = performance.now();
    await reconcile({
      settings: this.settings,
      verify: true,
      since: new Date(Date.now() - RECOVER_WINDOW_MS),
      batchSize: 1000,
    });
    return round(performance.now() - started, 1);
  }

  /**
   * ms per batch of a `--channels growth-other` listener bridging `sample` rows of its channel
   * while `backlog` unbridged rows of another channel wait (removed again afterwards).
   */
  async channelsBridgeLatency(): Promise<number> {
    await this.db.query(
      `INSERT INTO ${this.s}.notifications (channel, payload)
       SELECT $1, jsonb_build_object('i', i) FROM generate_series(1, $2) AS i`,
      [BACKLOG_CHANNEL, this.options.backlog],
    );
    await this.db.query(`ANALYZE ${this.s}.notifications`);
    const listener = createListener({
      settings: this.settings,
      batchSize: BRIDGE_BATCH,
      channels: [OWN_CHANNEL],
    });
    await listener.start();
    try {
      await this.waitBridged(OWN_CHANNEL);
      const started = performance.now();
      await this.db.query(
        `SELECT ${this.s}.notify($1, jsonb_build_object('i', i)) FROM generate_series(1, $2) AS i`,
        [OWN_CHANNEL, this.options.sample],
      );
      await this.waitBridged(OWN_CHANNEL);
      const batches = Math.ceil(this.options.sample / BRIDGE_BATCH);
      return round((performance.now() - started) / batches, 1);
    } finally {
      await listener.stop();
      await this.db.query(`DELETE FROM ${this.s}.notifications WHERE channel = $1`, [
        BACKLOG_CHANNEL,
      ]);
    }
  }

  /** cleanup of the oldest rows: rows/s, and the writers' tps during it over their tps before. */
  async cleanupRate(): Promise<{ rowsPerSecond: number; writerTpsRatio: number } | null> {
    const count = Math.min(this.options.cleanup, this.stored - this.deleted);
    if (count <= 0) return null;
    // The cutoff base + (deleted + count + 1) ms: the next `count` bulk rows are older.
    const { rows } = await this.db.query<{ days: number }>(
      `SELECT extract(epoch FROM now() - ($1::timestamptz
                + ($2::bigint + 1) * interval '1 millisecond'))::float8 / 86400 AS days`,
      [this.base, this.deleted + count],
    );
    const before = await this.writerTps(async () => sleep(2000));
    let result: Awaited<ReturnType<typeof cleanup>> | undefined;
    const during = await this.writerTps(async () => {
      result = await cleanup({ settings: this.settings, days: rows[0].days, batchSize: 1000 });
    });
    if (!result) return null;
    this.deleted += result.deleted;
    return {
      rowsPerSecond: Math.round((result.deleted / Math.max(1, result.durationMs)) * 1000),
      writerTpsRatio: round(during / before, 2),
    };
  }

  /** notify() transactions/s of 4 writers while `work` runs. */
  private async writerTps(work: () => Promise<void>): Promise<number> {
    let stop = false;
    let count = 0;
    const writer = async (): Promise<void> => {
      const client = await this.db.connect();
      try {
        while (!stop) {
          await client.query(`SELECT ${this.s}.notify('growth-writers', '{"w": 1}'::jsonb)`);
          count++;
        }
      } finally {
        client.release();
      }
    };
    const started = performance.now();
    const writers = Array.from({ length: 4 }, writer);
    await work();
    stop = true;
    await Promise.all(writers);
    return (count / (performance.now() - started)) * 1000;
  }

  /** reconcile --verify over the table, as a user runs it. */
  async verify(env: NodeJS.ProcessEnv): Promise<{ rowsPerSecond: number; peakRssMb: number }> {
    const { summary, peakRssMb } = await runReconcileCli(['--verify', '--json'], env);
    return {
      rowsPerSecond: Math.round((summary.scanned / Math.max(1, summary.durationMs)) * 1000),
      peakRssMb,
    };
  }

  /** Runs `fn` while another session holds a REPEATABLE READ snapshot open. */
  async withSnapshotHeld<T>(fn: () => Promise<T>): Promise<T> {
    const holder = await this.db.connect();
    try {
      await holder.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      await holder.query(`SELECT count(*) FROM ${this.s}.consumers`);
      return await fn();
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
    }
  }
}

/** Runs the benchmark and returns one figure per checkpoint. */
export async function growthBench(options: GrowthOptions): Promise<GrowthFigure[]> {
  const tag = randomBytes(4).toString('hex');
  const schema = `pgqbench_growth_${tag}`;
  const prefix = `pgqbench_growth_${tag}`;
  const settings: BenchSettings = {
    databaseUrl: DATABASE_URL,
    listenDatabaseUrl: DATABASE_URL,
    redisUrl: REDIS_URL,
    schema,
    prefix,
  };
  const db = benchPool(8);
  const redis = benchRedis();
  const figures: GrowthFigure[] = [];
  try {
    await migrate({ db, schema });
    // Registered by a worker that stops at once ('beginning': every bulk row is owed to both).
    const worker = createWorker({
      settings,
      consumers: [
        defineConsumer({
          id: 'noop',
          channels: [CHANNEL],
          startFrom: 'beginning',
          handle: () => undefined,
        }),
        defineConsumer({
          id: 'noop-roc',
          channels: [CHANNEL],
          startFrom: 'beginning',
          removeOnComplete: true,
          handle: () => undefined,
        }),
      ],
    });
    await worker.start();
    await worker.close();
    const growth = new Growth(db, schema, settings, options);
    const env = cliEnv(schema, prefix);
    for (const target of checkpointsFor(options.rows)) {
      const filled = performance.now();
      await growth.fillTo(target);
      console.log(`  ${target} rows stored in ${Math.round(performance.now() - filled)} ms`);
      const figure: GrowthFigure = {
        rows: target,
        ...(await growth.sizes()),
        notifyUs: await growth.notifyCost(),
        bridgeBatchMs: await growth.bridgeLatency(),
        cleanupRowsPerSecond: null,
        writerTpsRatio: null,
        verifyRowsPerSecond: null,
        verifyPeakRssMb: null,
        heldNotifyUs: NaN,
        heldBridgeBatchMs: NaN,
        recoverMs: await growth.recoverCost(),
        channelsBridgeBatchMs: await growth.channelsBridgeLatency(),
      };
      const cleaned = await growth.cleanupRate();
      figure.cleanupRowsPerSecond = cleaned?.rowsPerSecond ?? null;
      figure.writerTpsRatio = cleaned?.writerTpsRatio ?? null;
      if (target > 0) {
        const verified = await growth.verify(env);
        figure.verifyRowsPerSecond = verified.rowsPerSecond;
        figure.verifyPeakRssMb = verified.peakRssMb;
      }
      await growth.withSnapshotHeld(async () => {
        figure.heldNotifyUs = await growth.notifyCost();
        figure.heldBridgeBatchMs = await growth.bridgeLatency();
      });
      // The bridged sample rows' jobs: dropped, so Redis holds only one checkpoint's worth.
      await clearPrefix(redis, prefix);
      figures.push(figure);
      console.log(`  checkpoint ${target}: ${JSON.stringify(figure)}`);
    }
    return figures;
  } finally {
    await clearPrefix(redis, prefix).catch(() => undefined);
    redis.disconnect();
    await dropSchemas(db, schema);
    await db.end();
  }
}

if (isMain(import.meta.url)) {
  const argv = process.argv.slice(2);
  const options: GrowthOptions = {
    rows: flag(argv, 'rows', 10_000_000),
    sample: flag(argv, 'sample', 2000),
    cleanup: flag(argv, 'cleanup', 50_000),
    backlog: flag(argv, 'backlog', 100_000),
  };
  const figures = await growthBench(options);
  printTable(
    `Growth: figures at each size (sample ${options.sample}, cleanup ${options.cleanup} rows)`,
    figures.map((f) => ({
      rows: f.rows,
      'notifications MB': f.notificationsMb,
      'its indexes MB': f.notificationIndexesMb,
      'deliveries MB': f.deliveriesMb,
      'notify() µs': f.notifyUs,
      'bridge batch ms': f.bridgeBatchMs,
      'cleanup rows/s': f.cleanupRowsPerSecond,
      'writers tps during cleanup': f.writerTpsRatio,
      'verify rows/s': f.verifyRowsPerSecond,
      'verify RSS MB': f.verifyPeakRssMb,
      'notify() µs, RR held': f.heldNotifyUs,
      'bridge batch ms, RR held': f.heldBridgeBatchMs,
      'listen --recover ms': f.recoverMs,
      '--channels batch ms, backlog elsewhere': f.channelsBridgeBatchMs,
    })),
  );
  const [empty, last] = [figures[0], figures[figures.length - 1]];
  console.log(
    `at ${last.rows} rows vs empty: notify() ${round(last.notifyUs / empty.notifyUs, 2)}x, ` +
      `bridge batch ${round(last.bridgeBatchMs / empty.bridgeBatchMs, 2)}x (targets: within 1.5x); ` +
      `listen --recover ${round(last.recoverMs / empty.recoverMs, 2)}x, --channels batch ` +
      `${round(last.channelsBridgeBatchMs / empty.channelsBridgeBatchMs, 2)}x`,
  );
}
