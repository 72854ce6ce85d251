#include "test/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
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

namespace {

// This process's environment with `extra` ("K=V") added, an entry of the same name replaced.
std::vector<std::string> merged_environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.push_back(*e);
  auto name = [](const std::string& e) { return e.substr(0, e.find('=')); };
  for (const auto& x : extra) {
    std::erase_if(env, [&](const std::string& e) { return name(e) == name(x); });  // the last one wins
    env.push_back(x);
  }
  return env;
}

// `program` as execvp finds it on the PATH of `env`: the first executable file of that name, or
// empty when there is none.
std::string on_path(const std::string& program, const std::vector<std::string>& env) {
  if (program.find('/') != std::string::npos) return program;
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& e : env)
    if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
  for (size_t at = 0; at <= path.size();) {
    size_t end = path.find(':', at);
    if (end == std::string::npos) end = path.size();
    const std::string dir = end > at ? path.substr(at, end - at) : ".";
    const std::string candidate = dir + "/" + program;
    struct stat st{};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(candidate.c_str(), X_OK) == 0)
      return candidate;
    at = end + 1;
  }
  return "";
}

// What a process still running at its deadline is waiting in, for the failure message: each
// thread's system call and kernel wait channel (/proc), and what its descriptors are.
std::string where_it_waits(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid);
  auto first_line = [](const std::string& path) {
    std::string s = read_file(path);
    return s.substr(0, s.find('\n'));
  };
  auto syscall_name = [](long n) -> std::string {
#if defined(__x86_64__)  // the numbers below are x86-64's
    switch (n) {
      case 0: return "read";
      case 7: return "poll";
      case 23: return "select";
      case 35: return "nanosleep";
      case 42: return "connect";
      case 43: return "accept";
      case 45: return "recvfrom";
      case 61: return "wait4";
      case 73: return "flock";
      case 202: return "futex";
      case 230: return "clock_nanosleep";
      case 232: return "epoll_wait";
      case 270: return "pselect6";
      case 271: return "ppoll";
      case 288: return "accept4";
      default: break;
    }
#endif
    return "system call " + std::to_string(n);
  };
  std::ostringstream o;
  o << first_line(proc + "/comm");
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator(proc + "/task", ec)) {
    const std::string t = task.path().string();
    const std::string sc = first_line(t + "/syscall");
    o << "; thread " << task.path().filename().string() << ": ";
    if (sc.empty() || sc == "running") o << (sc.empty() ? "?" : sc);
    else o << syscall_name(std::strtol(sc.c_str(), nullptr, 10)) << " (" << first_line(t + "/wchan") << ")";
  }
  o << "; descriptors:";
  for (const auto& fd : std::filesystem::directory_iterator(proc + "/fd", ec)) {
    std::error_code lec;
    o << " " << fd.path().filename().string() << "=" << std::filesystem::read_symlink(fd.path(), lec).string();
  }
  return o.str();
}

}  // namespace

pid_t launch(const Launch& l) {
  std::vector<std::string> env = merged_environment(l.env);
  const std::string program = on_path(l.argv.at(0), env);
  if (program.empty()) {
    errno = ENOENT;
    return -1;
  }
  std::vector<char*> args, envp;
  for (const auto& a : l.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (!l.in.empty()) posix_spawn_file_actions_addopen(&fa, 0, l.in.c_str(), O_RDWR, 0);
  if (!l.out.empty() && l.out == l.in) posix_spawn_file_actions_adddup2(&fa, 0, 1);  // a terminal, say
  else if (!l.out.empty()) posix_spawn_file_actions_addopen(&fa, 1, l.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (l.err_to_out) posix_spawn_file_actions_adddup2(&fa, 1, 2);
  else if (!l.err.empty()) posix_spawn_file_actions_addopen(&fa, 2, l.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (l.extra_fd >= 0)
    posix_spawn_file_actions_addopen(&fa, l.extra_fd, l.extra_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // A child starts with the default signal dispositions and no signal blocked, as after exec from
  // a fresh shell, whatever this process set up.
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
  if (l.new_session) flags |= POSIX_SPAWN_SETSID;
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, program.c_str(), &fa, &attr, args.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

CommandResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  const std::string& stdin_text, int timeout_s) {
  std::string dir = make_temp_dir("tpmkey-run");
  Launch l{.argv = argv, .env = env, .in = dir + "/in", .out = dir + "/out", .err = dir + "/err", .new_session = true};
  write_file(l.in, stdin_text);  // no controlling terminal either (new_session): commands must not prompt
  // Sanitizer builds: uninstrumented programs (openssl) that load our instrumented provider
  // need the sanitizer runtime first; their own exit-time leaks are not ours to judge.
  // Only openssl gets it: other programs (tpm2-tools, curl) deadlock at start with it preloaded.
  const bool loads_provider = std::filesystem::path(argv.at(0)).filename() == "openssl";
  if (const char* rt = std::getenv("TPMKEY_SUBPROCESS_PRELOAD"); rt && *rt && loads_provider)
    l.env.insert(l.env.end(), {std::string("LD_PRELOAD=") + rt, "ASAN_OPTIONS=detect_leaks=0"});
  CommandResult r;
  const pid_t pid = launch(l);
  if (pid < 0) {  // as a shell says it: the program could not be started
    r.exit_code = 127;
    r.err = argv[0] + ": " + std::strerror(errno) + "\n";
    remove_tree(dir);
    return r;
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.hung_in = where_it_waits(pid);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(l.out);
  r.err = read_file(l.err);
  remove_tree(dir);
  return r;
}

pid_t spawn(const std::vector<std::string>& argv, const std::string& log, int extra_fd_target,
            const std::string& extra_fd_file) {
  const pid_t pid = launch({.argv = argv, .in = "/dev/null", .out = log, .err_to_out = true,
                            .extra_fd = extra_fd_target, .extra_file = extra_fd_file});
  if (pid < 0) throw std::runtime_error("cannot start " + argv.at(0) + ": " + std::strerror(errno));
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
                                       << (r.timed_out ? " (timed out, waiting in: " + r.hung_in + ")" : "")
                                       << "\nstdout: " << r.out
                                       << "\nstderr: " << r.err;
}

::testing::AssertionResult command_failed_with(const char* expr, const char* text_expr, const CommandResult& r,
                                               std::string_view text) {
  std::ostringstream why;
  if (r.exit_code == 0) why << "\n  it succeeded (exit code 0)";
  if (r.exit_code >= 128)
    why << "\n  it crashed (exit code " << r.exit_code << (r.timed_out ? ", timed out, waiting in: " + r.hung_in : "")
        << ")";
  if (r.err.find(text) == std::string::npos) why << "\n  its stderr does not say " << text_expr << ": \"" << text << "\"";
  if (why.str().empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expr << " should fail cleanly saying " << text_expr << ", but:" << why.str()
                                       << "\nstdout: " << r.out << "\nstderr: " << r.err;
}

}  // namespace tpmkey::test
