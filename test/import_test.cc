// `tpmkey import`: software private keys made by `openssl genpkey` (RSA 2048/3072, EC
// P-256/384/521), in every format the command reads (PKCS#1/SEC1 PEM, PKCS#8 PEM, encrypted PKCS#8,
// legacy encrypted PEM, and the DER forms), moved into this binary's swtpm with TPM2_Import, then
// signing through the provider as tpm2:NAME; every signature is verified with the ORIGINAL key by
// the default provider alone. Also: the source file is left byte for byte, imported keys are
// marked (list, pkey -text), refusals say why and send nothing to the TPM, the new key's password,
// what crosses the bus, a TPM key file given to import, a persistent SRK, the help and usage errors.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <filesystem>
#include <functional>
#include <map>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <tss2/tss2_tpm2_types.h>

#include "test/fixture.h"
#include "test/support.h"

namespace tpmkey::test {
namespace {

constexpr const char* kPassphrase = "correct horse battery";

// The OpenSSH keys the tests make with ssh-keygen: -t, -b, and tpmkey's algorithm name.
struct OpenSshCase {
  std::string type, bits, name;
};
const std::vector<OpenSshCase> kOpenSshCases = {
    {"ecdsa", "256", "ec-p256"}, {"ecdsa", "384", "ec-p384"}, {"ecdsa", "521", "ec-p521"},
    {"rsa", "2048", "rsa2048"},  {"rsa", "3072", "rsa3072"}};

struct KeyKind {
  std::string name;     // tpmkey's algorithm name: "ec-p256", "rsa2048"
  std::string genpkey;  // "EC" or "RSA"
  std::string opt;      // the genpkey option
  bool rsa() const { return genpkey == "RSA"; }
};

const std::vector<KeyKind>& kinds() {
  static const std::vector<KeyKind> k = {{"ec-p256", "EC", "ec_paramgen_curve:P-256"},
                                         {"ec-p384", "EC", "ec_paramgen_curve:P-384"},
                                         {"ec-p521", "EC", "ec_paramgen_curve:P-521"},
                                         {"rsa2048", "RSA", "rsa_keygen_bits:2048"},
                                         {"rsa3072", "RSA", "rsa_keygen_bits:3072"}};
  return k;
}

// openssl with the default provider alone (OPENSSL_CONF=/dev/null): key generation, conversion
// and the independent verification.
CommandResult plain_openssl(std::vector<std::string> args) {
  args.insert(args.begin(), "openssl");
  return run(args, {"OPENSSL_CONF=/dev/null"});
}

PkeyPtr read_original(const std::string& path) { return read_pem_private_key(path); }
// A PEM public key (SubjectPublicKeyInfo), read by the default provider alone.
PkeyPtr read_pem_public_key(const std::string& path) {
  BIO* bio = BIO_new_file(path.c_str(), "r");
  EVP_PKEY* k = bio ? PEM_read_bio_PUBKEY_ex(bio, nullptr, nullptr, nullptr, default_only(), nullptr) : nullptr;
  BIO_free(bio);
  return PkeyPtr(k, EVP_PKEY_free);
}

// tpm2:NAME signs `msg` in process through `l`, and the original public key (PEM) verifies it.
void signs_as_the_original(OSSL_LIB_CTX* l, const std::string& name, const std::string& pub_pem,
                           const std::string& msg) {
  PkeyPtr original_pub = read_pem_public_key(pub_pem);
  ASSERT_TRUE(original_pub);
  PkeyPtr key = load_key(l, "tpm2:" + name);
  ASSERT_TRUE(key) << drain_errors();
  auto sig = digest_sign(l, key.get(), msg, {});
  EXPECT_TRUE(!sig.empty() && digest_verify(original_pub.get(), msg, sig, {})) << drain_errors();
}

// The private value the TPM keeps, as the bytes that would cross the bus if it were sent in
// clear: EC d padded to the field, RSA p padded to half the modulus.
std::string private_value(EVP_PKEY* k) {
  const bool rsa = EVP_PKEY_is_a(k, "RSA");
  BIGNUM* b = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(k, rsa ? OSSL_PKEY_PARAM_RSA_FACTOR1 : OSSL_PKEY_PARAM_PRIV_KEY, &b), 1);
  const int n = rsa ? EVP_PKEY_get_bits(k) / 16 : (EVP_PKEY_get_bits(k) + 7) / 8;
  std::string out(size_t(n), '\0');
  BN_bn2binpad(b, reinterpret_cast<unsigned char*>(out.data()), n);
  BN_clear_free(b);
  return out;
}

// The binary inside an OpenSSH private key file, and back (70 base64 characters a line, as
// ssh-keygen writes them).
std::string openssh_blob(const std::string& file) {
  const std::string begin = "-----BEGIN OPENSSH PRIVATE KEY-----\n";
  const size_t end = file.find("-----END ");
  std::string b64;
  for (char ch : file.substr(begin.size(), end - begin.size()))
    if (ch != '\n') b64 += ch;
  std::string out(b64.size() / 4 * 3 + 3, '\0');
  EVP_ENCODE_CTX* ctx = EVP_ENCODE_CTX_new();
  EVP_DecodeInit(ctx);
  int len = 0, fin = 0;
  EVP_DecodeUpdate(ctx, reinterpret_cast<unsigned char*>(out.data()), &len,
                   reinterpret_cast<const unsigned char*>(b64.data()), int(b64.size()));
  EVP_DecodeFinal(ctx, reinterpret_cast<unsigned char*>(out.data()) + len, &fin);
  EVP_ENCODE_CTX_free(ctx);
  out.resize(size_t(len + fin));
  return out;
}
std::string openssh_armor(const std::string& blob) {
  std::string b64(blob.size() / 3 * 4 + 8, '\0');
  b64.resize(size_t(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                                    reinterpret_cast<const unsigned char*>(blob.data()), int(blob.size()))));
  std::string out = "-----BEGIN OPENSSH PRIVATE KEY-----\n";
  for (size_t i = 0; i < b64.size(); i += 70) out += b64.substr(i, 70) + "\n";
  return out + "-----END OPENSSH PRIVATE KEY-----\n";
}
uint32_t be32(const std::string& b, size_t at) {
  return uint32_t(uint8_t(b[at])) << 24 | uint32_t(uint8_t(b[at + 1])) << 16 | uint32_t(uint8_t(b[at + 2])) << 8 |
         uint8_t(b[at + 3]);
}
// Where the private section's bytes start (after its length) in an unencrypted key's blob.
size_t openssh_private_section(const std::string& b) {
  size_t at = 15 + 8 + 8 + 4 + 4 + 4;  // magic, "none", "none", "", number of keys, the blob's length
  at += be32(b, at - 4);               // the public blob
  return at + 4;                       // the private section's length
}

