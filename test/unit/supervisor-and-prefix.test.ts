import { describe, expect, it } from 'vitest';
import { parseBasicAuth } from '../../src/operate/board.js';
import { childArgs } from '../../src/cli/work.js';
import { hasHashTag, isClusterSetting, queuePrefix, singleSlotPrefix } from '../../src/redis.js';
import { formatStatus, type StatusReport } from '../../src/operate/status.js';
import { parsePrometheus } from '../support/prometheus.js';
import { Metrics } from '../../src/operate/metrics.js';

describe('childArgs', () => {
  it('drops --processes and --metrics-port in both spellings and adds --worker after work', () => {
    expect(
      childArgs([
        '--schema',
        's',
        'work',
        '--processes',
        '3',
        '--metrics-port=9100',
        '--consumers-dir',
        'd',
      ]),
    ).toEqual(['--schema', 's', 'work', '--worker', '--consumers-dir', 'd']);
    expect(
      childArgs(['work', '--processes=2', '--metrics-port', '9', '--no-restart-on-failure']),
    ).toEqual(['work', '--worker', '--no-restart-on-failure']);
  });
});

describe('queuePrefix', () => {
  const single = { redisUrl: 'redis://a:1', prefix: 'pgq' };
  const cluster = { redisUrl: 'redis://a:1,redis://b:2', prefix: 'pgq' };
  it('leaves a single Redis as it was: the prefix as given, for every queue', () => {
    expect(queuePrefix(single, 'mail')).toBe('pgq');
    expect(queuePrefix(single)).toBe('pgq');
    expect(singleSlotPrefix(single)).toBeUndefined();
  });
  it('gives every consumer queue its own hash tag on a cluster', () => {
    expect(queuePrefix(cluster, 'mail')).toBe('{pgq:mail}');
    expect(queuePrefix(cluster, 'search')).toBe('{pgq:search}');
    expect(queuePrefix({ ...single, redisCluster: true }, 'mail')).toBe('{pgq:mail}');
    expect(singleSlotPrefix(cluster)).toBe('{pgq}');
    // There is no one prefix for every queue on a cluster.
    expect(() => queuePrefix(cluster)).toThrow(/consumer id/);
  });
  it('keeps a prefix that holds its own hash tag: the single-slot layout, on purpose', () => {
    const tagged = { ...cluster, prefix: '{pgq}' };
    expect(queuePrefix(tagged, 'mail')).toBe('{pgq}');
    expect(queuePrefix({ ...cluster, prefix: '{x}pgq' }, 'mail')).toBe('{x}pgq');
    expect(singleSlotPrefix(tagged)).toBeUndefined();
    // Braces with nothing inside are no hash tag for Redis.
    expect(hasHashTag('a{}b')).toBe(false);
    expect(isClusterSetting({ redisUrl: 'redis://a:1, ' })).toBe(false);
  });
});

describe('parseBasicAuth', () => {
  it('splits at the first colon and refuses malformed values', () => {
    expect(parseBasicAuth('u:p:q')).toEqual({ username: 'u', password: 'p:q' });
    for (const bad of ['nocolon', ':p', 'u:'])
      expect(() => parseBasicAuth(bad)).toThrow(/user:password/);
  });
});

describe('formatStatus', () => {
  it('renders one row per consumer and the verdict', () => {
    const report: StatusReport = {
      schema: 's',
      prefix: 'p',
      checkedAt: '2026-01-01T00:00:00.000Z',
      backlog: { count: 3, oldestAgeSeconds: 90 },
      consumers: [
        {
          id: 'mail',
          channels: ['users'],
          counts: { waiting: 1, active: 2, delayed: 0, prioritized: 1, failed: 4, completed: 5 },
          oldestUnfinishedAgeSeconds: 7200,
          lastSeenWorker: null,
          lastSeenAt: null,
          keyPrefix: 'pgq',
        },
      ],
      maxLagSeconds: 60,
      healthy: false,
      problems: ['too old'],
    };
    const text = formatStatus(report);
    expect(text).toMatch(/backlog: 3 unbridged, oldest 1\.5m/);
    expect(text).toMatch(/^mail\s+users\s+2\s+2\s+0\s+4\s+5\s+2\.0h\s+-$/m);
    expect(text).toMatch(/UNHEALTHY: too old/);
  });
});

describe('Metrics', () => {
  it('counts batches and jobs into valid Prometheus text', async () => {
    const metrics = new Metrics({ processMetrics: false });
    metrics.observeBatch({ rows: 3, jobs: 6, createdAt: [1000, 1500, 2000], committedAt: 3000 });
    metrics.observeJob('c', 'completed', 0.02);
    metrics.observeJob('c', 'retried', 0.5);
    metrics.observeJob('c', 'failed', 0.1);
    const samples = parsePrometheus(await metrics.text());
    const value = (name: string, labels: Record<string, string> = {}) =>
      samples.find(
        (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
      )?.value;
    expect(value('pgq_bridge_notifications_bridged_total')).toBe(3);
    expect(value('pgq_bridge_jobs_enqueued_total')).toBe(6);
    expect(value('pgq_bridge_bridge_latency_seconds_sum')).toBeCloseTo(4.5);
    expect(value('pgq_bridge_bridge_latency_seconds_bucket', { le: '1' })).toBe(1);
    expect(value('pgq_bridge_jobs_completed_total', { consumer: 'c' })).toBe(1);
    expect(value('pgq_bridge_jobs_retried_total', { consumer: 'c' })).toBe(1);
    expect(value('pgq_bridge_jobs_failed_total', { consumer: 'c' })).toBe(1);
    expect(value('pgq_bridge_handler_duration_seconds_count', { consumer: 'c' })).toBe(3);
    await metrics.close();
  });
});
