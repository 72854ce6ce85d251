// Test support: running commands (exit code, stdout and stderr kept apart), child processes in
// the background, temporary directories and files, and the paths of what the build made.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace tpmkey::test {

std::string make_temp_dir(const std::string& prefix);
// A forked child that ends holding what it allocated (the parent's library context, on purpose)
// calls this first: LeakSanitizer then does not check that process at exit.
void child_leaks_on_purpose();
void remove_tree(const std::string& dir);
// Writes `data` to `path`; a new file is created with mode 0600.
void write_file(const std::string& path, const std::string& data);
std::string read_file(const std::string& path);

// The one command runner: what a command said on stdout and on stderr, and how it ended.
struct CommandResult {
  int exit_code = -1;  // the exit status, or 128 + the signal that ended it
  std::string out, err;
  bool timed_out = false;
  std::string hung_in;  // timed out: what it was waiting in (its threads' system calls, its descriptors)
};
// Runs `argv` (no shell) with extra environment entries "K=V", optional stdin text. A command
// still running after `timeout_s` seconds is killed (exit code 128 + SIGKILL) and `timed_out` set.
CommandResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                  const std::string& stdin_text = "", int timeout_s = 120);

// How a child process starts: its program (found on the PATH of its environment) and arguments,
// environment entries "K=V" added to or replacing this process's, and where its standard
// descriptors go: a file name, or empty to share this process's.
struct Launch {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string in, out, err;
  bool err_to_out = false;   // stderr to wherever stdout goes
  bool new_session = false;  // setsid(): no controlling terminal, unless `in` is a terminal
  int extra_fd = -1;         // with `extra_file`: that descriptor to that file (created 0600)
  std::string extra_file;
};
// Starts it with posix_spawn, and nothing else runs in the child before the program: a child
// forked from a process with threads may find a lock held forever (an allocator's, another
// thread's at the moment of fork; the sanitizers' allocators do not reset theirs), so no test
// process runs code between fork and exec. The pid, or -1 with errno set (the program was not
// found, say).
pid_t launch(const Launch& l);

// Starts `argv` in the background, stdin from /dev/null, stdout and stderr to the file `log`
// (and, with `extra_fd_target`, that descriptor to the file `extra_fd_file`); throws when it
// cannot be started (the program is not installed, say).
pid_t spawn(const std::vector<std::string>& argv, const std::string& log, int extra_fd_target = -1,
            const std::string& extra_fd_file = "");
// SIGTERM, up to 5 s for it to exit, then SIGKILL; sets `pid` to -1.
void stop_child(pid_t& pid);

// Paths from the build: the provider module directory, the tpmkey CLI.
std::string provider_dir();
std::string tpmkey_bin();

// gtest predicate formatters for EXPECT_OK and EXPECT_FAILS_WITH (each evaluates its command once).
::testing::AssertionResult command_succeeded(const char* expr, const CommandResult& r);
::testing::AssertionResult command_failed_with(const char* expr, const char* text_expr, const CommandResult& r,
                                               std::string_view text);

}  // namespace tpmkey::test

// A command's result: it succeeded (exit code 0), or it failed cleanly (a non-zero exit code, no
// crash) saying `text` on stderr. A failure shows the command's stdout and stderr.
#define EXPECT_OK(r) EXPECT_PRED_FORMAT1(::tpmkey::test::command_succeeded, r)
#define ASSERT_OK(r) ASSERT_PRED_FORMAT1(::tpmkey::test::command_succeeded, r)
#define EXPECT_FAILS_WITH(r, text) EXPECT_PRED_FORMAT2(::tpmkey::test::command_failed_with, r, text)
