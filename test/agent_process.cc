#include "test/agent_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace tpmkey::test {
namespace {

int connect_unix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return -1;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

AgentProcess::AgentProcess(const std::string& dir, const std::string& tcti, const std::string& keystore,
                           const std::vector<std::string>& extra, const std::vector<std::string>& env)
    : socket_(dir + "/agent.sock"), log_(dir + "/agent.log") {
  std::vector<std::string> argv = {tpmkey_bin(), "agent", "-D", "-a", socket_, "--tcti", tcti, "--keystore", keystore};
  argv.insert(argv.end(), extra.begin(), extra.end());
  std::vector<std::string> environment = {"TSS2_LOG=all+NONE"};
  environment.insert(environment.end(), env.begin(), env.end());
  // stdout takes the sh commands it prints
  pid_ = launch({.argv = argv, .env = environment, .in = "/dev/null", .out = "/dev/null", .err = log_});
  if (pid_ < 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(errno));
  for (int i = 0; i < 500; ++i) {
    int fd = connect_unix(socket_);
    if (fd >= 0) {
      close(fd);
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("tpmkey agent exited at start:\n" + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop();
  throw std::runtime_error("tpmkey agent did not listen within 5 s:\n" + log());
}

AgentProcess::~AgentProcess() { stop(); }

std::string AgentProcess::log() const { return read_file(log_); }

int AgentProcess::stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return 128 + SIGKILL;
}

CommandResult AgentProcess::ssh_add(const std::vector<std::string>& args, const std::vector<std::string>& env,
                                    const std::string& stdin_text) const {
  std::vector<std::string> argv = {"ssh-add"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> e = {"SSH_AUTH_SOCK=" + socket_};
  e.insert(e.end(), env.begin(), env.end());
  return run(argv, e, stdin_text, 60);
}

std::string askpass_script(const std::string& dir, const std::string& name, const std::string& answer, int status) {
  const std::string path = dir + "/" + name;
  write_file(path, "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '" + path + ".prompts'\nprintf '%s\\n' '" + answer +
                       "'\nexit " + std::to_string(status) + "\n");
  chmod(path.c_str(), 0700);
  return path;
}

AgentConnection::AgentConnection(const std::string& socket) : fd_(connect_unix(socket)) {}
AgentConnection::~AgentConnection() {
  if (fd_ >= 0) close(fd_);
}

bool AgentConnection::send_raw(const std::vector<uint8_t>& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return false;
    done += size_t(n);
  }
  return true;
}

bool AgentConnection::send(const std::vector<uint8_t>& message) {
  std::vector<uint8_t> f(4 + message.size());
  for (int i = 0; i < 4; ++i) f[size_t(i)] = uint8_t(message.size() >> (24 - 8 * i));
  std::copy(message.begin(), message.end(), f.begin() + 4);
  return send_raw(f);
}

std::optional<std::vector<uint8_t>> AgentConnection::receive(int timeout_ms) {
  std::vector<uint8_t> buf;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto need = [&](size_t n) {
    while (buf.size() < n) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, int(left.count())) <= 0) continue;
      uint8_t tmp[65536];
      ssize_t got = recv(fd_, tmp, std::min(sizeof tmp, n - buf.size()), 0);
      if (got <= 0) return false;
      buf.insert(buf.end(), tmp, tmp + got);
    }
    return true;
  };
  if (!need(4)) return std::nullopt;
  const uint32_t len = uint32_t(buf[0]) << 24 | uint32_t(buf[1]) << 16 | uint32_t(buf[2]) << 8 | buf[3];
  if (!need(4 + size_t(len))) return std::nullopt;
  return std::vector<uint8_t>(buf.begin() + 4, buf.end());
}

std::optional<std::vector<uint8_t>> AgentConnection::request(const std::vector<uint8_t>& message, int timeout_ms) {
  if (!send(message)) return std::nullopt;
  return receive(timeout_ms);
}

bool AgentConnection::closed_by_agent(int timeout_ms) {
  pollfd p{fd_, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return false;
  uint8_t b;
  return recv(fd_, &b, 1, MSG_PEEK) == 0;
}

}  // namespace tpmkey::test
