/**
 * The Postgres-only alternatives at their newest versions, graphile-worker 0.18 and pg-boss 12,
 * each in the fastest mode its documentation recommends. Both need Node 22 or newer, so they run
 * in a child process (procs/alternatives.ts) on a Node 24 binary (lib/node24.ts) while the
 * pgq-bridge side runs on the machine's Node; every figure says which Node each side ran on.
 *
 * - graphile-worker: the settings of its performance page (`concurrentJobs: 24`,
 *   `maxPoolSize: 25`, `localQueue: { size: 500 }`, `completeJobBatchDelay: 0`,
 *   `failJobBatchDelay: 0`), one job per notification.
 * - pg-boss: `work()` with `batchSize` (the handler gets an array of jobs) and `localConcurrency`
 *   fetch loops, `pollingIntervalSeconds` at its minimum of 0.5. pg-boss waits out the rest of
 *   the polling interval after a fetch, so its throughput is about loops × batchSize / 0.5 s
 *   until Postgres saturates: the bench gives it the batch size and handler count of the
 *   pgq-bridge batch consumer it is compared with.
 *
 * Drains insert the jobs before the clock starts (bulk APIs: `addJobs`, `insert`); the clock
 * runs from the worker's start until the last handler call, in the child, like the pgq-bridge
 * and raw BullMQ sides of bench/drain.ts run in one process each.
 */
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIR, Child, ROOT_DIR, type ChildMessage } from './lib/common.js';
import { alternativesNode } from './lib/node24.js';

export { GRAPHILE_SETTINGS } from './lib/alternative-settings.js';

/** An alternative system. */
export type AlternativeSystem = 'graphile-worker' | 'pg-boss';

/** Throughput of one drain. */
export interface DrainFigure {
  count: number;
  ms: number;
  perSecond: number;
  /** The Node version the system ran on. */
  node: string;
}

/** The installed versions of the alternatives (read from their package.json, not loaded). */
export function alternativeVersions(): Record<AlternativeSystem, string> {
  // Not through require: graphile-worker's `exports` do not list its package.json.
  const version = (name: string): string =>
    (
      JSON.parse(readFileSync(join(ROOT_DIR, 'node_modules', name, 'package.json'), 'utf8')) as {
        version: string;
      }
    ).version;
  return { 'graphile-worker': version('graphile-worker'), 'pg-boss': version('pg-boss') };
}

const GRAPHILE_SCHEMA = 'pgqbench_graphile';
const PGBOSS_SCHEMA = 'pgqbench_pgboss';
/** The schemas {@link alternativeEnqueueSql} installs. */
export const ALTERNATIVE_SCHEMAS = [GRAPHILE_SCHEMA, PGBOSS_SCHEMA];

/** A running procs/alternatives.ts child (Node >= 22); ask it with {@link request}. */
export class AlternativesChild {
  private constructor(
    readonly child: Child,
    /** The Node version it runs on. */
    readonly node: string,
  ) {}

  static async start(): Promise<AlternativesChild> {
    const child = new Child(
      fork(join(BENCH_DIR, 'procs', 'alternatives.ts'), [], {
        execPath: alternativesNode(),
        execArgv: ['--import', 'tsx'],
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      }),
    );
    const hello = await AlternativesChild.ask(child, { type: 'hello' });
    return new AlternativesChild(child, hello.node as string);
  }

  private static async ask(
    child: Child,
    message: ChildMessage,
    timeoutMs = 600_000,
  ): Promise<ChildMessage> {
    child.send(message);
    const reply = await Promise.race([
      child.next(message.type, timeoutMs),
      child.next('error', timeoutMs),
    ]);
    if (reply.type === 'error') throw new Error(`alternatives child: ${String(reply.message)}`);
    return reply;
  }

  /** Sends one message and waits for its reply (throws the child's error). */
  request(message: ChildMessage, timeoutMs?: number): Promise<ChildMessage> {
    return AlternativesChild.ask(this.child, message, timeoutMs);
  }

  /** Stops the child (its stream worker first). */
  async stop(): Promise<void> {
    await this.request({ type: 'stop' }, 30_000).catch(() => undefined);
    await this.child.stop();
  }
}

async function withChild<T>(fn: (child: AlternativesChild) => Promise<T>): Promise<T> {
  const child = await AlternativesChild.start();
  try {
    return await fn(child);
  } finally {
    await child.stop();
  }
}

async function drain(message: ChildMessage & { count: number }): Promise<DrainFigure> {
  return withChild(async (child) => {
    const reply = await child.request(message);
    return {
      count: message.count,
      ms: reply.ms as number,
      perSecond: reply.perSecond as number,
      node: child.node,
    };
  });
}

/** graphile-worker: `count` stored jobs → all handlers done. */
export function drainGraphile(count: number): Promise<DrainFigure> {
  return drain({ type: 'drain', system: 'graphile-worker', schema: GRAPHILE_SCHEMA, count });
}

/** pg-boss: `count` stored jobs → all handlers done (batch handlers). */
export function drainPgBoss(
  count: number,
  settings: { batchSize: number; workers: number },
): Promise<DrainFigure> {
  return drain({ type: 'drain', system: 'pg-boss', schema: PGBOSS_SCHEMA, count, ...settings });
}

/**
 * What enqueueing one job costs inside the caller's transaction with each alternative: one SQL
 * statement per system, for pgbench (simple protocol, so values are literals).
 *
 * - graphile-worker: `add_job(identifier, payload)`, its documented SQL API (it sends a NOTIFY
 *   on every call, so writers take the commit-time NOTIFY lock).
 * - pg-boss: the `INSERT` its `send()` runs (pg-boss's own statement, from its plans module), with
 *   every option left to its default; `send()` itself also takes a round trip from Node first.
 *
 * Installs both schemas ({@link ALTERNATIVE_SCHEMAS}: the caller drops them when done).
 */
export async function alternativeEnqueueSql(
  queue: string,
  payloadJson: string,
): Promise<{ graphileWorker: string; pgBoss: string; node: string }> {
  return withChild(async (child) => {
    const sql = async (system: AlternativeSystem, schema: string): Promise<string> => {
      await child.request({ type: 'install', system, schema, queue });
      const reply = await child.request({
        type: 'enqueue-sql',
        system,
        schema,
        queue,
        payload: payloadJson,
      });
      return reply.sql as string;
    };
    return {
      graphileWorker: await sql('graphile-worker', GRAPHILE_SCHEMA),
      pgBoss: await sql('pg-boss', PGBOSS_SCHEMA),
      node: child.node,
    };
  });
}
