#include "tools/agent/main.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "keystore/config.h"
#include "tools/agent/agent.h"
#include "tools/agent/log.h"
#include "tools/agent/server.h"

namespace tpmkey::agent {
namespace {

constexpr int kExitOk = 0, kExitError = 1, kExitUsage = 2;

}  // namespace

const char kAgentHelp[] = R"help(Usage: tpmkey agent [-c | -s] [-D | -d] [-a SOCKET] [-A SOCKET] [-t LIFE]
                    [--no-keystore] [--allow-sha1] [--askpass PROGRAM]
                    [--tcti TCTI] [--keystore DIR] [COMMAND [ARG...]]
       tpmkey agent [-c | -s] -k
       tpmkey agent --print-socket [-a SOCKET]

An ssh-agent whose TPM keys sign inside the TPM, through the tpmkey OpenSSL
provider. It serves the keystore's keys that have no password (tpm2:NAME,
listed with the key name, or its description, as comment), keys added with
"ssh-add -s tpm2:NAME" or "ssh-add -s /path/key.pem" (the PIN ssh-add asks for
is the key's password; press Enter for none), and ordinary software keys added
with "ssh-add FILE" (Ed25519, ECDSA, RSA), so it can replace ssh-agent.

Like ssh-agent, it prints shell commands that set SSH_AUTH_SOCK and
SSH_AGENT_PID and goes into the background:
  eval "$(tpmkey agent)"
  ssh-add -l

  -a SOCKET        listen on SOCKET (default: $XDG_RUNTIME_DIR/tpmkey/agent.sock,
                   else /tmp/tpmkey-UID/agent.sock; its directory is made 0700)
  -A SOCKET        also list, and sign with, the keys of another agent (OpenSSH's
                   ssh-agent, gpg-agent) listening on SOCKET
  -c, -s           print csh or sh commands (default: by $SHELL)
  -D               stay in the foreground
  -d               stay in the foreground and log each request (debug)
  -k               stop the agent named by $SSH_AGENT_PID
  -t LIFE          default lifetime of added keys: seconds, or a time such as
                   30m, 1h30m, 2d (units s, m, h, d, w)
  --print-socket   print the socket path the agent would use, and exit
  --no-keystore    serve only keys added with ssh-add
  --allow-sha1     also make ssh-rsa (SHA-1) signatures for RSA keys, for old
                   servers; by default only rsa-sha2-256 and rsa-sha2-512
  --askpass PROG   the program asked before each use of a key added with
                   "ssh-add -c" (default: $SSH_ASKPASS, else /usr/bin/ssh-askpass)
  --tcti TCTI, --keystore DIR
                   the TPM and the keystore, as for every tpmkey command
  -h, --help       show this help

COMMAND: run it with SSH_AUTH_SOCK and SSH_AGENT_PID set; the agent ends when it
does, and tpmkey agent exits with its status.

Security: only this user (and root) may connect; the socket is 0600 in a 0700
directory. The process cannot be dumped or traced by the user's other programs,
and software keys and PINs are held in locked memory that is wiped when freed.
Logs (stderr with -D and -d, else syslog) name keys and fingerprints, never
secrets. Keys with a password are never used without the PIN given to ssh-add.

Exit status: 0 done, 1 failed, 2 usage error. See docs/ssh.md.
)help";

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

int usage(const std::string& msg) {
  std::fprintf(stderr, "tpmkey agent: %s\nTry \"tpmkey agent --help\".\n", msg.c_str());
  return kExitUsage;
}
int fail(const std::string& msg) {
  std::fprintf(stderr, "tpmkey agent: %s\n", msg.c_str());
  return kExitError;
}

// OpenSSH's time format: 90, 90s, 30m, 1h30m, 2d, 1w.
std::optional<uint32_t> parse_lifetime(const std::string& s) {
  if (s.empty()) return std::nullopt;
  uint64_t total = 0, n = 0;
  bool digits = false;
  for (size_t i = 0; i <= s.size(); ++i) {
    char ch = i < s.size() ? s[i] : '\0';
    if (ch >= '0' && ch <= '9') {
      n = n * 10 + uint64_t(ch - '0');
      digits = true;
      if (n > 100000000) return std::nullopt;
      continue;
    }
    uint64_t unit = 0;
    switch (ch) {
      case '\0': case 's': case 'S': unit = 1; break;
      case 'm': case 'M': unit = 60; break;
      case 'h': case 'H': unit = 3600; break;
      case 'd': case 'D': unit = 86400; break;
      case 'w': case 'W': unit = 604800; break;
      default: return std::nullopt;
    }
    if (!digits) {
      if (ch == '\0' && i > 0) break;
      return std::nullopt;
    }
    total += n * unit;
    n = 0;
    digits = false;
    if (total > UINT32_MAX) return std::nullopt;
  }
  if (total == 0) return std::nullopt;
  return uint32_t(total);
}