// Runs `argv` with a new pseudo-terminal as its controlling terminal and `env` added, typing
// `answer` (then Enter) once `prompt` has appeared and the terminal's echo is off (the program
// reads a secret then; typed earlier, its TCSAFLUSH would discard it). What the terminal showed
// goes to `screen`. The exit code, or -1 on a timeout.
int run_on_pty(const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& prompt,
               const std::string& answer, std::string* screen, int timeout_s = 120) {
  int master = -1, slave = -1;
  if (openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) return -1;
  const std::string terminal = ttyname(slave) ? ttyname(slave) : "";
  fcntl(master, F_SETFD, FD_CLOEXEC);
  fcntl(slave, F_SETFD, FD_CLOEXEC);
  // A new session that opens the terminal first makes it its controlling terminal.
  const pid_t pid = terminal.empty() ? -1
                                     : launch({.argv = argv, .env = env, .in = terminal, .out = terminal,
                                               .err_to_out = true, .new_session = true});
  close(slave);  // the program's end only: reading the master ends (EIO) when the program is gone
  if (pid < 0) {
    close(master);
    return -1;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool typed = false, timed_out = false;
  for (;;) {
    if (std::chrono::steady_clock::now() > deadline) {
      timed_out = true;
      break;
    }
    if (!typed && screen->find(prompt) != std::string::npos) {
      termios t{};
      if (tcgetattr(master, &t) == 0 && !(t.c_lflag & ECHO)) {
        const std::string line = answer + "\r";
        if (write(master, line.data(), line.size()) != ssize_t(line.size())) break;
        typed = true;
      }
    }
    pollfd p{master, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    char buf[512];
    const ssize_t n = read(master, buf, sizeof buf);
    if (n <= 0) break;  // EIO: the program and everything on the terminal are gone
    screen->append(buf, size_t(n));
  }
  if (timed_out) kill(pid, SIGKILL);
  close(master);
  int status = 0;
  waitpid(pid, &status, 0);
  return timed_out ? -1 : (WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

class ImportTest : public TpmTest {
 protected:
  ImportTest() : TpmTest("tpmkey-import-test") {}

  // The keys are generated once for the binary: RSA generation is the slow part.
  static void SetUpTestSuite() {
    keys_ = make_temp_dir("tpmkey-import-keys");
    write_file(keys_ + "/pass", std::string(kPassphrase) + "\n");
    for (const auto& k : kinds())
      ASSERT_OK(plain_openssl({"genpkey", "-algorithm", k.genpkey, "-pkeyopt", k.opt, "-out", original(k.name)}));
  }
  static void TearDownTestSuite() { remove_tree(keys_); }

  void SetUp() override {
    TpmTest::SetUp();
    std::filesystem::create_directories(dir_);
    // tpmkey reads the passphrase's first line without its CR LF; openssl's -passout file: only
    // drops the LF, so the files were encrypted with the LF form.
    write_file(dir_ + "/pass-crlf", std::string(kPassphrase) + "\r\n");
    write_file(dir_ + "/msg", "a message to sign\n");
  }

  static std::string original(const std::string& kind) { return keys_ + "/" + kind + ".pem"; }

  // Writes `kind`'s key in `format` under dir_ and returns the path.
  std::string convert(const KeyKind& k, const std::string& format) {
    const std::string in = original(k.name), out = dir_ + "/" + k.name + "." + format;
    const std::string pass = "file:" + keys_ + "/pass";
    const std::string tool = k.rsa() ? "rsa" : "ec";
    std::vector<std::string> args;
    if (format == "pkcs8.pem") args = {"pkey", "-in", in, "-out", out};
    else if (format == "trad.pem") args = {tool, "-in", in, "-out", out};
    else if (format == "enc-pkcs8.pem") args = {"pkey", "-in", in, "-aes256", "-passout", pass, "-out", out};
    else if (format == "legacy-enc.pem") args = {tool, "-in", in, "-aes256", "-passout", pass, "-out", out};
    else if (format == "pkcs8.der") args = {"pkcs8", "-topk8", "-nocrypt", "-in", in, "-outform", "DER", "-out", out};
    else if (format == "trad.der") args = {tool, "-in", in, "-outform", "DER", "-out", out};
    else if (format == "enc-pkcs8.der")
      args = {"pkcs8", "-topk8", "-v2", "aes256", "-passout", pass, "-in", in, "-outform", "DER", "-out", out};
    // openssl rsa writes PKCS#8 unless told otherwise.
    if (k.rsa() && (format == "trad.pem" || format == "trad.der" || format == "legacy-enc.pem"))
      args.push_back("-traditional");
    EXPECT_OK(plain_openssl(args));
    return out;
  }

  std::vector<std::string> openssl_env() const {
    return {"TPMKEY_TCTI=" + tcti_, "TPMKEY_KEYSTORE=" + keystore_, "OPENSSL_CONF=/dev/null", "TSS2_LOG=all+none"};
  }
  // Signs msg with `uri` through the real openssl and the provider; the default provider alone
  // verifies the signature with the ORIGINAL key file `orig`.
  void expect_openssl_signs(const std::string& uri, const std::string& orig, std::vector<std::string> opts = {}) {
    std::vector<std::string> sign = {"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey",
                                     "-provider", "default", "-sign", "-inkey", uri, "-rawin", "-digest", "sha256",
                                     "-in", dir_ + "/msg", "-out", dir_ + "/sig"};
    sign.insert(sign.end(), opts.begin(), opts.end());
    ASSERT_OK(run(sign, openssl_env()));
    std::vector<std::string> verify = {"pkeyutl", "-verify", "-inkey", orig, "-rawin", "-digest", "sha256",
                                       "-in", dir_ + "/msg", "-sigfile", dir_ + "/sig"};
    verify.insert(verify.end(), opts.begin(), opts.end());
    auto v = plain_openssl(verify);
    EXPECT_OK(v);
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
  }
  // Signs in process through the provider (`l`) with tpm2:NAME; verified with the original key in
  // a library context that has only the default provider.
  bool signs_in_process(OSSL_LIB_CTX* l, const std::string& uri, const std::string& orig, SignOpts o = {}) {
    PkeyPtr key = load_key(l, uri);
    if (!key) {
      ADD_FAILURE() << "cannot load " << uri << ": " << drain_errors();
      return false;
    }
    const std::string msg = "signed through the provider with " + uri;
    auto sig = digest_sign(l, key.get(), msg, o);
    PkeyPtr original_key = read_original(orig);
    return !sig.empty() && original_key && digest_verify(original_key.get(), msg, sig, o);
  }

  // The keystore's files and their contents, to show that a refusal changed nothing.
  std::map<std::string, std::string> keystore_files() const {
    std::map<std::string, std::string> out;
    if (!std::filesystem::exists(keystore_)) return out;
    for (const auto& e : std::filesystem::directory_iterator(keystore_))
      out[e.path().filename()] = read_file(e.path());
    return out;
  }

  static std::string keys_;
};

std::string ImportTest::keys_;

// Every key kind in every format: imported, the source file untouched, listed as imported, and
// signing through the provider (in process, and one signature per key with the openssl program);
// the original key verifies every signature.
TEST_F(ImportTest, EveryKindInEveryFormatSignsAndVerifiesWithTheOriginal) {
  const std::vector<std::pair<std::string, std::string>> formats = {
      {"pkcs8.pem", "PKCS#8 PEM"},
      {"trad.pem", ""},  // PKCS#1 or SEC1, by kind
      {"enc-pkcs8.pem", "encrypted PKCS#8 PEM"},
      {"legacy-enc.pem", ""},
      {"pkcs8.der", "PKCS#8 DER"},
      {"trad.der", ""},
      {"enc-pkcs8.der", "encrypted PKCS#8 DER"},
  };
  OSSL_LIB_CTX* l = lib(tcti_);
  int n = 0;
  for (const auto& k : kinds()) {
    for (const auto& [format, says] : formats) {
      SCOPED_TRACE(k.name + " " + format);
      const std::string file = convert(k, format);
      const std::string before = read_file(file);
      const std::string name = numbered("k", n++);
      const bool encrypted = format.rfind("enc", 0) == 0 || format.rfind("legacy-enc", 0) == 0;
      std::vector<std::string> args = {"import", name, file, "--description", k.name + " " + format};
      if (encrypted) args.insert(args.end(), {"--passphrase-file", dir_ + "/pass-crlf"});
      auto r = tpmkey(args);
      ASSERT_OK(r);
      std::string expected_format = says;
      if (expected_format.empty()) {
        const std::string family = k.rsa() ? "PKCS#1" : "SEC1";
        expected_format = format == "trad.pem"   ? family + " PEM"
                          : format == "trad.der" ? family + " DER"
                                                 : family + " PEM, legacy PEM encryption";
      }
      EXPECT_NE(r.out.find("imported tpm2:" + name + " (" + k.name + ", imported) from " + file + " (" +
                           expected_format + ") into " + keystore_ + "/" + name + ".pem"),
                std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find("signature verified with the original key"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find(file + " is unchanged and still holds the private key in software"), std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find("shred -u " + file), std::string::npos) << r.out;
      EXPECT_EQ(r.err, "");
      EXPECT_EQ(read_file(file), before) << "the source file was changed";
      struct stat st{};
      ASSERT_EQ(stat((keystore_ + "/" + name + ".pem").c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 0777, 0600u);

      EXPECT_TRUE(signs_in_process(l, "tpm2:" + name, original(k.name))) << drain_errors();
      if (k.rsa()) {
        SignOpts pss;
        pss.md = "SHA384";
        pss.padding = RSA_PKCS1_PSS_PADDING;
        EXPECT_TRUE(signs_in_process(l, "tpm2:" + name, original(k.name), pss)) << drain_errors();
      }
      if (format == "pkcs8.pem") expect_openssl_signs("tpm2:" + name, original(k.name));
    }
  }
  // Every one is listed as imported; a key made in the TPM is not.
  ASSERT_OK(tpmkey({"create", "native"}));
  auto list = tpmkey({"list"});
  ASSERT_OK(list);
  EXPECT_NE(list.out.find("k0                       ec-p256    256    no        0x40000001 (owner SRK), imported\n"),
            std::string::npos)
      << list.out;
  EXPECT_NE(list.out.find("native                   ec-p256    256    no        0x40000001 (owner SRK)\n"),
            std::string::npos)
      << list.out;
  for (int i = 0; i < n; ++i) {
    const std::string line = list.out.substr(list.out.find("\n" + numbered("k", i) + " ") + 1);
    EXPECT_NE(line.substr(0, line.find('\n')).find(", imported"), std::string::npos) << line;
  }
}

// Keys in OpenSSH's own format, as ssh-keygen writes them (unencrypted): imported, the source file
// untouched, and signing through the provider; the ORIGINAL public key (the .pub file, converted
// by ssh-keygen -e -m PKCS8) verifies every signature.
TEST_F(ImportTest, OpenSshFormatKeysFromSshKeygenSignAndVerifyWithTheOriginal) {
  OSSL_LIB_CTX* l = lib(tcti_);
  for (const OpenSshCase& k : kOpenSshCases) {
    SCOPED_TRACE(k.name);
    const std::string file = dir_ + "/id_" + k.name, name = "ossh-" + k.name;
    ASSERT_OK(run({"ssh-keygen", "-q", "-t", k.type, "-b", k.bits, "-N", "", "-C", "a comment", "-f", file}));
    ASSERT_EQ(read_file(file).rfind("-----BEGIN OPENSSH PRIVATE KEY-----\n", 0), 0u);
    auto pub = run({"ssh-keygen", "-e", "-m", "PKCS8", "-f", file + ".pub"});
    ASSERT_OK(pub);
    write_file(file + ".pub.pem", pub.out);
    const std::string before = read_file(file);
    auto r = tpmkey({"import", name, file});
    ASSERT_OK(r);
    EXPECT_NE(r.out.find("imported tpm2:" + name + " (" + k.name + ", imported) from " + file +
                         " (OpenSSH format) into " + keystore_ + "/" + name + ".pem"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("signature verified with the original key"), std::string::npos) << r.out;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(read_file(file), before) << "the source file was changed";
    // The TPM key's public key is the .pub file's.
    EXPECT_EQ(tpmkey({"pubkey", name}).out, pub.out);
    signs_as_the_original(l, name, file + ".pub.pem", "signed by an OpenSSH key moved into the TPM");
    std::vector<std::string> sign = {"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey",
                                     "-provider", "default", "-sign", "-inkey", "tpm2:" + name, "-rawin", "-digest",
                                     "sha256", "-in", dir_ + "/msg", "-out", dir_ + "/sig"};
    ASSERT_OK(run(sign, openssl_env()));
    auto v = plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", file + ".pub.pem", "-rawin", "-digest",
                            "sha256", "-in", dir_ + "/msg", "-sigfile", dir_ + "/sig"});
    EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
  }
}

// Passphrase-protected keys in OpenSSH's format (kdf bcrypt, cipher aes256-ctr), as ssh-keygen
// -N writes them: decrypted by ssh-keygen in a private directory under $TMPDIR (here a fresh one
// per import, which must be empty again afterwards), imported, signing; the ORIGINAL public key
// (the .pub file) verifies the signatures and is what tpmkey pubkey shows; the source file is left
// byte for byte. The passphrase comes from a file, and once from a pipe (--passphrase-file
// /dev/stdin).
TEST_F(ImportTest, PassphraseProtectedOpenSshKeysAreDecryptedBySshKeygen) {
  OSSL_LIB_CTX* l = lib(tcti_);
  for (const OpenSshCase& k : kOpenSshCases) {
    SCOPED_TRACE(k.name);
    const std::string file = dir_ + "/id_enc_" + k.name, name = "ossh-enc-" + k.name, tmp = dir_ + "/tmp-" + k.name;
    ASSERT_OK(run({"ssh-keygen", "-q", "-t", k.type, "-b", k.bits, "-N", kPassphrase, "-C", "a comment", "-f", file}));
    const std::string before = read_file(file);
    // Really encrypted: ssh-keygen's own check of the header.
    ASSERT_NE(openssh_blob(before).find("aes256-ctr"), std::string::npos);
    ASSERT_NE(openssh_blob(before).find("bcrypt"), std::string::npos);
    auto pub = run({"ssh-keygen", "-e", "-m", "PKCS8", "-f", file + ".pub"});
    ASSERT_OK(pub);
    write_file(file + ".pub.pem", pub.out);
    std::filesystem::create_directories(tmp);
    const bool from_pipe = k.name == "ec-p384";
    std::vector<std::string> args = {tpmkey_bin(), "--tcti", tcti_, "--keystore", keystore_, "import", name, file,
                                     "--passphrase-file", from_pipe ? "/dev/stdin" : keys_ + "/pass"};
    auto r = run(args, {"TSS2_LOG=all+none", "TMPDIR=" + tmp}, from_pipe ? std::string(kPassphrase) + "\n" : "");
    ASSERT_OK(r);
    EXPECT_NE(r.out.find("imported tpm2:" + name + " (" + k.name + ", imported) from " + file +
                         " (encrypted OpenSSH format, aes256-ctr with bcrypt, decrypted by ssh-keygen) into " +
                         keystore_ + "/" + name + ".pem"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("signature verified with the original key"), std::string::npos) << r.out;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(read_file(file), before) << "the source file was changed";
    EXPECT_TRUE(std::filesystem::is_empty(tmp)) << "ssh-keygen's private directory was left in " << tmp;
    EXPECT_EQ(tpmkey({"pubkey", name}).out, pub.out);
    signs_as_the_original(l, name, file + ".pub.pem", "signed by a passphrase-protected OpenSSH key moved into the TPM");
  }
  // What ssh-keygen leaves in the private directory is encrypted PKCS#8: a wrapper around the real
  // one keeps a copy of it (and of the file it was given, the original bytes).
  auto real = run({"sh", "-c", "command -v ssh-keygen"});
  ASSERT_OK(real);
  const std::string wrapper = dir_ + "/wrapper-bin", kept = dir_ + "/kept";
  std::filesystem::create_directories(wrapper);
  std::filesystem::create_directories(kept);
  write_file(wrapper + "/ssh-keygen", "#!/bin/sh\ncp \"$5\" " + kept + "/in\n" + real.out.substr(0, real.out.find('\n')) +
                                          " \"$@\" || exit $?\ncp \"$5\" " + kept + "/out\n");
  std::filesystem::permissions(wrapper + "/ssh-keygen", std::filesystem::perms::owner_all);
  const char* path_env = std::getenv("PATH");
  auto w = run({tpmkey_bin(), "--tcti", tcti_, "--keystore", keystore_, "import", "ossh-enc-kept",
                dir_ + "/id_enc_ec-p256", "--passphrase-file", keys_ + "/pass"},
               {"TSS2_LOG=all+none", "PATH=" + wrapper + ":" + (path_env ? path_env : "/usr/bin:/bin")});
  ASSERT_OK(w);
  EXPECT_EQ(read_file(kept + "/in"), read_file(dir_ + "/id_enc_ec-p256"));
  const std::string out = read_file(kept + "/out");
  EXPECT_EQ(out.rfind("-----BEGIN ENCRYPTED PRIVATE KEY-----\n", 0), 0u) << out;
  EXPECT_EQ(out.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  // Under the random passphrase, not the user's.
  EXPECT_NE(plain_openssl({"pkey", "-in", kept + "/out", "-passin", std::string("pass:") + kPassphrase}).exit_code, 0);

  // One signature through the openssl program, verified with the .pub file alone.
  std::vector<std::string> sign = {"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey",
                                   "-provider", "default", "-sign", "-inkey", "tpm2:ossh-enc-rsa2048", "-rawin",
                                   "-digest", "sha256", "-in", dir_ + "/msg", "-out", dir_ + "/sig"};
  ASSERT_OK(run(sign, openssl_env()));
  auto v = plain_openssl({"pkeyutl", "-verify", "-pubin", "-inkey", dir_ + "/id_enc_rsa2048.pub.pem", "-rawin",
                          "-digest", "sha256", "-in", dir_ + "/msg", "-sigfile", dir_ + "/sig"});
  EXPECT_NE(v.out.find("Signature Verified Successfully"), std::string::npos) << v.out << v.err;
}

// The passphrase of a passphrase-protected OpenSSH key typed on the terminal (tpmkey's own prompt,
// as for encrypted PKCS#8): ssh-keygen, in a session of its own, never asks on it.
TEST_F(ImportTest, PassphraseProtectedOpenSshKeyWithThePassphraseTypedOnTheTerminal) {
  const std::string file = dir_ + "/id_tty", tmp = dir_ + "/tmp";
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", kPassphrase, "-C", "", "-f", file}));
  auto pub = run({"ssh-keygen", "-e", "-m", "PKCS8", "-f", file + ".pub"});
  ASSERT_OK(pub);
  std::filesystem::create_directories(tmp);
  std::string screen;
  const int rc = run_on_pty({tpmkey_bin(), "--tcti", tcti_, "--keystore", keystore_, "import", "tty", file,
                             "--no-password"},
                            {"TSS2_LOG=all+none", "TMPDIR=" + tmp}, "Passphrase of " + file + ": ", kPassphrase,
                            &screen);
  EXPECT_EQ(rc, 0) << screen;
  EXPECT_NE(screen.find("imported tpm2:tty (ec-p256, imported) from " + file + " (encrypted OpenSSH format"),
            std::string::npos)
      << screen;
  EXPECT_EQ(screen.find("Enter old passphrase"), std::string::npos) << screen;
  EXPECT_EQ(screen.find(kPassphrase), std::string::npos) << "the passphrase was echoed: " << screen;
  EXPECT_TRUE(std::filesystem::is_empty(tmp));
  EXPECT_EQ(tpmkey({"pubkey", "tty"}).out, pub.out);
}

// A passphrase-protected OpenSSH key refused: a wrong passphrase, none at all (no terminal),
// ssh-keygen not installed, a passphrase ssh-keygen cannot be given. Each says why, sends nothing to
// the TPM, leaves the keystore and the file as they were and nothing in $TMPDIR.
TEST_F(ImportTest, PassphraseProtectedOpenSshRefusals) {
  const std::string file = dir_ + "/id_ecdsa_enc", tmp = dir_ + "/tmp";
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", kPassphrase, "-C", "", "-f", file}));
  std::filesystem::create_directories(tmp);
  write_file(dir_ + "/wrong", "not the passphrase\n");
  write_file(dir_ + "/nul", std::string("correct\0horse battery\n", 22));
  ASSERT_OK(tpmkey({"import", "taken", original("ec-p256")}));
  const auto keystore_before = keystore_files();
  const std::string before = read_file(file);
  struct Case {
    std::vector<std::string> args;  // after "import refused FILE"
    std::vector<std::string> env;
    std::string says;
  };
  std::vector<Case> cases = {
      {{"--passphrase-file", dir_ + "/wrong"},
       {},
       "tpmkey: import(tpm2:refused): read(" + file + "): authorization failed: the passphrase is wrong (ssh-keygen "
       "could not decrypt the OpenSSH key with it)"},
      {{}, {}, file + " is encrypted: give its passphrase with --passphrase-file (there is no terminal to ask on)"},
      {{"--passphrase-file", keys_ + "/pass"},
       {"PATH=" + dir_ + "/no-such-dir"},
       "read(" + file + "): unsupported algorithm or parameter: this OpenSSH key is encrypted with a passphrase, and "
       "tpmkey decrypts such keys with OpenSSH's ssh-keygen, which is not installed (not found in PATH): install it "
       "(Debian package openssh-client), or convert a copy to PKCS#8 elsewhere and import the copy: cp " + file +
       " COPY && ssh-keygen -p -m PKCS8 -f COPY && tpmkey import NAME COPY && shred -u COPY"},
      {{"--passphrase-file", dir_ + "/nul"}, {}, "the passphrase has a line break or a NUL byte"},
  };
  // An ssh-keygen that answers with another key (PKCS#8 under the new passphrase it is given) is
  // caught by the public key check. It also records what it was given: its arguments, its
  // environment, and the modes of the directory and the copy.
  const std::string fake = dir_ + "/fake-bin", log = dir_ + "/fake-log";
  std::filesystem::create_directories(fake);
  std::filesystem::create_directories(log);
  write_file(fake + "/ssh-keygen",
             "#!/bin/sh\n"
             "printf '%s\\n' \"$@\" > " + log + "/argv\n"
             "env > " + log + "/env\n"
             "stat -c %a \"$(dirname \"$5\")\" \"$5\" > " + log + "/modes\n"
             "IFS= read -r old; IFS= read -r new; IFS= read -r again\n"
             "[ \"$old\" = '" + kPassphrase + "' ] && [ \"$new\" = \"$again\" ] && [ ${#new} -eq 64 ] || exit 3\n"
             "printf '%s\\n' \"$new\" | OPENSSL_CONF=/dev/null openssl pkey -in " + original("ec-p384") +
             " -aes256 -passout stdin -out \"$5\"\n");
  std::filesystem::permissions(fake + "/ssh-keygen", std::filesystem::perms::owner_all);
  const char* path_env = std::getenv("PATH");
  cases.push_back({{"--passphrase-file", keys_ + "/pass"},
                   {"PATH=" + fake + ":" + (path_env ? path_env : "/usr/bin:/bin")},
                   "read(" + file + "): malformed or unusable key file: the private key and the OpenSSH file's "
                   "public key differ"});
  BusProxy bus(shared_swtpm().port());
  for (const auto& c : cases) {
    SCOPED_TRACE(c.says);
    std::vector<std::string> args = {tpmkey_bin(), "--tcti", bus.tcti(), "--keystore", keystore_, "import",
                                     "refused", file};
    args.insert(args.end(), c.args.begin(), c.args.end());
    std::vector<std::string> env = {"TSS2_LOG=all+none", "TMPDIR=" + tmp};
    env.insert(env.end(), c.env.begin(), c.env.end());
    auto r = run(args, env);
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_FAILS_WITH(r, c.says);
    EXPECT_EQ(r.err.find("not the passphrase"), std::string::npos) << "a passphrase was printed";
    EXPECT_EQ(r.err.find(kPassphrase), std::string::npos) << "a passphrase was printed";
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{}) << "a refusal sent TPM commands";
    bus.clear();
    EXPECT_TRUE(std::filesystem::is_empty(tmp)) << "ssh-keygen's private directory was left in " << tmp;
  }
  // The fake ssh-keygen ran, with no passphrase in its arguments or environment, on a 0600 copy in
  // a 0700 directory.
  EXPECT_EQ(read_file(log + "/argv").rfind("-p\n-m\nPKCS8\n-f\n" + tmp + "/tpmkey-ssh-keygen-", 0), 0u)
      << read_file(log + "/argv");
  EXPECT_EQ(read_file(log + "/argv").find(kPassphrase), std::string::npos);
  EXPECT_EQ(read_file(log + "/env").find(kPassphrase), std::string::npos);
  EXPECT_NE(read_file(log + "/env").find("SSH_ASKPASS_REQUIRE=never\n"), std::string::npos);
  EXPECT_EQ(read_file(log + "/modes"), "700\n600\n");
  // A key type tpmkey does not import is refused from the file's clear header, before any passphrase.
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ed25519", "-N", kPassphrase, "-C", "", "-f", dir_ + "/id_ed25519_enc"}));
  auto ed = tpmkey({"import", "refused", dir_ + "/id_ed25519_enc"}, bus.tcti());
  EXPECT_FAILS_WITH(ed, "this is an Ed25519 key (OpenSSH \"ssh-ed25519\"): tpmkey imports RSA keys");
  EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{});
  EXPECT_EQ(keystore_files(), keystore_before) << "a refusal changed the keystore";
  EXPECT_EQ(read_file(file), before) << "the source file was changed";
}

// openssl pkey -text tells an imported key from one generated in the TPM, and the public key is
// the original's.
TEST_F(ImportTest, TextShowsTheOriginAndThePublicKeyIsTheOriginal) {
  ASSERT_OK(tpmkey({"import", "rsa", original("rsa2048"), "--description", "from software"}));
  ASSERT_OK(tpmkey({"import", "ec", original("ec-p384")}));
  ASSERT_OK(tpmkey({"create", "native"}));
  auto openssl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"openssl", "pkey", "-provider-path", provider_dir(), "-provider", "tpmkey",
                               "-provider", "default"});
    return run(args, openssl_env());
  };
  auto text = openssl({"-in", "tpm2:rsa", "-text", "-noout"});
  ASSERT_OK(text);
  EXPECT_NE(text.out.find("TPM algorithm: rsa2048\nTPM parent: 0x40000001 (owner hierarchy, standard ECC P-256 "
                          "storage primary)\nTPM password: not needed\nTPM origin: imported (was outside the TPM "
                          "once)\nDescription: from software\n"),
            std::string::npos)
      << text.out;
  auto native = openssl({"-in", keystore_ + "/native.pem", "-text", "-noout"});
  EXPECT_NE(native.out.find("TPM origin: generated in the TPM\n"), std::string::npos) << native.out;
  for (const char* kind : {"rsa", "ec"}) {
    auto pub = tpmkey({"pubkey", kind});
    ASSERT_OK(pub);
    auto orig = plain_openssl({"pkey", "-in", original(kind == std::string("rsa") ? "rsa2048" : "ec-p384"), "-pubout"});
    EXPECT_EQ(pub.out, orig.out) << kind;
  }
}

// The new key's password comes from --password-file: the key then signs with it only. 32 bytes
// is the limit: a 33-byte password is refused before the TPM is asked anything.
TEST_F(ImportTest, APasswordFromAFileIsNeededToSign) {
  write_file(dir_ + "/pw", "an import password\n");
  auto r = tpmkey({"import", "pw", original("ec-p256"), "--password-file", dir_ + "/pw"});
  ASSERT_OK(r);
  EXPECT_NE(r.out.find("imported tpm2:pw (ec-p256, password, imported)"), std::string::npos) << r.out;
  EXPECT_NE(tpmkey({"list"}).out.find("pw                       ec-p256    256    yes       0x40000001"),
            std::string::npos);
  expect_openssl_signs("tpm2:pw?pin-source=" + dir_ + "/pw", original("ec-p256"));
  OSSL_LIB_CTX* l = lib(tcti_);
  EXPECT_TRUE(signs_in_process(l, "tpm2:pw?pin-source=" + dir_ + "/pw", original("ec-p256")));
  // Without the password, and with a wrong one, there is no signature.
  auto none = run({"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey", "-provider",
                   "default", "-sign", "-inkey", keystore_ + "/pw.pem", "-rawin", "-in", dir_ + "/msg", "-out",
                   dir_ + "/sig"},
                  openssl_env());
  EXPECT_FAILS_WITH(none, "the key needs a password and none was given");
  auto wrong = run({"openssl", "pkeyutl", "-provider-path", provider_dir(), "-provider", "tpmkey", "-provider",
                    "default", "-sign", "-inkey", "tpm2:pw?pin-value=not-it", "-rawin", "-in", dir_ + "/msg", "-out",
                    dir_ + "/sig"},
                   openssl_env());
  EXPECT_FAILS_WITH(wrong, "TPM2_Sign: authorization failed: the password is not the key's");

  // Exactly 32 bytes is allowed (RSA this time).
  write_file(dir_ + "/pw32", std::string(32, 'x') + "\n");
  ASSERT_OK(tpmkey({"import", "pw32", original("rsa2048"), "--password-file", dir_ + "/pw32"}));
  expect_openssl_signs("tpm2:pw32?pin-source=" + dir_ + "/pw32", original("rsa2048"));
  // --password without a terminal, and both password options at once.
  EXPECT_FAILS_WITH(tpmkey({"import", "tty", original("ec-p256"), "--password"}), "no terminal");
  auto both = tpmkey({"import", "both", original("ec-p256"), "--password", "--password-file", dir_ + "/pw"});
  EXPECT_EQ(both.exit_code, 2) << both.err;
  EXPECT_NE(both.err.find("--password and --password-file exclude each other"), std::string::npos) << both.err;
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/tty.pem"));
  EXPECT_FALSE(std::filesystem::exists(keystore_ + "/both.pem"));
}

// Each refusal says why, leaves the keystore and the source file as they were, and sends nothing
// to the TPM (a bus interposer records every command): an algorithm the TPM lacks costs one
// TPM2_TestParms and nothing else.
TEST_F(ImportTest, RefusalsSayWhyAndSendNothingToTheTpm) {
  ASSERT_OK(tpmkey({"import", "taken", original("ec-p256")}));
  const KeyKind& rsa = kinds()[3];
  const KeyKind& ec = kinds()[1];
  const std::string enc = convert(ec, "enc-pkcs8.pem"), legacy = convert(rsa, "legacy-enc.pem");
  const std::string enc_der = convert(ec, "enc-pkcs8.der");
  write_file(dir_ + "/wrong", "not the passphrase\n");
  write_file(dir_ + "/pass", std::string(kPassphrase) + "\n");
  write_file(dir_ + "/long-pw", std::string(33, 'y') + "\n");
  write_file(dir_ + "/empty-pw", "\n");
  const std::string pub = dir_ + "/pub.pem", pub_der = dir_ + "/pub.der", cert = dir_ + "/cert.pem";
  ASSERT_OK(plain_openssl({"pkey", "-in", original("ec-p256"), "-pubout", "-out", pub}));
  ASSERT_OK(plain_openssl({"pkey", "-in", original("ec-p256"), "-pubout", "-outform", "DER", "-out", pub_der}));
  ASSERT_OK(plain_openssl({"req", "-new", "-x509", "-key", original("ec-p256"), "-subj", "/CN=import", "-out", cert}));
  const std::string good = read_file(original("ec-p384"));
  write_file(dir_ + "/truncated.pem", good.substr(0, good.size() / 2));
  write_file(dir_ + "/corrupt.pem", good.substr(0, 40) + "!!!!" + good.substr(44));
  write_file(dir_ + "/garbage.der", std::string("\x30\x82\x01\x00garbage, not DER at all", 28));
  for (const std::string alg : {"ED25519", "X25519"})
    ASSERT_OK(plain_openssl({"genpkey", "-algorithm", alg, "-out", dir_ + "/" + alg + ".pem"}));
  ASSERT_OK(plain_openssl({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1", "-out",
                           dir_ + "/k1.pem"}));
  ASSERT_OK(plain_openssl({"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out",
                           dir_ + "/rsa1024.pem"}));
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-C", "", "-f", dir_ + "/id_ecdsa"}));
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", kPassphrase, "-C", "", "-f",
                 dir_ + "/id_ecdsa_enc"}));
  ASSERT_OK(run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", dir_ + "/id_ed25519"}));
  // Damaged OpenSSH files: cut short, the check numbers differing, a curve not the key type's.
  const std::string ossh = read_file(dir_ + "/id_ecdsa");
  write_file(dir_ + "/ossh-truncated", ossh.substr(0, ossh.size() / 2));
  const auto rewrite = [&](const std::string& out, const std::function<void(std::string&)>& edit) {
    std::string blob = openssh_blob(ossh);
    edit(blob);
    write_file(out, openssh_armor(blob));
  };
  // The private section follows the public blob: magic, "none", "none", "", 1, the blob, its length.
  const size_t priv = openssh_private_section(openssh_blob(ossh));
  rewrite(dir_ + "/ossh-check", [&](std::string& b) { b[priv + 3] ^= 1; });
  rewrite(dir_ + "/ossh-curve", [&](std::string& b) {
    const size_t at = b.find("nistp256", priv + 8 + 4 + 19);  // the private section's curve name
    b.replace(at, 8, "nistp384");
  });
  rewrite(dir_ + "/ossh-padding", [&](std::string& b) {
    // After the check numbers: type, curve, point, scalar and comment; then padding 1, 2, 3, ...,
    // here made to end in 0x55.
    size_t end = priv + 8;
    for (int i = 0; i < 5; ++i) end += 4 + be32(b, end);
    const size_t n = (end - priv) % 8 ? 8 - (end - priv) % 8 : 8;
    b.resize(end);
    for (size_t i = 1; i < n; ++i) b += char(i);
    b += '\x55';
    const uint32_t len = uint32_t(b.size() - priv);
    for (int i = 0; i < 4; ++i) b[priv - 4 + i] = char(len >> (24 - 8 * i));
  });

  struct Case {
    std::vector<std::string> args;  // after "import NAME"
    std::string says;
  };
  const std::vector<Case> cases = {
      {{enc, "--passphrase-file", dir_ + "/wrong"}, "read(" + enc + "): authorization failed: the passphrase is wrong"},
      {{legacy, "--passphrase-file", dir_ + "/wrong"}, "the passphrase is wrong"},
      {{enc_der, "--passphrase-file", dir_ + "/wrong"}, "the passphrase is wrong"},
      {{enc}, enc + " is encrypted: give its passphrase with --passphrase-file (there is no terminal to ask on)"},
      {{pub}, "read(" + pub + "): malformed or unusable key file: the file holds a public key (PEM \"PUBLIC KEY\"), "
              "not a private key: import needs the private key"},
      {{pub_der}, "the file holds a public key (DER), not a private key"},
      {{cert}, "the file holds a certificate (PEM \"CERTIFICATE\"), not a private key"},
      {{dir_ + "/id_ecdsa.pub"}, "the file holds an OpenSSH public key, not a private key"},
      {{dir_ + "/truncated.pem"}, "PEM \"PRIVATE KEY\" does not decode (the file is damaged)"},
      {{dir_ + "/corrupt.pem"}, "PEM \"PRIVATE KEY\" does not decode (the file is damaged)"},
      {{dir_ + "/garbage.der"}, "not a private key OpenSSL can read"},
      {{dir_ + "/nonexistent.pem"}, "read(" + dir_ + "/nonexistent.pem): "},
      {{dir_ + "/ED25519.pem"}, "unsupported algorithm or parameter: this is an Ed25519 key: tpmkey imports RSA keys "
                                "of 2048, 3072 and 4096 bits and EC keys on P-256, P-384 and P-521"},
      {{dir_ + "/X25519.pem"}, "this is an X25519 key: tpmkey imports"},
      {{dir_ + "/k1.pem"}, "an EC key on curve secp256k1: tpmkey imports"},
      {{dir_ + "/rsa1024.pem"}, "a 1024-bit RSA key: tpmkey imports"},
      {{dir_ + "/id_ecdsa_enc", "--passphrase-file", dir_ + "/wrong"},
       "read(" + dir_ + "/id_ecdsa_enc): authorization failed: the passphrase is wrong (ssh-keygen could not decrypt "
       "the OpenSSH key with it)"},
      {{dir_ + "/id_ed25519"}, "this is an Ed25519 key (OpenSSH \"ssh-ed25519\"): tpmkey imports RSA keys of 2048, "
                               "3072 and 4096 bits and EC keys on P-256, P-384 and P-521"},
      {{dir_ + "/ossh-truncated"}, "the OpenSSH private key is damaged: no END OPENSSH PRIVATE KEY line"},
      {{dir_ + "/ossh-check"}, "the OpenSSH private key is damaged: its two check numbers differ"},
      {{dir_ + "/ossh-curve"},
       "the OpenSSH private key is damaged: its key type is ecdsa-sha2-nistp256 but its curve is \"nistp384\""},
      {{dir_ + "/ossh-padding"}, "the OpenSSH private key is damaged: its padding is not 1, 2, 3, ..."},
      {{original("ec-p256"), "--password-file", dir_ + "/long-pw"},
       "invalid argument: the password is 33 bytes long; a key's password can be at most 32 bytes"},
      {{original("ec-p256"), "--password-file", dir_ + "/empty-pw"}, "the password file is empty"},
  };
  BusProxy bus(shared_swtpm().port());
  const auto before = keystore_files();
  std::map<std::string, std::string> sources;
  for (const auto& c : cases)
    if (std::filesystem::exists(c.args[0])) sources[c.args[0]] = read_file(c.args[0]);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args[0]);
    std::vector<std::string> args = {"import", "refused"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = tpmkey(args, bus.tcti());
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    EXPECT_EQ(r.err.rfind("tpmkey: import(tpm2:refused): ", 0), 0u) << r.err;
    EXPECT_FAILS_WITH(r, c.says);
    EXPECT_EQ(r.err.find("not the passphrase"), std::string::npos) << "a passphrase was printed";
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{}) << "a refusal sent TPM commands";
    bus.clear();
  }
  // The name is taken: refused before the file is even read.
  EXPECT_FAILS_WITH(tpmkey({"import", "taken", original("rsa2048")}, bus.tcti()),
                    "tpmkey: import(tpm2:taken): invalid argument: a key named \"taken\" already exists in " +
                        keystore_ + "; nothing was changed");
  EXPECT_FAILS_WITH(tpmkey({"import", "../x", original("rsa2048")}, bus.tcti()), "key name \"../x\"");
  EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{});

  // An RSA size this TPM lacks (swtpm 0.7 has no RSA 4096): TPM2_TestParms says so, and nothing more
  // is sent. On a TPM with RSA 4096, the key imports and signs.
  ASSERT_OK(plain_openssl({"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096", "-out",
                           dir_ + "/rsa4096.pem"}));
  bus.clear();
  auto big = tpmkey({"import", "rsa4096", dir_ + "/rsa4096.pem"}, bus.tcti());
  if (tpmkey({"algorithms"}).out.find("rsa4096   supported") == std::string::npos) {
    EXPECT_FAILS_WITH(big, "import(tpm2:rsa4096): TPM2_TestParms(rsa4096): unsupported algorithm or parameter: this "
                           "TPM does not support rsa4096 keys");
    EXPECT_EQ(bus.command_codes(), std::vector<uint32_t>{TPM2_CC_TestParms});
  } else {
    EXPECT_OK(big);
    expect_openssl_signs("tpm2:rsa4096", dir_ + "/rsa4096.pem");
    ASSERT_OK(tpmkey({"delete", "rsa4096", "--yes"}));
  }
  EXPECT_EQ(keystore_files(), before) << "a refusal changed the keystore";
  for (const auto& [path, data] : sources) EXPECT_EQ(read_file(path), data) << path << " was changed";
}

