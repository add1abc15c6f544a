import type { NotificationJobData } from './notification.js';
import type { KeyedDelivery } from '../db/ordering.js';

/**
 * The notifications of one job split by whether their turn has come
 * ({@link KeyGate.admitPack}).
 */
export interface PackTurn {
  /** May run now, in id order: per key, the notifications whose predecessors all finished or
   * come before them in this list. Their keys are held in this process until `letGo`. */
  ready: NotificationJobData[];
  /** Must wait: per key, every notification from the first whose predecessor is not finished. */
  waiting: NotificationJobData[];
  /** Whether one of the waiting keys waits behind a dead letter (it waits long: only a replay
   * or a skip releases it, and both promote). */
  behindDeadLetter: boolean;
}

/** Compares two notifications by id (decimal strings of bigints). */
export function byId(a: { id: string }, b: { id: string }): number {
  return a.id.length - b.id.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** The first notification of each key among `entries` (in id order). */
export function firstOfEachKey(entries: readonly NotificationJobData[]): NotificationJobData[] {
  const seen = new Set<string>();
  return [...entries].sort(byId).filter((e) => {
    if (e.key === undefined || seen.has(e.key)) return false;
    seen.add(e.key);
    return true;
  });
}

/** The last notification of each key among `entries` (in id order). */
export function lastOfEachKey(entries: readonly NotificationJobData[]): KeyedDelivery[] {
  const last = new Map<string, KeyedDelivery>();
  for (const e of [...entries].sort(byId)) {
    if (e.key !== undefined) last.set(e.key, { id: e.id, key: e.key });
  }
  return [...last.values()];
}