bool csh_like() {
  const char* shell = std::getenv("SHELL");
  std::string s = shell ? shell : "";
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "csh") == 0;
}

// A value as a shell word: unquoted when it is plain, else in single quotes.
std::string shell_word(const std::string& v) {
  bool plain = !v.empty();
  for (char ch : v)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || std::strchr("/._-+:,@%", ch))) plain = false;
  if (plain) return v;
  std::string out = "'";
  for (char ch : v) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

void print_env(bool csh, const std::string& socket, pid_t pid) {
  const std::string sock = shell_word(socket), p = std::to_string(pid);
  if (csh) {
    std::printf("setenv SSH_AUTH_SOCK %s;\nsetenv SSH_AGENT_PID %s;\necho Agent pid %s;\n", sock.c_str(), p.c_str(),
                p.c_str());
  } else {
    std::printf("SSH_AUTH_SOCK=%s; export SSH_AUTH_SOCK;\nSSH_AGENT_PID=%s; export SSH_AGENT_PID;\necho Agent pid %s;\n",
                sock.c_str(), p.c_str(), p.c_str());
  }
  std::fflush(stdout);
}

int kill_agent(bool csh) {
  const char* env = std::getenv("SSH_AGENT_PID");
  if (!env || !*env) return fail("SSH_AGENT_PID is not set: which agent to stop is not known");
  char* end = nullptr;
  long pid = std::strtol(env, &end, 10);
  if (*end || pid < 2 || pid > 0x3fffffff) return fail("SSH_AGENT_PID is not a process id");
  if (kill(pid_t(pid), SIGTERM) != 0) return fail("cannot stop agent pid " + std::to_string(pid) + ": " + std::strerror(errno));
  if (csh)
    std::printf("unsetenv SSH_AUTH_SOCK;\nunsetenv SSH_AGENT_PID;\necho Agent pid %ld killed;\n", pid);
  else
    std::printf("unset SSH_AUTH_SOCK;\nunset SSH_AGENT_PID;\necho Agent pid %ld killed;\n", pid);
  return kExitOk;
}

// What the kernel offers against another process of this user reading the agent's memory: no
// core dumps, no ptrace attach, no /proc/PID/mem (PR_SET_DUMPABLE 0); and the secure heap
// (mlock'ed, wiped when freed) for private keys.
void harden() {
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  rlimit none{0, 0};
  setrlimit(RLIMIT_CORE, &none);
  // 1: locked; 2: made, but mlock failed (RLIMIT_MEMLOCK); 0: none.
  const int secure = CRYPTO_secure_malloc_init(1 << 20, 16);
  if (secure == 2)
    log_info("cannot lock the memory for keys and PINs (RLIMIT_MEMLOCK below 1 MiB, see ulimit -l): it may be "
             "swapped out; it is still wiped when freed");
  else if (secure != 1)
    log_info("no secure heap for keys and PINs: they are held in ordinary memory, wiped when freed");
}

void redirect_stdio() {
  int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  dup2(fd, STDIN_FILENO);
  dup2(fd, STDOUT_FILENO);
  dup2(fd, STDERR_FILENO);
  if (fd > STDERR_FILENO) close(fd);
}

void install_signals() {
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

// A socket systemd opened for us (socket activation: LISTEN_PID is this process, LISTEN_FDS
// counts descriptors from 3), or -1.
int systemd_socket() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* fds = std::getenv("LISTEN_FDS");
  if (!pid || !fds || std::atol(pid) != long(getpid()) || std::atoi(fds) < 1) return -1;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  constexpr int kFirst = 3;
  fcntl(kFirst, F_SETFD, FD_CLOEXEC);
  fcntl(kFirst, F_SETFL, fcntl(kFirst, F_GETFL) | O_NONBLOCK);
  return kFirst;
}

struct Cleanup {
  std::string socket, dir;
  ~Cleanup() {
    if (!socket.empty()) unlink(socket.c_str());
    if (!dir.empty()) rmdir(dir.c_str());  // only if empty
  }
};

}  // namespace

