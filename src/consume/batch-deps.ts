import type { Job, Queue } from 'bullmq';
import type { Queryable, Store } from '../db/store.js';
import type { Logger } from '../log.js';
import type { LedgerWriter } from './ledger.js';
import type { Metrics } from '../operate/metrics.js';
import type { Attempts } from './attempt.js';
import type { CompletedLookup } from './ledger-lookup.js';
import type { TransactionRunner } from './transaction.js';
import type { KeyGate } from './ordering.js';

/** What a a batch or packed runner needs from the worker that hosts it. */
export interface BatchRunnerDeps {
  store: Store;
  db: Queryable;
  log: Logger;
  /** Handler calls at once (the consumer's `concurrency`, or the worker's override). */
  concurrency: number;
  /** Writes outcomes; undefined when the ledger is off (benchmarks only). */
  ledger: LedgerWriter | undefined;
  /** Asks the ledger what already ran (batched); undefined when the ledger is off. */
  lookup: CompletedLookup | undefined;
  /** Runs handler attempts with their signal (shared by the process's consumers). */
  attempts: Attempts;
  /** Runs the attempts of transactional consumers (set when this process has any). */
  transactions: TransactionRunner | undefined;
  metrics?: Metrics;
  /** The consumer's queue (for the single-notification jobs of a split batch). */
  queue: () => Queue;
  /** Job id of a single notification (`jobIdFor`): a split dedupes with replays of it. */
  jobIdFor: (notificationId: string) => string;
  /** Leaves a job of channels this definition does not list to other workers (rolling deploys). */
  leaveForeign?: (job: Job, channels: readonly string[]) => Promise<unknown>;
  /** The ordering gate of an ordered consumer (docs/ordering.md); undefined otherwise. */
  gate?: KeyGate;
}