// What crosses the bus in a successful import: the private value and the password are never there
// in clear (the duplicate is encrypted to the SRK), and the commands are the few expected.
TEST_F(ImportTest, NoSecretCrossesTheBusInClear) {
  ASSERT_OK(tpmkey({"list"}));  // nothing yet; the SRK is pinned by the first import below
  const std::string password = "bus-watched password";
  write_file(dir_ + "/pw", password + "\n");
  for (const char* kind : {"ec-p256", "rsa2048"}) {
    SCOPED_TRACE(kind);
    BusProxy bus(shared_swtpm().port());
    const std::string name = std::string("watched-") + kind;
    ASSERT_OK(tpmkey({"import", name, original(kind), "--password-file", dir_ + "/pw"}, bus.tcti()));
    PkeyPtr orig = read_original(original(kind));
    ASSERT_TRUE(orig);
    EXPECT_FALSE(bus.saw(private_value(orig.get()))) << "the private value crossed the bus in clear";
    EXPECT_FALSE(bus.saw(password)) << "the password crossed the bus in clear";
    // TestParms first; then the SRK (the transient primary: ReadPublic finds no persistent one,
    // an unsalted session to create it) and the salted session; one Import; then Load and Sign for
    // the self-test, and the flushes. (swtpm answers the first TPM2_Sign with a password key after it
    // started with TPM_RC_RETRY, and the runner sends it again: hence at least one.)
    const std::vector<uint32_t> codes = bus.command_codes();
    ASSERT_FALSE(codes.empty());
    EXPECT_EQ(codes.front(), TPM2_CC_TestParms);
    EXPECT_EQ(std::count(codes.begin(), codes.end(), TPM2_CC_Import), 1);
    EXPECT_EQ(std::count(codes.begin(), codes.end(), TPM2_CC_Load), 1);
    EXPECT_GE(std::count(codes.begin(), codes.end(), TPM2_CC_Sign), 1);
    const auto at = [&](uint32_t cc) { return std::find(codes.begin(), codes.end(), cc) - codes.begin(); };
    EXPECT_LT(at(TPM2_CC_StartAuthSession), at(TPM2_CC_Import));
    EXPECT_LT(at(TPM2_CC_Import), at(TPM2_CC_Load));
    EXPECT_LT(at(TPM2_CC_Load), at(TPM2_CC_Sign));
    expect_openssl_signs("tpm2:" + name + "?pin-source=" + dir_ + "/pw", original(kind));
  }
}

