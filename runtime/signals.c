/* signals.c — SIGTERM/SIGINT during a training run: the handler only records the signal, and the
 * training loop polls f2_signal_pending() between steps, so it can finish the step, save a
 * checkpoint and exit. A second signal while one is pending ends the process the default way (the
 * user's way out when saving takes too long). The previous handlers (the REPL's SIGINT, the
 * default) are restored by f2_signal_unwatch. */
#include "f2_internal.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t pending;
static struct sigaction saved_term, saved_int;
static int watching;

static void on_signal(int sig) {
  if (pending) {
    /* sigaction and raise are async-signal-safe. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
    return;
  }
  pending = sig;
}

int f2_signal_watch(void) {
  if (watching) return F2_OK;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;   /* a write or read in progress carries on */
  if (sigaction(SIGTERM, &sa, &saved_term) != 0) return F2_FAIL(F2_ERR_ARG, "sigaction(SIGTERM) failed");
  if (sigaction(SIGINT, &sa, &saved_int) != 0) {
    sigaction(SIGTERM, &saved_term, NULL);
    return F2_FAIL(F2_ERR_ARG, "sigaction(SIGINT) failed");
  }
  pending = 0;
  watching = 1;
  return F2_OK;
}

int32_t f2_signal_pending(void) { return (int32_t)pending; }

int f2_signal_unwatch(void) {
  if (!watching) return F2_OK;
  sigaction(SIGTERM, &saved_term, NULL);
  sigaction(SIGINT, &saved_int, NULL);
  watching = 0;
  pending = 0;
  return F2_OK;
}
