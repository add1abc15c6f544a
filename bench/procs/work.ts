/**
 * Bench child: runs consumers with a no-op handler that records when each notification's handler
 * started (wall time, comparable with the writer's commit times).
 *
 * Parent → child: `{ type: 'start', mode, schema, prefix, consumers, concurrency }`
 *   mode 'pgq': `createWorker` with the given consumers (batch consumers get `handleBatch`);
 *   mode 'raw': a BullMQ Worker on the 'raw' queue (the reference).
 * Child → parent: `{ type: 'ready' }` once the workers run; on `{ type: 'progress' }` →
 *   `{ type: 'progress', handled }`; on `{ type: 'collect' }` → `{ type: 'collected', ids,
 *   starts }` (the first consumer's notifications since the last collect); on `{ type: 'stop' }`
 *   → `{ type: 'stopped' }` and exit.
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { createWorker, type ConsumerDefinition, type PgqWorker } from 'pgq-bridge';
import { DATABASE_URL, REDIS_URL, wallMs } from '../lib/common.js';

/** A consumer of the bench. */
export interface BenchConsumer {
  id: string;
  channels: string[];
  concurrency: number;
  batch?: { size: number; maxWaitMs: number };
}

interface Start {
  type: 'start';
  mode: 'pgq' | 'raw';
  schema: string;
  prefix: string;
  consumers: BenchConsumer[];
}

let handled = 0;
let ids: string[] = [];
let starts: number[] = [];
let stop: (() => Promise<void>) | undefined;

function seen(consumerIndex: number, id: string): void {
  handled++;
  if (consumerIndex === 0) {
    ids.push(id);
    starts.push(wallMs());
  }
}

async function start(message: Start): Promise<void> {
  if (message.mode === 'raw') {
    const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
    const worker = new Worker(
      'raw',
      async (job) => {
        seen(0, (job.data as { id: string }).id);
        return null;
      },
      { connection: redis, prefix: message.prefix, concurrency: message.consumers[0].concurrency },
    );
    await worker.waitUntilReady();
    stop = async () => {
      await worker.close();
      redis.disconnect();
    };
  } else {
    const consumers: ConsumerDefinition[] = message.consumers.map((c, index) =>
      c.batch
        ? {
            id: c.id,
            channels: c.channels,
            concurrency: c.concurrency,
            batch: c.batch,
            handleBatch: (notifications) => {
              for (const n of notifications) seen(index, n.id);
            },
          }
        : {
            id: c.id,
            channels: c.channels,
            concurrency: c.concurrency,
            handle: (n) => seen(index, n.id),
          },
    );
    const worker: PgqWorker = createWorker({
      settings: {
        databaseUrl: DATABASE_URL,
        redisUrl: REDIS_URL,
        schema: message.schema,
        prefix: message.prefix,
      },
      consumers,
    });
    await worker.start();
    stop = () => worker.close();
  }
  process.send!({ type: 'ready' });
}

process.on('message', (message: { type: string }) => {
  if (message.type === 'start') {
    start(message as Start).catch((error: unknown) => {
      console.error(error);
      process.exit(1);
    });
  } else if (message.type === 'progress') {
    process.send!({ type: 'progress', handled });
  } else if (message.type === 'collect') {
    process.send!({ type: 'collected', ids, starts });
    ids = [];
    starts = [];
  } else if (message.type === 'stop') {
    void (async () => {
      await stop?.();
      process.send!({ type: 'stopped' }, () => process.exit(0));
    })();
  }
});
