import type { Queue } from 'bullmq';
import type { RedisConnection } from '../redis.js';
import { withTimeout } from '../util.js';
import { REDIS_STEP_TIMEOUT_MS } from './context.js';

/** The lists and sorted sets a BullMQ job lives in, one of them at any time. */
const STATE_ZSETS = ['completed', 'failed', 'delayed', 'prioritized', 'waiting-children'];
const STATE_LISTS = ['wait', 'active', 'paused'];

/**
 * Read-only check of many job hashes in one round trip, atomic (a job cannot move between two
 * states halfway through). KEYS: the state sets, the state lists, then the job hashes; ARGV: the
 * job ids. Returns one code per job: 0 in a state, 1 no hash, 2 a hash without `data`, 3 a hash
 * with data in no state (BullMQ's getState() 'unknown': a list write lost to eviction, a failover
 * or a hand). Lists are searched from the tail (RANK -1), where the oldest jobs wait, so the
 * jobs reconcile asks about are found quickly. The keys of one queue share a hash slot (see
 * `queuePrefix`), so this also runs on a Cluster.
 */
const PRESENCE_SCRIPT = `
local zsets, lists = ${STATE_ZSETS.length}, ${STATE_LISTS.length}
local out = {}
for i = 1, #ARGV do
  local key = KEYS[zsets + lists + i]
  local code = 0
  if redis.call('HEXISTS', key, 'data') == 0 then
    if redis.call('EXISTS', key) == 1 then code = 2 else code = 1 end
  else
    local found = false
    for z = 1, zsets do
      if redis.call('ZSCORE', KEYS[z], ARGV[i]) then found = true break end
    end
    if not found then
      for l = 1, lists do
        if redis.call('LPOS', KEYS[zsets + l], ARGV[i], 'RANK', -1) then found = true break end
      end
    end
    if not found then code = 3 end
  end
  out[i] = code
end
return out`;

/**
 * Which of `jobIds` have no live job in `queue`. A job is live when its hash
 * (`<prefix>:<queue>:<jobId>`) holds its `data` and it sits in one of BullMQ's states. Two kinds of
 * remains are not live: a hash without data (the hash was evicted or wiped while the id still sat
 * in a list; a worker then failed it with no data) and a job in no state (it would never run).
 * Adding the same id is a no-op while the hash exists, so with `repair` the remains are removed
 * (through BullMQ) and reported missing; remains that cannot be removed (locked by a worker right
 * now) count as live. Without `repair` (a dry run) they are reported missing as they are.
 */
export async function missingJobIds(
  redis: RedisConnection,
  queue: Queue,
  jobIds: readonly string[],
  repair: boolean,
): Promise<Set<string>> {
  const missing = new Set<string>();
  if (jobIds.length === 0) return missing;
  const keys = [
    ...STATE_ZSETS.map((s) => queue.toKey(s)),
    ...STATE_LISTS.map((s) => queue.toKey(s)),
    ...jobIds.map((id) => queue.toKey(id)),
  ];
  const codes = (await withTimeout(
    redis.eval(PRESENCE_SCRIPT, keys.length, ...keys, ...jobIds),
    REDIS_STEP_TIMEOUT_MS,
    'Redis did not answer the job presence check in time',
  )) as number[];
  const remains: string[] = [];
  codes.forEach((code, i) => {
    if (code === 0) return;
    if (code === 1 || !repair) missing.add(jobIds[i]);
    else remains.push(jobIds[i]);
  });
  for (const id of remains) {
    const removed = await withTimeout(
      queue.remove(id).catch(() => 0),
      REDIS_STEP_TIMEOUT_MS,
      'Redis did not remove a broken job in time',
    );
    if (removed === 1) missing.add(id);
  }
  return missing;
}

/** Batch job ids (src/bridge/pack.ts): `b<first id>-<last id>-<hash>`. */
const BATCH_ID = /^b(\d+)-(\d+)-[0-9a-f]+$/;

