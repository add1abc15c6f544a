/**
 * The as-a-user drain's consumer (bench/drain-as-user.ts), run by the real CLI: `pgq-bridge work
 * --worker --consumers-dir bench/procs/user-consumers`. Its handler does what a small real handler
 * does: one Redis command of its own (`INCR` on the key in BENCH_INCR_KEY, over its own
 * connection), so the bench learns that every notification was handled by reading that counter.
 * procs/raw-worker.mjs runs the same handler on the raw BullMQ side. Plain JavaScript: no
 * TypeScript loader in the measured process. With BENCH_PACKED=1 (`drain-as-user --packed`) the
 * same handler runs packed: `batch: { size: 50, maxWaitMs: 20 }` with this plain `handle`.
 */
import { Redis } from 'ioredis';

const key = process.env.BENCH_INCR_KEY ?? 'pgqbench_user:count';
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');

export default {
  id: 'user',
  channels: ['user'],
  concurrency: Number(process.env.BENCH_CONCURRENCY ?? 50),
  ...(process.env.BENCH_PACKED === '1' ? { batch: { size: 50, maxWaitMs: 20 } } : {}),
  async handle() {
    await redis.incr(key);
  },
};
