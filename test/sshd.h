// Test support: a real OpenSSH server on loopback, for logins with keys held by an agent (ssh and
// git over ssh), and the OpenSSH fingerprint of a public key.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace tpmkey::test {

struct SshdOptions {
  std::vector<std::string> authorized_keys;  // OpenSSH public key lines the login user may log in with
  std::vector<std::string> config;           // extra sshd_config lines, e.g. "PubkeyAcceptedAlgorithms rsa-sha2-512"
  // A host key kept by an agent: sshd gets "HostKeyAgent <host_key_agent>" and "HostKey <a file
  // holding host_key_pub>" instead of a host key file of its own. Empty: sshd uses an ed25519 host
  // key generated for it.
  std::string host_key_agent;
  std::string host_key_pub;  // the OpenSSH public key line of that host key
};

// /usr/sbin/sshd on a free 127.0.0.1 port, with its configuration, host key, authorized_keys and
// log in a fresh directory, for the lifetime of the object. Public keys only (no passwords, no
// PAM). The login user is the user this process runs as; that works as root and as any other
// user (sshd not running as root can only log in the user it runs as). sshd running as root
// refuses an account locked in /etc/shadow (a password field starting with "!"; root's usual "*"
// is not locked): it checks that itself without PAM.
// `config` lines come first in sshd_config, so they win over the defaults here (sshd keeps the
// first value of an option); a Match block there would capture the defaults, so none.
class Sshd {
 public:
  // Starts it and waits (bounded) until it listens; throws with its log if it does not.
  explicit Sshd(SshdOptions opts);
  ~Sshd();  // stops it and removes its directory
  Sshd(const Sshd&) = delete;
  Sshd& operator=(const Sshd&) = delete;

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  std::string known_hosts() const;  // a file naming the host key as "[127.0.0.1]:PORT <key>"
  // What sshd said so far (LogLevel VERBOSE: "Accepted publickey for USER from ... ssh2: ED25519 SHA256:...").
  std::string log() const;
  std::string user() const;  // the login user: the user this process runs as

  // The ssh client's argv for running `remote_command` on this server as user(): no ssh_config,
  // batch mode, this server's host key and no other, no key file (so no key of the machine's
  // ~/.ssh is offered), keys from the agent at `agent_socket` ("none": no agent; empty: ssh's
  // default, $SSH_AUTH_SOCK), then `extra_options` (e.g. "-o", "HostKeyAlgorithms=...").
  // The remote shell runs the words of `remote_command` joined with spaces.
  std::vector<std::string> ssh(const std::string& agent_socket, const std::vector<std::string>& extra_options,
                               const std::vector<std::string>& remote_command) const;
  // The same client as a GIT_SSH_COMMAND value (git adds the port and the command), and the URL of
  // `path` (absolute) on this server: "ssh://USER@127.0.0.1:PORT/path".
  std::string git_ssh_command(const std::string& agent_socket) const;
  std::string git_url(const std::string& path) const;

 private:
  bool start();  // false if the port turned out to be taken
  std::vector<std::string> client_options(const std::string& agent_socket) const;
  SshdOptions opts_;
  pid_t pid_ = -1;
  pid_t owner_ = -1;  // only the process that started sshd stops it (not forked children)
  int port_ = 0;
  std::string dir_;
  std::string host_key_;  // "TYPE BASE64"
};

// The SHA-256 fingerprint ("SHA256:...") of an OpenSSH public key line, as `ssh-keygen -l` and
// sshd's log show it.
std::string ssh_fingerprint(const std::string& pubkey_line);

}  // namespace tpmkey::test
