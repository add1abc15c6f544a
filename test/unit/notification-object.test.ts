import { describe, expect, it } from 'vitest';
import {
  changeOf,
  toNotification,
  type NotificationJobData,
} from '../../src/consume/notification.js';

function data(payload: unknown, extra: Partial<NotificationJobData> = {}): NotificationJobData {
  return {
    id: '12',
    channel: 'orders',
    payload: JSON.stringify(payload),
    context: null,
    createdAt: '2026-01-02T03:04:05.678Z',
    ...extra,
  };
}

const trigger = (action: string, oldRow: unknown, newRow: unknown, more = {}) => ({
  schema: 'public',
  table: 'orders',
  action,
  old: oldRow,
  new: newRow,
  context: null,
  ...more,
});

describe('toNotification', () => {
  it('builds the Notification of SPEC.md from job data', () => {
    const n = toNotification(data({ total: 5, items: ['a'] }), 2, false);
    expect(n.id).toBe('12');
    expect(n.channel).toBe('orders');
    expect(n.payload).toEqual({ total: 5, items: ['a'] });
    expect(n.createdAt).toBeInstanceOf(Date);
    expect(n.createdAt.toISOString()).toBe('2026-01-02T03:04:05.678Z');
    expect(n.attempt).toBe(2);
    expect(n.isReplay).toBe(false);
    expect(n.context).toBeNull();
    expect(n.change).toBeUndefined();
    expect(n.isInsert() || n.isUpdate() || n.isDelete()).toBe(false);
    expect(n.changedColumns()).toEqual([]);
    expect(n.key).toBeNull();
    expect(toNotification(data(1, { key: 'user:7' }), 1, false).key).toBe('user:7');
  });

  it('parses scalar and null payloads and the stored context', () => {
    expect(toNotification(data('hello'), 1, true).payload).toBe('hello');
    expect(toNotification(data(null), 1, false).payload).toBeNull();
    expect(toNotification(data(3.5), 1, false).payload).toBe(3.5);
    const n = toNotification(data({}, { context: '{"user":"u1"}' }), 1, true);
    expect(n.context).toEqual({ user: 'u1' });
    expect(n.isReplay).toBe(true);
  });

  it('takes the context of a trigger payload when the row has none', () => {
    const n = toNotification(
      data(trigger('INSERT', null, { id: 1 }, { context: { by: 'x' } })),
      1,
      false,
    );
    expect(n.context).toEqual({ by: 'x' });
    // An ordinary payload with a "context" key is not a trigger payload: no context taken from it.
    expect(toNotification(data({ context: { by: 'x' } }), 1, false).context).toBeNull();
  });

  it('describes trigger changes', () => {
    const ins = toNotification(data(trigger('INSERT', null, { id: 7, name: 'a' })), 1, false);
    expect(ins.isInsert()).toBe(true);
    expect(ins.isUpdate()).toBe(false);
    expect(ins.change).toEqual({
      schema: 'public',
      table: 'orders',
      action: 'INSERT',
      old: null,
      new: { id: 7, name: 'a' },
      recordId: 7,
    });
    expect(ins.changedColumns()).toEqual([]);

    const upd = toNotification(
      data(
        trigger(
          'UPDATE',
          { id: 7, name: 'a', tags: ['x'], n: 1 },
          { id: 7, name: 'b', tags: ['x', 'y'], n: 1 },
        ),
      ),
      1,
      false,
    );
    expect(upd.isUpdate()).toBe(true);
    expect(upd.changedColumns().sort()).toEqual(['name', 'tags']);

    const del = toNotification(data(trigger('DELETE', { id: 9 }, null)), 1, false);
    expect(del.isDelete()).toBe(true);
    expect(del.change?.recordId).toBe(9);
    expect(del.changedColumns()).toEqual([]);
  });
});

describe('changeOf', () => {
  it('recognizes only notify_data_change() payloads', () => {
    expect(changeOf(null)).toBeUndefined();
    expect(changeOf('INSERT')).toBeUndefined();
    expect(changeOf([1, 2])).toBeUndefined();
    expect(changeOf({ schema: 'public', table: 't', action: 'INSERT', new: {} })).toBeUndefined();
    expect(
      changeOf({ schema: 'public', table: 't', action: 'TRUNCATE', old: null, new: null }),
    ).toBeUndefined();
    expect(
      changeOf({ schema: 1, table: 't', action: 'INSERT', old: null, new: {} }),
    ).toBeUndefined();
    expect(changeOf(trigger('INSERT', null, { id: 1 }))).toBeDefined();
  });

  it('finds the record id: id column, a single primary key, or a composite key', () => {
    expect(changeOf(trigger('INSERT', null, { name: 'a' }))?.recordId).toBeNull();
    expect(changeOf(trigger('INSERT', null, { id: 'x1' }))?.recordId).toBe('x1');
    expect(
      changeOf(trigger('INSERT', null, { code: 'c', id: 1 }, { primary_key: ['code'] }))?.recordId,
    ).toBe('c');
    expect(
      changeOf(trigger('DELETE', { a: 1, b: 2, c: 3 }, null, { primary_key: ['a', 'b'] }))
        ?.recordId,
    ).toEqual({ a: 1, b: 2 });
  });
});
