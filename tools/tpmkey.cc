// tpmkey: create, list, show and delete TPM keys in the keystore.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "keystore/context.h"
#include "keystore/key.h"
#include "keystore/public_key.h"
#include "tools/prompt.h"

namespace tpmkey::cli {
namespace {

constexpr int kExitOk = 0, kExitError = 1, kExitUsage = 2;

const char* kMainHelp = R"(Usage: tpmkey [--tcti TCTI] [--keystore DIR] COMMAND [ARGS]

Keys that never leave the TPM, for OpenSSL, TLS and SSH.

Commands:
  init             pin this TPM's storage root key (and make it persistent)
  create NAME      generate a key inside the TPM and store it as NAME
  list             list the keys in the keystore
  pubkey NAME      print a key's public key (PEM or OpenSSH)
  delete NAME      delete a key from the keystore
  import-file NAME PATH
                   add an existing TSS2 key file (tpm2-openssl, tpm2-tools, ...)
                   to the keystore as NAME, after checking that this TPM loads it
  algorithms       show which key algorithms this TPM supports

Options (for every command):
  --tcti TCTI      the TPM to use, as a tpm2-tss TCTI string, for example
                   "device:/dev/tpmrm0" or "swtpm:host=127.0.0.1,port=2321"
                   (default: $TPMKEY_TCTI, else the tpm2-tss default)
  --keystore DIR   the keystore directory (default: $TPMKEY_KEYSTORE, else
                   $XDG_DATA_HOME/tpmkey or ~/.local/share/tpmkey)
  -h, --help       show help; "tpmkey COMMAND --help" shows a command's help
  --version        show the version

Keys are used through the OpenSSL provider as tpm2:NAME, for example:
  openssl pkeyutl -provider tpmkey -provider default -sign -inkey tpm2:NAME ...
See docs/uri.md and docs/configuration.md.
)";

const char* kCreateHelp = R"(Usage: tpmkey create NAME [--algorithm ALG] [--password | --password-file FILE]
                    [--description TEXT] [--persistent HANDLE]

Generates a key inside the TPM and stores its TPM-wrapped blob in the keystore as
NAME.pem (a standard TSS2 PRIVATE KEY file, mode 0600). The private key never
leaves the TPM: it is created with fixedTPM and fixedParent (non-migratable) under
the owner storage primary key (parent 0x40000001). An existing key is never
overwritten.

  NAME                letters, digits, "-", "_" and "." (not first); at most 128
  --algorithm ALG     ec-p256 (default), ec-p384, ec-p521, rsa2048, rsa3072, rsa4096
  --password          protect the key with a password, asked for on the terminal
  --password-file F   protect the key with the password in the first line of F
  --description TEXT  a note stored in the key file
  --persistent HANDLE also make the key persistent in the TPM at HANDLE
                      (0x81000000-0x81ffffff; needs the owner hierarchy, with an empty
                      owner password). tpm2:NAME then uses it in place, without a
                      TPM2_Load; the key file is kept too, and "tpmkey delete" evicts it.
                      The same key is also usable as tpm2:handle=HANDLE.

Example:
  tpmkey create ssh --algorithm ec-p256
)";

const char* kInitHelp = R"(Usage: tpmkey init [--repin] [--transient]

Prepares the keystore for this TPM. Every TPM command tpmkey sends runs in an HMAC
session salted to the TPM's storage root key (SRK: the ECC P-256 owner primary of
the TCG provisioning guidance), with the secret parameters encrypted. init:

  1. makes the SRK persistent at 0x81000001 when that handle is free (this needs
     the owner hierarchy, with an empty owner password), or adopts the key already
     there when it is the same standard SRK. Processes then skip creating a
     primary key (4-9 ms each, and one TPM object slot);
  2. records the SRK's name in KEYSTORE/srk.pin. From then on, sessions are salted
     only to a key with this name: a TPM that presents another SRK (cleared,
     replaced, or an impostor on the bus) is refused with an error, and nothing
     secret is sent to it.

