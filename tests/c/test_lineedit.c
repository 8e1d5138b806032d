/* test_lineedit.c — the line editor without a terminal (runtime/lineedit.c): plain line reads from
 * a file as stdin (CRLF, a last line without newline, EOF), the history file (appended, bounded,
 * private, blanks and repeats skipped), and completion splicing (one candidate, common prefix,
 * UTF-8 boundaries, bad arguments). The terminal side is tests/python/test_repl.py's. */
#include "f2test.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int count_lines(const char *path, char lines[][64], int max) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int n = 0;
  char buf[64];
  while (fgets(buf, sizeof buf, f)) {
    buf[strcspn(buf, "\n")] = 0;
    if (n < max) snprintf(lines[n], 64, "%s", buf);
    n++;
  }
  fclose(f);
  return n;
}

int main(void) {
  uint64_t seed = f2t_seed();
  srand((unsigned)seed);
  char dir[] = "/tmp/f2lineeditXXXXXX";
  if (!mkdtemp(dir)) return 1;
  char input[256], hist[256];
  snprintf(input, sizeof input, "%s/input", dir);
  snprintf(hist, sizeof hist, "%s/history", dir);

  /* Plain reads: stdin is a file, so no terminal. */
  int a = rand() % 100000, b = rand() % 100000;
  FILE *f = fopen(input, "w");
  fprintf(f, "x = %d\r\n\nprint(stri\nlast %d", a, b);
  fclose(f);
  CHECK(freopen(input, "r", stdin) != NULL, "stdin from %s", input);

  /* History: a file longer than the bound is trimmed to its newest lines when opened. */
  int max = 3 + rand() % 8, total = max + 1 + rand() % 20;
  f = fopen(hist, "w");
  for (int i = 0; i < total; i++) fprintf(f, "line %d %d\n", i, a);
  fclose(f);
  f2_lineedit *e = f2_lineedit_new(hist, max);
  CHECK(e != NULL, "%s", f2_last_error());
  CHECK(f2_lineedit_is_terminal(e) == 0, "a file is not a terminal");
  char lines[64][64];
  CHECK(count_lines(hist, lines, 64) == max, "history trimmed to %d lines", max);
  char want[64];
  snprintf(want, sizeof want, "line %d %d", total - 1, a);
  CHECK(strcmp(lines[max - 1], want) == 0, "newest kept: '%s' vs '%s'", lines[max - 1], want);
  snprintf(want, sizeof want, "line %d %d", total - max, a);
  CHECK(strcmp(lines[0], want) == 0, "oldest kept: '%s' vs '%s'", lines[0], want);

  char expect[64];
  snprintf(expect, sizeof expect, "x = %d", a);
  CHECK(f2_lineedit_read(e, "f2> ") == F2_LINE_OK, "first line");
  CHECK(strcmp(f2_lineedit_text(e), expect) == 0, "CRLF stripped: '%s'", f2_lineedit_text(e));
  CHECK(f2_lineedit_cursor(e) == (int32_t)strlen(expect), "cursor at the end");
  CHECK(f2_lineedit_read(e, "f2> ") == F2_LINE_OK && f2_lineedit_text(e)[0] == 0, "empty line");

  /* Completion splices the word before the cursor. */
  CHECK(f2_lineedit_read(e, "f2> ") == F2_LINE_OK, "third line");
  const char *two[] = {"string", "strict"};
  CHECK_OK(f2_lineedit_complete(e, 6, 2, two));
  CHECK(strcmp(f2_lineedit_text(e), "print(stri") == 0, "common prefix already typed: unchanged");
  const char *prefixed[] = {"stringify", "strings"};
  CHECK_OK(f2_lineedit_complete(e, 6, 2, prefixed));
  CHECK(strcmp(f2_lineedit_text(e), "print(string") == 0, "common prefix inserted: '%s'", f2_lineedit_text(e));
  const char *one[] = {"string.format"};
  CHECK_OK(f2_lineedit_complete(e, 6, 1, one));
  CHECK(strcmp(f2_lineedit_text(e), "print(string.format") == 0, "one candidate: '%s'", f2_lineedit_text(e));
  CHECK(f2_lineedit_cursor(e) == 19, "cursor after the completion");
  const char *utf8[] = {"string.format\xc3\xa9", "string.format\xc3\xa8"};   /* é, è share one byte */
  CHECK_OK(f2_lineedit_complete(e, 6, 2, utf8));
  CHECK(strcmp(f2_lineedit_text(e), "print(string.format") == 0, "no half UTF-8 character inserted");
  CHECK_OK(f2_lineedit_complete(e, 6, 0, NULL));
  CHECK(f2_lineedit_complete(e, 20, 1, one) == F2_ERR_ARG, "start past the cursor");
  CHECK(strstr(f2_last_error(), "start 20") != NULL, "says why: %s", f2_last_error());
  CHECK(f2_lineedit_complete(e, -1, 1, one) == F2_ERR_ARG, "negative start");
  CHECK(f2_lineedit_complete(e, 0, -2, one) == F2_ERR_ARG, "negative count");
  const char *with_null[] = {"x", NULL};
  CHECK(f2_lineedit_complete(e, 0, 2, with_null) == F2_ERR_ARG, "a NULL candidate");

  snprintf(expect, sizeof expect, "last %d", b);
  CHECK(f2_lineedit_read(e, "f2> ") == F2_LINE_OK && strcmp(f2_lineedit_text(e), expect) == 0,
        "a last line without newline: '%s'", f2_lineedit_text(e));
  CHECK(f2_lineedit_read(e, "f2> ") == F2_LINE_EOF, "then end of input");
  CHECK(f2_lineedit_read(e, "f2> ") == F2_LINE_EOF, "and it stays there");

  /* History add: appended to the file at once; blanks, repeats and multi-line text skipped. */
  snprintf(expect, sizeof expect, "added %d", b);
  CHECK_OK(f2_lineedit_history_add(e, expect));
  CHECK_OK(f2_lineedit_history_add(e, expect));
  CHECK_OK(f2_lineedit_history_add(e, "   "));
  CHECK_OK(f2_lineedit_history_add(e, "two\nlines"));
  int n = count_lines(hist, lines, 64);
  CHECK(n == max + 1 && strcmp(lines[n - 1], expect) == 0, "one line appended (%d lines, last '%s')", n,
        n > 0 ? lines[n - 1] : "");
  CHECK(f2_lineedit_history_add(e, NULL) == F2_ERR_ARG, "NULL line");
  CHECK(f2_lineedit_read(NULL, "x") == F2_ERR_ARG, "NULL editor");
  f2_lineedit_free(e);
  f2_lineedit_free(NULL);

  /* A new history file is private (it may hold secrets). */
  unlink(hist);
  e = f2_lineedit_new(hist, max);
  CHECK_OK(f2_lineedit_history_add(e, expect));
  struct stat st;
  CHECK(stat(hist, &st) == 0 && (st.st_mode & 0777) == 0600, "mode %o", (unsigned)(st.st_mode & 0777));
  f2_lineedit_free(e);
  CHECK(f2_lineedit_new(NULL, -1) == NULL, "negative history_max");
  e = f2_lineedit_new(NULL, 0);   /* no history at all */
  CHECK(e != NULL && f2_lineedit_history_add(e, "x") == F2_OK, "history off");
  f2_lineedit_free(e);

  unlink(hist);
  unlink(input);
  rmdir(dir);
  return f2t_done();
}
