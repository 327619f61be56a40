/* counter.c: example native kvcascade extension that counts puts under /counter/events/ into /counter/total. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcascade.h"

#define EVENTS_PREFIX "/counter/events/"
#define TOTAL_KEY "/counter/total"
/* One marker per event key: /counter/last-version/<suffix> holds the last counted version of
 * /counter/events/<suffix>. Stateful watches deliver one key's events in version order (also on
 * retry), so "version <= marker" means "already counted". A single store-wide marker would not be
 * safe: versions of different keys may come from different shards, and a retried event of one key
 * may arrive after a newer event of another. */
#define MARKER_PREFIX "/counter/last-version/"

KVC_DEFINE_ABI_VERSION()

static const kvc_host *g_host;

static void logf_(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(int level, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  g_host->log(g_host->host_ctx, level, msg);
}

/* Parses a decimal, unsigned 64-bit number that fills the whole buffer (empty -> error). */
static int parse_u64(const uint8_t *data, size_t len, uint64_t *out) {
  uint64_t v = 0;
  if (len == 0 || len > 20) return -1;
  for (size_t i = 0; i < len; i++) {
    if (data[i] < '0' || data[i] > '9') return -1;
    uint64_t d = (uint64_t)(data[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* Reads a decimal counter at key into *out (0 when absent). Returns 0, or a failure code. */
static int read_u64(const char *key, uint64_t *out) {
  kvc_buf buf = {NULL, 0};
  uint64_t version = 0;
  int rc = g_host->get(g_host->host_ctx, key, &buf, &version);
  if (rc == KVC_NOT_FOUND) {
    *out = 0;
    return 0;
  }
  if (rc != KVC_OK) {
    logf_(KVC_LOG_WARN, "counter: get %s failed (%d)", key, rc);
    return rc < 0 ? rc : -1;
  }
  if (parse_u64(buf.data, buf.len, out) != 0) {
    logf_(KVC_LOG_ERROR, "counter: %s does not hold a decimal number", key);
    return KVC_ERR_INVALID;
  }
  return 0;
}

static int write_u64(const char *key, uint64_t value) {
  char text[24];
  int n = snprintf(text, sizeof text, "%" PRIu64, value);
  int rc = g_host->put(g_host->host_ctx, key, (const uint8_t *)text, (size_t)n, NULL);
  if (rc != KVC_OK) logf_(KVC_LOG_WARN, "counter: put %s failed (%d)", key, rc);
  return rc;
}

static int on_event(const kvc_event *ev, void *user_data) {
  (void)user_data;
  if (ev->type != KVC_EVENT_PUT) return 0;
  size_t plen = strlen(EVENTS_PREFIX);
  if (ev->key_len < plen) return 0;

  const char *suffix = ev->key + plen;
  size_t mlen = strlen(MARKER_PREFIX) + strlen(suffix) + 1;
  char *marker = malloc(mlen);
  if (marker == NULL) return KVC_ERR_NOMEM;
  snprintf(marker, mlen, "%s%s", MARKER_PREFIX, suffix);

  uint64_t last = 0, total = 0;
  int rc = read_u64(marker, &last);
  if (rc == 0 && ev->version <= last) {
    logf_(KVC_LOG_DEBUG, "counter: %s@%" PRIu64 " already counted", ev->key, ev->version);
    goto done;
  }
  if (rc == 0) rc = read_u64(TOTAL_KEY, &total);
  /* Total first, then the marker: if the worker dies in between, the retried event is counted
   * twice (at-least-once); the other order would lose it. Without a transaction there is no third
   * way. */
  if (rc == 0) rc = write_u64(TOTAL_KEY, total + 1);
  if (rc == 0) rc = write_u64(marker, ev->version);

done:
  free(marker);
  return rc;
}

KVC_EXPORT int kvc_initialize(const kvc_host *host) {
  g_host = host;
  int rc = host->watch(host->host_ctx, EVENTS_PREFIX, on_event, NULL);
  if (rc != KVC_OK) return rc;
  logf_(KVC_LOG_INFO, "counter: watching %s (abi %d)", EVENTS_PREFIX, KVC_ABI_VERSION);
  return 0;
}

KVC_EXPORT void kvc_shutdown(void) {
  g_host = NULL;
}