Without init, the name is recorded the first time tpmkey uses the TPM (trust on
first use) and each process creates the SRK as a transient object.

  --repin       replace a pin that names another SRK. Only after the TPM was
                cleared on purpose: keys made under the old SRK no longer load.
  --transient   record the pin, but do not make the SRK persistent

Running init again is harmless: it reports the SRK and the pin it finds.
Undo the persistent SRK with: tpm2_evictcontrol -C o -c 0x81000001
)";

const char* kListHelp = R"(Usage: tpmkey list

Lists the keys in the keystore: name, algorithm, size in bits, whether a password is
needed, and the parent the key was created under. Does not use the TPM.
)";

const char* kPubkeyHelp = R"(Usage: tpmkey pubkey NAME [--format pem|openssh] [--comment TEXT]

Prints the public key of NAME. "pem" (default) is a SubjectPublicKeyInfo PEM block;
"openssh" is one line for ~/.ssh/authorized_keys (comment: NAME unless --comment).
Does not use the TPM.
)";

const char* kDeleteHelp = R"(Usage: tpmkey delete NAME [--yes]

Deletes NAME from the keystore, and evicts it from the TPM if it was created with
--persistent (only if the handle still holds this very key). The key cannot be
recovered: anything signed with it stays valid, but no new signature can be made. Asks for confirmation on
the terminal; --yes skips the question (needed when there is no terminal).
)";

const char* kAlgorithmsHelp = R"(Usage: tpmkey algorithms

Asks the TPM (TPM2_TestParms) which of tpmkey's key algorithms it supports.
)";

const char* kImportFileHelp = R"(Usage: tpmkey import-file NAME PATH [--password-file FILE] [--description TEXT]

Adds an existing TPM key file to the keystore as NAME.pem (mode 0600, written
atomically; an existing key is never overwritten). PATH is a TSS2 PRIVATE KEY
file, PEM or DER, as made by tpm2-openssl ("openssl genpkey -provider tpm2"),
openssl_tpm2_engine, "tpm2_encodeobject" (tpm2-tools) or tpmkey itself. The key
never leaves the TPM: the file holds only its TPM-wrapped blob, and PATH is left
as it is.

Before anything is written, import-file checks that the key works on this TPM:
the TPM loads it under the parent the file names (TPM2_Load under 0x40000001, the
standard owner storage key, or under a persistent parent 0x81xxxxxx), signs a
fixed self-test digest with it (TPM2_Sign), and the signature is verified in
software with the public key from the file. Refused, with the reason:

  - a file that is not a usable TSS2 key file (damaged, sealed data, importable or
    policy keys, an RSA parent, a key that cannot sign, an unsupported algorithm);
  - a NAME that is already in the keystore;
  - a key that this TPM cannot load: made on another TPM, under another parent,
    or a persistent parent that is not there (the file is probably from another
    machine, or the TPM was cleared since).

When the file says the key has a password, the check needs it: it is read from
--password-file, else asked for on the terminal. It is used for the self-test
only and is not stored. A key without a password is imported without asking.

  NAME                letters, digits, "-", "_" and "." (not first); at most 128
  PATH                the key file to import
  --password-file F   the key's password is the first line of F
  --description TEXT  a note stored in the imported copy (default: the file's own)

Examples:
  openssl genpkey -provider tpm2 -algorithm EC -pkeyopt group:P-256 -out k.pem
  tpmkey import-file web k.pem --description "from tpm2-openssl"
  tpmkey import-file tools-key key.pem      # made by tpm2_create + tpm2_encodeobject
)";

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // --name value
  std::vector<std::string> flags;              // --name
  bool has_flag(const std::string& f) const {
    for (const auto& x : flags)
      if (x == f) return true;
    return false;
  }
  std::optional<std::string> option(const std::string& o) const {
    auto it = options.find(o);
    if (it == options.end()) return std::nullopt;
    return it->second;
  }
};

