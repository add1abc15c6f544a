import type { NotificationJobData } from './notification.js';
import { byId } from './pack-turn.js';

/** What became of one notification of a pack ({@link runByKey}'s `run`). */
export type PackOutcome = 'done' | 'retrying' | 'dead letter' | 'not started';

/** A notification that leaves the pack without running in it, and why. */
export interface Leftover {
  entry: NotificationJobData;
  why: string;
}

/** What {@link runByKey} did. */
export interface KeyedRun {
  /** Finished for good in this pack: the next notification of their key may be promoted. */
  finished: NotificationJobData[];
  /** Not run here: they continue as jobs of their own, in id order per key. */
  leftovers: Leftover[];
}

/**
 * Runs the notifications of a pack that may run now. Unordered: all at once (each still waits
 * for a handler slot). Ordered (`ordered`): one after another per key, in id order, keys (and
 * notifications without a key) side by side; once a notification of a key leaves the pack (it
 * failed, or the worker is closing), the later ones of its key do not run here either: they
 * leave too, after it, so the key's order holds (the gate orders jobs of their own).
 *
 * `finished` lists what may release the next notification of its key: the completed ones of a
 * key none of whose notifications failed here (a failed one is retried after its backoff and
 * releases the key itself; promoting it would cut its backoff short), and in `'skip'` mode the
 * dead letters too.
 */
export async function runByKey(
  ready: readonly NotificationJobData[],
  run: (entry: NotificationJobData) => Promise<PackOutcome>,
  ordered: boolean,
  skipDeadLetters: boolean,
): Promise<KeyedRun> {
  const groups: NotificationJobData[][] = [];
  const byKey = new Map<string, NotificationJobData[]>();
  for (const e of [...ready].sort(byId)) {
    if (!ordered || e.key === undefined) {
      groups.push([e]);
      continue;
    }
    let group = byKey.get(e.key);
    if (!group) {
      group = [];
      byKey.set(e.key, group);
      groups.push(group);
    }
    group.push(e);
  }
  const result: KeyedRun = { finished: [], leftovers: [] };
  await Promise.all(
    groups.map(async (group) => {
      const done: NotificationJobData[] = [];
      let stopped: string | undefined;
      let holdsKey = false;
      for (const e of group) {
        if (stopped !== undefined) {
          result.leftovers.push({ entry: e, why: stopped });
          continue;
        }
        const outcome = await run(e);
        if (outcome === 'done') done.push(e);
        else if (outcome === 'not started') {
          stopped = 'the worker stopped';
          result.leftovers.push({ entry: e, why: stopped });
        } else {
          stopped = `an earlier notification of its key (${e.id}) failed`;
          if (outcome === 'retrying' || !skipDeadLetters) holdsKey = true;
          else done.push(e);
        }
      }
      if (!holdsKey) result.finished.push(...done);
    }),
  );
  return result;
}
