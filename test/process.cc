#include "test/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace {
bool g_leaks_on_purpose = false;
}  // namespace

// LeakSanitizer asks this at exit (a weak hook in its runtime; unused without it).
extern "C" int __lsan_is_turned_off() { return g_leaks_on_purpose; }

namespace tpmkey::test {

void child_leaks_on_purpose() { g_leaks_on_purpose = true; }

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// A new file is created 0600, as a user's own files (password files, keys) are: tpmkey refuses a
// password file that others can read (keystore/files.h).
void write_file(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += size_t(n);
  }
  close(fd);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

CommandResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  const std::string& stdin_text, int timeout_s) {
  std::string dir = make_temp_dir("tpmkey-run");
  std::string in = dir + "/in", out = dir + "/out", err = dir + "/err";
  write_file(in, stdin_text);
  pid_t pid = fork();
  if (pid == 0) {
    setsid();  // no controlling terminal: commands must not prompt
    int fi = open(in.c_str(), O_RDONLY), fo = open(out.c_str(), O_WRONLY | O_CREAT, 0600),
        fe = open(err.c_str(), O_WRONLY | O_CREAT, 0600);
    dup2(fi, 0);
    dup2(fo, 1);
    dup2(fe, 2);
    for (const auto& e : env) putenv(strdup(e.c_str()));
    // Sanitizer builds: uninstrumented programs (openssl) that load our instrumented provider
    // need the sanitizer runtime first; their own exit-time leaks are not ours to judge.
    // Only openssl gets it: other programs (tpm2-tools, curl) deadlock at start with it preloaded.
    const bool loads_provider = std::filesystem::path(argv[0]).filename() == "openssl";
    if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt && loads_provider) {
      setenv("LD_PRELOAD", rt, 1);
      setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  CommandResult r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  remove_tree(dir);
  return r;
}


pid_t spawn(const std::vector<std::string>& argv, const std::string& log, int extra_fd_target,
            const std::string& extra_fd_file) {
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(devnull, 0);
    dup2(out, 1);
    dup2(out, 2);
    if (extra_fd_target >= 0) dup2(open(extra_fd_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600), extra_fd_target);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void stop_child(pid_t& pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  pid = -1;
}

std::string provider_dir() { return TPMKEY_PROVIDER_DIR; }
std::string tpmkey_bin() { return TPMKEY_CLI; }

::testing::AssertionResult command_succeeded(const char* expr, const CommandResult& r) {
  if (r.exit_code == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expr << " exited with " << r.exit_code
                                       << (r.timed_out ? " (timed out)" : "") << "\nstdout: " << r.out
                                       << "\nstderr: " << r.err;
}

::testing::AssertionResult command_failed_with(const char* expr, const char* text_expr, const CommandResult& r,
                                               std::string_view text) {
  std::ostringstream why;
  if (r.exit_code == 0) why << "\n  it succeeded (exit code 0)";
  if (r.exit_code >= 128) why << "\n  it crashed (exit code " << r.exit_code << (r.timed_out ? ", timed out" : "") << ")";
  if (r.err.find(text) == std::string::npos) why << "\n  its stderr does not say " << text_expr << ": \"" << text << "\"";
  if (why.str().empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expr << " should fail cleanly saying " << text_expr << ", but:" << why.str()
                                       << "\nstdout: " << r.out << "\nstderr: " << r.err;
}

}  // namespace tpmkey::test