const std::vector<std::string> kValueOptions = {"--tcti", "--keystore", "--algorithm", "--password-file",
                                                "--description", "--format", "--comment", "--persistent"};
const std::vector<std::string> kFlagOptions = {"--help",     "-h",      "--version",  "--password",
                                               "--yes",      "-y",      "--repin",    "--transient"};

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "tpmkey: %s\nTry \"tpmkey --help\".\n", msg.c_str());
  return kExitUsage;
}

int fail(const Error& e) {
  std::fprintf(stderr, "tpmkey: %s\n", e.text().c_str());
  return kExitError;
}

std::optional<Args> parse_args(int argc, char** argv, int* exit_code) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.size() > 1 && s[0] == '-') {
      std::string name = s, value;
      bool has_value = false;
      if (size_t eq = s.find('='); eq != std::string::npos && s.rfind("--", 0) == 0) {
        name = s.substr(0, eq);
        value = s.substr(eq + 1);
        has_value = true;
      }
      bool is_value_opt = std::find(kValueOptions.begin(), kValueOptions.end(), name) != kValueOptions.end();
      bool is_flag = std::find(kFlagOptions.begin(), kFlagOptions.end(), name) != kFlagOptions.end();
      if (is_value_opt) {
        if (!has_value) {
          if (i + 1 >= argc) { *exit_code = usage_error(name + " needs a value"); return std::nullopt; }
          value = argv[++i];
        }
        a.options[name] = value;
      } else if (is_flag && !has_value) {
        a.flags.push_back(name);
      } else {
        *exit_code = usage_error("unknown option " + name);
        return std::nullopt;
      }
    } else if (a.command.empty()) {
      a.command = s;
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

Context make_context(const Args& a) {
  auto tcti = a.option("--tcti"), ks = a.option("--keystore");
  SettingsInput in;
  in.tcti = tcti ? tcti->c_str() : nullptr;
  in.keystore = ks ? ks->c_str() : nullptr;
  return Context(resolve_settings(in));
}

Result<std::string> one_name(const Args& a) {
  if (a.positional.size() != 1)
    return make_error(Reason::kInvalidArgument, "expected exactly one key NAME");
  TPMKEY_TRY(validate_name(a.positional[0]));
  return a.positional[0];
}

int cmd_create(const Args& a) {
  auto name = one_name(a);
  if (!name) return fail(name.error());
  std::string alg = a.option("--algorithm").value_or("ec-p256");
  const AlgorithmSpec* spec = find_algorithm(alg);
  if (!spec)
    return fail(make_error(Reason::kUnsupported, "unknown algorithm \"" + alg +
                                                     "\" (ec-p256, ec-p384, ec-p521, rsa2048, rsa3072, rsa4096)"));
  Context ctx = make_context(a);
  const std::string what = "create(tpm2:" + *name + ")";
  if (ctx.keystore().exists(*name))
    return fail(make_error(Reason::kInvalidArgument, "a key with this name already exists in " + ctx.keystore().dir())
                    .context(what));
  SecretBytes auth;
  if (auto file = a.option("--password-file")) {
    auto pw = read_pin_source(*file);
    if (!pw) return fail(pw.error());
    if (pw->empty()) return fail(make_error(Reason::kInvalidArgument, "the password file is empty").context(what));
    auth = std::move(*pw);
  } else if (a.has_flag("--password")) {
    auto pw = prompt_password("Password for the new key " + *name + ": ", true);
    if (!pw) return fail(pw.error());
    if (pw->empty()) return fail(make_error(Reason::kInvalidArgument, "the password is empty").context(what));
    auth = std::move(*pw);
  }
  uint32_t persistent = 0;
  if (auto h = a.option("--persistent")) {
    auto uri = parse_uri("tpm2:handle=" + *h);
    if (!uri || !uri->handle) return usage_error("--persistent needs a handle 0x81000000-0x81ffffff, not \"" + *h + "\"");
    persistent = *uri->handle;
  }
  KeyOptions opts;
  opts.spec = spec;
  opts.with_auth = !auth.empty();
  auto tpm = ctx.tpm();
  if (!tpm) return fail(tpm.take_error().context(what));
  if (persistent && (*tpm)->public_of(persistent))
    return fail(make_error(Reason::kInvalidArgument, "the persistent handle is already in use").context(what));
  auto kf = (*tpm)->create_key(opts, auth, kOwnerParent);
  if (!kf) return fail(kf.take_error().context(what));
  kf->description = a.option("--description").value_or("");
  if (persistent) {
    if (Status st = (*tpm)->make_persistent(*kf, persistent); !st) return fail(st.take_error().context(what));
    kf->persistent = persistent;
  }
  if (Status st = ctx.keystore().add(*name, *kf); !st) {
    if (persistent) (void)(*tpm)->evict_persistent(*kf, persistent);  // do not leave an orphan in the TPM
    return fail(st.take_error().context(what));
  }
  std::printf("created tpm2:%s (%s%s) in %s\n", name->c_str(), spec->name, auth.empty() ? "" : ", password",
              ctx.keystore().path_of(*name).c_str());
  if (persistent) std::printf("persistent at 0x%08x (also tpm2:handle=0x%08x)\n", persistent, persistent);
  return kExitOk;
}

int cmd_init(const Args& a) {
  if (!a.positional.empty()) return usage_error("init takes no arguments");
  Context ctx = make_context(a);
  const std::string what = "init(" + ctx.keystore().dir() + ")";
  auto old_pin = ctx.keystore().read_pin();
  if (!old_pin) return fail(old_pin.take_error().context(what));
  auto tpm = ctx.tpm();
  if (!tpm) return fail(tpm.take_error().context(what));
  Tpm::Provisioned how{};
  auto pin = (*tpm)->provision_srk(!a.has_flag("--transient"), &how);
  if (!pin) return fail(pin.take_error().context(what));
  const std::string name = to_hex(pin->name);
  if (*old_pin && (*old_pin)->name != pin->name && !a.has_flag("--repin"))
    return fail(make_error(Reason::kUntrustedTpm, "this TPM's storage root key is " + name + " but the keystore pinned " +
                                                      to_hex((*old_pin)->name) +
                                                      ". If the TPM was cleared on purpose, run again with --repin")
                    .context(what));
  bool same = *old_pin && (*old_pin)->name == pin->name && (*old_pin)->handle == pin->handle;
  if (!same) {
    if (Status st = ctx.keystore().write_pin(*pin, old_pin->has_value()); !st) return fail(st.take_error().context(what));
  }
  switch (how) {
    case Tpm::Provisioned::kCreated: std::printf("made the storage root key persistent at 0x%08x\n", kSrkHandle); break;
    case Tpm::Provisioned::kAdopted: std::printf("using the storage root key already persistent at 0x%08x\n", kSrkHandle); break;
    case Tpm::Provisioned::kHandleTaken:
      std::printf("0x%08x holds another key (not the standard ECC P-256 SRK), left alone:\n"
                  "the SRK will be created as a transient object in each process\n", kSrkHandle);
      break;
    case Tpm::Provisioned::kTransient: std::printf("the SRK stays transient (created in each process)\n"); break;
  }
  std::printf("SRK name %s\n%s %s\n", name.c_str(), same ? "already pinned in" : "pinned in",
              ctx.keystore().pin_path().c_str());
  return kExitOk;
}

int cmd_list(const Args& a) {
  Context ctx = make_context(a);
  auto names = ctx.keystore().list();
  if (!names) return fail(names.error());
  if (names->empty()) {
    std::printf("no keys in %s (create one with: tpmkey create NAME)\n", ctx.keystore().dir().c_str());
    return kExitOk;
  }
  std::printf("%-24s %-10s %-6s %-9s %s\n", "NAME", "ALGORITHM", "BITS", "PASSWORD", "PARENT");
  int rc = kExitOk;
  for (const auto& n : *names) {
    auto kf = ctx.keystore().read(n);
    if (!kf) {
      std::printf("%-24s %s\n", n.c_str(), kf.error().text().c_str());
      rc = kExitError;
      continue;
    }
    auto spec = spec_of(kf->pub.publicArea);
    char parent[16];
    std::snprintf(parent, sizeof parent, "0x%08x", kf->parent);
    char where[40] = "";
    if (kf->persistent) std::snprintf(where, sizeof where, ", persistent 0x%08x", kf->persistent);
    std::printf("%-24s %-10s %-6d %-9s %s%s%s\n", n.c_str(), spec ? (*spec)->name : "unknown", spec ? (*spec)->bits : 0,
                kf->empty_auth ? "no" : "yes", parent, kf->parent == kOwnerParent ? " (owner SRK)" : "", where);
  }
  return rc;
}

int cmd_pubkey(const Args& a) {
  auto name = one_name(a);
  if (!name) return fail(name.error());
  std::string format = a.option("--format").value_or("pem");
  if (format != "pem" && format != "openssh")
    return usage_error("--format must be pem or openssh");
  Context ctx = make_context(a);
  const std::string what = "pubkey(tpm2:" + *name + ")";
  auto kf = ctx.keystore().read(*name);
  if (!kf) return fail(kf.take_error().context(what));
  if (format == "openssh") {
    auto line = openssh_public(kf->pub.publicArea, a.option("--comment").value_or(*name));
    if (!line) return fail(line.take_error().context(what));
    std::printf("%s\n", line->c_str());
    return kExitOk;
  }
  auto crypto = ctx.crypto();
  if (!crypto) return fail(crypto.error());
  auto pkey = public_pkey(kf->pub.publicArea, (*crypto)->libctx());
  if (!pkey) return fail(pkey.take_error().context(what));
  auto pem = spki_pem(pkey->get());
  if (!pem) return fail(pem.take_error().context(what));
  std::fputs(pem->c_str(), stdout);
  return kExitOk;
}

int cmd_delete(const Args& a) {
  auto name = one_name(a);
  if (!name) return fail(name.error());
  Context ctx = make_context(a);
  const std::string what = "delete(tpm2:" + *name + ")";
  if (!ctx.keystore().exists(*name))
    return fail(make_error(Reason::kKeyNotFound, "no key named \"" + *name + "\" in the keystore " + ctx.keystore().dir())
                    .context(what));
  if (!a.has_flag("--yes") && !a.has_flag("-y")) {
    if (!have_tty())
      return fail(make_error(Reason::kInvalidArgument, "refusing to delete without confirmation: add --yes").context(what));
    if (!confirm_on_tty("Delete tpm2:" + *name + "? The key cannot be recovered."))
      return fail(make_error(Reason::kInvalidArgument, "not confirmed; nothing deleted").context(what));
  }
  if (auto kf = ctx.keystore().read(*name); kf && kf->persistent) {
    auto tpm = ctx.tpm();
    if (!tpm) return fail(tpm.take_error().context(what));
    Status st = (*tpm)->evict_persistent(*kf, kf->persistent);
    if (!st && st.error().reason != Reason::kKeyNotFound) return fail(st.take_error().context(what));
    if (st) std::printf("evicted 0x%08x from the TPM\n", kf->persistent);
    else std::printf("0x%08x was no longer in the TPM\n", kf->persistent);
  }
  if (Status st = ctx.keystore().remove(*name); !st) return fail(st.take_error().context(what));
  std::printf("deleted tpm2:%s\n", name->c_str());
  return kExitOk;
}

int cmd_algorithms(const Args& a) {
  Context ctx = make_context(a);
  auto tpm = ctx.tpm();
  if (!tpm) return fail(tpm.error());
  for (const auto& spec : all_algorithms()) {
    Status st = (*tpm)->supports(spec);
    if (!st && st.error().reason != Reason::kUnsupported) return fail(st.error());
    std::printf("%-9s %s\n", spec.name, st ? "supported" : "not supported by this TPM");
  }
  return kExitOk;
}

// import-file's check that the key works on this TPM. Key and Tpm have no "load only" call, so
// this takes the path every later signature takes: the TPM loads the key under the parent the
// file names (TPM2_Load; a key from another TPM or parent fails here), signs a fixed self-test
// digest (TPM2_Sign), and the signature must verify in software with the file's public key.
Status self_test(Key& key, const Crypto& crypto) {
  static constexpr char kSelfTest[] = "tpmkey import-file self-test";
  const bool rsa = key.spec().kind == KeyKind::kRsa;
  // A key bound to a scheme signs only with it; a NULL scheme lets the command choose.
  auto bound = bound_scheme(key.file().pub.publicArea);
  if (!bound) return bound.take_error();
  const SignScheme scheme = bound->value_or(default_scheme(key.spec().kind));
  const EVP_MD* md = crypto.md(scheme.hash);
  if (!md) return make_error(Reason::kUnsupported, "the key is bound to a hash tpmkey does not sign with");
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(kSelfTest, sizeof kSelfTest - 1, digest, &digest_len, md, nullptr) != 1)
    return make_error(Reason::kInternal, "cannot hash the self-test message");
  auto sig = key.sign(scheme, digest, digest_len);
  if (!sig) return sig.take_error();
  EvpPkeyCtxPtr v(EVP_PKEY_CTX_new_from_pkey(crypto.libctx(), key.public_pkey(), "provider=default"));
  bool ok = v && EVP_PKEY_verify_init(v.get()) == 1 && EVP_PKEY_CTX_set_signature_md(v.get(), md) == 1;
  if (ok && rsa) {
    const bool pss = scheme.alg == SigAlg::kRsaPss;
    ok = EVP_PKEY_CTX_set_rsa_padding(v.get(), pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) == 1 &&
         (!pss || EVP_PKEY_CTX_set_rsa_pss_saltlen(v.get(), RSA_PSS_SALTLEN_AUTO) == 1);
  }
  ok = ok && EVP_PKEY_verify(v.get(), sig->data(), sig->size(), digest, digest_len) == 1;
  ERR_clear_error();
  if (!ok)
    return make_error(Reason::kMalformedKey,
                      "the TPM's self-test signature does not verify with the public key in the file (the public and "
                      "private blobs do not belong together)");
  return {};
}

