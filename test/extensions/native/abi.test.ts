/** Keeps src/extensions/native/abi.ts in sync with extensions/native/kvcascade.h (pure parsing, no compiler needed). */

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KVC_ABI_VERSION, KVC_MIN_ABI_VERSION, KvcEventFlag, KvcEventType, KvcLogLevel, KvcStatus, kvcStatusName, KvcWatchFlag } from '../../../src/extensions/native/abi.js';
import { NATIVE_DIR } from './helpers.js';

const header = readFileSync(join(NATIVE_DIR, 'kvcascade.h'), 'utf8');

/** `#define KVC_NAME value` and `KVC_NAME = value` (enums) of the header. */
function headerConstants(): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of header.matchAll(/#define (KVC_[A-Z_]+) \(?(-?\d+)\)?/g)) out.set(m[1]!, Number(m[2]));
  for (const m of header.matchAll(/(KVC_[A-Z_]+) = (-?\d+)/g)) out.set(m[1]!, Number(m[2]));
  return out;
}

describe('the C header and abi.ts', () => {
  const c = headerConstants();

  it('agree on the ABI version', () => {
    expect(c.get('KVC_ABI_VERSION')).toBe(KVC_ABI_VERSION);
    expect(c.get('KVC_MIN_ABI_VERSION')).toBe(KVC_MIN_ABI_VERSION);
  });

  it('agree on the event and watch flags (ABI 2)', () => {
    expect({ CREATED: c.get('KVC_EVENT_CREATED'), PREVIOUS_KNOWN: c.get('KVC_EVENT_PREVIOUS_KNOWN'), HAS_PREVIOUS_VALUE: c.get('KVC_EVENT_HAS_PREVIOUS_VALUE') }).toEqual(KvcEventFlag);
    expect({ PREVIOUS_VALUE: c.get('KVC_WATCH_PREVIOUS_VALUE') }).toEqual(KvcWatchFlag);
  });

  it('agree on every return code', () => {
    const fromHeader = [...c].filter(([k]) => k === 'KVC_OK' || k === 'KVC_NOT_FOUND' || k.startsWith('KVC_ERR_'));
    expect(Object.fromEntries(fromHeader)).toEqual(Object.fromEntries(Object.entries(KvcStatus).map(([k, v]) => [`KVC_${k}`, v])));
    expect(kvcStatusName(-5)).toBe('KVC_ERR_TIMEOUT');
    expect(kvcStatusName(42)).toBe('code 42');
  });

  it('agree on event types and log levels', () => {
    expect({ put: c.get('KVC_EVENT_PUT'), delete: c.get('KVC_EVENT_DELETE'), trigger: c.get('KVC_EVENT_TRIGGER') }).toEqual(KvcEventType);
    expect({ DEBUG: c.get('KVC_LOG_DEBUG'), INFO: c.get('KVC_LOG_INFO'), WARN: c.get('KVC_LOG_WARN'), ERROR: c.get('KVC_LOG_ERROR') }).toEqual(KvcLogLevel);
  });

  it('declares the exported entry points and the host struct', () => {
    expect(header).toMatch(/KVC_EXPORT int kvc_abi_version\(void\);/);
    expect(header).toMatch(/KVC_EXPORT int kvc_initialize\(const kvc_host \*host\);/);
    expect(header).toMatch(/KVC_EXPORT void kvc_shutdown\(void\);/);
    expect(header).toMatch(/typedef int \(\*kvc_lambda\)\(const kvc_event \*ev, void \*user_data\);/);
  });
});