/**
 * How far back finished batch jobs count as "holding" their notifications: a worker writes the
 * outcomes of a finished batch to the ledger within ~50 ms, or later while Postgres is away;
 * until then the ledger cannot tell that the notification was handled.
 */
const RECENTLY_FINISHED_MS = 10 * 60_000;

/**
 * Which notifications wait inside batch jobs of a batch consumer's queue (such a notification has
 * no `n<id>` job of its own, so a presence check by job id alone would take it for lost).
 *
 * Asked about the candidates of one page, after that page was read: a batch job made after an
 * earlier snapshot (by a live listener) is seen. It reads the ids of every unfinished job and of
 * recently finished ones (whole lists by index ranges are not paged while workers move jobs), keeps
 * the batch jobs whose id range covers a candidate, and reads only their data (cached: a job's
 * data never changes).
 */
export class BatchMembership {
  private readonly members = new Map<string, string[]>();

  constructor(
    private readonly redis: RedisConnection,
    private readonly queue: Queue,
  ) {}

  /** Of `ids` (notification ids), those inside a live or recently finished batch job. */
  async heldAmong(ids: readonly string[]): Promise<Set<string>> {
    const held = new Set<string>();
    if (ids.length === 0) return held;
    const wanted = ids.map((id) => BigInt(id));
    const low = wanted.reduce((a, b) => (b < a ? b : a));
    const high = wanted.reduce((a, b) => (b > a ? b : a));
    const jobIds = await this.jobIds();
    const relevant = jobIds.filter((jobId) => {
      const m = BATCH_ID.exec(jobId);
      return m !== null && BigInt(m[1]) <= high && BigInt(m[2]) >= low;
    });
    const unknown = relevant.filter((jobId) => !this.members.has(jobId));
    if (unknown.length > 0) {
      const pipeline = this.redis.pipeline();
      for (const jobId of unknown) pipeline.hget(this.queue.toKey(jobId), 'data');
      const replies = await withTimeout(
        pipeline.exec(),
        REDIS_STEP_TIMEOUT_MS,
        'Redis did not return the batch jobs in time',
      );
      unknown.forEach((jobId, i) => {
        const data = replies?.[i]?.[1];
        this.members.set(jobId, typeof data === 'string' ? batchIds(data) : []);
      });
    }
    const wantedSet = new Set(ids);
    for (const jobId of relevant) {
      for (const id of this.members.get(jobId) ?? []) if (wantedSet.has(id)) held.add(id);
    }
    return held;
  }

  /** Ids of every unfinished job and of the jobs finished in the last {@link RECENTLY_FINISHED_MS}. */
  private async jobIds(): Promise<string[]> {
    const since = Date.now() - RECENTLY_FINISHED_MS;
    const q = this.queue;
    const pipeline = this.redis.pipeline();
    for (const list of STATE_LISTS) pipeline.lrange(q.toKey(list), '0', '-1');
    for (const zset of ['delayed', 'prioritized', 'waiting-children']) {
      pipeline.zrange(q.toKey(zset), '0', '-1');
    }
    for (const zset of ['completed', 'failed']) {
      pipeline.zrangebyscore(q.toKey(zset), String(since), '+inf');
    }
    const replies = await withTimeout(
      pipeline.exec(),
      REDIS_STEP_TIMEOUT_MS,
      'Redis did not list the batch jobs in time',
    );
    const ids: string[] = [];
    for (const [error, reply] of replies ?? []) {
      if (error) throw error;
      if (Array.isArray(reply)) for (const id of reply) if (typeof id === 'string') ids.push(id);
    }
    return ids;
  }
}

function batchIds(data: string): string[] {
  try {
    const batch = (JSON.parse(data) as { batch?: { id?: unknown }[] }).batch;
    if (!Array.isArray(batch)) return [];
    return batch.flatMap((item) => (typeof item?.id === 'string' ? [item.id] : []));
  } catch {
    return [];
  }
}
