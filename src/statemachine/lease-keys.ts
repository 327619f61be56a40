/**
 * Where a data shard keeps the attachments of keys to leases (`/_sys/lease-key/<id>/<key>`, see
 * docs/leases.md): named here, below the lease code, because the state machine's
 * `revokeLeaseKeys` command reads them; src/lease/records.ts re-exports these names.
 */

/** Prefix of attachments in a data shard: `/_sys/lease-key/<id>/<key>`; the attachment's version is the key's version it attached. */
export const LEASE_KEY_PREFIX = '/_sys/lease-key/';

/** Digits of a lease id in keys (fixed width, so keys sort by id; every safe integer fits). */
export const LEASE_ID_DIGITS = 16;

/** The id's fixed-width decimal form (keys sort by id). */
export function leaseIdText(id: number): string {
  return String(id).padStart(LEASE_ID_DIGITS, '0');
}

/** The prefix of lease `id`'s attachments in a shard. */
export function leaseAttachmentPrefix(id: number): string {
  return `${LEASE_KEY_PREFIX}${leaseIdText(id)}/`;
}
