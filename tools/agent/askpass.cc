#include "tools/agent/askpass.h"

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <strings.h>
#include <vector>

#include "tools/agent/log.h"

extern char** environ;

namespace tpmkey::agent {

std::string askpass_program(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* env = std::getenv("SSH_ASKPASS"); env && *env) return env;
  return "/usr/bin/ssh-askpass";
}

bool ask_confirmation(const std::string& program, const std::string& prompt, int timeout_s) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return false;
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e)
    if (std::string_view(*e).rfind("SSH_ASKPASS_PROMPT=", 0) != 0) env_store.emplace_back(*e);
  env_store.emplace_back("SSH_ASKPASS_PROMPT=confirm");
  std::vector<char*> envp;
  for (auto& s : env_store) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string prog = program, text = prompt;
  char* argv[] = {prog.data(), text.data(), nullptr};

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // The agent blocks its stopping signals outside its wait; the program starts with none blocked.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, prog.c_str(), &fa, &attr, argv, envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  if (rc != 0) {
    close(out[0]);
    log_error("cannot run the confirmation program " + program + ": " + std::strerror(rc));
    return false;
  }
  std::string answer;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    int n = poll(&p, 1, int(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char buf[256];
    ssize_t got = read(out[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (answer.size() < 4096) answer.append(buf, size_t(got));
  }
  close(out[0]);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    log_error("no answer from the confirmation program within " + std::to_string(timeout_s) + " s: denied");
    return false;
  }
  while (!answer.empty() && (answer.back() == '\n' || answer.back() == '\r')) answer.pop_back();
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 && (answer.empty() || strcasecmp(answer.c_str(), "yes") == 0);
}

}  // namespace tpmkey::agent
