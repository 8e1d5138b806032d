/* lineedit.c — the REPL's line editor: single-line editing in raw terminal mode with history and
 * Tab completion (the completions come from Lua: read returns F2_LINE_COMPLETE, Lua answers with
 * f2_lineedit_complete), and plain line reads when stdin or stdout is not a terminal, so a pipe
 * gets clean output. Our own instead of readline (GPL) or libedit, to keep the binary static. */
#include "f2_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

struct f2_lineedit {
  char *text;              /* the line being edited, NUL-terminated */
  size_t len, cap, cursor; /* bytes */
  int continuing;          /* the last read returned F2_LINE_COMPLETE: go on with the same line */
  int terminal;
  char **history;          /* oldest first */
  int32_t history_len, history_max, browsing;   /* browsing: entries back from the newest, 0 = own line */
  char *own_line;          /* the line being edited when browsing started */
  char *history_path;
  char *out;               /* one refresh worth of output, written at once (no flicker) */
  size_t out_len, out_cap;
};

static struct termios saved_termios;
static int raw_mode_on;

static void raw_mode_off(void) {
  if (raw_mode_on) tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_termios);
  raw_mode_on = 0;
}

/* No echo, no line buffering, no signals from Ctrl-C/Z (we read them as bytes). TCSADRAIN, not
 * TCSAFLUSH: input typed ahead of the prompt must not be lost. */
static int raw_mode_enter(void) {
  static int registered;
  if (raw_mode_on) return F2_OK;
  if (tcgetattr(STDIN_FILENO, &saved_termios) != 0)
    return F2_FAIL(F2_ERR_IO, "tcgetattr: %s", strerror(errno));
  if (!registered) atexit(raw_mode_off);
  registered = 1;
  struct termios raw = saved_termios;
  raw.c_iflag &= ~(tcflag_t)(BRKINT | ICRNL | INPCK | ISTRIP | IXON);
  raw.c_cflag |= CS8;
  raw.c_lflag &= ~(tcflag_t)(ECHO | ICANON | IEXTEN | ISIG);
  raw.c_cc[VMIN] = 1;
  raw.c_cc[VTIME] = 0;
  if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) != 0)
    return F2_FAIL(F2_ERR_IO, "tcsetattr: %s", strerror(errno));
  raw_mode_on = 1;
  return F2_OK;
}

static int reserve(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return F2_OK;
  size_t cap2 = *cap ? *cap : 128;
  while (cap2 < need) cap2 *= 2;
  char *p = realloc(*buf, cap2);
  if (!p) return F2_FAIL(F2_ERR_MEM, "line editor: out of memory (%zu bytes)", need);
  *buf = p;
  *cap = cap2;
  return F2_OK;
}

static int set_text(f2_lineedit *e, const char *s) {
  size_t n = strlen(s);
  F2_TRY(reserve(&e->text, &e->cap, n + 1));
  memcpy(e->text, s, n + 1);
  e->len = e->cursor = n;
  return F2_OK;
}

/* Replaces bytes [from, to) of the text with s (n bytes); the cursor goes after s. */
static int splice(f2_lineedit *e, size_t from, size_t to, const char *s, size_t n) {
  F2_TRY(reserve(&e->text, &e->cap, e->len - (to - from) + n + 1));
  memmove(e->text + from + n, e->text + to, e->len - to + 1);
  memcpy(e->text + from, s, n);
  e->len = e->len - (to - from) + n;
  e->cursor = from + n;
  return F2_OK;
}

/* UTF-8: a code point starts at every byte that is not 10xxxxxx; one column per code point. */
static int is_continuation(char c) { return ((unsigned char)c & 0xC0) == 0x80; }
static size_t next_char(const char *s, size_t len, size_t i) {
  if (i < len) i++;
  while (i < len && is_continuation(s[i])) i++;
  return i;
}
static size_t prev_char(const char *s, size_t i) {
  if (i > 0) i--;
  while (i > 0 && is_continuation(s[i])) i--;
  return i;
}
static size_t columns(const char *s, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += !is_continuation(s[i]);
  return c;
}

