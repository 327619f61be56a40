/** The TypeScript mirror of the constants of `extensions/native/kvcascade.h` (a test keeps the two in sync). */

import type { EventType } from '../api.js';

/**
 * The native ABI version of this host's header. A library's `kvc_abi_version()` must return a
 * version from {@link KVC_MIN_ABI_VERSION} to this one; the host then speaks the library's version
 * (`kvc_host.abi_version`): version 2 only appended fields to `kvc_event` and `kvc_host`, which a
 * version 1 library never reads.
 */
export const KVC_ABI_VERSION = 2;

/** The oldest native ABI version this host still loads (see {@link KVC_ABI_VERSION}). */
export const KVC_MIN_ABI_VERSION = 1;

/** Return codes of the host functions, `kvc_initialize` and lambdas (`KVC_*` in the header). */
export const KvcStatus = {
  OK: 0,
  NOT_FOUND: 1,
  ERR_INVALID: -1,
  ERR_STATE: -2,
  ERR_UNSUPPORTED: -3,
  ERR_TOO_LARGE: -4,
  ERR_TIMEOUT: -5,
  ERR_IO: -6,
  ERR_CONFLICT: -7,
  ERR_NOMEM: -8,
} as const;

/** One of the {@link KvcStatus} values. */
export type KvcStatusCode = (typeof KvcStatus)[keyof typeof KvcStatus];

/** `kvc_event_type`: the native code of each event type. */
export const KvcEventType: Readonly<Record<EventType, number>> = { put: 1, delete: 2, trigger: 3 };

/** `kvc_event.flags` (ABI 2): what the event says besides its fields (`KVC_EVENT_*` in the header). */
export const KvcEventFlag = { CREATED: 1, PREVIOUS_KNOWN: 2, HAS_PREVIOUS_VALUE: 4 } as const;

/** Flags of `host->watch_with` (ABI 2; `KVC_WATCH_*` in the header). */
export const KvcWatchFlag = { PREVIOUS_VALUE: 1 } as const;

/** `kvc_log_level`: the native log levels, in order. */
export const KvcLogLevel = { DEBUG: 0, INFO: 1, WARN: 2, ERROR: 3 } as const;

/** The header's name for a return code (`KVC_ERR_TIMEOUT`), or `code N` for an unknown one. */
export function kvcStatusName(code: number): string {
  for (const [name, value] of Object.entries(KvcStatus)) if (value === code) return `KVC_${name}`;
  return `code ${code}`;
}