// With the SRK persistent (tpmkey init), TPM2_Import runs under 0x81000001 in place.
TEST_F(ImportTest, UnderThePersistentSrk) {
  ASSERT_OK(tpmkey({"init"}));
  ASSERT_OK(tpmkey({"import", "p", original("ec-p521")}));
  ASSERT_OK(tpmkey({"import", "q", original("rsa3072")}));
  expect_openssl_signs("tpm2:p", original("ec-p521"));
  expect_openssl_signs("tpm2:q", original("rsa3072"), {"-pkeyopt", "rsa_padding_mode:pss"});
  EXPECT_OK(evict_persistent_srk());
}

// A TPM key file given to import is handled as import-file handles it (its key is in the TPM
// already); import-file still works.
TEST_F(ImportTest, ATpmKeyFileGoesTheImportFileWay) {
  const std::string other = dir_ + "/other-keystore";
  ASSERT_OK(run({tpmkey_bin(), "--tcti", tcti_, "--keystore", other, "create", "made", "--algorithm", "rsa2048"},
                {"TSS2_LOG=all+none"}));
  const std::string file = other + "/made.pem";
  auto r = tpmkey({"import", "via-import", file, "--passphrase-file", dir_ + "/pass-crlf"});
  ASSERT_OK(r);
  EXPECT_NE(r.out.find("imported tpm2:via-import (rsa2048) from " + file + " into " + keystore_ + "/via-import.pem"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("checked: this TPM loaded it under 0x40000001 (owner SRK)"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("is a TPM key file; --passphrase-file is not used"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(keystore_ + "/via-import.pem"), read_file(file));
  ASSERT_OK(tpmkey({"import-file", "via-import-file", file}));
  // The key file's public key is the one both copies sign with; it is not marked as imported.
  auto list = tpmkey({"list"});
  EXPECT_NE(list.out.find("via-import               rsa2048    2048   no        0x40000001 (owner SRK)\n"),
            std::string::npos)
      << list.out;
  write_file(dir_ + "/made.pub", tpmkey({"pubkey", "via-import"}).out);
  OSSL_LIB_CTX* l = lib(tcti_);
  for (const char* name : {"tpm2:via-import", "tpm2:via-import-file"}) EXPECT_TRUE(sign_and_verify(l, name, "m"));
  // Refusals of the import-file kind keep their words.
  write_file(dir_ + "/broken.pem", "-----BEGIN TSS2 PRIVATE KEY-----\nMAMCAQA=\n-----END TSS2 PRIVATE KEY-----\n");
  EXPECT_FAILS_WITH(tpmkey({"import", "broken", dir_ + "/broken.pem"}),
                    "import-file(tpm2:broken): read(" + dir_ + "/broken.pem): malformed or unusable key file");
}

// The help, and the usage errors (exit 2, nothing done).
TEST_F(ImportTest, HelpAndUsageErrors) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"import", "--help"}, {"help", "import"}}) {
    auto r = tpmkey(args);
    EXPECT_OK(r);
    EXPECT_EQ(r.out.rfind("Usage: tpmkey import NAME FILE [--passphrase-file F]", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("cannot leave this TPM from now on"), std::string::npos) << r.out;
  }
  EXPECT_NE(tpmkey({"--help"}).out.find("  import NAME FILE\n"), std::string::npos);
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {{"import", "k"}, "missing FILE for \"tpmkey import\" (it takes NAME and FILE)"},
           {{"import", "k", "f", "g"}, "unexpected argument \"g\" for \"tpmkey import\""},
           {{"import", "k", "f", "--algorithm", "ec-p256"}, "unknown option --algorithm for \"tpmkey import\""},
           {{"import", "k", "f", "--passphrase-file"}, "--passphrase-file needs a value"},
           {{"import", "k", "f", "--password", "--password-file", "p"},
            "--password and --password-file exclude each other"},
       }) {
    SCOPED_TRACE(c.says);
    auto r = tpmkey(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("tpmkey: " + c.says), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("Try \"tpmkey import --help\"."), std::string::npos) << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(keystore_));
}

}  // namespace
}  // namespace tpmkey::test
