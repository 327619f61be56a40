/* kvcascade.h: the C ABI between the kvcascade host and a native (shared-library) extension. */
#ifndef KVCASCADE_H
#define KVCASCADE_H

/*
 * How a native extension works
 * ----------------------------
 * A native extension is a shared library (.so) loaded by the host (through koffi, see
 * src/extensions/native/ffi-adapter.ts). It must export:
 *
 *   int kvc_abi_version(void);                 returns KVC_ABI_VERSION as seen when it was compiled
 *                                              (write KVC_DEFINE_ABI_VERSION() once in one .c file);
 *   int kvc_initialize(const kvc_host *host);  registers lambdas with host->watch; 0 = success,
 *                                              anything else makes loading fail;
 *
 * and may export:
 *
 *   void kvc_shutdown(void);                   called once when the extension is unloaded, after a
 *                                              successful kvc_initialize (not after a failed one:
 *                                              kvc_initialize must clean up before failing).
 *
 * The host refuses a library whose kvc_abi_version() is not one it speaks (KVC_MIN_ABI_VERSION up
 * to its own KVC_ABI_VERSION), or that lacks kvc_abi_version or kvc_initialize. It speaks the
 * library's version: host->abi_version is what kvc_abi_version() returned.
 *
 * Versions
 * --------
 * 1: the first ABI.
 * 2: appends to kvc_event what changed (revision, previous_version, flags: created / previous
 *    known, previous_value on request) and to kvc_host watch_with (a watch with options, e.g. the
 *    previous value). A version 1 library runs unchanged on a version 2 host (it never reads the
 *    appended fields).
 *
 * Effectively once
 * ----------------
 * Every host->put a lambda makes carries an idempotency key derived from the event (extension,
 * watch, shard, key, version) and the write (its key, and how many puts of that key came before
 * it in this call): when the event is delivered again (a retry, a leader change, a crash), the
 * same puts in the same order are answered with their first result and not applied twice. So a
 * lambda that reads, computes and writes (a counter) counts each event once, as long as it makes
 * the same puts for the same event.
 *
 * Threads
 * -------
 * Everything happens on ONE thread: the extension's worker thread. kvc_initialize, every lambda
 * and kvc_shutdown are called on it, one at a time (never concurrently, never re-entrantly), and
 * the host functions (host->get/put/log) must be called only on that thread and only while the
 * host is inside one of those calls (host->watch: only inside kvc_initialize); otherwise they
 * return KVC_ERR_STATE. Do not call them from threads you create, nor after kvc_shutdown returns.
 * The extension needs no locking for state touched only from these calls.
 *
 * host->get and host->put are synchronous: the worker thread blocks until the store answers (the
 * request goes to the node's main thread, which is never blocked by it). A lambda therefore holds
 * its worker for the duration of its store calls; keep lambdas short. A call that takes longer
 * than the host's timeout returns KVC_ERR_TIMEOUT.
 *
 * Ownership and lifetimes
 * -----------------------
 * - `host` (and everything it points to) stays valid from kvc_initialize until kvc_shutdown
 *   returns: the extension may keep the pointer in a global.
 * - Strings passed by the host (kvc_event.key, ...) and kvc_event.value are owned by the host and
 *   valid only until the call they were passed to returns: copy what must outlive it.
 * - The buffer that host->get fills (kvc_buf.data) is owned by the host and valid until the current
 *   lambda (or kvc_initialize) returns. Never free it.
 * - Pointers the extension passes to the host (keys, values, messages, `user_data`) are only read
 *   during the call, except `user_data` given to host->watch, which is handed back, untouched, to
 *   every call of that lambda: keep it alive until kvc_shutdown.
 *
 * Keys are NUL-terminated UTF-8. Values are arbitrary bytes with an explicit length.
 */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version of this header. Bump it on ANY change to the declarations below. */
#define KVC_ABI_VERSION 2
/** The oldest ABI version a host built with this header still loads. */
#define KVC_MIN_ABI_VERSION 1

/** Marks a function as exported from the shared library (use with -fvisibility=hidden). */
#if defined(_WIN32)
#define KVC_EXPORT __declspec(dllexport)
#else
#define KVC_EXPORT __attribute__((visibility("default")))
#endif

/* Return codes of host functions (and of kvc_initialize / lambdas: 0 = success). */
#define KVC_OK 0                  /**< Success. */
#define KVC_NOT_FOUND 1           /**< host->get: the key is absent (not an error). */
#define KVC_ERR_INVALID (-1)      /**< A bad argument (NULL pointer, bad key, ...). */
#define KVC_ERR_STATE (-2)        /**< Not allowed now (e.g. host->watch outside kvc_initialize). */
#define KVC_ERR_UNSUPPORTED (-3)  /**< The host has no synchronous store access for this extension. */
#define KVC_ERR_TOO_LARGE (-4)    /**< A value is larger than the host's transfer buffer. */
#define KVC_ERR_TIMEOUT (-5)      /**< The store did not answer within the host's timeout. */
#define KVC_ERR_IO (-6)           /**< The store failed the request (unavailable, refused, ...). */
#define KVC_ERR_CONFLICT (-7)     /**< host->put did not succeed (a conflict). */
#define KVC_ERR_NOMEM (-8)        /**< The host could not allocate memory. */

/** What fired a lambda (values mirror ExtensionEvent.type). */
typedef enum kvc_event_type {
  KVC_EVENT_PUT = 1,      /**< A key was written; value holds the new value. */
  KVC_EVENT_DELETE = 2,   /**< A key was deleted; value is NULL, value_len 0. */
  KVC_EVENT_TRIGGER = 3   /**< A trigger (nothing stored); value holds the trigger's payload. */
} kvc_event_type;

