import type { Queryable } from '../db/store.js';
import { PgqError } from '../errors.js';
import { assertChannel } from '../identifiers.js';
import { notify, type NotifyOptions } from './notify.js';

/** The part of the Standard Schema v1 interface (standardschema.dev) pgq-bridge uses. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (
      value: unknown,
    ) => StandardSchemaResult<Output> | Promise<StandardSchemaResult<Output>>;
    readonly types?: { readonly input: Input; readonly output: Output } | undefined;
  };
}

/** A Standard Schema validation result: the value, or issues. */
export type StandardSchemaResult<Output> =
  | { readonly value: Output; readonly issues?: undefined }
  | {
      readonly issues: ReadonlyArray<{
        readonly message: string;
        readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined;
      }>;
    };

/**
 * A payload validator:
 * - a function that returns the payload (possibly transformed) or throws; returning `undefined`
 *   or `true` accepts the payload as is, returning `false` rejects it (so type guards work);
 * - an object with a `parse(value)` method that returns the payload or throws (zod, valibot's
 *   wrappers, superstruct's `create`-style helpers, ...);
 * - any Standard Schema (`~standard.validate`).
 */
export type PayloadValidator<Payload> =
  | StandardSchemaV1<unknown, Payload>
  | { parse(value: unknown): Payload }
  | ((value: unknown) => value is Payload)
  | ((value: unknown) => Payload);

/** Options of {@link defineChannel}. */
export interface ChannelOptions<Payload> {
  /** Checks (and may transform) every payload before it is stored; see {@link PayloadValidator}. */
  validate?: PayloadValidator<Payload>;
}

/**
 * A typed channel (from {@link defineChannel}). Put it in a consumer's `channels` and the
 * handler's `n.payload` has its type.
 */
export interface Channel<Payload = unknown> {
  /** The channel name. */
  readonly name: string;
  /** Never set: carries the payload type to consumers at compile time. */
  readonly payloadType?: Payload;
  /**
   * Validates the payload (if the channel has a validator) and stores the notification, like
   * {@link notify}.
   *
   * @throws PgqError `PGQ_INVALID_PAYLOAD` when the validator rejects it (nothing is stored)
   */
  notify(db: Queryable, payload: Payload, options?: NotifyOptions): Promise<string>;
  /** Runs the channel's validator (identity without one); rejects like `notify()` does. */
  parse(payload: unknown): Promise<Payload>;
}

function issuePath(path: StandardSchemaV1Issue['path']): string {
  if (!path || path.length === 0) return '';
  const keys = path.map((p) => (typeof p === 'object' && p !== null ? p.key : p));
  return `${keys.map(String).join('.')}: `;
}

type StandardSchemaV1Issue = Extract<
  StandardSchemaResult<unknown>,
  { issues: ReadonlyArray<unknown> }
>['issues'][number];

function describeIssues(issues: ReadonlyArray<StandardSchemaV1Issue>): string {
  return issues.map((i) => `${issuePath(i.path)}${i.message}`).join('; ');
}

/** A readable reason out of whatever a validator threw (zod-like errors carry `issues`). */
function reasonOf(error: unknown): string {
  const issues = (error as { issues?: unknown })?.issues;
  if (Array.isArray(issues) && issues.every((i) => typeof i?.message === 'string')) {
    return describeIssues(issues as StandardSchemaV1Issue[]);
  }
  return error instanceof Error ? error.message : String(error);
}

function isStandardSchema(value: unknown): value is StandardSchemaV1<unknown, unknown> {
  const standard = (value as { '~standard'?: { validate?: unknown } } | null)?.['~standard'];
  return typeof standard?.validate === 'function';
}

async function runValidator<Payload>(
  validate: PayloadValidator<Payload>,
  payload: unknown,
): Promise<Payload> {
  if (isStandardSchema(validate)) {
    const result = await validate['~standard'].validate(payload);
    if (result.issues) throw new Error(describeIssues(result.issues));
    return result.value as Payload;
  }
  const parse = (validate as { parse?: unknown }).parse;
  if (typeof parse === 'function') return (await parse.call(validate, payload)) as Payload;
  if (typeof validate === 'function') {
    const result: unknown = await (validate as (value: unknown) => unknown)(payload);
    if (result === false) throw new Error('the validator returned false');
    return (result === undefined || result === true ? payload : result) as Payload;
  }
  throw new PgqError(
    'PGQ_INVALID_VALIDATOR',
    'validate must be a function, an object with parse(), or a Standard Schema',
  );
}

/**
 * Defines a typed channel:
 *
 * ```ts
 * const orders = defineChannel<{ id: number; total: number }>('orders');
 * await orders.notify(pool, { id: 1, total: 9.5 });   // payload type-checked
 * defineConsumer({ id: 'billing', channels: [orders], handle(n) { n.payload.total } });
 * ```
 *
 * With `validate` (a zod schema, any Standard Schema, or a function), a bad payload is refused at
 * `notify()` time, and the payload type is inferred from the validator.
 *
 * @throws UsageError `PGQ_INVALID_CHANNEL` for a bad channel name
 */
export function defineChannel<Payload = unknown>(
  name: string,
  options: ChannelOptions<Payload> = {},
): Channel<Payload> {
  assertChannel(name);
  const { validate } = options;
  if (
    validate !== undefined &&
    typeof validate !== 'function' &&
    !isStandardSchema(validate) &&
    typeof (validate as { parse?: unknown } | null)?.parse !== 'function'
  ) {
    throw new PgqError(
      'PGQ_INVALID_VALIDATOR',
      `channel ${JSON.stringify(name)}: validate must be a function, an object with parse(), or a Standard Schema`,
    );
  }
  const parse = async (payload: unknown): Promise<Payload> => {
    if (validate === undefined) return payload as Payload;
    try {
      return await runValidator(validate, payload);
    } catch (error) {
      if (error instanceof PgqError && error.code === 'PGQ_INVALID_VALIDATOR') throw error;
      throw new PgqError(
        'PGQ_INVALID_PAYLOAD',
        `channel ${JSON.stringify(name)}: invalid payload: ${reasonOf(error)}`,
        { cause: error },
      );
    }
  };
  return {
    name,
    parse,
    async notify(db, payload, notifyOptions) {
      return notify(db, name, await parse(payload), notifyOptions);
    },
  };
}
