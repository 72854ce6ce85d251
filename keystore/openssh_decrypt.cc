#include "keystore/openssh_decrypt.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "keystore/files.h"

extern char** environ;

namespace tpmkey {
namespace {

constexpr const char* kSshKeygen = "ssh-keygen";
constexpr size_t kRandomBytes = 32;         // the new passphrase: 64 hex digits
constexpr size_t kMaxPassphrase = 1023;     // what ssh-keygen's read_passphrase keeps of a line
constexpr size_t kMaxOutput = 16 * 1024;    // of ssh-keygen's messages
constexpr int kTimeoutSeconds = 120;        // bcrypt with many rounds (ssh-keygen -a) is slow, not that slow
constexpr std::string_view kPkcs8Begin = "-----BEGIN ENCRYPTED PRIVATE KEY-----";

std::string manual_hint(const std::string& path) {
  return "cp " + path + " COPY && ssh-keygen -p -m PKCS8 -f COPY && tpmkey import NAME COPY && shred -u COPY "
         "(ssh-keygen -p rewrites the file it is given)";
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// The private directory and what is in it: on every path, each file in it is overwritten with
// zeros and removed, then the directory. Only ssh-keygen's output (encrypted) and the copy of the
// (encrypted) source file are ever in it; the overwrite is for good measure.
class PrivateDir {
 public:
  PrivateDir() = default;
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;
  ~PrivateDir() {
    if (path_.empty()) return;
    if (DIR* d = opendir(path_.c_str())) {
      std::vector<std::string> names;
      while (dirent* e = readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
      closedir(d);
      for (const auto& n : names) {
        const std::string f = path_ + "/" + n;
        const int fd = open(f.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
        struct stat st{};
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
          static const char zeros[4096] = {};
          for (off_t left = st.st_size; left > 0;) {
            const ssize_t w = write(fd, zeros, size_t(std::min<off_t>(left, sizeof zeros)));
            if (w <= 0) break;
            left -= w;
          }
          fsync(fd);
        }
        if (fd >= 0) close(fd);
        unlink(f.c_str());
      }
    }
    rmdir(path_.c_str());
  }

  Status create() {
    const char* tmp = std::getenv("TMPDIR");
    std::string base = tmp && tmp[0] == '/' ? tmp : "/tmp";
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    std::string tmpl = base + "/tpmkey-ssh-keygen-XXXXXX";
    if (!mkdtemp(tmpl.data()))
      return make_error(Reason::kIo, "cannot make a private directory under " + base + ": " + std::strerror(errno));
    path_ = tmpl;  // mkdtemp makes it 0700
    return {};
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Status write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return make_error(Reason::kIo, std::string("write failed: ") + std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
  return {};
}

// ssh-keygen's messages without its prompts and with only printable characters, for an error.
std::string messages(const std::string& out) {
  std::string s = out;
  for (const char* prompt : {"Enter old passphrase: ", "Enter new passphrase (empty for no passphrase): ",
                             "Enter same passphrase again: "})
    for (size_t at; (at = s.find(prompt)) != std::string::npos;) s.erase(at, std::strlen(prompt));
  std::string clean;
  for (char ch : s) clean += (ch == '\n' || ch == '\r') ? ' ' : (ch >= 0x20 && ch < 0x7f ? ch : '?');
  while (!clean.empty() && clean.back() == ' ') clean.pop_back();
  while (!clean.empty() && clean.front() == ' ') clean.erase(0, 1);
  if (clean.size() > 300) clean = clean.substr(0, 300) + "...";
  return clean.empty() ? "no message" : clean;
}

// ssh-keygen's environment: this process's without what would make it run an askpass program
// (it must read the answers from its standard input).
std::vector<std::string> child_environment() {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string_view v(*e);
    bool drop = false;
    for (std::string_view name : {"DISPLAY=", "WAYLAND_DISPLAY=", "SSH_ASKPASS=", "SSH_ASKPASS_REQUIRE="})
      drop = drop || v.substr(0, name.size()) == name;
    if (!drop) env.emplace_back(v);
  }
  env.emplace_back("SSH_ASKPASS_REQUIRE=never");
  return env;
}

struct Outcome {
  int status = 0;
  std::string output;  // stdout and stderr together
};

// Runs ssh-keygen -p -m PKCS8 -f `copy` in a new session (no controlling terminal: its
// read_passphrase then reads lines from standard input), with `answers` on its standard input
// and every other inherited descriptor closed.
Result<Outcome> run_ssh_keygen(const std::string& copy, const SecretBytes& answers, const std::string& path) {
  int in[2], out[2];
  // A socket for the answers: a send to an ssh-keygen that is already gone fails with EPIPE
  // (MSG_NOSIGNAL) instead of killing this process with SIGPIPE.
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0)
    return make_error(Reason::kIo, std::string("socketpair failed: ") + std::strerror(errno));
  Fd in_child(in[0]), in_parent(in[1]);
  if (pipe2(out, O_CLOEXEC) != 0) return make_error(Reason::kIo, std::string("pipe failed: ") + std::strerror(errno));
  Fd out_parent(out[0]), out_child(out[1]);

  std::vector<std::string> env_store = child_environment();
  std::vector<char*> envp;
  for (auto& s : env_store) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string a0 = kSshKeygen, a1 = "-p", a2 = "-m", a3 = "PKCS8", a4 = "-f", a5 = copy;
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(), a5.data(), nullptr};

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_child.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&fa, out_child.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, out_child.get(), STDERR_FILENO);
  // Nothing else of this process's (a TPM connection, key files) reaches ssh-keygen.
  posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, kSshKeygen, &fa, &attr, argv, envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  in_child.reset();
  out_child.reset();
  if (rc == ENOENT)
    return make_error(Reason::kUnsupported,
                      "this OpenSSH key is encrypted with a passphrase, and tpmkey decrypts such keys with OpenSSH's "
                      "ssh-keygen, which is not installed (not found in PATH): install it (Debian package "
                      "openssh-client), or convert a copy to PKCS#8 elsewhere and import the copy: " +
                          manual_hint(path));
  if (rc != 0) return make_error(Reason::kIo, std::string("cannot run ssh-keygen: ") + std::strerror(rc));

  // The answers fit the socket's buffer many times over: sent at once, before reading.
  for (size_t off = 0; off < answers.size();) {
    const ssize_t w = send(in_parent.get(), answers.data() + off, answers.size() - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;  // ssh-keygen is gone: its status and messages say why
    off += size_t(w);
  }
  in_parent.reset();

  Outcome o;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutSeconds);
  bool timed_out = false;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out_parent.get(), POLLIN, 0};
    const int n = poll(&p, 1, int(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char buf[512];
    const ssize_t got = read(out_parent.get(), buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (o.output.size() < kMaxOutput) o.output.append(buf, size_t(got));
  }
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out)
    return make_error(Reason::kIo, "ssh-keygen did not finish within " + std::to_string(kTimeoutSeconds) +
                                       " s and was stopped");
  o.status = status;
  return o;
}

}  // namespace

Result<SshKeygenPkcs8> decrypt_with_ssh_keygen(const Crypto& c, std::string_view text, const SecretBytes& passphrase,
                                               const std::string& path) {
  // ssh-keygen reads each answer as one line, and keeps at most 1023 bytes of it.
  for (size_t i = 0; i < passphrase.size(); ++i)
    if (passphrase.data()[i] == '\n' || passphrase.data()[i] == '\r' || passphrase.data()[i] == '\0')
      return make_error(Reason::kInvalidArgument, "the passphrase has a line break or a NUL byte, which ssh-keygen "
                                                  "cannot be given");
  if (passphrase.size() > kMaxPassphrase)
    return make_error(Reason::kInvalidArgument, "the passphrase is longer than ssh-keygen reads (1023 bytes)");

  SshKeygenPkcs8 out;
  uint8_t rnd[kRandomBytes];
  if (!c.random(rnd, sizeof rnd)) return make_error(Reason::kInternal, "no random bytes for the new passphrase");
  static constexpr char kHex[] = "0123456789abcdef";
  out.passphrase = SecretBytes(2 * kRandomBytes);
  for (size_t i = 0; i < kRandomBytes; ++i) {
    out.passphrase.data()[2 * i] = uint8_t(kHex[rnd[i] >> 4]);
    out.passphrase.data()[2 * i + 1] = uint8_t(kHex[rnd[i] & 15]);
  }
  OPENSSL_cleanse(rnd, sizeof rnd);

  // What ssh-keygen -p asks, in order: the old passphrase, the new one, the new one again.
  const uint8_t nl = '\n';
  SecretBytes answers;
  answers.append(passphrase.data(), passphrase.size());
  answers.append(&nl, 1);
  for (int i = 0; i < 2; ++i) {
    answers.append(out.passphrase.data(), out.passphrase.size());
    answers.append(&nl, 1);
  }

  PrivateDir dir;
  TPMKEY_TRY(dir.create());
  const std::string copy = dir.path() + "/key";
  {
    Fd fd(open(copy.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (fd.get() < 0) return make_error(Reason::kIo, "cannot create " + copy + ": " + std::strerror(errno));
    TPMKEY_TRY(write_all(fd.get(), reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  auto run = run_ssh_keygen(copy, answers, path);
  if (!run) return run.take_error();
  if (!WIFEXITED(run->status) || WEXITSTATUS(run->status) != 0) {
    // sshkey.c's SSH_ERR_KEY_WRONG_PASSPHRASE message.
    if (run->output.find("incorrect passphrase") != std::string::npos)
      return make_error(Reason::kAuthFailed, "the passphrase is wrong (ssh-keygen could not decrypt the OpenSSH key "
                                             "with it)");
    return make_error(Reason::kMalformedKey, "ssh-keygen could not decrypt the OpenSSH key: " + messages(run->output));
  }
  auto pem = read_small_file(copy, kMaxKeyFileSize, Symlinks::kRefuse);
  if (!pem) return pem.take_error().context("read(ssh-keygen's output)");
  out.pem = SecretBytes(reinterpret_cast<const uint8_t*>(pem->data()), pem->size());
  OPENSSL_cleanse(pem->data(), pem->size());
  if (std::string_view(reinterpret_cast<const char*>(out.pem.data()), out.pem.size()).substr(0, kPkcs8Begin.size()) !=
      kPkcs8Begin)
    return make_error(Reason::kInternal, "ssh-keygen did not write encrypted PKCS#8");
  return out;
}

}  // namespace tpmkey