/* kvc_event.flags (ABI 2). */
#define KVC_EVENT_CREATED 1            /**< A put that created the key (it did not exist before). */
#define KVC_EVENT_PREVIOUS_KNOWN 2     /**< previous_version is known (unset: that history was compacted before delivery). */
#define KVC_EVENT_HAS_PREVIOUS_VALUE 4 /**< previous_value holds the value before the change (watch_with KVC_WATCH_PREVIOUS_VALUE, key present before). */

/* Flags of host->watch_with (ABI 2). */
#define KVC_WATCH_PREVIOUS_VALUE 1     /**< Give each event the key's value before the change (costs a copy per event). */

/** Log levels for host->log. */
typedef enum kvc_log_level {
  KVC_LOG_DEBUG = 0,
  KVC_LOG_INFO = 1,
  KVC_LOG_WARN = 2,
  KVC_LOG_ERROR = 3
} kvc_log_level;

/** One change delivered to a lambda. Owned by the host; valid only during the lambda call. */
typedef struct kvc_event {
  int32_t type;            /**< A kvc_event_type. */
  const char *key;         /**< The key, NUL-terminated UTF-8. */
  size_t key_len;          /**< strlen(key) in bytes. */
  const uint8_t *value;    /**< The value (put, trigger); NULL for delete and when value_len is 0. */
  size_t value_len;        /**< Bytes at value. */
  uint64_t version;        /**< The change's revision (the key's version after a put); use it for idempotence. */
  int64_t timestamp_ms;    /**< Time of the change, ms since the epoch. */
  uint32_t shard;          /**< The shard (Raft group) holding the key. */
  uint32_t hops;           /**< How many lambda writes led to this event (0 = a client write). */
  /* ABI 2 (read only when host->abi_version >= 2): */
  uint64_t revision;          /**< The shard revision of the change (equal to version; all writes of one txn share it). */
  uint64_t previous_version;  /**< The key's version before the change (0: it did not exist); valid with KVC_EVENT_PREVIOUS_KNOWN. */
  uint32_t flags;             /**< KVC_EVENT_* bits. */
  const uint8_t *previous_value; /**< The value before the change with KVC_EVENT_HAS_PREVIOUS_VALUE; else NULL. Owned by the host, valid during the call. */
  size_t previous_value_len;  /**< Bytes at previous_value. */
} kvc_event;

/** A byte buffer filled by the host (host->get). The host owns data; see "Ownership" above. */
typedef struct kvc_buf {
  const uint8_t *data;     /**< The bytes, followed by one extra NUL byte (not counted in len) for convenience. */
  size_t len;              /**< Number of bytes at data. */
} kvc_buf;

/**
 * A lambda: handles one event. Returns 0 on success; any other value is a failure, and the host
 * retries the event later (with backoff, up to the watch's attempt limit). Must be idempotent:
 * an event may be delivered more than once.
 */
typedef int (*kvc_lambda)(const kvc_event *ev, void *user_data);

/** The host's services, passed to kvc_initialize. Valid until kvc_shutdown returns. */
typedef struct kvc_host {
  /** The ABI version the host speaks with this extension: what its kvc_abi_version() returned. */
  uint32_t abi_version;
  /** Opaque host state: pass it back as the first argument of every function below. */
  void *host_ctx;

  /**
   * Registers `fn` for changes to keys starting with `prefix`; `user_data` is passed to each call.
   * Only valid during kvc_initialize (otherwise KVC_ERR_STATE). Returns KVC_OK or a KVC_ERR_*.
   */
  int (*watch)(void *host_ctx, const char *prefix, kvc_lambda fn, void *user_data);

  /**
   * Reads the latest value of `key`. Returns KVC_OK (found: *out_value and *out_version are set),
   * KVC_NOT_FOUND (*out_value = {NULL, 0}, *out_version = 0) or a KVC_ERR_* (< 0).
   * out_value's memory is owned by the host until the current lambda returns.
   * out_version may be NULL.
   */
  int (*get)(void *host_ctx, const char *key, kvc_buf *out_value, uint64_t *out_version);

  /**
   * Writes `len` bytes at `value` (may be NULL when len is 0) to `key`. Returns KVC_OK (and the
   * new version in *out_version, which may be NULL) or a KVC_ERR_*. The bytes are copied.
   */
  int (*put)(void *host_ctx, const char *key, const uint8_t *value, size_t len, uint64_t *out_version);

  /** Logs `msg` (NUL-terminated UTF-8) at `level` (a kvc_log_level) to the node's log. */
  void (*log)(void *host_ctx, int level, const char *msg);

  /* ABI 2 (present only when host->abi_version >= 2): */
  /**
   * Like watch, with `flags` (KVC_WATCH_* bits, e.g. KVC_WATCH_PREVIOUS_VALUE). Only valid during
   * kvc_initialize. Returns KVC_OK, KVC_ERR_STATE, or KVC_ERR_INVALID (unknown flag, bad argument).
   */
  int (*watch_with)(void *host_ctx, const char *prefix, kvc_lambda fn, void *user_data, uint32_t flags);
} kvc_host;

/* What the extension exports (declared here so the compiler checks the signatures). */
KVC_EXPORT int kvc_abi_version(void);
KVC_EXPORT int kvc_initialize(const kvc_host *host);
KVC_EXPORT void kvc_shutdown(void);

/** Defines kvc_abi_version() returning this header's KVC_ABI_VERSION. Use once per extension. */
#define KVC_DEFINE_ABI_VERSION() \
  KVC_EXPORT int kvc_abi_version(void) { return KVC_ABI_VERSION; }

#ifdef __cplusplus
}
#endif

#endif /* KVCASCADE_H */
