import type { Job } from 'bullmq';
import type { KeyGate } from './ordering.js';
import type { NotificationJobData } from './notification.js';

/**
 * Runs a job of an ordered batch consumer in turn (docs/ordering.md, "Batch consumers"): the
 * notifications whose turn has come (per key, in id order) go to `run`; then the next
 * notifications of their keys are promoted, and if some of the job's notifications still wait
 * for earlier ones of their keys (in other jobs), the job goes back to BullMQ's delayed set
 * until they may run (no attempt used; the ledger leaves out what completed). `run` resolves
 * with `{ split }` when the job was split into one job per notification (nothing then waits
 * here), else after the outcomes of `ready` are in Postgres; it throws when the handler failed
 * (a retry, or a dead letter it recorded).
 */
export async function runInTurn(
  gate: KeyGate,
  job: Job,
  token: string | undefined,
  entries: NotificationJobData[],
  run: (ready: NotificationJobData[]) => Promise<unknown>,
): Promise<unknown> {
  const turn = await gate.admitPack(job, token, entries);
  let result: unknown;
  try {
    result = await run(turn.ready);
  } finally {
    gate.letGo(turn.ready);
  }
  if (typeof result === 'object' && result !== null && 'split' in result) return result;
  await gate.releaseAll(turn.ready);
  if (turn.waiting.length > 0) await gate.waitForRest(job, token, turn);
  return result;
}
