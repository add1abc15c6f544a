/**
 * Bench child: writes notifications at a fixed rate (or as fast as it can) from several
 * connections, one per transaction, and reports when each one committed.
 *
 * Parent → child: `{ type: 'start', mode, schema, prefix, rate, seconds, clients }`
 *   mode 'pgq': `SELECT <schema>.notify('stream', ...)` in autocommit (one transaction each);
 *   mode 'raw': BullMQ `Queue.add` on the 'raw' queue (the reference: no Postgres at all);
 *   mode 'sql': another system's enqueue statement (`sql`, e.g. graphile-worker's add_job()), one
 *   transaction each, like pgq's.
 *   rate 0 means closed loop: every connection sends its next write as soon as one returns.
 * Child → parent: `{ type: 'done', ids, times, elapsedMs, behindMs }` — ids in write order, the
 *   wall time (ms) each write returned, and how far the open-loop schedule fell behind at worst.
 */
import pg from 'pg';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { DATABASE_URL, REDIS_URL, sleep, wallMs } from '../lib/common.js';

interface Start {
  type: 'start';
  mode: 'pgq' | 'raw' | 'sql';
  /** Mode 'sql': the statement that enqueues one job, `$1` its parameter; returns `id`. */
  sql?: string;
  /** Mode 'sql': `$1` is the job's data (`object`) or a one-element array `[{"data": ...}]`. */
  param?: 'object' | 'array';
  schema: string;
  prefix: string;
  rate: number;
  seconds: number;
  clients: number;
  /** Raw mode: job ids start after this (ids must not repeat across runs: BullMQ dedupes). */
  base: number;
}

type Writer = { write: (k: number) => Promise<string>; close: () => Promise<void> };

async function pgqWriter(schema: string): Promise<Writer> {
  const client = new pg.Client({ connectionString: DATABASE_URL, application_name: 'pgq-bench' });
  await client.connect();
  const sql = `SELECT "${schema}".notify('stream', $1::jsonb) AS id`;
  return {
    write: async (k) => (await client.query<{ id: string }>(sql, [`{"k": ${k}}`])).rows[0].id,
    close: () => client.end(),
  };
}

async function sqlWriter(sql: string, param: 'object' | 'array'): Promise<Writer> {
  const client = new pg.Client({ connectionString: DATABASE_URL, application_name: 'pgq-bench' });
  await client.connect();
  return {
    write: async (k) => {
      const data = `{"k": ${k}}`;
      const value = param === 'array' ? `[{"data": ${data}}]` : data;
      return (await client.query<{ id: string }>(sql, [value])).rows[0].id;
    },
    close: () => client.end(),
  };
}

async function rawWriter(prefix: string, base: number): Promise<Writer> {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
  const queue = new Queue('raw', { connection: redis, prefix });
  return {
    write: async (k) => {
      const id = String(base + k + 1);
      const data = {
        id,
        channel: 'stream',
        payload: `{"k": ${k}}`,
        context: null,
        createdAt: new Date().toISOString(),
      };
      await queue.add('stream', data, {
        jobId: `n${id}`,
        attempts: 5,
        backoff: { type: 'exponential', delay: 1000 },
        removeOnComplete: { age: 24 * 3600, count: 10_000 },
        removeOnFail: false,
      });
      return id;
    },
    close: async () => {
      await queue.close();
      redis.disconnect();
    },
  };
}

async function main(start: Start): Promise<void> {
  const writers = await Promise.all(
    Array.from({ length: start.clients }, () =>
      start.mode === 'pgq'
        ? pgqWriter(start.schema)
        : start.mode === 'sql'
          ? sqlWriter(start.sql!, start.param ?? 'object')
          : rawWriter(start.prefix, start.base),
    ),
  );
  const ids: string[] = [];
  const times: number[] = [];
  let next = 0;
  let behindMs = 0;
  const began = performance.now();
  const endAt = began + start.seconds * 1000;
  const total = start.rate > 0 ? Math.round(start.rate * start.seconds) : Infinity;
  await Promise.all(
    writers.map(async (writer) => {
      for (;;) {
        const k = next++;
        if (k >= total) return;
        if (start.rate > 0) {
          const due = began + (k / start.rate) * 1000;
          const wait = due - performance.now();
          if (wait > 1) await sleep(wait);
          else behindMs = Math.max(behindMs, -wait);
        } else if (performance.now() >= endAt) return;
        const id = await writer.write(k);
        ids.push(id);
        times.push(wallMs());
      }
    }),
  );
  const elapsedMs = performance.now() - began;
  await Promise.all(writers.map((w) => w.close()));
  process.send!({ type: 'done', ids, times, elapsedMs, behindMs });
}

process.on('message', (message: Start) => {
  if (message.type === 'start') {
    main(message).catch((error: unknown) => {
      console.error(error);
      process.exit(1);
    });
  }
});
process.send!({ type: 'ready' });