int agent_main(int argc, char** argv) {
  AgentOptions opts;
  std::string socket, tcti, keystore;
  bool foreground = false, debug = false, kill_mode = false, print_socket = false;
  std::optional<bool> csh;
  std::vector<std::string> command;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    // "--name=value", "--name value", "-a value".
    auto need = [&](std::string* out) {
      if (size_t eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
        *out = a.substr(eq + 1);
        return true;
      }
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string name = a;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) name = a.substr(0, a.find('='));
    if (a == "--") {
      for (++i; i < argc; ++i) command.emplace_back(argv[i]);
      break;
    }
    if (a.empty() || a[0] != '-' || a == "-") {
      for (; i < argc; ++i) command.emplace_back(argv[i]);
      break;
    }
    if (name == "-h" || name == "--help") {
      std::fputs(kAgentHelp, stdout);
      return kExitOk;
    } else if (name == "-a" || name == "-A" || name == "-t" || name == "--tcti" || name == "--keystore" ||
               name == "--askpass") {
      std::string v;
      if (!need(&v)) return usage(name + " needs a value");
      if (name == "-a") socket = v;
      if (name == "-A") opts.upstream = v;
      if (name == "--tcti") tcti = v;
      if (name == "--keystore") keystore = v;
      if (name == "--askpass") opts.askpass = v;
      if (name == "-t") {
        auto life = parse_lifetime(v);
        if (!life) return usage("-t needs a lifetime such as 3600, 30m or 1h30m, not \"" + v + "\"");
        opts.default_lifetime = *life;
      }
    } else if (name == "-c") {
      csh = true;
    } else if (name == "-s") {
      csh = false;
    } else if (name == "-D") {
      foreground = true;
    } else if (name == "-d") {
      foreground = debug = true;
    } else if (name == "-k") {
      kill_mode = true;
    } else if (name == "--print-socket") {
      print_socket = true;
    } else if (name == "--no-keystore") {
      opts.serve_keystore = false;
    } else if (name == "--allow-sha1") {
      opts.allow_sha1 = true;
    } else {
      return usage("unknown option " + name);
    }
  }
  const bool use_csh = csh.value_or(csh_like());
  if (kill_mode) {
    if (!command.empty() || foreground) return usage("-k takes no other options");
    return kill_agent(use_csh);
  }
  const bool default_place = socket.empty();
  if (default_place) socket = default_socket();
  // Clients run in other directories, and the daemon in "/": the path it prints must be absolute.
  if (socket[0] != '/') {
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return fail(std::string("cannot resolve the socket path: ") + std::strerror(errno));
    socket = std::string(cwd) + "/" + socket;
  }
  if (print_socket) {
    std::printf("%s\n", socket.c_str());
    return kExitOk;
  }
  if (!command.empty() && foreground) return usage("a COMMAND cannot be combined with -D or -d");

  // The provider in the agent reads the same settings as every tpmkey program; explicit options
  // reach it through the environment, which it reads when it starts.
  if (!tcti.empty()) setenv("TPMKEY_TCTI", tcti.c_str(), 1);
  if (!keystore.empty()) setenv("TPMKEY_KEYSTORE", keystore.c_str(), 1);
  SettingsInput in;
  auto settings = resolve_settings(in);
  if (!settings) return fail(settings.error().text());
  opts.keystore = settings->keystore;

  set_log({false, debug ? LogLevel::kDebug : LogLevel::kInfo});
  // The default library context gets no configuration file: nothing in this process should load
  // a second copy of tpmkey from an openssl.cnf.
  OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr);
  harden();
  auto agent = Agent::create(opts);
  if (!agent) return fail(agent.error().text());

  // The default directory is the agent's own: removed again when it stops (if empty).
  const std::string dir = default_place ? socket.substr(0, socket.rfind('/')) : "";
  install_signals();
  if (int activated = systemd_socket(); activated >= 0) {
    // systemd owns the socket file: it is neither made nor removed here.
    log_info("serving the socket systemd passed" + (opts.serve_keystore ? ", and the keystore " + opts.keystore : ""));
    serve(**agent, activated, g_stop);
    return kExitOk;
  }
  auto fd = listen_on(socket, default_place);
  if (!fd) return fail(fd.error().text());

  if (foreground) {
    print_env(use_csh, socket, getpid());
    Cleanup cleanup{socket, dir};
    log_info("listening on " + socket + (opts.serve_keystore ? ", serving the keystore " + opts.keystore : ""));
    serve(**agent, *fd, g_stop);
    log_info("stopped");
    return kExitOk;
  }

  const pid_t parent = getpid();
  pid_t child = fork();
  if (child < 0) return fail(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    // The agent.
    if (!command.empty()) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(0);
    } else {
      setsid();
    }
    if (chdir("/") != 0) _exit(1);
    redirect_stdio();
    set_log({true, debug ? LogLevel::kDebug : LogLevel::kInfo});
    {
      Cleanup cleanup{socket, dir};
      serve(**agent, *fd, g_stop);
      agent->reset();  // gives its TPM objects back
    }
    std::exit(0);  // exit handlers: what the core still holds is flushed
  }
  close(*fd);
  if (command.empty()) {
    print_env(use_csh, socket, child);
    _exit(kExitOk);  // the agent's objects belong to the child
  }
  setenv("SSH_AUTH_SOCK", socket.c_str(), 1);
  setenv("SSH_AGENT_PID", std::to_string(child).c_str(), 1);
  std::vector<char*> args;
  for (auto& c : command) args.push_back(c.data());
  args.push_back(nullptr);
  execvp(args[0], args.data());
  std::fprintf(stderr, "tpmkey agent: cannot run %s: %s\n", args[0], std::strerror(errno));
  kill(child, SIGTERM);
  _exit(127);
}

}  // namespace tpmkey::agent
