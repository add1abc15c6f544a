/**
 * `npm run soak [-- --minutes N]`: the chaos soak (issues 6, 12, 13).
 *
 * For N minutes (default 3), 8 writers commit notifications (one per transaction) on 3 channels,
 * and 4 keyed writers commit keyed ones (each key's version bumped under its row lock: through
 * `notify(channel, payload, key)`, or a row change seen by a `pgq-bridge triggers add` trigger),
 * to 9 consumers (test/soak/consumers.ts: fan-out, packed, removeOnComplete, transactional, a
 * short `timeout` outlived on purpose, `ordered: true` one at a time and in batches, and one the
 * rolling deploys change), run by 2
 * `listen` and 2 `work` processes of the real CLI that reach a throwaway Postgres and Redis
 * through loopback TCP proxies, while `reconcile --verify` runs in a loop. A chaos driver injects,
 * one at a time at random intervals, every kind of fault in test/soak/chaos.ts: kill -9 of a
 * listener or a worker (and a new one started), Redis restarted empty, Postgres restarted (fast
 * or like a crash), pg_terminate_backend of the bridge's backends, the bridge's path to Postgres
 * or Redis cut for a few seconds (reset or blackholed), every listener killed while Redis had
 * accepted its addBulk but the reply (and so the COMMIT) was held, Redis replies held past the
 * listeners' enqueue timeout, part of two consumer queues deleted (list entries, job hashes), and
 * a rolling deploy step (test/soak/deploy.ts). Then: writers stop, quiet, `reconcile --verify`
 * (and `--failed` if dead letters exist), quiet, graceful stop, and the checks of
 * test/soak/verify.ts.
 *
 * Prints the count of each fault, the recovery after each fault and per kind, the duplicates by
 * cause, and exits 1 on any loss, on a pair handled again after the ledger recorded it completed,
 * on overlapping runs of one delivery, on a key handled out of commit order (or two of its runs
 * at once, or one missing), on a ledger that disagrees with the handlers, on old code running a
 * channel it does not list, or on a bridge process that died by itself. Never touches the servers
 * on 5432/6379.
 *
 * Options: --minutes N, --writers N (8), --rate N (plain commits/s in all, 60), --keyed-writers N
 * (4), --keyed-rate N (12), --keys N (keys per keyed channel, 40), --listeners N (2), --workers N
 * (2), --verify-pause S (between two `reconcile --verify` runs of the loop, 5), --faults a,b (only
 * these kinds), --gap-min S / --gap-max S (pause between faults, 4 / 10), --settle S (before that
 * pause, wait up to S s (25) for the bridge to recover from the last fault), --keep (keep the
 * working dir .tmp/soak-<id> with the processes' logs even on success; after a failure it is kept
 * anyway, with the soak's tables and the ledger as JSON lines), --json FILE.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { runCli } from '../support/cli.js';
import { FAULT_KINDS, runChaos, type Fault, type FaultKind } from './chaos.js';
import { CHANNELS, CONSUMERS, KEYED_CHANNELS } from './consumers.js';
import { RollingDeploys } from './deploy.js';
import { RecoveryMonitor } from './monitor.js';
import { ProcessSet, type Role } from './processes.js';
import { formatReport, summarizeKinds } from './report.js';
import { createStack, type Stack } from './stack.js';
import { verify } from './verify.js';
import { reconcileSummary, startVerifyLoop } from './verify-loop.js';
import { startWriters } from './writers.js';

const { values: args } = parseArgs({
  options: {
    minutes: { type: 'string', default: '3' },
    writers: { type: 'string', default: '8' },
    rate: { type: 'string', default: '60' },
    'keyed-writers': { type: 'string', default: '4' },
    'keyed-rate': { type: 'string', default: '12' },
    keys: { type: 'string', default: '40' },
    'verify-pause': { type: 'string', default: '5' },
    listeners: { type: 'string', default: '2' },
    workers: { type: 'string', default: '2' },
    'gap-min': { type: 'string', default: '4' },
    'gap-max': { type: 'string', default: '10' },
    settle: { type: 'string', default: '25' },
    keep: { type: 'boolean', default: false },
    faults: { type: 'string' },
    json: { type: 'string' },
  },
});

function positive(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(
      `soak: --${name} must be a positive number, got ${JSON.stringify(value)}\n`,
    );
    process.exit(2);
  }
  return n;
}

const minutes = positive('minutes', args.minutes);
const writerCount = Math.round(positive('writers', args.writers));
const rate = positive('rate', args.rate);
const keyedWriterCount = Math.round(positive('keyed-writers', args['keyed-writers']));
const keyedRate = positive('keyed-rate', args['keyed-rate']);
const keyCount = Math.round(positive('keys', args.keys));
const verifyPauseS = positive('verify-pause', args['verify-pause']);
const listenerCount = Math.round(positive('listeners', args.listeners));
const workerCount = Math.round(positive('workers', args.workers));
const gapMs: [number, number] = [
  positive('gap-min', args['gap-min']) * 1000,
  positive('gap-max', args['gap-max']) * 1000,
];

const settleS = positive('settle', args.settle);
const faultKinds = args.faults?.split(',').map((kind) => {
  if (!(FAULT_KINDS as readonly string[]).includes(kind)) {
    process.stderr.write(
      `soak: unknown fault kind ${JSON.stringify(kind)} (--faults ${FAULT_KINDS.join(',')})\n`,
    );
    process.exit(2);
  }
  return kind as FaultKind;
});

const started = Date.now();
function log(message: string): void {
  const t = ((Date.now() - started) / 1000).toFixed(0).padStart(4);
  process.stdout.write(`[soak ${t}s] ${message}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Jobs not finished in any consumer queue (waiting, active, delayed, prioritized, waiting-children). */