int cmd_import_file(const Args& a) {
  if (a.positional.size() != 2) return usage_error("import-file needs a key NAME and the PATH of a key file");
  const std::string& name = a.positional[0];
  const std::string& path = a.positional[1];
  if (Status st = validate_name(name); !st) return fail(st.error());
  Context ctx = make_context(a);
  const std::string what = "import-file(tpm2:" + name + ")";
  if (ctx.keystore().exists(name))
    return fail(make_error(Reason::kInvalidArgument, "a key named \"" + name + "\" already exists in " +
                                                         ctx.keystore().dir() + "; nothing was changed")
                    .context(what));
  auto kf = read_keyfile(path);  // its errors name the path
  if (!kf) return fail(kf.take_error().context(what));
  KeyFile stored = *kf;
  auto key = Key::from_file(ctx, std::move(*kf), path);
  if (!key) return fail(key.take_error().context(what));
  bool empty_password = false;
  if ((*key)->needs_auth()) {
    Result<SecretBytes> pw = SecretBytes();
    if (auto file = a.option("--password-file")) {
      pw = read_pin_source(*file);
    } else if (have_tty()) {
      pw = prompt_password("Password of the key in " + path + ": ", false);
    } else {
      pw = make_error(Reason::kAuthFailed, "the key file " + path +
                                               " says the key has a password, which the check needs: give it with "
                                               "--password-file (there is no terminal to ask on)");
    }
    if (!pw) return fail(pw.take_error().context(what));
    empty_password = pw->empty();
    (*key)->set_auth(std::move(*pw));
  } else if (a.option("--password-file")) {
    std::fprintf(stderr, "tpmkey: %s: the key needs no password; --password-file is not used\n", path.c_str());
  }
  auto crypto = ctx.crypto();
  if (!crypto) return fail(crypto.take_error().context(what));
  if (Status st = self_test(**key, **crypto); !st) {
    Error e = st.take_error();
    if (e.reason == Reason::kKeyNotFound && stored.parent != kOwnerParent) {
      char h[16];
      std::snprintf(h, sizeof h, "0x%08x", stored.parent);
      e.detail = std::string("this TPM has no persistent parent ") + h +
                 " (the key file comes from another TPM, or its parent was evicted): " + e.detail;
    } else if (e.reason == Reason::kMalformedKey && stored.parent == kOwnerParent &&
               e.detail.find("integrity check failed") != std::string::npos) {
      e.detail += " (made on another TPM, or under an owner primary that is not the standard ECC P-256 storage "
                  "key, for example tpm2_createprimary's default template: see docs/keys.md)";
    }
    return fail(e.context(what));
  }
  if (empty_password) {
    // The TPM accepted an empty password, so the key has none: the file's missing emptyAuth was
    // wrong (tpm2-tools 5.4's tpm2_encodeobject writes it inverted). The copy says so correctly.
    stored.empty_auth = true;
    std::fprintf(stderr,
                 "tpmkey: %s: the file says the key has a password, but the TPM accepted an empty one: "
                 "stored as a key without a password\n",
                 path.c_str());
  }
  if (auto d = a.option("--description")) stored.description = *d;
  const std::string alg = (*key)->spec().name;
  key->reset();  // done with the TPM: flush the key's handle before writing
  if (Status st = ctx.keystore().add(name, stored); !st) return fail(st.take_error().context(what));
  char parent[64];
  if (stored.parent == kOwnerParent)
    std::snprintf(parent, sizeof parent, "0x%08x (owner SRK)", stored.parent);
  else
    std::snprintf(parent, sizeof parent, "persistent parent 0x%08x", stored.parent);
  std::printf("imported tpm2:%s (%s%s) from %s into %s\n", name.c_str(), alg.c_str(),
              stored.empty_auth ? "" : ", password", path.c_str(), ctx.keystore().path_of(name).c_str());
  std::printf("checked: this TPM loaded it under %s, and its self-test signature verified\n", parent);
  return kExitOk;
}

