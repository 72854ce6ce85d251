#include "test/sshd.h"

#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "test/loopback.h"
#include "test/process.h"

namespace tpmkey::test {
namespace {

// sshd re-executes itself for every connection, which it only does from an absolute path.
constexpr const char* kSshd = "/usr/sbin/sshd";

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// "KEYTYPE BASE64" of a public key line, without its comment.
std::string key_type_and_blob(const std::string& pubkey_line) {
  std::istringstream in(pubkey_line);
  std::string type, blob;
  in >> type >> blob;
  if (type.empty() || blob.empty()) throw std::runtime_error("not an OpenSSH public key line: " + pubkey_line);
  return type + " " + blob;
}

// OpenSSH 9.8 penalises source addresses whose connections fail to authenticate by refusing
// them for a while; every test connection comes from 127.0.0.1 and some fail on purpose.
// Older versions reject the option, so it is only added where it exists.
bool has_per_source_penalties() {
  CommandResult v = run({kSshd, "-V"});  // "OpenSSH_9.2, OpenSSL 3.0.19 ..." on stderr
  int major = 0, minor = 0;
  if (std::sscanf(v.err.c_str(), "OpenSSH_%d.%d", &major, &minor) != 2) return false;
  return major > 9 || (major == 9 && minor >= 8);
}

// Single quotes for a POSIX shell (GIT_SSH_COMMAND is run by one).
std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

std::string ssh_fingerprint(const std::string& pubkey_line) {
  std::string dir = make_temp_dir("tpmkey-fingerprint");
  write_file(dir + "/key.pub", first_line(pubkey_line) + "\n");
  CommandResult r = run({"ssh-keygen", "-E", "sha256", "-lf", dir + "/key.pub"});
  remove_tree(dir);
  // "256 SHA256:... comment (ED25519)"
  std::istringstream out(r.out);
  std::string bits, fp;
  out >> bits >> fp;
  if (r.exit_code != 0 || fp.rfind("SHA256:", 0) != 0)
    throw std::runtime_error("ssh-keygen -l failed on \"" + pubkey_line + "\": " + r.err);
  return fp;
}

Sshd::Sshd(SshdOptions opts) : opts_(std::move(opts)) {
  owner_ = getpid();
  // Running as root, sshd insists on its privilege separation directory (the unprivileged
  // child chroots there); Debian makes it at boot, so a container may lack it.
  if (geteuid() == 0 && mkdir("/run/sshd", 0755) != 0 && errno != EEXIST)
    throw std::runtime_error("cannot create /run/sshd, sshd's privilege separation directory");
  if (!opts_.host_key_agent.empty()) host_key_ = key_type_and_blob(opts_.host_key_pub);
  dir_ = make_temp_dir("tpmkey-sshd");
  std::string authorized;
  for (const auto& k : opts_.authorized_keys) authorized += first_line(k) + "\n";
  write_file(dir_ + "/authorized_keys", authorized);
  if (opts_.host_key_agent.empty()) {
    CommandResult r = run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tpmkey-test-sshd-host", "-f",
                           dir_ + "/host_ed25519_key"});
    if (r.exit_code != 0) {
      remove_tree(dir_);
      throw std::runtime_error("ssh-keygen could not make sshd's host key: " + r.err);
    }
    host_key_ = key_type_and_blob(read_file(dir_ + "/host_ed25519_key.pub"));
  } else {
    write_file(dir_ + "/host_key.pub", host_key_ + "\n");
  }
  // A free port can be taken between the check and sshd's bind: then try another.
  std::mt19937 rng(std::random_device{}() ^ unsigned(getpid()));
  for (int tries = 0; tries < 20; ++tries) {
    int p = 0;
    for (int i = 0; i < 200 && !p; ++i) {
      int candidate = kPortBase + int(rng() % (2 * kPortPairs));
      if (port_free(candidate)) p = candidate;
    }
    if (!p) break;
    port_ = p;
    if (start()) return;
  }
  remove_tree(dir_);
  throw std::runtime_error("sshd: no free port to listen on");
}

