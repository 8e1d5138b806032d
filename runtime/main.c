/* main.c — the fairy2 executable: an embedded LuaJIT with cjson preloaded and the fairy2 Lua
 * library on its path; everything else (argument parsing, recipes, REPL) is lua/fairy2/cli.lua.
 * Also the REPL's Ctrl-C: it needs the Lua state, which only this file has. */
#include "f2_internal.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int luaopen_cjson(lua_State *L);

/* The one Lua state, for the SIGINT handler; SIGINT's action before arm, for disarm. */
static lua_State *main_state;
static struct sigaction saved_sigint;
static int sigint_armed;

/* Ctrl-C while a REPL statement runs, as lua.c does it: the signal handler may not touch the Lua
 * stack, so it only sets a hook; the hook runs at the next call, return or instruction of
 * interpreted code and raises there. (LuaJIT checks hooks in the interpreter only, so the REPL
 * runs its chunks with the JIT off.) */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted");
}

static void on_sigint(int sig) {
  signal(sig, SIG_DFL);   /* a second Ctrl-C before the hook runs ends the process */
  lua_sethook(main_state, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

int f2_repl_interrupt_arm(void) {
  if (!main_state) return F2_FAIL(F2_ERR_UNSUPPORTED, "no Lua state (only the fairy2 executable has one)");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, sigint_armed ? NULL : &saved_sigint) != 0)
    return F2_FAIL(F2_ERR_ARG, "sigaction(SIGINT) failed");
  sigint_armed = 1;
  return F2_OK;
}

int f2_repl_interrupt_disarm(void) {
  if (sigint_armed) sigaction(SIGINT, &saved_sigint, NULL);
  sigint_armed = 0;
  if (main_state) lua_sethook(main_state, NULL, 0, 0);
  return F2_OK;
}

/* The Lua library directory: $FAIRY2_LUA_DIR, else next to the executable (build tree inside the
 * source tree: <exe>/../lua; installed: <exe>/../share/fairy2/lua), else the source tree the
 * binary was built from. */
static int find_lua_dir(char *out, size_t size) {
  const char *env = getenv("FAIRY2_LUA_DIR");
  struct stat st;
  if (env && *env) {
    snprintf(out, size, "%s", env);
    return 0;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    const char *candidates[] = {"%s/../lua", "%s/../share/fairy2/lua", "%s/lua"};
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++) {
      char probe[PATH_MAX + 64];
      snprintf(out, size, candidates[i], exe);
      snprintf(probe, sizeof probe, "%s/fairy2/init.lua", out);
      if (stat(probe, &st) == 0) return 0;
    }
  }
#ifdef F2_SOURCE_LUA_DIR
  snprintf(out, size, "%s", F2_SOURCE_LUA_DIR);
  return 0;
#else
  return -1;
#endif
}

/* require "fairy2.header": the text of f2.h this binary was compiled against. */
static int header_module(lua_State *L) {
  lua_pushstring(L, f2_header_text());
  return 1;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int main(int argc, char **argv) {
  /* Line-buffered even into a pipe or a file: a training log shows each step as it ends, and a run
   * that is killed loses no finished line. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "fairy2: cannot create the Lua state (out of memory)\n");
    return 1;
  }
  main_state = L;
  luaL_openlibs(L);

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_cjson);
  lua_setfield(L, -2, "cjson");
  lua_pushcfunction(L, header_module);
  lua_setfield(L, -2, "fairy2.header");
  lua_pop(L, 1);
  char dir[PATH_MAX];
  if (find_lua_dir(dir, sizeof dir) != 0) {
    fprintf(stderr, "fairy2: cannot find the fairy2 Lua library; set FAIRY2_LUA_DIR\n");
    return 1;
  }
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;./?.lua", dir, dir);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  lua_pushstring(L, dir);
  lua_setglobal(L, "FAIRY2_LUA_DIR");

  /* arg table as lua.c builds it: arg[0] is the program, arg[1..] the arguments. */
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");

  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "fairy2.cli");
  int rc = lua_pcall(L, 1, 1, -3);
  if (rc == 0) {
    lua_getfield(L, -1, "main");
    lua_remove(L, -2);
    rc = lua_pcall(L, 0, 1, -2);
  }
  int status = 0;
  if (rc != 0) {
    fprintf(stderr, "fairy2: %s\n", lua_tostring(L, -1));
    status = 1;
  } else if (lua_isnumber(L, -1)) {
    status = (int)lua_tointeger(L, -1);
  }
  f2_repl_interrupt_disarm();
  main_state = NULL;
  lua_close(L);
  return status;
}