async function unfinishedJobs(queues: Queue[]): Promise<number> {
  let total = 0;
  for (const queue of queues) {
    const counts = await queue.getJobCounts(
      'waiting',
      'active',
      'delayed',
      'prioritized',
      'waiting-children',
    );
    for (const n of Object.values(counts)) total += n;
  }
  return total;
}

/** Waits until no row is unbridged and no job is unfinished, twice in a row. */
async function waitForQuiet(stack: Stack, queues: Queue[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let calm = 0;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const { rows } = await stack.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${stack.schema}.notifications WHERE bridged_at IS NULL`,
      );
      const jobs = await unfinishedJobs(queues);
      last = `unbridged ${rows[0].n}, unfinished jobs ${jobs}`;
      calm = rows[0].n === 0 && jobs === 0 ? calm + 1 : 0;
      if (calm >= 2) return true;
    } catch (error) {
      last = `poll failed: ${(error as Error).message}`;
      calm = 0;
    }
    await sleep(1000);
  }
  log(`not quiet after ${timeoutMs / 1000} s (${last})`);
  return false;
}

/** Runs `reconcile <flags> --json` with direct URLs; returns its summary. */
async function runReconcile(stack: Stack, flags: string[]): Promise<Record<string, unknown>> {
  const result = await runCli(['reconcile', ...flags, '--json'], {
    env: stack.directEnv,
    timeoutMs: 300_000,
  });
  if (result.code !== 0) {
    throw new Error(`reconcile ${flags.join(' ')} exited ${result.code}: ${result.stderr}`);
  }
  return reconcileSummary(result.stdout);
}

const reportedDead = new Set<number>();

/** Keeps `count` processes of `role` running; returns descriptions of those that died alone. */
async function replaceDead(processes: ProcessSet, role: Role, count: number): Promise<string[]> {
  const died = processes.all
    .filter(
      (p) =>
        p.role === role && p.handle.exited && p.killedAt === undefined && p.stoppedAt === undefined,
    )
    .filter((p) => !reportedDead.has(p.pid) && reportedDead.add(p.pid))
    .map((p) => `${role} pid ${p.pid} exited by itself: ${p.handle.stderr().trim().slice(-500)}`);
  while (processes.running(role).length < count) await processes.start(role);
  return died;
}

async function main(): Promise<number> {
  const runId = randomBytes(4).toString('hex');
  log(
    `starting: ${minutes} min, ${writerCount} writers at ${rate}/s, ${listenerCount} listeners, ` +
      `${workerCount} workers, ${keyedWriterCount} keyed writers at ${keyedRate}/s on ${keyCount} keys per channel, ` +
      `consumers ${Object.keys(CONSUMERS).join(', ')}`,
  );
  const stack = await createStack(runId);
  const processes = new ProcessSet(
    stack.bridgeEnv,
    stack.consumersDir,
    Object.keys(CONSUMERS).length,
    stack.logsDir,
  );
  const queueRedis = new Redis(stack.redis.url, { maxRetriesPerRequest: null });
  queueRedis.on('error', () => undefined);
  const queues = Object.keys(CONSUMERS).map((id) => {
    const queue = new Queue(id, { connection: queueRedis, prefix: stack.prefix });
    // Redis restarts are part of the plan: BullMQ would print each connection error.
    queue.on('error', () => undefined);
    return queue;
  });
  let failed = true;
  try {
    for (let i = 0; i < workerCount; i++) await processes.start('work');
    for (let i = 0; i < listenerCount; i++) await processes.start('listen');
    log(
      `stack up: postgres :${stack.postgres.port} (proxy :${stack.pgProxy.port}), redis :${stack.redis.port} (proxy :${stack.redisProxy.port})`,
    );

    const deploys = new RollingDeploys(stack, processes);
    const monitor = new RecoveryMonitor(stack);
    monitor.start();
    const writers = startWriters({
      databaseUrl: stack.postgres.url,
      schema: stack.schema,
      soakSchema: stack.soakSchema,
      channels: CHANNELS,
      writers: writerCount,
      ratePerSecond: rate,
      keyedWriters: keyedWriterCount,
      keyedRatePerSecond: keyedRate,
      keys: keyCount,
      keyedChannels: KEYED_CHANNELS,
    });
    // reconcile --verify in a loop during the whole load, through the proxies.
    const verifyLoop = startVerifyLoop(stack.bridgeEnv, verifyPauseS * 1000);
    const progress = setInterval(() => {
      const s = monitor.last;
      if (s) {
        log(
          `progress: committed ${writers.totals.acknowledged}, newest id ${s.maxId}, unbridged ${s.unbridged}, ` +
            `handled ${s.handled}, pending ${s.pending}, parked ${s.parked}`,
        );
      }
    }, 30_000);

    const chaosEnd = started + minutes * 60_000;
    const faults: Fault[] = await runChaos({
      stack,
      processes,
      deploys,
      until: chaosEnd,
      gapMs,
      isSettled: () => monitor.settled(),
      settleMs: settleS * 1000,
      kinds: faultKinds,
      onFault: (fault) => void monitor.track(fault),
      log,
    });
    const problems: string[] = [];
    problems.push(...(await replaceDead(processes, 'listen', listenerCount)));
    problems.push(...(await replaceDead(processes, 'work', workerCount)));
    const rest = chaosEnd - Date.now();
    if (rest > 0) await sleep(rest);
    await writers.stop();
    await verifyLoop.stop();
    clearInterval(progress);
    log(
      `writers stopped: ${writers.totals.acknowledged} acknowledged; reconcile --verify loop: ` +
        `${JSON.stringify(verifyLoop.totals)}; waiting for quiet`,
    );

    // Quiet first: stalled jobs of killed workers come back after BullMQ's lock (30 s) expires.
    await waitForQuiet(stack, queues, 180_000);
    await monitor.stop();
    const reconciles: string[] = [];
    const verified = await runReconcile(stack, ['--verify']);
    reconciles.push(`reconcile --verify: ${JSON.stringify(verified)}`);
    log(reconciles[0]);
    const failedJobs = (await Promise.all(queues.map((q) => q.getFailedCount()))).reduce(
      (a, b) => a + b,
      0,
    );
    const { rows } = await stack.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${stack.schema}.deliveries WHERE status = 'failed'`,
    );
    if (failedJobs > 0 || rows[0].n > 0) {
      const replayed = await runReconcile(stack, ['--failed']);
      reconciles.push(
        `reconcile --failed (${failedJobs} failed jobs, ${rows[0].n} failed in the ledger): ${JSON.stringify(replayed)}`,
      );
      log(reconciles[reconciles.length - 1]);
    }
    if (!(await waitForQuiet(stack, queues, 180_000))) {
      problems.push('the bridge did not settle within 180 s after the final reconcile');
    }
    problems.push(...(await replaceDead(processes, 'listen', 0)));
    problems.push(...(await replaceDead(processes, 'work', 0)));
    problems.push(...(await processes.stopAll()));
    problems.push(...processes.stopProblems);

    const verdict = await verify(
      stack,
      writers.totals,
      faults,
      processes.killedWorkers(),
      processes.workerEnds(),
    );
    if (verdict.failures.length > 0) {
      await stack
        .dumpTables()
        .catch((error: unknown) => log(`could not dump the tables: ${String(error)}`));
    }
    const kinds = summarizeKinds(monitor.recoveries);
    process.stdout.write(
      formatReport({
        minutes,
        elapsedS: (Date.now() - started) / 1000,
        writers: writers.totals,
        recoveries: monitor.recoveries,
        kinds,
        verdict,
        reconciles,
        verifyLoop: verifyLoop.totals,
        problems,
      }),
    );
    const errorLines = processes.errorLines();
    if (errorLines.length > 0) {
      log(`${errorLines.length} error-level log lines from the bridge, e.g.:`);
      for (const line of errorLines.slice(0, 5)) process.stdout.write(`  ${line.slice(0, 400)}\n`);
    }
    if (args.json) {
      const { acknowledgedIds: _ids, ackedVersions: _versions, ...totals } = writers.totals;
      writeFileSync(
        args.json,
        JSON.stringify(
          {
            minutes,
            writers: totals,
            verdict,
            kinds,
            faults: monitor.recoveries,
            reconciles,
            verifyLoop: verifyLoop.totals,
            problems,
          },
          null,
          2,
        ),
      );
    }
    failed = verdict.failures.length > 0 || problems.length > 0;
    return failed ? 1 : 0;
  } finally {
    processes.writeLogs();
    await processes.stopAll(10_000).catch(() => undefined);
    await Promise.all(queues.map((q) => q.close().catch(() => undefined)));
    queueRedis.disconnect();
    const keep = failed || args.keep;
    await stack.destroy(keep);
    if (keep) log(`logs kept in ${stack.logsDir}`);
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(
      `soak: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exit(1);
  },
);