bool Sshd::start() {
  const std::string host_key = opts_.host_key_agent.empty() ? dir_ + "/host_ed25519_key" : dir_ + "/host_key.pub";
  std::string c;
  for (const auto& line : opts_.config) c += line + "\n";
  c += "ListenAddress 127.0.0.1\n"
       "Port " + std::to_string(port_) + "\n"
       "AddressFamily inet\n"
       "PidFile " + dir_ + "/sshd.pid\n"
       "HostKey " + host_key + "\n";
  if (!opts_.host_key_agent.empty()) c += "HostKeyAgent " + opts_.host_key_agent + "\n";
  c += "AuthorizedKeysFile " + dir_ + "/authorized_keys\n"
       // The test's temporary directories are not the ~/.ssh sshd would check the modes of.
       "StrictModes no\n"
       // Public keys only: nothing a test does can log in some other way.
       "UsePAM no\n"
       "PubkeyAuthentication yes\n"
       "PasswordAuthentication no\n"
       "KbdInteractiveAuthentication no\n"
       "HostbasedAuthentication no\n"
       "GSSAPIAuthentication no\n"
       "PermitRootLogin prohibit-password\n"
       // VERBOSE logs the key of every accepted login ("Accepted publickey ... SHA256:...").
       "LogLevel VERBOSE\n"
       "UseDNS no\n"
       "PrintMotd no\n"
       "PrintLastLog no\n"
       "X11Forwarding no\n"
       "PermitUserEnvironment no\n"
       // git over ssh asks for protocol v2 through this variable.
       "AcceptEnv GIT_PROTOCOL\n"
       "Subsystem sftp internal-sftp\n"
       // Tests log in many times, some concurrently, and an agent may offer many keys before
       // the one authorized: the defaults (10 unauthenticated connections, 6 tries) are too few.
       "MaxStartups 100\n"
       "MaxSessions 100\n"
       "MaxAuthTries 50\n"
       "LoginGraceTime 60\n";
  static const bool penalties = has_per_source_penalties();
  if (penalties) c += "PerSourcePenalties no\n";
  write_file(dir_ + "/sshd_config", c);

  const std::string log = dir_ + "/sshd.log";
  const std::string listening = "Server listening on 127.0.0.1 port " + std::to_string(port_) + ".";
  pid_ = spawn({kSshd, "-D", "-e", "-f", dir_ + "/sshd_config"}, log);
  // Ready once it says it listens (it logs that after listen()); bounded, sshd starts in
  // milliseconds unless the machine is very loaded.
  for (int i = 0; i < 1000; ++i) {
    std::string said = read_file(log);
    if (said.find(listening) != std::string::npos) {
      write_file(known_hosts(), "[127.0.0.1]:" + std::to_string(port_) + " " + host_key_ + "\n");
      return true;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      said = read_file(log);
      if (said.find("Bind to port") != std::string::npos || said.find("Cannot bind any address") != std::string::npos)
        return false;
      remove_tree(dir_);
      throw std::runtime_error("sshd exited at start (exit status " +
                               std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)) +
                               "; is openssh-server installed?): " + said);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::string said = read_file(log);
  stop_child(pid_);
  remove_tree(dir_);
  throw std::runtime_error("sshd did not listen on port " + std::to_string(port_) + " within 10 s: " + said);
}

Sshd::~Sshd() {
  if (getpid() != owner_) return;
  stop_child(pid_);
  remove_tree(dir_);
}

std::string Sshd::known_hosts() const { return dir_ + "/known_hosts"; }

std::string Sshd::log() const { return read_file(dir_ + "/sshd.log"); }

std::string Sshd::user() const {
  const passwd* pw = getpwuid(geteuid());
  if (!pw) throw std::runtime_error("the current user has no passwd entry");
  return pw->pw_name;
}

std::vector<std::string> Sshd::client_options(const std::string& agent_socket) const {
  std::vector<std::string> o = {
      "-F", "/dev/null",  // no ssh_config of the user or the machine
      "-o", "BatchMode=yes",
      "-o", "StrictHostKeyChecking=yes",
      "-o", "UserKnownHostsFile=" + known_hosts(),
      "-o", "GlobalKnownHostsFile=/dev/null",
      "-o", "UpdateHostKeys=no",
      // A key file that does not exist replaces the default ~/.ssh/id_* files, so the only keys
      // offered are the agent's.
      "-o", "IdentitiesOnly=no",
      "-o", "IdentityFile=" + dir_ + "/no-such-identity",
      "-o", "ConnectTimeout=30",
  };
  if (!agent_socket.empty()) o.insert(o.end(), {"-o", "IdentityAgent=" + agent_socket});
  return o;
}

std::vector<std::string> Sshd::ssh(const std::string& agent_socket, const std::vector<std::string>& extra_options,
                                   const std::vector<std::string>& remote_command) const {
  std::vector<std::string> argv = {"ssh"};
  for (auto& o : client_options(agent_socket)) argv.push_back(o);
  argv.insert(argv.end(), {"-p", std::to_string(port_)});
  argv.insert(argv.end(), extra_options.begin(), extra_options.end());
  argv.push_back(user() + "@127.0.0.1");
  argv.insert(argv.end(), remote_command.begin(), remote_command.end());
  return argv;
}

std::string Sshd::git_ssh_command(const std::string& agent_socket) const {
  // git adds "-p PORT" from the URL (it recognises the command as OpenSSH's by its name).
  std::string cmd = "ssh";
  for (const auto& o : client_options(agent_socket)) cmd += " " + shell_quote(o);
  return cmd;
}

std::string Sshd::git_url(const std::string& path) const {
  return "ssh://" + user() + "@127.0.0.1:" + std::to_string(port_) + path;
}

}  // namespace tpmkey::test
