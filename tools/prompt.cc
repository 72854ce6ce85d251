#include "tools/prompt.h"

#include <fcntl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tpmkey::cli {
namespace {

struct Tty {
  int fd = -1;
  Tty() { fd = open("/dev/tty", O_RDWR | O_CLOEXEC); }
  ~Tty() {
    if (fd >= 0) close(fd);
  }
  void write_str(const std::string& s) const {
    if (write(fd, s.data(), s.size()) < 0) {
    }
  }
};

// Reads one line; echo off when `hidden`. The line buffer is wiped.
Result<SecretBytes> read_line(const Tty& tty, bool hidden) {
  termios old{};
  bool restore = false;
  if (hidden && tcgetattr(tty.fd, &old) == 0) {
    termios noecho = old;
    noecho.c_lflag &= ~tcflag_t(ECHO);
    restore = tcsetattr(tty.fd, TCSAFLUSH, &noecho) == 0;
  }
  uint8_t buf[256];
  size_t n = 0;
  bool ok = true;
  for (;;) {
    char c;
    ssize_t r = read(tty.fd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { ok = n > 0; break; }
    if (c == '\n' || c == '\r') break;
    if (n < sizeof buf) buf[n++] = uint8_t(c);
  }
  if (restore) {
    tcsetattr(tty.fd, TCSAFLUSH, &old);
    tty.write_str("\n");
  }
  SecretBytes out(buf, n);
  OPENSSL_cleanse(buf, sizeof buf);
  if (!ok) return make_error(Reason::kInvalidArgument, "no input");
  return out;
}

}  // namespace

Result<SecretBytes> prompt_password(const std::string& prompt, bool confirm) {
  Tty tty;
  if (tty.fd < 0) return make_error(Reason::kInvalidArgument, "no terminal to ask for a password (use --password-file)");
  tty.write_str(prompt);
  auto first = read_line(tty, true);
  if (!first) return first;
  if (!confirm) return first;
  tty.write_str("Repeat the password: ");
  auto second = read_line(tty, true);
  if (!second) return second;
  if (first->size() != second->size() || CRYPTO_memcmp(first->data(), second->data(), first->size()) != 0)
    return make_error(Reason::kInvalidArgument, "the passwords do not match");
  return first;
}

bool have_tty() { return Tty().fd >= 0; }

bool confirm_on_tty(const std::string& question) {
  Tty tty;
  if (tty.fd < 0) return false;
  tty.write_str(question + " [y/N] ");
  auto answer = read_line(tty, false);
  return answer && answer->size() >= 1 && (answer->data()[0] == 'y' || answer->data()[0] == 'Y');
}

}  // namespace tpmkey::cli
