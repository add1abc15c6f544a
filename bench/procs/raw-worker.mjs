/**
 * The raw BullMQ side of bench/drain-as-user.ts, as a user writes it: a `Worker` on the queue
 * `raw` (prefix BENCH_PREFIX, concurrency BENCH_CONCURRENCY) whose processor does one Redis `INCR`
 * on BENCH_INCR_KEY over its own connection, the handler of procs/user-consumers/incr.mjs.
 * Runs until SIGTERM, then closes the Worker.
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const key = process.env.BENCH_INCR_KEY ?? 'pgqbench_user:count';
const redis = new Redis(url);
const connection = new Redis(url, { maxRetriesPerRequest: null });
const worker = new Worker(
  'raw',
  async () => {
    await redis.incr(key);
  },
  {
    connection,
    prefix: process.env.BENCH_PREFIX,
    concurrency: Number(process.env.BENCH_CONCURRENCY ?? 50),
  },
);
worker.on('error', (error) => console.error(error));
process.on('SIGTERM', () => {
  void worker.close().finally(() => {
    redis.disconnect();
    connection.disconnect();
    process.exit(0);
  });
});
