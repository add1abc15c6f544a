import type { Job } from 'bullmq';
import type { BatchConsumerDefinition } from './consumers.js';
import type { Attempts } from './attempt.js';
import type { Logger } from '../log.js';
import type { TransactionRunner } from './transaction.js';
import type { Notification } from './notification.js';

/** What one batch handler call needs. */
export interface BatchCallDeps {
  log: Logger;
  attempts: Attempts;
  /** Set when the process has transactional consumers. */
  transactions: TransactionRunner | undefined;
}

/**
 * One call of a batch consumer's `handleBatch(ns, job, ctx)` under its `timeout`. For a
 * transactional consumer, inside one transaction whose first statement claims every delivery
 * of the call in the ledger: the notifications already completed are left out of the call (none
 * left: the handler is not called). Resolves when the handler settled (and, transactional, the
 * transaction committed); rejects with its error, or its timeout, after the rollback.
 */
export async function callBatchHandler(
  def: BatchConsumerDefinition,
  deps: BatchCallDeps,
  notifications: Notification[],
  job: Job,
): Promise<void> {
  const options = {
    timeoutMs: def.timeout,
    what: `batch handler of ${def.id}`,
    onTimeout: () =>
      deps.log.warn(
        { consumer: def.id, jobId: job.id, timeoutMs: def.timeout },
        'batch handler timed out; its signal is aborted and the retry waits until it settles',
      ),
  };
  if (!def.transactional) {
    await deps.attempts.run((ctx) => def.handleBatch(notifications, job, ctx), options);
    return;
  }
  if (!deps.transactions) throw new Error(`no transaction pool for ${def.id}`);
  const attempt = Math.max(...notifications.map((n) => n.attempt));
  await deps.transactions.run(
    def.id,
    notifications.map((n) => n.id),
    attempt,
    def.timeout,
    (db, claimed) => {
      const owed = new Set(claimed);
      const left = notifications.filter((n) => owed.has(n.id));
      return deps.attempts.run(({ signal }) => def.handleBatch(left, job, { signal, db }), options);
    },
  );
}
