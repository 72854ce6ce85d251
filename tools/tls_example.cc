// tpmkey-tls-example: a libssl client that authenticates with a TPM key, as an application would.
// It loads the key with OSSL_STORE_open("tpm2:NAME") (or a key file), gives it to one SSL_CTX with
// SSL_CTX_use_PrivateKey, and makes N sequential mutual-TLS handshakes, optionally in T threads
// sharing that SSL_CTX. Which providers it uses is up to openssl.cnf (OPENSSL_CONF), in either
// order (docs/tls.md). The tests and the TLS benchmark run it.
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/ui.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "provider/params.h"

namespace {

constexpr const char* kUsage = R"usage(Usage: tpmkey-tls-example --connect HOST:PORT --cert FILE --key KEY --CAfile FILE [OPTIONS]

Makes mutual-TLS handshakes with a client key held by the TPM: the key is loaded with
OSSL_STORE_open (a tpm2: URI or a key file), the certificate chain from FILE, and each
handshake sends "GET / HTTP/1.0" and expects an HTTP 200 answer (openssl s_server -www).
The providers come from openssl.cnf (OPENSSL_CONF), tpmkey and default in either order.

Options:
  --connect HOST:PORT  the server
  --cert FILE          the client certificate (chain), PEM
  --key KEY            tpm2:NAME, tpm2:file=PATH, or a key file path
  --CAfile FILE        the certificates that may sign the server's
  --handshakes N       handshakes per thread (default 1)
  --threads T          threads sharing one SSL_CTX (default 1)
  --tls1_2, --tls1_3   only this protocol version
  --groups LIST        key exchange groups, as SSL_CTX_set1_groups_list takes them
  --quiet              print only the summary line
  --help               this text

Output: one summary line, "handshakes N ok F failed S seconds R per second C TPM commands
(P per handshake)", where C counts the commands of every tpmkey provider in the process.
Exit status 0 when every handshake succeeded, 1 when one failed, 2 for a usage error.
)usage";

struct Options {
  std::string host, port, cert, key, cafile, groups;
  int handshakes = 1, threads = 1, version = 0;
  bool quiet = false;
};

void print_errors(const char* what) {
  std::fprintf(stderr, "tpmkey-tls-example: %s\n", what);
  ERR_print_errors_fp(stderr);
}

// The TPM commands every tpmkey provider instance has sent (their names depend on openssl.cnf).
int add_commands(OSSL_PROVIDER* prov, void* total) {
  uint64_t n = 0;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_uint64(tpmkey::kParamTpmCommands, &n), OSSL_PARAM_construct_end()};
  if (OSSL_PROVIDER_get_params(prov, params) == 1 && OSSL_PARAM_modified(params)) *static_cast<uint64_t*>(total) += n;
  return 1;
}
uint64_t tpm_commands() {
  uint64_t total = 0;
  OSSL_PROVIDER_do_all(nullptr, add_commands, &total);
  return total;
}

// The first private key at `uri`, asking for a password through OpenSSL's terminal UI if needed.
EVP_PKEY* load_key(const std::string& uri) {
  OSSL_STORE_CTX* store = OSSL_STORE_open(uri.c_str(), UI_get_default_method(), nullptr, nullptr, nullptr);
  if (!store) return nullptr;
  OSSL_STORE_expect(store, OSSL_STORE_INFO_PKEY);
  EVP_PKEY* key = nullptr;
  while (!key && !OSSL_STORE_eof(store)) {
    OSSL_STORE_INFO* info = OSSL_STORE_load(store);
    if (!info) continue;
    if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY) key = OSSL_STORE_INFO_get1_PKEY(info);
    OSSL_STORE_INFO_free(info);
  }
  OSSL_STORE_close(store);
  return key;
}

