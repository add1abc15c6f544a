/** Settings of the alternatives shared by the parent benches and procs/alternatives.ts. */

/** graphile-worker settings of its performance page (used for the drain and the stream). */
export const GRAPHILE_SETTINGS = {
  concurrentJobs: 24,
  maxPoolSize: 25,
  localQueue: { size: 500 },
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
};

/** pg-boss in the stream: jobs per fetch and fetch loops (up to 200 jobs in flight). */
export const PGBOSS_STREAM = { batchSize: 50, localConcurrency: 4 };