static size_t terminal_columns(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

static void out_add(f2_lineedit *e, const char *s, size_t n) {
  if (reserve(&e->out, &e->out_cap, e->out_len + n) != F2_OK) return;   /* a missed redraw, no more */
  memcpy(e->out + e->out_len, s, n);
  e->out_len += n;
}

static void out_flush(f2_lineedit *e) {
  size_t done = 0;
  while (done < e->out_len) {
    ssize_t n = write(STDOUT_FILENO, e->out + done, e->out_len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (size_t)n;
  }
  e->out_len = 0;
}

/* Redraws prompt and line; a line wider than the terminal scrolls sideways to keep the cursor. */
static void refresh(f2_lineedit *e, const char *prompt) {
  size_t width = terminal_columns(), prompt_cols = columns(prompt, strlen(prompt));
  size_t room = width > prompt_cols + 1 ? width - prompt_cols - 1 : 1;
  size_t from = 0;
  while (columns(e->text + from, e->cursor - from) > room) from = next_char(e->text, e->len, from);
  size_t to = from;
  while (to < e->len && columns(e->text + from, next_char(e->text, e->len, to) - from) <= room)
    to = next_char(e->text, e->len, to);
  out_add(e, "\r", 1);
  out_add(e, prompt, strlen(prompt));
  out_add(e, e->text + from, to - from);
  out_add(e, "\x1b[0K\r", 5);
  size_t col = prompt_cols + columns(e->text + from, e->cursor - from);
  if (col > 0) {
    char move[32];
    int n = snprintf(move, sizeof move, "\x1b[%zuC", col);
    out_add(e, move, (size_t)n);
  }
  out_flush(e);
}

/* ---------------------------------------------------------------- history */

static void history_push(f2_lineedit *e, const char *line) {
  if (e->history_max <= 0) return;
  char *copy = strdup(line);
  if (!copy) return;
  if (e->history_len == e->history_max) {
    free(e->history[0]);
    memmove(e->history, e->history + 1, (size_t)(e->history_len - 1) * sizeof *e->history);
    e->history_len--;
  }
  e->history[e->history_len++] = copy;
}

/* Loads the file's newest history_max lines; rewrites it when it held more, so it stays bounded. */
static void history_load(f2_lineedit *e) {
  FILE *f = fopen(e->history_path, "r");
  if (!f) return;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int64_t total = 0;
  while ((n = getline(&line, &cap, f)) >= 0) {
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (n > 0) {
      history_push(e, line);
      total++;
    }
  }
  free(line);
  fclose(f);
  if (total <= e->history_max) return;
  char tmp[4096];
  int n_tmp = snprintf(tmp, sizeof tmp, "%s.tmp", e->history_path);
  if (n_tmp < 0 || (size_t)n_tmp >= sizeof tmp) return;
  f = fopen(tmp, "w");
  if (!f) return;
  for (int32_t i = 0; i < e->history_len; i++) fprintf(f, "%s\n", e->history[i]);
  if (fclose(f) == 0) rename(tmp, e->history_path);
}

int f2_lineedit_history_add(f2_lineedit *e, const char *line) {
  if (!e || !line) return F2_FAIL(F2_ERR_ARG, "f2_lineedit_history_add: NULL argument");
  if (!line[strspn(line, " \t\r\n")]) return F2_OK;
  if (strpbrk(line, "\r\n")) return F2_OK;   /* one entry per line of the file */
  if (e->history_len > 0 && strcmp(e->history[e->history_len - 1], line) == 0) return F2_OK;
  history_push(e, line);
  if (!e->history_path) return F2_OK;
  /* Appended at once, so every session's lines survive; 0600: history may hold secrets. */
  int fd = open(e->history_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
  if (fd < 0) return F2_FAIL(F2_ERR_IO, "cannot write history %s: %s", e->history_path, strerror(errno));
  size_t n = strlen(line);
  int ok = write(fd, line, n) == (ssize_t)n && write(fd, "\n", 1) == 1;
  close(fd);
  return ok ? F2_OK : F2_FAIL(F2_ERR_IO, "cannot write history %s", e->history_path);
}

/* Up (delta 1) or down (-1) through the history; browsing 0 is the line the user was typing. */
static int history_move(f2_lineedit *e, int delta) {
  int32_t to = e->browsing + delta;
  if (to < 0 || to > e->history_len) return F2_OK;
  if (e->browsing == 0) {
    free(e->own_line);
    e->own_line = strdup(e->text);
    if (!e->own_line) return F2_FAIL(F2_ERR_MEM, "line editor: out of memory");
  }
  e->browsing = to;
  return set_text(e, to == 0 ? e->own_line : e->history[e->history_len - to]);
}

/* ---------------------------------------------------------------- the editor */

f2_lineedit *f2_lineedit_new(const char *history_path, int32_t history_max) {
  if (history_max < 0) return F2_FAIL_NULL(F2_ERR_ARG, "f2_lineedit_new: history_max %d < 0", (int)history_max);
  f2_lineedit *e = calloc(1, sizeof *e);
  if (!e) return F2_FAIL_NULL(F2_ERR_MEM, "line editor: out of memory");
  const char *term = getenv("TERM");
  e->terminal = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO) && !(term && strcmp(term, "dumb") == 0);
  e->history_max = history_max;
  e->history = calloc((size_t)history_max + 1, sizeof *e->history);
  if (!e->history || set_text(e, "") != F2_OK || (history_path && !(e->history_path = strdup(history_path)))) {
    f2_lineedit_free(e);
    return F2_FAIL_NULL(F2_ERR_MEM, "line editor: out of memory");
  }
  if (e->history_path) history_load(e);
  return e;
}

void f2_lineedit_free(f2_lineedit *e) {
  if (!e) return;
  raw_mode_off();
  for (int32_t i = 0; i < e->history_len; i++) free(e->history[i]);
  free(e->history);
  free(e->history_path);
  free(e->own_line);
  free(e->text);
  free(e->out);
  free(e);
}

int f2_lineedit_is_terminal(const f2_lineedit *e) { return e && e->terminal; }
const char *f2_lineedit_text(const f2_lineedit *e) { return e ? e->text : ""; }
int32_t f2_lineedit_cursor(const f2_lineedit *e) { return e ? (int32_t)e->cursor : 0; }

/* Not a terminal: one line from stdin, as is. A person typing (stdin a terminal, stdout a file or
 * TERM=dumb) still gets the prompt, on stderr so the output stays clean. */
static int read_plain(f2_lineedit *e, const char *prompt) {
  fflush(stdout);
  if (isatty(STDIN_FILENO)) fputs(prompt, stderr);
  e->len = e->cursor = 0;
  e->text[0] = 0;
  int c;
  while ((c = getchar()) != EOF && c != '\n') {
    F2_TRY(reserve(&e->text, &e->cap, e->len + 2));
    e->text[e->len++] = (char)c;
  }
  if (c == EOF && e->len == 0) {
    if (ferror(stdin) && errno != EINTR) return F2_FAIL(F2_ERR_IO, "reading stdin: %s", strerror(errno));
    return F2_LINE_EOF;
  }
  if (e->len > 0 && e->text[e->len - 1] == '\r') e->len--;
  e->text[e->len] = 0;
  e->cursor = e->len;
  return F2_LINE_OK;
}

static int read_byte(unsigned char *c) {
  for (;;) {
    ssize_t n = read(STDIN_FILENO, c, 1);
    if (n == 1) return 1;
    if (n < 0 && errno == EINTR) continue;
    return 0;
  }
}

/* After ESC: CSI "[params final" or SS3 "O final". Returns the final byte and the first
 * parameter (0 when none) and whether a modifier (";5" etc.) came with it. Alt-b / Alt-f
 * (ESC b, ESC f) come back as a modified Left / Right: a word move. */
static int read_escape(int *param, int *modified) {
  unsigned char c, kind;
  *param = 0;
  *modified = 0;
  if (!read_byte(&kind)) return 0;
  if (kind == 'b' || kind == 'f') {
    *modified = 1;
    return kind == 'b' ? 'D' : 'C';
  }
  if (kind != '[' && kind != 'O') return 0;
  int field = 0;
  while (read_byte(&c)) {
    if (c >= '0' && c <= '9') {
      if (field == 0 && *param < 100000) *param = *param * 10 + (c - '0');
      else *modified = 1;
    } else if (c == ';') {
      field++;
    } else {
      return c;
    }
  }
  return 0;
}

static int is_word_char(char c) {
  return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         ((unsigned char)c & 0x80);
}
static size_t word_left(const f2_lineedit *e, size_t i) {
  while (i > 0 && !is_word_char(e->text[i - 1])) i--;
  while (i > 0 && is_word_char(e->text[i - 1])) i--;
  return i;
}
static size_t word_right(const f2_lineedit *e, size_t i) {
  while (i < e->len && !is_word_char(e->text[i])) i++;
  while (i < e->len && is_word_char(e->text[i])) i++;
  return i;
}

/* The editing loop; returns with the terminal still raw (the caller restores it). */
static int edit(f2_lineedit *e, const char *prompt) {
  refresh(e, prompt);
  for (;;) {
    unsigned char c;
    if (!read_byte(&c)) return e->len ? F2_LINE_OK : F2_LINE_EOF;
    switch (c) {
      case '\r': case '\n':
        e->cursor = e->len;
        refresh(e, prompt);
        out_add(e, "\n", 1);
        out_flush(e);
        return F2_LINE_OK;
      case 3:   /* Ctrl-C */
        out_add(e, "^C\n", 3);
        out_flush(e);
        F2_TRY(set_text(e, ""));
        return F2_LINE_INTERRUPT;
      case 4:   /* Ctrl-D: end of input on an empty line, else delete forward */
        if (e->len == 0) {
          out_add(e, "\n", 1);
          out_flush(e);
          return F2_LINE_EOF;
        }
        if (e->cursor < e->len) F2_TRY(splice(e, e->cursor, next_char(e->text, e->len, e->cursor), "", 0));
        break;
      case '\t':
        return F2_LINE_COMPLETE;
      case 127: case 8:   /* Backspace, Ctrl-H */
        if (e->cursor > 0) F2_TRY(splice(e, prev_char(e->text, e->cursor), e->cursor, "", 0));
        break;
      case 1: e->cursor = 0; break;                                        /* Ctrl-A */
      case 5: e->cursor = e->len; break;                                   /* Ctrl-E */
      case 2: e->cursor = prev_char(e->text, e->cursor); break;            /* Ctrl-B */
      case 6: e->cursor = next_char(e->text, e->len, e->cursor); break;    /* Ctrl-F */
      case 11: e->len = e->cursor; e->text[e->len] = 0; break;             /* Ctrl-K */
      case 21: F2_TRY(splice(e, 0, e->cursor, "", 0)); break;              /* Ctrl-U */
      case 23: F2_TRY(splice(e, word_left(e, e->cursor), e->cursor, "", 0)); break;   /* Ctrl-W */
      case 12: out_add(e, "\x1b[H\x1b[2J", 7); break;                      /* Ctrl-L */
      case 16: F2_TRY(history_move(e, 1)); break;                          /* Ctrl-P */
      case 14: F2_TRY(history_move(e, -1)); break;                         /* Ctrl-N */
      case 27: {
        int param, modified, key = read_escape(&param, &modified);
        if (key == 'A') F2_TRY(history_move(e, 1));
        else if (key == 'B') F2_TRY(history_move(e, -1));
        else if (key == 'C') e->cursor = modified ? word_right(e, e->cursor) : next_char(e->text, e->len, e->cursor);
        else if (key == 'D') e->cursor = modified ? word_left(e, e->cursor) : prev_char(e->text, e->cursor);
        else if (key == 'H' || (key == '~' && (param == 1 || param == 7))) e->cursor = 0;
        else if (key == 'F' || (key == '~' && (param == 4 || param == 8))) e->cursor = e->len;
        else if (key == '~' && param == 3 && e->cursor < e->len)
          F2_TRY(splice(e, e->cursor, next_char(e->text, e->len, e->cursor), "", 0));
        break;
      }
      default:
        if (c >= 32) F2_TRY(splice(e, e->cursor, e->cursor, (const char *)&c, 1));
        break;
    }
    refresh(e, prompt);
  }
}

int f2_lineedit_read(f2_lineedit *e, const char *prompt) {
  if (!e || !prompt) return F2_FAIL(F2_ERR_ARG, "f2_lineedit_read: NULL argument");
  if (!e->terminal) return read_plain(e, prompt);
  if (!e->continuing) {
    F2_TRY(set_text(e, ""));
    e->browsing = 0;
  }
  e->continuing = 0;
  fflush(stdout);
  F2_TRY(raw_mode_enter());
  int rc = edit(e, prompt);
  /* Tab: stay raw until the next read, so keys typed meanwhile are not echoed by the terminal. */
  if (rc == F2_LINE_COMPLETE) e->continuing = 1;
  else raw_mode_off();
  return rc;
}

/* Candidates side by side in columns, as wide as the widest. */
static void list_candidates(f2_lineedit *e, int32_t count, const char *const *candidates) {
  size_t widest = 0;
  for (int32_t i = 0; i < count; i++) {
    size_t w = columns(candidates[i], strlen(candidates[i]));
    if (w > widest) widest = w;
  }
  size_t per_row = terminal_columns() / (widest + 2);
  if (per_row == 0) per_row = 1;
  out_add(e, "\n", 1);
  for (int32_t i = 0; i < count; i++) {
    size_t n = strlen(candidates[i]);
    out_add(e, candidates[i], n);
    int last = i + 1 == count || (size_t)(i + 1) % per_row == 0;
    if (last) {
      out_add(e, "\n", 1);
    } else {
      for (size_t pad = columns(candidates[i], n); pad < widest + 2; pad++) out_add(e, " ", 1);
    }
  }
  out_flush(e);
}

int f2_lineedit_complete(f2_lineedit *e, int32_t start, int32_t count, const char *const *candidates) {
  if (!e || (count > 0 && !candidates)) return F2_FAIL(F2_ERR_ARG, "f2_lineedit_complete: NULL argument");
  if (start < 0 || (size_t)start > e->cursor)
    return F2_FAIL(F2_ERR_ARG, "f2_lineedit_complete: start %d outside [0, cursor %zu]", (int)start, e->cursor);
  if (count < 0) return F2_FAIL(F2_ERR_ARG, "f2_lineedit_complete: count %d < 0", (int)count);
  if (count == 0) return F2_OK;
  for (int32_t i = 0; i < count; i++)
    if (!candidates[i]) return F2_FAIL(F2_ERR_ARG, "f2_lineedit_complete: candidate %d is NULL", (int)i);
  size_t common = strlen(candidates[0]);
  for (int32_t i = 1; i < count; i++) {
    size_t j = 0;
    while (j < common && candidates[i][j] == candidates[0][j]) j++;
    common = j;
  }
  while (common > 0 && is_continuation(candidates[0][common])) common--;   /* whole code points only */
  size_t typed = e->cursor - (size_t)start;
  if (count == 1 || common > typed) return splice(e, (size_t)start, e->cursor, candidates[0], count == 1 ? strlen(candidates[0]) : common);
  if (e->terminal) list_candidates(e, count, candidates);
  return F2_OK;
}