int connect_to(const Options& o) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(o.host.c_str(), o.port.c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

// One full handshake (no resumption), a request, and the server's answer.
bool handshake(SSL_CTX* ctx, const Options& o, std::string& why) {
  int fd = connect_to(o);
  if (fd < 0) {
    why = "cannot connect to " + o.host + ":" + o.port;
    return false;
  }
  SSL* ssl = SSL_new(ctx);
  bool ok = ssl && SSL_set_fd(ssl, fd) == 1 && SSL_set_tlsext_host_name(ssl, o.host.c_str()) == 1 && SSL_connect(ssl) == 1;
  if (!ok) why = "handshake failed";
  static const char kRequest[] = "GET / HTTP/1.0\r\n\r\n";
  if (ok && SSL_write(ssl, kRequest, sizeof kRequest - 1) != int(sizeof kRequest - 1)) {
    ok = false;
    why = "cannot send the request";
  }
  std::string answer;
  char buf[4096];
  int n;
  while (ok && (n = SSL_read(ssl, buf, sizeof buf)) > 0) answer.append(buf, size_t(n));
  // TLS 1.3 client authentication fails after the client's handshake is done: the server's alert
  // arrives instead of an answer.
  if (ok && answer.compare(0, 9, "HTTP/1.0 ") != 0) {
    ok = false;
    why = "no HTTP answer (the server refused the client certificate?)";
  } else if (ok && answer.compare(9, 3, "200") != 0) {
    ok = false;
    why = "the server answered " + answer.substr(0, answer.find('\r'));
  }
  if (ssl) {
    SSL_shutdown(ssl);
    SSL_free(ssl);
  }
  close(fd);
  return ok;
}

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    auto number = [&](int& out) {
      std::string v;
      if (!value(v)) return false;
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (*end || n < 1 || n > 1000000) return false;
      out = int(n);
      return true;
    };
    std::string hostport;
    bool ok = true;
    if (a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--connect") {
      ok = value(hostport);
      size_t colon = hostport.rfind(':');
      ok = ok && colon != std::string::npos && colon > 0 && colon + 1 < hostport.size();
      if (ok) {
        o.host = hostport.substr(0, colon);
        o.port = hostport.substr(colon + 1);
      }
    } else if (a == "--cert") {
      ok = value(o.cert);
    } else if (a == "--key") {
      ok = value(o.key);
    } else if (a == "--CAfile") {
      ok = value(o.cafile);
    } else if (a == "--groups") {
      ok = value(o.groups);
    } else if (a == "--handshakes") {
      ok = number(o.handshakes);
    } else if (a == "--threads") {
      ok = number(o.threads) && o.threads <= 256;
    } else if (a == "--tls1_2") {
      o.version = TLS1_2_VERSION;
    } else if (a == "--tls1_3") {
      o.version = TLS1_3_VERSION;
    } else if (a == "--quiet") {
      o.quiet = true;
    } else {
      std::fprintf(stderr, "tpmkey-tls-example: unknown option %s\n", a.c_str());
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "tpmkey-tls-example: %s needs a valid value\n", a.c_str());
      return false;
    }
  }
  if (o.host.empty() || o.cert.empty() || o.key.empty() || o.cafile.empty()) {
    std::fprintf(stderr, "tpmkey-tls-example: --connect, --cert, --key and --CAfile are required\n");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, o)) {
    std::fputs("Try \"tpmkey-tls-example --help\".\n", stderr);
    return 2;
  }
  EVP_PKEY* key = load_key(o.key);
  if (!key) {
    print_errors(("cannot load the key " + o.key).c_str());
    return 1;
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  bool ok = ctx && SSL_CTX_use_certificate_chain_file(ctx, o.cert.c_str()) == 1 &&
            SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1 &&
            SSL_CTX_load_verify_locations(ctx, o.cafile.c_str(), nullptr) == 1;
  EVP_PKEY_free(key);
  if (ok && o.version) ok = SSL_CTX_set_min_proto_version(ctx, o.version) && SSL_CTX_set_max_proto_version(ctx, o.version);
  if (ok && !o.groups.empty()) ok = SSL_CTX_set1_groups_list(ctx, o.groups.c_str()) == 1;
  if (!ok) {
    print_errors("cannot set up the TLS context (certificate, key, CA file or options)");
    SSL_CTX_free(ctx);
    return 1;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);  // every handshake is a full one
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

  const uint64_t commands_before = tpm_commands();
  std::atomic<int> good{0}, bad{0};
  auto worker = [&] {
    for (int i = 0; i < o.handshakes; ++i) {
      std::string why;
      if (handshake(ctx, o, why)) {
        ++good;
      } else {
        ++bad;
        if (!o.quiet) print_errors(why.c_str());
        ERR_clear_error();
      }
    }
  };
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 1; t < o.threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const uint64_t commands = tpm_commands() - commands_before;
  const int total = good + bad;
  std::printf("handshakes %d ok %d failed %.3f seconds %.1f per second %llu TPM commands (%.2f per handshake)\n",
              good.load(), bad.load(), seconds, total / seconds, static_cast<unsigned long long>(commands),
              total ? double(commands) / total : 0.0);
  SSL_CTX_free(ctx);
  return bad == 0 ? 0 : 1;
}
