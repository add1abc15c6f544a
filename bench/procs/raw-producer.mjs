/**
 * The raw BullMQ producer of bench/drain-as-user.ts: adds BENCH_COUNT jobs to the queue `raw`
 * (prefix BENCH_PREFIX) with `addBulk` in batches of BENCH_BATCH, one after another (as the
 * listener does), with the data, ids and options the listener gives a consumer's jobs; then
 * waits for SIGTERM. Started by the bench with the clock running, as `pgq-bridge listen` is.
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';

const count = Number(process.env.BENCH_COUNT);
const batch = Number(process.env.BENCH_BATCH ?? 500);
const connection = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', {
  maxRetriesPerRequest: null,
});
const queue = new Queue('raw', { connection, prefix: process.env.BENCH_PREFIX });
const opts = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 24 * 3600, count: 10_000 },
  removeOnFail: false,
};
const createdAt = new Date().toISOString();
for (let from = 1; from <= count; from += batch) {
  const jobs = [];
  for (let id = from; id < from + batch && id <= count; id++) {
    const data = {
      id: String(id),
      channel: 'user',
      payload: `{"i": ${id}}`,
      context: null,
      createdAt,
    };
    jobs.push({ name: 'user', data, opts: { ...opts, jobId: `n${id}` } });
  }
  await queue.addBulk(jobs);
}
// Stays until SIGTERM, so the bench can read this process's CPU time like the listener's.
process.on('SIGTERM', () => {
  void queue.close().finally(() => {
    connection.disconnect();
    process.exit(0);
  });
});
