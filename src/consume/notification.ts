/** The row-change description carried by `notify_data_change()` trigger payloads. */
export interface Change<Row = Record<string, unknown>> {
  schema: string;
  table: string;
  action: 'INSERT' | 'UPDATE' | 'DELETE';
  old: Row | null;
  new: Row | null;
  /**
   * Primary key value of the changed row; for a composite key, an object of its columns. Null
   * when the payload names no key columns and the row has no `id` column.
   */
  recordId: unknown;
}

/** What a consumer's handler receives for each notification. */
export interface Notification<Payload = unknown> {
  /** Notification id (decimal string; ids are bigint). */
  id: string;
  channel: string;
  payload: Payload;
  /** When the notification was stored (its transaction's time). */
  createdAt: Date;
  /** 1-based attempt number of this delivery. */
  attempt: number;
  /** True when the job came from `reconcile` or a replay rather than the live bridge. */
  isReplay: boolean;
  /** Context of the writing transaction (see `withContext`), or null. */
  context: Record<string, unknown> | null;
  /**
   * Ordering key: given to `notify(..., { key })`, or `<schema>.<table>:<primary key as JSON>`
   * for trigger payloads; null when the notification has none (docs/ordering.md).
   */
  key: string | null;
  /** For `notify_data_change()` payloads: what changed; otherwise undefined. */
  change: Change | undefined;
  isInsert(): boolean;
  isUpdate(): boolean;
  isDelete(): boolean;
  /** For an UPDATE: names of the columns whose value changed; otherwise []. */
  changedColumns(): string[];
}

/** The data of a BullMQ job for one notification, as the bridge writes it. */
export interface NotificationJobData {
  /** Notification id. */
  id: string;
  channel: string;
  /**
   * The payload as JSON text, exactly as stored; absent when `payloadRef` is set (the worker then
   * reads it from the row, see consume/payload-refs.ts).
   */
  payload?: string;
  /** Set when the payload was over the inline payload limit: it travels by reference. */
  payloadRef?: true;
  /** The context as JSON text, or null. */
  context: string | null;
  /** ISO timestamp of created_at. */
  createdAt: string;
  /** Ordering key, when the notification has one. */
  key?: string;
  /** The writer's W3C trace context, when it had one (docs/tracing.md). */
  traceparent?: string;
  tracestate?: string;
  /** Set by reconcile and replays. */
  replay?: boolean;
  /**
   * Attempts this notification already had inside a pack, before it left it as a job of its
   * own (consume/pack-exit.ts): its attempt numbers go on from there. Ignored by replays.
   */
  attemptsBefore?: number;
  /**
   * Set on the job of a notification that failed for good inside a pack: the job fails at once
   * with this error (a dead letter in BullMQ's failed set), without running the handler again.
   * A retry (Bull Board) or `reconcile --failed` runs it.
   */
  deadLetter?: string;
}

/** The data of a BullMQ job carrying several notifications (batch consumers). */
export interface BatchJobData {
  batch: NotificationJobData[];
  replay?: boolean;
}

const ACTIONS = new Set(['INSERT', 'UPDATE', 'DELETE']);

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Recognizes a `notify_data_change()` payload and describes the change. `recordId` comes from the
 * key columns the trigger was installed with (`primary_key`, written by `triggers add`), else
 * from an `id` column: the new row's value, or the old row's for a DELETE.
 */
export function changeOf(payload: unknown): Change | undefined {
  if (!isRecord(payload)) return undefined;
  const { schema, table, action } = payload;
  if (typeof schema !== 'string' || typeof table !== 'string' || typeof action !== 'string') {
    return undefined;
  }
  if (!ACTIONS.has(action) || !('old' in payload) || !('new' in payload)) return undefined;
  const oldRow = isRecord(payload.old) ? payload.old : null;
  const newRow = isRecord(payload.new) ? payload.new : null;
  const row = newRow ?? oldRow;
  const keyColumns = Array.isArray(payload.primary_key)
    ? payload.primary_key.filter((c): c is string => typeof c === 'string')
    : row && 'id' in row
      ? ['id']
      : [];
  let recordId: unknown = null;
  if (row && keyColumns.length === 1) recordId = row[keyColumns[0]] ?? null;
  else if (row && keyColumns.length > 1) {
    recordId = Object.fromEntries(keyColumns.map((c) => [c, row[c] ?? null]));
  }
  return {
    schema,
    table,
    action: action as Change['action'],
    old: oldRow,
    new: newRow,
    recordId,
  };
}

/** Builds the handler's {@link Notification} from job data. */
export function toNotification(
  data: NotificationJobData,
  attempt: number,
  isReplay: boolean,
): Notification {
  if (data.payload === undefined) {
    // A reference the worker did not resolve: a bug, not something a retry can fix.
    throw new Error(`notification ${data.id}: payload by reference was not loaded from its row`);
  }
  const payload: unknown = JSON.parse(data.payload);
  const context =
    data.context === null ? null : (JSON.parse(data.context) as Record<string, unknown>);
  const change = changeOf(payload);
  return {
    id: data.id,
    channel: data.channel,
    payload,
    createdAt: new Date(data.createdAt),
    attempt,
    isReplay,
    context:
      context ??
      (isRecord(payload) && isRecord(payload.context) && change ? payload.context : null),
    key: data.key ?? null,
    change,
    isInsert: () => change?.action === 'INSERT',
    isUpdate: () => change?.action === 'UPDATE',
    isDelete: () => change?.action === 'DELETE',
    changedColumns: () => {
      if (change?.action !== 'UPDATE' || !change.old || !change.new) return [];
      const oldRow = change.old;
      const newRow = change.new;
      const columns = new Set([...Object.keys(oldRow), ...Object.keys(newRow)]);
      return [...columns].filter((c) => !sameJson(oldRow[c], newRow[c]));
    },
  };
}