struct Command {
  const char* name;
  int (*run)(const Args&);
  const char* help;
};
const Command kCommands[] = {
    {"init", cmd_init, kInitHelp},         {"create", cmd_create, kCreateHelp},
    {"list", cmd_list, kListHelp},
    {"pubkey", cmd_pubkey, kPubkeyHelp},   {"delete", cmd_delete, kDeleteHelp},
    {"import-file", cmd_import_file, kImportFileHelp},
    {"algorithms", cmd_algorithms, kAlgorithmsHelp},
};

}  // namespace

int main(int argc, char** argv) {
  int exit_code = kExitOk;
  auto args = parse_args(argc, argv, &exit_code);
  if (!args) return exit_code;
  bool help = args->has_flag("--help") || args->has_flag("-h") || args->command == "help";
  if (args->has_flag("--version")) {
    std::printf("tpmkey %s\n", TPMKEY_VERSION);
    return kExitOk;
  }
  if (args->command.empty() || (help && (args->command == "help" || args->command.empty()))) {
    std::fputs(kMainHelp, args->command.empty() && !help ? stderr : stdout);
    return args->command.empty() && !help ? kExitUsage : kExitOk;
  }
  for (const auto& c : kCommands) {
    if (args->command != c.name) continue;
    if (help) {
      std::fputs(c.help, stdout);
      return kExitOk;
    }
    return c.run(*args);
  }
  return usage_error("unknown command \"" + args->command + "\"");
}

}  // namespace tpmkey::cli

int main(int argc, char** argv) { return tpmkey::cli::main(argc, argv); }
